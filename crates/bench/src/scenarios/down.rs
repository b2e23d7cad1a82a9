//! Scenario 4: the page with every ratings instance killed, once the
//! breakers have opened (every lookup fails fast and the page shows the last
//! good ratings), against the page with every instance healthy. Open loop at
//! the same rate for both.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{
    charts, loadgen,
    procs::{Cluster, Meter, Metered, Web},
    report::{Check, Row, Section},
    scenarios::{Config, caller, page_call, warm_up},
};

/// Pages a second.
const RATE: f64 = 200.0;

/// Runs scenario 4.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(
        4,
        "Page with every instance killed (breakers open) vs all healthy",
    );
    let mut cluster = Cluster::start(3, |_| Vec::new()).await?;
    let web = Web::start("defaults", &cluster.registry, &[]).await?;
    let page = page_call(&web).await?;
    warm_up(&page, 200).await?;
    let duration = cfg.secs(10.0, 3.0);
    section.note(format!(
        "Open loop at {RATE:.0} pages/s for {:.0} s each, latency from each page's intended send time.",
        duration.as_secs_f64()
    ));

    let meter = Meter::start(meters(&cluster, &web));
    let healthy = loadgen::open_loop(RATE, duration, 1_000, caller(&page)).await;
    section
        .costs
        .push(("all healthy".to_owned(), meter.finish()));

    // Kill every instance, then ask for pages until each breaker has opened
    // (the shop logs `OPEN breaker` for each).
    let mark = web.daemon.mark();
    for instance in &mut cluster.instances {
        instance.daemon.kill().await?;
    }
    let instances = cluster.instances.len();
    let opened = async {
        // Each page tries the instances whose breakers are still closed.
        while count_after(&web, mark, "OPEN breaker") < instances {
            let _ = page().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), opened)
        .await
        .context("the breakers did not open within 30 s of killing every instance")?;
    section.note(format!(
        "After the kill the shop logged {} `OPEN breaker` line(s) before the measured run.",
        count_after(&web, mark, "OPEN breaker")
    ));

    let meter = Meter::start(
        std::iter::once(Metered::of(&cluster.registry.daemon))
            .chain([Metered::of(&web.daemon), Metered::this("load generator")]),
    );
    let down = loadgen::open_loop(RATE, duration, 1_000, caller(&page)).await;
    section
        .costs
        .push(("all killed".to_owned(), meter.finish()));

    section.tables.push((
        format!("{RATE:.0} pages/s"),
        vec![
            Row::of("all healthy", &healthy),
            Row::of("all killed, breakers open", &down),
        ],
    ));
    let (h, d) = (
        healthy.quantile_us(0.99) as f64,
        down.quantile_us(0.99) as f64,
    );
    section.checks.push(Check::ratio(
        "all killed: page p99 ≤ 1.2× healthy",
        d / h,
        1.2,
        false,
        format!("{:.3} vs {:.3} ms", d / 1000.0, h / 1000.0),
    ));
    let (path, name) = cfg.chart("s4-latency.svg");
    charts::latency_distribution(
        &path,
        "Scenario 4: page, all healthy vs all killed",
        &[
            ("all healthy".to_owned(), &healthy.hist),
            ("all killed".to_owned(), &down.hist),
        ],
    )?;
    section.charts.push(name);
    section.took = started.elapsed();
    Ok(section)
}

fn meters(cluster: &Cluster, web: &Web) -> Vec<Metered> {
    let mut procs: Vec<Metered> = cluster.daemons().into_iter().map(Metered::of).collect();
    procs.push(Metered::of(&web.daemon));
    procs.push(Metered::this("load generator"));
    procs
}

/// How many lines containing `needle` `web` printed after `mark`.
fn count_after(web: &Web, mark: usize, needle: &str) -> usize {
    web.daemon
        .lines_after(mark)
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}
