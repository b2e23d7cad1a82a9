//! Scenario 3: the shop's page `GET /` (four lookups at once), with the
//! cache fresh (`--fresh-for 1h`: no call at all) and bypassed
//! (`--fresh-for 0s`, the default: every page asks), against one `Get`
//! through the same stack in process. Closed loop, one caller, interleaved
//! rounds; and wrk against the bypassed page as a check of our generator.
//!
//! The bypassed page is also measured, in the same interleaved rounds, on
//! three more shops exporting traces (`--otlp-endpoint`): to a port nobody
//! listens on (down), to a listener that never answers (black-holed) and to
//! a working OTLP receiver (exporting), against the same page with traces
//! off; each shop's `/metrics` then says how many spans it exported and
//! dropped.

use std::time::Instant;

use crate::{
    charts, http,
    loadgen::{self, Runs},
    procs::{Cluster, Meter, Metered, Web},
    report::{Check, Row, Section},
    scenarios::{Call, Config, caller, contract_stack_call, page_call, warm_up},
    wrk,
};

const VARIANTS: [&str; 6] = [
    "one Get (full stack, in process)",
    "page, cache bypassed",
    "page, cache fresh",
    "page, bypassed, OTLP down",
    "page, bypassed, OTLP black-holed",
    "page, bypassed, OTLP exporting",
];

/// The OTLP variants' indices in [`VARIANTS`], and their short names.
const OTLP: [(usize, &str); 3] = [(3, "down"), (4, "black-holed"), (5, "exporting")];

/// Runs scenario 3.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(3, "Market page GET / vs one Get");
    let cluster = Cluster::start(3, |_| Vec::new()).await?;
    let bypassed = Web::start("cache bypassed", &cluster.registry, &["--fresh-for", "0s"]).await?;
    let fresh = Web::start("cache fresh", &cluster.registry, &["--fresh-for", "1h"]).await?;
    // Down: a port that was free a moment ago, nobody listening on it.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", listener.local_addr()?)
    };
    let black_hole = test_support::Otlp::black_hole().await;
    let receiver = test_support::Otlp::start().await;
    let mut traced = Vec::new();
    for ((_, label), url) in OTLP
        .iter()
        .zip([down.clone(), black_hole.url(), receiver.url()])
    {
        let web = Web::start(
            &format!("bypassed, OTLP {label}"),
            &cluster.registry,
            &["--fresh-for", "0s", "--otlp-endpoint", &url],
        )
        .await?;
        traced.push(web);
    }
    let calls: [Call; 6] = [
        contract_stack_call(&cluster.registry).await?,
        page_call(&bypassed).await?,
        page_call(&fresh).await?,
        page_call(&traced[0]).await?,
        page_call(&traced[1]).await?,
        page_call(&traced[2]).await?,
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
    section.note(format!(
        "Traces: three more shops, each `--fresh-for 0s --otlp-endpoint URL`, their page \
         measured in the same interleaved rounds as the others: OTLP down (a loopback port \
         nobody listens on, {down}), black-holed (`test_support::Otlp::black_hole`: accepts \
         TCP, never answers; each export waits out its 3 s timeout) and exporting (a working \
         `test_support::Otlp` receiver, in the bench process). The ratings instances do not \
         export (the shop's spans and the context it sends are all that changes). Each shop \
         is a process of its own, started the same way; OTLP off is the bypassed page above."
    ));
    let mut runs: [Runs; 6] = std::array::from_fn(|_| Runs::new());
    // Per variant and round: the CPU time of every process together, per
    // request (µs).
    let mut cpu_per_request: [Vec<f64>; 6] = Default::default();
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let v = (round + k) % VARIANTS.len();
            let mut procs: Vec<Metered> = cluster.daemons().into_iter().map(Metered::of).collect();
            procs.push(Metered::of(&bypassed.daemon));
            procs.push(Metered::of(&fresh.daemon));
            procs.extend(traced.iter().map(|web| Metered::of(&web.daemon)));
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

    otlp_checks(&mut section, &runs, &cpu, &traced, &receiver).await?;

    wrk::compare(cfg, &mut section, &bypassed, &calls[1], duration).await?;
    section.took = started.elapsed();
    Ok(section)
}

