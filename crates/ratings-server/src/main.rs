//! `ratings-server`: the ratings service's binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logging();
    let cli = daemon::instances::parse(&ratings_server::SERVICE);
    ratings_server::cli::run(cli).await
}
