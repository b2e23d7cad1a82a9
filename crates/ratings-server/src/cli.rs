//! The `ratings-server` command line: runs one or more ratings instances and
//! registers each with the registry.

use std::time::Duration;

use clap::Parser;
use market_proto::ratings::v1::ratings_server::RatingsServer;

use crate::{Faults, MAX_MESSAGE, RatingsService, SERVICE};

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

    /// Added latency for every call, e.g. `50ms` (fault injection).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub delay: Duration,

    /// Fraction of calls, 0 to 1, answered UNAVAILABLE (fault injection).
    #[arg(long, default_value_t = 0.0, value_parser = daemon::instances::parse_rate)]
    pub fail_rate: f64,
}

/// Runs the instances as the command line says, until SIGINT or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let faults = Faults {
        delay: cli.delay,
        fail_rate: cli.fail_rate,
    };
    daemon::run_instances(&SERVICE, cli.instances, |id| {
        RatingsServer::new(RatingsService::new(id, faults)).max_decoding_message_size(MAX_MESSAGE)
    })
    .await
}
