//! `ratings-server`: the ratings service's binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: ratings_server::cli::Cli = daemon::instances::parse(&ratings_server::SERVICE);
    daemon::init_logging(cli.instances.log.log_format);
    ratings_server::cli::run(cli).await
}
