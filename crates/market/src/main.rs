//! `market`: the one-command demo.
//!
//! `market` alone starts, as separate processes, the registry (in a temporary
//! data dir), each service of [`SERVICES`] with its entry and instances
//! (three of ratings, two of recommendations), a consumer token for the shop
//! and the shop, prints where everything is and how to pause, resume and
//! kill an instance, and on Ctrl-C stops it all in order.
//!
//! The same binary also runs each daemon (`market registryd …`,
//! `market market-web …`, and each service's, `market ratings-server …`,
//! `market recommendations-server …`), which is how the demo
//! starts its processes: `cargo run --release --bin market` builds one binary
//! and everything runs from it.
//!
//! `market chaos` runs the same topology under random faults and checks that
//! the shop kept its promises.
#![allow(clippy::print_stdout)]

mod chaos;
mod services;
mod supervise;

use std::net::SocketAddr;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub(crate) use crate::services::{Counts, DemoService, SERVICES};

/// The Datawire Market, in Rust: a shop calling a ratings microservice
/// resiliently, with everything it needs started as separate processes.
#[derive(Debug, Parser)]
#[command(name = "market", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    daemon: Option<Daemon>,

    #[command(flatten)]
    demo: DemoArgs,
}

/// Runs one daemon, as its own binary would, or the chaos soak. (Each
/// service of [`SERVICES`] adds its own subcommand.)
#[derive(Debug, Subcommand)]
enum Daemon {
    /// The registry daemon (same options as `registryd`).
    Registryd(registryd::cli::Cli),
    /// The shop (same options as `market-web`).
    MarketWeb(market_web::cli::Cli),
    /// The demo under random faults for a while, then checks: no 5xx, every
    /// rating shown once known, page latency, no stale registrations, steady
    /// memory, no panics. Fails when one of them broke.
    Chaos(chaos::ChaosArgs),
}

/// How the demo runs.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// How many instances of each service to start (each service's flag,
    /// e.g. --instances for ratings, is added from [`SERVICES`]).
    #[arg(skip)]
    pub(crate) counts: Counts,

    /// Start only the monolith: the shop without the registry or ratings.
    #[arg(long)]
    pub(crate) monolith: bool,

    /// Where the shop listens.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub(crate) listen: SocketAddr,

    /// Where the registry listens.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub(crate) registry_listen: SocketAddr,

    /// Where the registry serves xDS, for gRPC clients in other languages
    /// (`xds:///ratings`).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub(crate) xds_listen: SocketAddr,

    /// Put every process on a free port instead of 5000, 7000, 7001 and 8001…
    /// (to run beside something that uses those).
    #[arg(long)]
    pub(crate) any_ports: bool,

    /// The shop's client policy.
    #[command(flatten)]
    pub(crate) policy: market_web::cli::PolicyArgs,

    /// Every process's log format and trace export: each of them writes its
    /// lines (shown here behind its name) as text or JSON, and with an
    /// endpoint exports its spans there, under its own service name.
    #[command(flatten)]
    pub(crate) log: daemon::LogArgs,
}

fn main() -> anyhow::Result<()> {
    let mut command = services::with_count_args(Cli::command(), 0, 50, |name| {
        format!("How many {name} instances to start")
    })
    .mut_subcommand("chaos", |chaos| {
        services::with_count_args(chaos, 1, 20, |name| {
            format!("The {name} instances that faults may strike; one more, the base instance, is never struck")
        })
    });
    for service in &SERVICES {
        command = command.subcommand(service.subcommand());
    }
    let matches = command.clone().get_matches();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some((name, matches)) = matches.subcommand()
        && let Some(service) = DemoService::by_subcommand(name)
    {
        let log = daemon::LogArgs::from_arg_matches(matches)?;
        let _runtime = runtime.enter();
        let _telemetry = daemon::init_logging(&log, service.subcommand);
        return (service.run)(matches, &runtime);
    }
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    match cli.daemon {
        Some(Daemon::Registryd(cli)) => {
            let _runtime = runtime.enter();
            let _telemetry = daemon::init_logging(&cli.log, "registryd");
            runtime.block_on(registryd::cli::run(cli))
        }
        Some(Daemon::MarketWeb(cli)) => {
            let _runtime = runtime.enter();
            let _telemetry = daemon::init_logging(&cli.log, "market-web");
            runtime.block_on(market_web::cli::run(cli))
        }
        Some(Daemon::Chaos(mut args)) => {
            let _telemetry = daemon::init_logging(&daemon::LogArgs::default(), "market-chaos");
            if let Some(("chaos", matches)) = matches.subcommand() {
                args.counts = Counts::from_matches(matches);
            }
            runtime.block_on(chaos::run(args))
        }
        None => {
            cli.demo.counts = Counts::from_matches(&matches);
            runtime.block_on(supervise::demo(cli.demo))
        }
    }
}
