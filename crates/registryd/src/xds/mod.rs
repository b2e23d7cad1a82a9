//! xDS for proxyless gRPC clients (gRFC A27): a second listener serving
//! Envoy's Aggregated Discovery Service, so that a stock gRPC client
//! (grpc-go, grpc-java, or the C-core under Python's `grpcio`) with
//! `GRPC_XDS_BOOTSTRAP` set dials `xds:///SERVICE` and balances over the
//! service's live instances itself.
//!
//! - `resources`: a service's Listener, Cluster and ClusterLoadAssignment,
//!   and the contract policy they carry as far as gRPC's xDS can (timeout,
//!   retries, outlier detection for the breaker, least-request or round
//!   robin);
//! - `cache`: one watch of the registry per service read, its resources
//!   encoded once per change and shared by every stream;
//! - `ads`: the state-of-the-world stream: its token, subscriptions,
//!   versions, nonces, ACKs and NACKs.
//!
//! xDS shows instance addresses, as `Resolve` does, to the same tokens: the
//! client puts its token in its bootstrap's node metadata
//! (`REGISTRY_TOKEN`), and a service it may not read looks absent.

use std::{future::Future, sync::Arc, time::Duration};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;

use crate::{api::RegistryApi, store::Store};

mod ads;
mod cache;
mod resources;
#[cfg(test)]
mod tests;

pub use ads::TOKEN_KEY;
pub use resources::TimeoutsError;

/// The contract policies xDS resources carry, by service: each contract's
/// `client_policy`, with the timeouts `--xds-timeout` overrides (the one
/// part of a policy that can be overridden, hence the name).
#[derive(Debug, Clone)]
pub struct Timeouts(resources::Policies);

impl Timeouts {
    /// The policies the contracts declare (`client_policy`), for the
    /// registry service named after each contract's package:
    /// `market.ratings.v1.Ratings`'s (1 s timeout, one retry, ...) for
    /// `ratings`.
    ///
    /// # Errors
    ///
    /// When the contracts' embedded descriptors do not decode.
    pub fn from_contracts() -> Result<Self, TimeoutsError> {
        resources::Policies::from_contracts().map(Self)
    }

    /// Gives `service` the timeout `timeout` instead of its contract's
    /// (zero: none at all); the rest of its policy stays the contract's.
    pub fn set(&mut self, service: &crate::model::ServiceName, timeout: Duration) {
        self.0.set_timeout(service, timeout);
    }
}

/// The xDS server's listener and settings.
#[derive(Debug)]
pub struct XdsServe {
    /// Where to serve ADS.
    pub listener: TcpListener,
    /// The contract policies the resources carry.
    pub timeouts: Timeouts,
}

/// The largest DiscoveryRequest accepted, in bytes: a node with its
/// metadata and client features, and the names of the resources asked for.
const MAX_MESSAGE: usize = 256 * 1024;

/// How the xDS listener serves: a stream's first response within 30 s (a
/// stream then runs for as long as its client wants); at most 16 streams of
/// one connection being opened at once (tower's concurrency limit holds a
/// call's slot until its response headers go out, so this bounds streams
/// starting, not streams open: a client keeps one stream per server, and the
/// bench holds 1,000 over 63 connections); headers at most 16 KiB; at
/// shutdown the open streams end at once and calls get 5 s.
const LIMITS: daemon::Limits = daemon::Limits {
    call_timeout: Duration::from_secs(30),
    calls_per_connection: 16,
    max_header_bytes: 16 * 1024,
    drain: Duration::from_secs(5),
};

/// Serves ADS for the registry behind `api` on `xds.listener`, until
/// `shutdown` resolves; then open streams end UNAVAILABLE.
pub(crate) async fn serve<S: Store>(
    api: Arc<RegistryApi<S>>,
    progress_every: Duration,
    tls: Option<ServerTlsConfig>,
    xds: XdsServe,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), daemon::ServeError> {
    let closing = CancellationToken::new();
    let cache = cache::Cache::new(api.store().clone(), xds.timeouts.0, progress_every);
    let ads = ads::Ads::new(api, cache, closing.clone());
    let serving = daemon::Serving {
        tls,
        limits: LIMITS,
        descriptor_sets: &[],
    };
    daemon::serve_grpc(
        AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(MAX_MESSAGE),
        xds.listener,
        serving,
        shutdown,
        move || closing.cancel(),
    )
    .await
}
