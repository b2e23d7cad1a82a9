//! `recommendations-server`: the recommendations service's binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: recommendations_server::Cli =
        daemon::instances::parse(&recommendations_server::SERVICE);
    let _telemetry = daemon::init_logging(&cli.instances.log, "recommendations-server");
    recommendations_server::run(cli).await
}
