//! `registryd`: the registry daemon's binary.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = registryd::cli::Cli::parse();
    daemon::init_logging(cli.log.log_format);
    registryd::cli::run(cli).await
}
