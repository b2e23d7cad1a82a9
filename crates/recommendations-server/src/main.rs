//! `recommendations-server`: the recommendations service's binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    daemon::init_logging();
    let cli = daemon::instances::parse(&recommendations_server::SERVICE);
    recommendations_server::run(cli).await
}
