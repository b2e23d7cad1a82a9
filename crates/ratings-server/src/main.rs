//! `ratings-server`: the ratings service's binary.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logging();
    ratings_server::cli::run(ratings_server::cli::Cli::parse()).await
}
