//! `market`: the one-command demo.
//!
//! `market` alone starts, as separate processes, the registry (in a temporary
//! data dir), each service of [`SERVICES`] with its entry and instances
//! (three of ratings, two of recommendations), a consumer token for the shop
//! and the shop, prints where everything is and how to pause, resume and
//! kill an instance, and on Ctrl-C stops it all in order.
//!
//! The same binary also runs each daemon (`market registryd …`,
//! `market ratings-server …`, `market recommendations-server …`,
//! `market market-web …`), which is how the demo
//! starts its processes: `cargo run --release --bin market` builds one binary
//! and everything runs from it.
//!
//! `market chaos` runs the same topology under random faults and checks that
//! the shop kept its promises.
#![allow(clippy::print_stdout)]

mod chaos;
mod supervise;

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

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

/// Runs one daemon, as its own binary would, or the chaos soak.
#[derive(Debug, Subcommand)]
enum Daemon {
    /// The registry daemon (same options as `registryd`).
    Registryd(registryd::cli::Cli),
    /// Ratings instances (same options as `ratings-server`).
    RatingsServer(ratings_server::cli::Cli),
    /// Recommendations instances (same options as `recommendations-server`).
    RecommendationsServer(recommendations_server::Cli),
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
    /// How many ratings instances to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=50))]
    pub(crate) instances: u16,

    /// How many recommendations instances to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=50))]
    pub(crate) recommendations: u16,

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
}

/// A service the demo runs: its instances are `market SUBCOMMAND`.
pub(crate) struct DemoService {
    /// How its instances run.
    pub(crate) service: &'static daemon::Service,
    /// Its binary, as a subcommand of `market`.
    pub(crate) subcommand: &'static str,
    /// How many instances the demo starts.
    pub(crate) instances: fn(&DemoArgs) -> u16,
}

impl DemoService {
    /// Its name in the registry.
    pub(crate) fn name(&self) -> &'static str {
        self.service.name
    }
}

/// The services the demo runs, in the order it starts them.
pub(crate) const SERVICES: [DemoService; 2] = [
    DemoService {
        service: &ratings_server::SERVICE,
        subcommand: "ratings-server",
        instances: |args| args.instances,
    },
    DemoService {
        service: &recommendations_server::SERVICE,
        subcommand: "recommendations-server",
        instances: |args| args.recommendations,
    },
];

fn main() -> anyhow::Result<()> {
    let cli: Cli = daemon::instances::parse_adjusted(|command| {
        SERVICES.iter().fold(command, |command, service| {
            command.mut_subcommand(service.subcommand, |c| {
                daemon::instances::with_service_help(c, service.service)
            })
        })
    });
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.daemon {
        Some(Daemon::Registryd(cli)) => {
            daemon::init_logging();
            runtime.block_on(registryd::cli::run(cli))
        }
        Some(Daemon::RatingsServer(cli)) => {
            daemon::init_logging();
            runtime.block_on(ratings_server::cli::run(cli))
        }
        Some(Daemon::RecommendationsServer(cli)) => {
            daemon::init_logging();
            runtime.block_on(recommendations_server::run(cli))
        }
        Some(Daemon::MarketWeb(cli)) => {
            daemon::init_logging();
            runtime.block_on(market_web::cli::run(cli))
        }
        Some(Daemon::Chaos(args)) => {
            daemon::init_logging();
            runtime.block_on(chaos::run(args))
        }
        None => runtime.block_on(supervise::demo(cli.demo)),
    }
}
