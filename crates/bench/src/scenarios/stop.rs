//! Scenario 5: one of three instances frozen with SIGSTOP while the shop
//! serves 200 pages a second (open loop), with hedging off (the contract's
//! policy: the breaker opens at the first 1 s timeout and the call is retried
//! elsewhere) and with `--hedge-after 50ms`. The incident is every page sent
//! from the SIGSTOP on.

use std::time::{Duration, Instant};

use crate::{
    charts,
    loadgen::{self, Run},
    procs::{Cluster, Meter, Metered, Signal, Web},
    report::{Check, Row, Section},
    scenarios::{Config, caller, page_call, warm_up},
};

/// Pages a second.
const RATE: f64 = 200.0;

/// Runs scenario 5.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(5, "SIGSTOP one of three instances under 200 pages/s");
    let cluster = Cluster::start(3, |_| Vec::new()).await?;
    let total = cfg.secs(12.0, 5.0);
    let lead = total / 4;
    section.note(format!(
        "Open loop at {RATE:.0} pages/s for {:.0} s; instance 2 gets SIGSTOP {:.0} s in and SIGCONT \
         at the end; the incident is every page whose intended send time is at or after the \
         SIGSTOP. Each variant has a fresh `market-web` (fresh breakers).",
        total.as_secs_f64(),
        lead.as_secs_f64()
    ));
    section.note(
        "The original (the Datawire walkthrough) made every page that hit the frozen instance wait \
         the full 1 s timeout until the breaker opened.",
    );
    let frozen = &cluster.instances[1].daemon;
    let mut rows = Vec::new();
    let mut hists = Vec::new();
    for (label, args) in [
        ("hedging off", Vec::new()),
        ("hedging at 50 ms", vec!["--hedge-after", "50ms"]),
    ] {
        let web = Web::start(label, &cluster.registry, &args).await?;
        let page = page_call(&web).await?;
        warm_up(&page, 100).await?;
        let mut procs: Vec<Metered> = cluster.daemons().into_iter().map(Metered::of).collect();
        procs.push(Metered::of(&web.daemon));
        procs.push(Metered::this("load generator"));
        let meter = Meter::start(procs);
        let stopper = async {
            tokio::time::sleep(lead).await;
            frozen.signal(Signal::SIGSTOP)
        };
        let (run, stopped) = tokio::join!(
            loadgen::open_loop(RATE, total, 10_000, caller(&page)),
            stopper
        );
        let costs = meter.finish();
        frozen.signal(Signal::SIGCONT)?;
        stopped?;
        section.costs.push((label.to_owned(), costs));
        let incident = incident(&run, lead);
        let slow = run
            .timeline
            .iter()
            .filter(|(offset, latency)| *offset >= lead && *latency > Duration::from_millis(100))
            .count();
        let share = slow as f64 * 100.0 / (incident.ok + incident.errors).max(1) as f64;
        let max_ms = incident.hist.max() as f64 / 1000.0;
        section.note(format!(
            "{label}: {slow} of {} incident pages over 100 ms ({share:.2} %), the slowest {max_ms:.1} ms.",
            incident.ok + incident.errors
        ));
        if args.is_empty() {
            section.checks.push(Check::plain(
                "hedging off: no page over 1.2 s",
                format!("max {max_ms:.1} ms ({:.2}× the bound)", max_ms / 1200.0),
                max_ms <= 1200.0,
            ));
            section.checks.push(Check::plain(
                "hedging off: < 2 % of the incident's pages over 100 ms",
                format!("{share:.2} % ({slow} pages)"),
                share < 2.0,
            ));
        } else {
            section.checks.push(Check::plain(
                "hedging at 50 ms: no page over 150 ms",
                format!("max {max_ms:.1} ms ({:.2}× the bound)", max_ms / 150.0),
                max_ms <= 150.0,
            ));
        }
        rows.push(Row::of(format!("{label}: whole run"), &run));
        rows.push(Row::of(format!("{label}: incident"), &incident));
        hists.push((format!("{label} (incident)"), incident.hist));
        web.daemon.stop().await;
    }
    section.tables.push((format!("{RATE:.0} pages/s"), rows));
    let (path, name) = cfg.chart("s5-latency.svg");
    let series: Vec<_> = hists.iter().map(|(l, h)| (l.clone(), h)).collect();
    charts::latency_distribution(
        &path,
        "Scenario 5: pages during a SIGSTOP of one instance",
        &series,
    )?;
    section.charts.push(name);
    section.took = started.elapsed();
    Ok(section)
}

/// The pages of `run` sent at or after `from`.
fn incident(run: &Run, from: Duration) -> Run {
    let mut incident = run.clone();
    incident.hist = loadgen::histogram();
    incident.timeline.clear();
    for (_, latency) in run.timeline.iter().filter(|(offset, _)| *offset >= from) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        incident.hist.saturating_record(micros.max(1));
    }
    incident.ok = incident.hist.len();
    incident.errors = 0;
    incident.elapsed = run.elapsed.saturating_sub(from);
    incident
}
