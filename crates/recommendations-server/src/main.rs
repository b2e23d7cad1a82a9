//! `recommendations-server`: the recommendations service's binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: recommendations_server::Cli =
        daemon::instances::parse(&recommendations_server::SERVICE);
    daemon::init_logging(cli.instances.log.log_format);
    recommendations_server::run(cli).await
}
