//! `ratings-server`: the ratings service's binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: ratings_server::cli::Cli = daemon::instances::parse(&ratings_server::SERVICE);
    let _telemetry = daemon::init_logging(&cli.instances.log, "ratings-server");
    ratings_server::cli::run(cli).await
}
