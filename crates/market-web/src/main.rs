//! `market-web`: the shop's binary.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logging();
    market_web::cli::run(market_web::cli::Cli::parse()).await
}
