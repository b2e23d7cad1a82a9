//! Puts the registry on a listener, with gRPC health and server reflection.

use std::{future::Future, sync::Arc, time::Duration};

use market_proto::registry::v1::registry_server::RegistryServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{ServerTlsConfig, server::TcpIncoming};

use crate::{api::RegistryApi, store::Store};

/// The largest request accepted, in bytes: a registration with the most
/// metadata is about 5 KiB. A larger one is refused with OUT_OF_RANGE.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// The longest a call may take to answer before DEADLINE_EXCEEDED.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request header block (the token and gRPC's own headers are a
/// few hundred bytes).
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// How long, at shutdown, calls in flight may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls in flight on one connection before further ones wait.
const MAX_CALLS_PER_CONNECTION: usize = 256;

/// How the registry serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The token that may do everything.
    pub admin_token: String,
    /// How often an idle watch stream gets a progress message.
    pub progress_every: Duration,
    /// TLS for the listener; plaintext when `None`.
    pub tls: Option<ServerTlsConfig>,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not read the contract's descriptors.
    #[error(transparent)]
    Reflection(#[from] daemon::ReflectionError),
    /// The transport failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the registry over `store` on `listener` until `shutdown` resolves,
/// then ends open watch streams (their clients reconnect elsewhere) and lets
/// calls in flight finish.
pub async fn serve<S: Store>(
    store: Arc<S>,
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let closing = CancellationToken::new();
    let api = RegistryApi::new(
        store,
        &config.admin_token,
        config.progress_every,
        closing.clone(),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RegistryServer<RegistryApi<S>>>().await;
    let reflection = daemon::reflection_services(&[
        market_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ])?;

    // Small messages both ways: do not wait to fill a segment.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = config.tls {
        server = server.tls_config(tls)?;
    }
    let router = server
        // Explicit limits: a registry's requests are small, and one
        // connection cannot hold more than this many calls at once.
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        // A unary call's answer, or a watch's first response, within this;
        // a watch stream then runs for as long as its client wants.
        .timeout(CALL_TIMEOUT)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .add_routes(reflection)
        .add_service(health_service)
        .add_service(RegistryServer::new(api).max_decoding_message_size(MAX_MESSAGE));
    daemon::serve_with_drain(
        |stop| {
            router.serve_with_incoming_shutdown(incoming, async move {
                stop.await;
                health
                    .set_not_serving::<RegistryServer<RegistryApi<S>>>()
                    .await;
                closing.cancel();
            })
        },
        shutdown,
        DRAIN_TIMEOUT,
    )
    .await?;
    Ok(())
}
