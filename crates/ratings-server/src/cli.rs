//! The `ratings-server` command line: runs one or more ratings instances and
//! registers each with the registry.

use clap::Parser;
use market_proto::ratings::v1::ratings_server::RatingsServer;

use crate::{MAX_MESSAGE, RatingsService, SERVICE};

/// The ratings microservice.
///
/// `ratings-server` alone is instance 1 on port 8001; `--instance N` listens
/// on 8000+N; `--count K` runs K instances (N .. N+K-1) in one process. Each
/// registers as service `ratings` with the registry and heartbeats; on Ctrl-C
/// or SIGTERM each deregisters first, then finishes the calls in flight.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// Which instances to run, where, and how they register.
    #[command(flatten)]
    pub instances: daemon::InstanceArgs,

    /// Misbehaviour on purpose: `--delay`, `--fail-rate`.
    #[command(flatten)]
    pub faults: daemon::Faults,
}

/// Runs the instances as the command line says, until SIGINT or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let faults = cli.faults;
    daemon::run_instances(&SERVICE, cli.instances, |id| {
        RatingsServer::new(RatingsService::new(id, faults)).max_decoding_message_size(MAX_MESSAGE)
    })
    .await
}
