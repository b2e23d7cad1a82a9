//! Puts the registry on a listener, with gRPC health and server reflection
//! (the daemons' common way to serve, `daemon::serve_grpc`).

use std::{future::Future, sync::Arc, time::Duration};

use market_proto::registry::v1::registry_server::RegistryServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;

use crate::{api::RegistryApi, store::Store};

/// The largest request accepted, in bytes: a registration with the most
/// metadata is about 5 KiB. A larger one is refused with OUT_OF_RANGE.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// How the registry serves: a unary call's answer, or a watch's first
/// response, within 30 s (a watch stream then runs for as long as its client
/// wants); one connection holds at most 256 calls at once; a request's
/// headers (the token and gRPC's own, a few hundred bytes) are at most
/// 16 KiB; calls in flight at shutdown get 5 s.
const LIMITS: daemon::Limits = daemon::Limits {
    call_timeout: Duration::from_secs(30),
    calls_per_connection: 256,
    max_header_bytes: 16 * 1024,
    drain: Duration::from_secs(5),
};

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
pub use daemon::ServeError;

/// Serves the registry over `store` on `listener` until `shutdown` resolves,
/// then ends open watch streams (their clients reconnect elsewhere) and lets
/// calls in flight finish.
pub async fn serve<S: Store>(
    store: Arc<S>,
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_all(store, config, listener, None, shutdown).await
}

/// Serves the registry as [`serve`] does, and beside it the xDS server for
/// proxyless gRPC clients on `xds.listener`, with the same TLS and the same
/// tokens; both stop when `shutdown` resolves.
#[cfg(feature = "xds")]
pub async fn serve_with_xds<S: Store>(
    store: Arc<S>,
    config: ServeConfig,
    listener: TcpListener,
    xds: crate::xds::XdsServe,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_all(store, config, listener, Some(xds), shutdown).await
}

#[cfg(feature = "xds")]
type XdsServe = crate::xds::XdsServe;
/// Without the `xds` feature there is no xDS server to start.
#[cfg(not(feature = "xds"))]
type XdsServe = std::convert::Infallible;

async fn serve_all<S: Store>(
    store: Arc<S>,
    config: ServeConfig,
    listener: TcpListener,
    xds: Option<XdsServe>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let closing = CancellationToken::new();
    let api = Arc::new(RegistryApi::new(
        store,
        &config.admin_token,
        config.progress_every,
        closing.clone(),
    ));

    // One shutdown stops both listeners.
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    let _abort_signal = AbortOnDrop(signal);

    let serving = daemon::Serving {
        tls: config.tls.clone(),
        limits: LIMITS,
        descriptor_sets: &[market_proto::FILE_DESCRIPTOR_SET],
    };
    // A shutdown ends open watch streams: their clients reconnect elsewhere.
    let registry = daemon::serve_grpc(
        RegistryServer::from_arc(api.clone()).max_decoding_message_size(MAX_MESSAGE),
        listener,
        serving,
        stop.clone().cancelled_owned(),
        move || closing.cancel(),
    );
    let xds = async move {
        match xds {
            None => Ok(()),
            #[cfg(feature = "xds")]
            Some(xds) => {
                crate::xds::serve(
                    api,
                    config.progress_every,
                    config.tls,
                    xds,
                    stop.cancelled_owned(),
                )
                .await
            }
            #[cfg(not(feature = "xds"))]
            Some(never) => match never {},
        }
    };
    tokio::try_join!(registry, xds)?;
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
