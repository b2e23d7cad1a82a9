//! `registryd`: the registry daemon's binary.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logging();
    registryd::cli::run(registryd::cli::Cli::parse()).await
}
