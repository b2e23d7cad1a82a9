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
    for round in 0..rounds {
        for k in 0..3 {
            let v = (round + k) % 3;
            let mut procs: Vec<Metered> = cluster.daemons().into_iter().map(Metered::of).collect();
            procs.push(Metered::of(&bypassed.daemon));
            procs.push(Metered::of(&fresh.daemon));
            procs.push(Metered::this("load generator"));
            let meter = Meter::start(procs);
            let run = loadgen::closed_loop(1, duration, caller(&calls[v])).await;
            if round == rounds - 1 {
                section.costs.push((VARIANTS[v].to_owned(), meter.finish()));
            }
            runs[v].runs.push(run);
        }
    }
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
