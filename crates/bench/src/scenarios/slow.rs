//! Scenario 2: one of three instances slowed (`ratings-server --delay
//! 20ms`), 500 calls a second in open loop, through the full stack (p2c over
//! peak-EWMA) with and without hedging, the same stack in round-robin mode,
//! and tonic's `balance_channel`. The rounds are interleaved and their
//! latencies added. The targets are checked on the hedged stack: p2c alone
//! still sends a call to the slow instance now and then (its estimate decays
//! until it is tried again), and hedging is what bounds such a call.

use std::time::{Duration, Instant};

use resilience::Balance;

use crate::{
    charts,
    loadgen::{self, Runs},
    procs::{Cluster, Meter, Metered},
    report::{Check, Row, Section},
    scenarios::{Call, Config, balance_channel_call, caller, stack_call, warm_up},
};

/// Calls a second.
const RATE: f64 = 500.0;

/// When the hedged stack races a slow attempt: a few times a healthy
/// instance's p99 on this kind of machine.
const HEDGE_AFTER: Duration = Duration::from_millis(5);

const VARIANTS: [&str; 4] = [
    "full stack (p2c, hedge after 5 ms)",
    "full stack (round robin)",
    "balance_channel (3)",
    "full stack (p2c, no hedging)",
];

/// Runs scenario 2.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(
        2,
        "One of three instances slowed by 20 ms, 500 req/s open loop",
    );
    let cluster = Cluster::start(3, |n| {
        if n == 3 {
            vec!["--delay".to_owned(), "20ms".to_owned()]
        } else {
            Vec::new()
        }
    })
    .await?;
    let mut round_robin = ratings_client::contract_policy();
    round_robin.balance = Balance::RoundRobin;
    let mut hedged = ratings_client::contract_policy();
    hedged.hedge_after = Some(HEDGE_AFTER);
    let calls: [Call; 4] = [
        stack_call(&cluster.registry, hedged).await?.0,
        stack_call(&cluster.registry, round_robin).await?.0,
        balance_channel_call(&cluster, None)?,
        stack_call(&cluster.registry, ratings_client::contract_policy())
            .await?
            .0,
    ];
    for call in &calls {
        warm_up(call, 100).await?;
    }
    let rounds = cfg.pick(3, 1);
    let duration = cfg.secs(7.0, 3.0);
    section.note(format!(
        "Instance 3 answers every call 20 ms late. Open loop at {RATE:.0} calls/s, latency from each \
         call's intended send time; {rounds} interleaved round(s) of {:.0} s per caller, added up.",
        duration.as_secs_f64()
    ));
    let mut runs: [Runs; 4] = [Runs::new(), Runs::new(), Runs::new(), Runs::new()];
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let v = (round + k) % VARIANTS.len();
            let mut procs: Vec<Metered> = cluster.daemons().into_iter().map(Metered::of).collect();
            procs.push(Metered::this("client + load generator"));
            let meter = Meter::start(procs);
            let run = loadgen::open_loop(RATE, duration, 10_000, caller(&calls[v])).await;
            if round == rounds - 1 {
                section.costs.push((VARIANTS[v].to_owned(), meter.finish()));
            }
            runs[v].runs.push(run);
        }
    }
    let merged: Vec<_> = runs.iter().map(Runs::merged).collect();
    section.tables.push((
        format!("{RATE:.0} calls/s, one instance 20 ms slow"),
        VARIANTS
            .iter()
            .zip(&merged)
            .map(|(v, m)| Row::of(*v, m))
            .collect(),
    ));
    for (v, m) in VARIANTS.iter().zip(&merged) {
        let slow = m.shares().get(&3).copied().unwrap_or(0.0);
        section.note(format!(
            "{v}: {slow:.2} % of calls went to the slow instance."
        ));
    }
    let q = |v: usize, q: f64| merged[v].quantile_us(q) as f64;
    section.checks.push(Check::ratio(
        "p99 ≤ 0.15× round robin's",
        q(0, 0.99) / q(1, 0.99),
        0.15,
        false,
        format!(
            "{:.3} vs {:.3} ms",
            q(0, 0.99) / 1000.0,
            q(1, 0.99) / 1000.0
        ),
    ));
    section.checks.push(Check::ratio(
        "p99 ≤ 0.15× balance_channel's",
        q(0, 0.99) / q(2, 0.99),
        0.15,
        false,
        format!(
            "{:.3} vs {:.3} ms",
            q(0, 0.99) / 1000.0,
            q(2, 0.99) / 1000.0
        ),
    ));
    section.checks.push(Check::ratio(
        "p99.9 ≤ 0.3× balance_channel's",
        q(0, 0.999) / q(2, 0.999),
        0.3,
        false,
        format!(
            "{:.3} vs {:.3} ms",
            q(0, 0.999) / 1000.0,
            q(2, 0.999) / 1000.0
        ),
    ));
    let (path, name) = cfg.chart("s2-latency.svg");
    let series: Vec<_> = VARIANTS
        .iter()
        .zip(&merged)
        .map(|(v, run)| ((*v).to_owned(), &run.hist))
        .collect();
    charts::latency_distribution(
        &path,
        "Scenario 2: one instance 20 ms slow, 500 req/s",
        &series,
    )?;
    section.charts.push(name);
    section.took = started.elapsed();
    Ok(section)
}
