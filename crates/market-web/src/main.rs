//! `market-web`: the shop's binary.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = market_web::cli::Cli::parse();
    let _telemetry = daemon::init_logging(&cli.log, "market-web");
    market_web::cli::run(cli).await
}
