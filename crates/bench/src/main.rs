//! The benchmark suite of issue #6: the project side by side with what users
//! would pick instead, in one run, on loopback.
//!
//! - `procs`: starts the workspace's release binaries (and etcd) and meters
//!   each process's CPU and memory from `/proc`;
//! - `loadgen`: our load generator, closed loop and open loop (corrected for
//!   coordinated omission), into HdrHistograms; `http` is its page client;
//! - `scenarios`: one module per scenario of the table;
//! - `report` and `charts`: `report.md` and the SVG charts.
//!
//! `cargo run --release -p bench` runs everything (under 15 minutes on two
//! cores), `--quick` is the smoke run CI does (under 2 minutes), `--only N`
//! runs scenario N.

use std::{path::PathBuf, time::Instant};

use anyhow::Context as _;
use clap::Parser;

mod caller;
mod charts;
mod http;
mod loadgen;
mod procs;
mod report;
mod scenarios;
mod wrk;

use scenarios::Config;

/// Benchmarks the market's stack and registry against tonic's own
/// balancing, etcd and wrk, and writes a report with charts.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    /// A short smoke run (what CI runs): fewer, shorter rounds.
    #[arg(long)]
    quick: bool,

    /// Run only scenario N of the table (1 to 10; 6, 7 and 8 run
    /// together; 10 is registryd's xDS server).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=10))]
    only: Vec<u8>,

    /// Where to write report.md and the charts.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// One closed loop through the full stack in a process of its own, for
    /// scenario 1's traces comparison.
    #[command(hide = true)]
    Caller(caller::Args),
    /// The OTLP trace endpoint scenario 1's traces comparison exports to,
    /// on 127.0.0.1:0, for measuring a `bench caller` by hand: prints its
    /// URL, then every 5 s the spans and exports received, until
    /// interrupted.
    #[command(hide = true)]
    Receiver,
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::Caller(args)) => return caller::main(args),
        Some(Command::Receiver) => return caller::receiver(),
        None => {}
    }
    let runtime = runtime()?;
    // On Ctrl-C or SIGTERM the run is dropped, which kills every process it
    // started (they are killed on drop).
    runtime.block_on(async {
        tokio::select! {
            result = run(cli) => result,
            () = interrupted() => anyhow::bail!("interrupted: the processes started were stopped"),
        }
    })
}

/// The bench's runtime, and a caller's: two workers, as many as the machine
/// this suite is sized for has cores; the client under test shares them with
/// the servers, as in production.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")
}

/// The binaries the scenarios start.
const BINARIES: [&str; 4] = ["registryd", "registryctl", "ratings-server", "market-web"];

/// The features the binaries are built with: scenario 10 needs registryd's
/// xDS server (`--xds-listen`), which is off by default.
const FEATURES: &str = "registryd/xds";

/// Under `cargo run`, builds the binaries under test in the same profile,
/// so that the one command measures the code as it is (cargo cannot make a
/// binary depend on another package's binaries). Run directly, the bench
/// uses the binaries beside it as they are.
async fn build_binaries() -> anyhow::Result<()> {
    let (Ok(cargo), Some(root)) = (
        std::env::var("CARGO"),
        option_env!("CARGO_MANIFEST_DIR")
            .map(std::path::Path::new)
            .and_then(|dir| dir.parent()?.parent()),
    ) else {
        return Ok(());
    };
    if !root.join("Cargo.toml").exists() {
        return Ok(());
    }
    eprintln!(
        "bench: building the binaries under test ({}; features {FEATURES})…",
        BINARIES.join(", ")
    );
    let mut command = tokio::process::Command::new(cargo);
    command.current_dir(root).args(["build", "--bins"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    for name in BINARIES {
        command.args(["-p", name]);
    }
    command.args(["--features", FEATURES]);
    let status = command.status().await.context("cannot run cargo build")?;
    anyhow::ensure!(status.success(), "building the binaries under test failed");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create {}", cli.out.display()))?;
    let cfg = Config {
        quick: cli.quick,
        out: cli.out.clone(),
    };
    build_binaries().await?;
    // The run's time is the scenarios', without the build.
    let started = Instant::now();
    let wanted = |n: u8| cli.only.is_empty() || cli.only.contains(&n);
    let mut report = report::Report {
        mode: if cli.quick { "quick" } else { "full" },
        started: utc_now(),
        machine: report::machine(),
        sections: Vec::new(),
        took: Default::default(),
    };
    type Scenario = for<'a> fn(
        &'a Config,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = anyhow::Result<Vec<report::Section>>> + 'a>,
    >;
    let all: [(&[u8], &str, Scenario); 8] = [
        (&[1], "stack", |c| {
            Box::pin(async move { Ok(vec![scenarios::stack::run(c).await?]) })
        }),
        (&[2], "slow instance", |c| {
            Box::pin(async move { Ok(vec![scenarios::slow::run(c).await?]) })
        }),
        (&[3], "page", |c| {
            Box::pin(async move { Ok(vec![scenarios::page::run(c).await?]) })
        }),
        (&[4], "all down", |c| {
            Box::pin(async move { Ok(vec![scenarios::down::run(c).await?]) })
        }),
        (&[5], "stopped instance", |c| {
            Box::pin(async move { Ok(vec![scenarios::stop::run(c).await?]) })
        }),
        (&[6, 7, 8], "registry vs etcd", |c| {
            Box::pin(scenarios::registry::run(c))
        }),
        (&[9], "memory", |c| {
            Box::pin(async move { Ok(vec![scenarios::memory::run(c).await?]) })
        }),
        (&[10], "xDS", |c| {
            Box::pin(async move { Ok(vec![scenarios::xds::run(c).await?]) })
        }),
    ];
    for (numbers, name, scenario) in all {
        if !numbers.iter().any(|n| wanted(*n)) {
            continue;
        }
        let at = Instant::now();
        eprintln!("bench: scenario {numbers:?} ({name})…");
        let sections = scenario(&cfg)
            .await
            .with_context(|| format!("scenario {numbers:?} ({name}) failed"))?;
        eprintln!(
            "bench: scenario {numbers:?} took {:.0} s",
            at.elapsed().as_secs_f64()
        );
        for section in sections {
            for check in &section.checks {
                eprintln!(
                    "  [{}] #{} {}: {}",
                    if check.pass { "PASS" } else { "MISS" },
                    section.number,
                    check.target,
                    check.measured
                );
            }
            report.sections.push(section);
        }
        // Written after each scenario, so a failure later keeps what was done.
        report.took = started.elapsed();
        report.write(&cli.out)?;
    }
    report.took = started.elapsed();
    report.write(&cli.out)?;
    eprintln!(
        "bench: done in {:.0} s; report in {}",
        report.took.as_secs_f64(),
        cli.out.join("report.md").display()
    );
    Ok(())
}

/// The time now in UTC, `YYYY-MM-DD HH:MM UTC`, from the system clock.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}
