//! `registryd`: the registry daemon's binary.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = registryd::cli::Cli::parse();
    let _telemetry = daemon::init_logging(&cli.log, "registryd");
    registryd::cli::run(cli).await
}
