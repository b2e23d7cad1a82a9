//! Scenario 9: resident memory of `market-web`, `ratings-server` and
//! `registryd` at idle (started, one page served) and at scenario 1's
//! highest concurrency (64 callers), here as 64 page callers, so that the
//! shop too is under load (each page is four `Get`s on the instances).

use std::time::Instant;

use crate::{
    loadgen,
    procs::{Cluster, Meter, Metered, Web, memory_kib},
    report::{Check, Row, Section},
    scenarios::{Config, caller, page_call},
};

/// Linkerd's proxy, as its project publishes it (not measured here).
const LINKERD_PROXY_MB: f64 = 26.0;

/// Runs scenario 9.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(9, "Resident memory at idle and under load");
    let cluster = Cluster::start(3, |_| Vec::new()).await?;
    let web = Web::start("defaults", &cluster.registry, &[]).await?;
    let page = page_call(&web).await?;
    let _ = page().await;

    let idle = |pid: u32| memory_kib(pid).map(|(rss, _)| rss).unwrap_or_default();
    let web_idle = idle(web.daemon.pid());
    let ratings_idle = idle(cluster.instances[0].daemon.pid());
    let registry_idle = idle(cluster.registry.daemon.pid());

    let duration = cfg.secs(10.0, 3.0);
    let mut procs: Vec<Metered> = cluster.daemons().into_iter().map(Metered::of).collect();
    procs.push(Metered::of(&web.daemon));
    procs.push(Metered::this("load generator"));
    let meter = Meter::start(procs);
    let run = loadgen::closed_loop(64, duration, caller(&page)).await;
    let costs = meter.finish();
    section.tables.push((
        "64 page callers, closed loop".to_owned(),
        vec![Row::of("page", &run)],
    ));
    section.costs.push(("64 page callers".to_owned(), costs));
    section.note(format!(
        "Idle: RSS after start and one page. Under load: peak RSS (`VmHWM`) after {:.0} s of 64 \
         page callers. For comparison, Linkerd's proxy is published at about {LINKERD_PROXY_MB:.0} MB \
         RSS per pod (a published figure, not measured here).",
        duration.as_secs_f64()
    ));
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (who, kib, bound) in [
        ("market-web", web_idle, 30.0),
        ("ratings-server", ratings_idle, 15.0),
        ("registryd", registry_idle, 20.0),
    ] {
        section.checks.push(Check::plain(
            format!("{who} idle RSS ≤ {bound:.0} MiB"),
            format!("{:.1} MiB ({:.2}× the bound)", mib(kib), mib(kib) / bound),
            mib(kib) <= bound,
        ));
    }
    section.took = started.elapsed();
    Ok(section)
}
