//! Scenario 3: the shop's page `GET /` (four lookups at once), with the
//! cache fresh (`--fresh-for 1h`: no call at all) and bypassed
//! (`--fresh-for 0s`, the default: every page asks), against one `Get`
//! through the same stack in process. Closed loop, one caller, interleaved
//! rounds; and wrk against the bypassed page as a check of our generator.

use std::time::Instant;

use crate::{
    charts,
    loadgen::{self, Runs},
    procs::{Cluster, Meter, Metered, Web},
    report::{Check, Row, Section},
    scenarios::{Call, Config, caller, contract_stack_call, page_call, warm_up},
    wrk,
};

const VARIANTS: [&str; 3] = [
    "one Get (full stack, in process)",
    "page, cache bypassed",
    "page, cache fresh",
];

/// Runs scenario 3.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(3, "Market page GET / vs one Get");
    let cluster = Cluster::start(3, |_| Vec::new()).await?;
    let bypassed = Web::start("cache bypassed", &cluster.registry, &["--fresh-for", "0s"]).await?;
    let fresh = Web::start("cache fresh", &cluster.registry, &["--fresh-for", "1h"]).await?;
    let calls: [Call; 3] = [
        contract_stack_call(&cluster.registry).await?,
        page_call(&bypassed).await?,
        page_call(&fresh).await?,
    ];
    for call in &calls {
        warm_up(call, 200).await?;
    }
    let rounds = cfg.pick(5, 2);
    let duration = cfg.secs(2.0, 0.6);
    section.note(format!(
        "Closed loop, one caller, {rounds} interleaved rounds of {:.1} s each; the page is fetched \
         over HTTP/1.1 keep-alive as one visitor (its session cookie). The cache is bypassed with \
         `market-web --fresh-for 0s` (the default: every page asks the four ratings) and fresh \
         with `--fresh-for 1h`.",
        duration.as_secs_f64()
    ));
    let mut runs: [Runs; 3] = [Runs::new(), Runs::new(), Runs::new()];
    // Per variant and round: the CPU time of every process together, per
    // request (µs).
    let mut cpu_per_request: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for k in 0..3 {
            let v = (round + k) % 3;
            let mut procs: Vec<Metered> = cluster.daemons().into_iter().map(Metered::of).collect();
            procs.push(Metered::of(&bypassed.daemon));
            procs.push(Metered::of(&fresh.daemon));
            procs.push(Metered::this("load generator"));
            let meter = Meter::start(procs);
            let run = loadgen::closed_loop(1, duration, caller(&calls[v])).await;
            let costs = meter.finish();
            let cores: f64 = costs.iter().map(|c| c.cpu_pct / 100.0).sum();
            cpu_per_request[v].push(cores / run.throughput() * 1e6);
            if round == rounds - 1 {
                section.costs.push((VARIANTS[v].to_owned(), costs));
            }
            runs[v].runs.push(run);
        }
    }
    let cpu = cpu_per_request.map(|mut v| loadgen::median(&mut v));
    let mean = |v: usize| runs[v].median(|r| r.hist.mean());
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    section.note(format!(
        "CPU time of every process together per request (median of rounds; the idle ones \
         included): one Get {:.0} µs, bypassed page {:.0} µs, fresh page {:.0} µs. With one \
         caller the machine serves one request at a time, so on {cores:.0} cores a bypassed \
         page cannot take less than {:.0} µs on average: {:.2}× one Get's mean latency \
         ({:.0} µs; the page's mean was {:.0} µs, {:.2}× it). The target compares p50s; \
         with the page's p50 near its mean, meeting it would take the page's CPU under \
         {:.0} µs.",
        cpu[0],
        cpu[1],
        cpu[2],
        cpu[1] / cores,
        cpu[1] / cores / mean(0),
        mean(0),
        mean(1),
        mean(1) / mean(0),
        1.5 * runs[0].median(|r| r.quantile_us(0.5) as f64) * cores,
    ));
    let merged: Vec<_> = runs.iter().map(Runs::merged).collect();
    section.tables.push((
        "One caller (throughput: median of rounds)".to_owned(),
        VARIANTS
            .iter()
            .zip(&runs)
            .zip(&merged)
            .map(|((name, r), m)| {
                let mut row = Row::of(*name, m);
                row.throughput = Some(r.median(loadgen::Run::throughput));
                row
            })
            .collect(),
    ));
    let p50 = |v: usize| runs[v].median(|r| r.quantile_us(0.5) as f64);
    section.checks.push(Check::ratio(
        "bypassed page p50 ≤ 1.5× one Get p50",
        p50(1) / p50(0),
        1.5,
        false,
        format!("{:.3} vs {:.3} ms", p50(1) / 1000.0, p50(0) / 1000.0),
    ));
    let (path, name) = cfg.chart("s3-latency.svg");
    let series: Vec<_> = VARIANTS
        .iter()
        .zip(&merged)
        .map(|(v, run)| ((*v).to_owned(), &run.hist))
        .collect();
    charts::latency_distribution(&path, "Scenario 3: page vs one Get, one caller", &series)?;
    section.charts.push(name);

    wrk::compare(cfg, &mut section, &bypassed, &calls[1], duration).await?;
    section.took = started.elapsed();
    Ok(section)
}
