//! `bench caller`: one closed loop of `Get("camera")` through the full
//! stack, in a process of its own, with the daemons' own logging and tracing
//! (`daemon::init_logging`). Scenario 1 starts it three times per round,
//! traces off, on with every trace sampled out, and exporting over OTLP, so
//! that they differ in nothing but tracing: a process has one `tracing` dispatcher, and tracing one caller
//! in the bench's own process would change how every other caller's
//! callsites are checked.
//!
//! It syncs with the registry and warms up before it measures, then prints
//! one JSON line on stdout, `{"caller":{...}}`, and exits.
//!
//! `bench receiver` is its counterpart for runs by hand: the receiver
//! scenario 1 exports to, as a process of its own.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratings_client::{RatingsClient, contract_policy};

use crate::{loadgen, procs};

/// The caller's command line (hidden from `bench --help`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The registry to discover the instances through.
    #[arg(long)]
    registry: String,
    /// A token that may read `ratings`.
    #[arg(long)]
    token: String,
    /// Calls in flight.
    #[arg(long)]
    concurrency: usize,
    /// How long to measure, e.g. 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// `--log-format`, `--otlp-endpoint`, as the daemons take them.
    #[command(flatten)]
    log: daemon::LogArgs,
}

/// What one caller measured, as it prints it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Measured {
    /// Calls answered.
    pub(crate) ok: u64,
    /// Calls failed.
    pub(crate) errors: u64,
    /// Calls per second.
    pub(crate) throughput: f64,
    /// Latency, µs.
    pub(crate) p50_us: u64,
    /// Latency, µs.
    pub(crate) p99_us: u64,
    /// Latency, µs.
    pub(crate) p999_us: u64,
    /// Latency, µs.
    pub(crate) max_us: u64,
    /// The process's CPU time over the measured interval, as a share of one
    /// core.
    pub(crate) cpu: f64,
    /// Spans its pipeline exported, warm-up included (none with traces off).
    pub(crate) spans_exported: u64,
    /// Spans its pipeline dropped (a full queue, a failed export).
    pub(crate) spans_dropped: u64,
}

/// Runs the caller.
pub(crate) fn main(args: Args) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        let telemetry = daemon::init_logging(&args.log, "bench-caller");
        let registries = registry_client::Registries::new([args.registry.as_str()], &args.token)?;
        let client = RatingsClient::discover(registries, contract_policy())?;
        tokio::time::timeout(Duration::from_secs(10), client.synced())
            .await
            .context("the stack did not sync with the registry within 10 s")?;
        let call = move || {
            let client = client.clone();
            async move { client.get("camera").await.map(|_| 0).map_err(|_| ()) }
        };
        let warm_up_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < warm_up_until {
            let _ = call().await;
        }
        let me = std::process::id();
        let cpu_before = procs::cpu_ticks(me)?;
        let run = loadgen::closed_loop(args.concurrency, args.duration, call).await;
        let ticks = procs::cpu_ticks(me)?.saturating_sub(cpu_before);
        let cpu =
            ticks as f64 / procs::clock_ticks_per_second() / run.elapsed.as_secs_f64().max(1e-9);
        // What is still queued goes out before the counts are read.
        drop(telemetry);
        let measured = Measured {
            ok: run.ok,
            errors: run.errors,
            throughput: run.throughput(),
            p50_us: run.quantile_us(0.50),
            p99_us: run.quantile_us(0.99),
            p999_us: run.quantile_us(0.999),
            max_us: run.hist.max(),
            cpu,
            spans_exported: daemon::telemetry::spans_exported(),
            spans_dropped: daemon::telemetry::spans_dropped(),
        };
        let line = serde_json::json!({ "caller": measured });
        #[allow(clippy::print_stdout)]
        {
            println!("{line}");
        }
        anyhow::Ok(())
    })
}

/// `bench receiver`: a `test_support::Otlp` endpoint in a process of its
/// own, until interrupted. It keeps the first `test_support::otlp::MAX_SPANS`
/// spans and counts the rest.
pub(crate) fn receiver() -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        let receiver = test_support::Otlp::start().await;
        #[allow(clippy::print_stdout)]
        {
            println!("{}", receiver.url());
        }
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "{} spans in {} exports",
                    receiver.received(),
                    receiver.exports()
                );
            }
        }
    })
}