/// The OTLP variants against the bypassed page with traces off, and what
/// each shop says it exported and dropped.
async fn otlp_checks(
    section: &mut Section,
    runs: &[Runs; 6],
    cpu: &[f64; 6],
    traced: &[Web],
    receiver: &test_support::Otlp,
) -> anyhow::Result<()> {
    let p50 = |v: usize| runs[v].median(|r| r.quantile_us(0.5) as f64);
    let p99 = |v: usize| runs[v].median(|r| r.quantile_us(0.99) as f64);
    // How far the off page's p50 moves between its own rounds.
    let off: Vec<f64> = runs[1]
        .runs
        .iter()
        .map(|r| r.quantile_us(0.5) as f64)
        .collect();
    let (lo, hi) = off
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let spread = format!(
        "OTLP off p50 over its {} rounds {:.3}–{:.3} ms ({:.2}× from lowest to highest)",
        off.len(),
        lo / 1000.0,
        hi / 1000.0,
        hi / lo
    );
    let mut counts = Vec::new();
    for ((v, label), web) in OTLP.iter().zip(traced) {
        let (exported, dropped) = span_counts(web).await?;
        counts.push(format!("{label}: {exported} exported, {dropped} dropped"));
        let detail = format!(
            "p50 {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms ({:.2}×)",
            p50(*v) / 1000.0,
            p50(1) / 1000.0,
            p99(*v) / 1000.0,
            p99(1) / 1000.0,
            p99(*v) / p99(1)
        );
        if *label == "exporting" {
            // Context, not a target: what exporting for real costs.
            section.note(format!(
                "OTLP exporting (context, no target): page p50 {:.2}× OTLP off ({detail}).",
                p50(*v) / p50(1)
            ));
            section.checks.push(Check::plain(
                "OTLP exporting: market_spans_exported_total > 0",
                format!(
                    "{exported} exported, {dropped} dropped; the receiver got {} spans",
                    receiver.spans().len() + receiver.dropped()
                ),
                exported > 0,
            ));
        } else {
            section.checks.push(Check::ratio(
                format!("OTLP {label}: page p50 ≤ 1.10× OTLP off (within noise)"),
                p50(*v) / p50(1),
                1.10,
                false,
                format!("{detail}; {spread}"),
            ));
            section.checks.push(Check::plain(
                format!("OTLP {label}: market_spans_dropped_total > 0"),
                format!("{dropped} dropped, {exported} exported"),
                dropped > 0,
            ));
        }
    }
    section.note(format!(
        "Context, no target: page p50 over the exporting shop's (what a failing endpoint adds \
         to tracing on): down {:.2}×, black-holed {:.2}×.",
        p50(3) / p50(5),
        p50(4) / p50(5)
    ));
    section.note(format!(
        "Spans counted by each shop's `/metrics` after the rounds: {}. {spread}. CPU of every \
         process together per page (median of rounds): OTLP off {:.0} µs, down {:.0} µs, \
         black-holed {:.0} µs, exporting {:.0} µs.",
        counts.join("; "),
        cpu[1],
        cpu[3],
        cpu[4],
        cpu[5]
    ));
    Ok(())
}

/// `market_spans_exported_total` and `market_spans_dropped_total` from the
/// shop's `/metrics`.
async fn span_counts(web: &Web) -> anyhow::Result<(u64, u64)> {
    let (status, text) = http::get_text(web.addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let value = |name: &str| -> anyhow::Result<u64> {
        test_support::metric(&text, name)
            .map(|v| v as u64)
            .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
    };
    Ok((
        value("market_spans_exported_total")?,
        value("market_spans_dropped_total")?,
    ))
}
