//! Discovery: the registry's watch of a service, applied to its [`Pool`].
//!
//! Each instance that joins gets a lazily connected tonic `Channel` and its
//! own stack, built with tower's `ServiceBuilder` around the breaker its
//! address keeps in the pool:
//!
//! ```text
//! CircuitBreaker ▶ PeakEwma ▶ (the user's layer) ▶ Timeout ▶ gRPC call
//! ```
//!
//! Changes reach the pool as soon as the registry reports them, whether or
//! not calls are being made.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt as _};
use registry_client::{Instance, WatchUpdate};
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig};
use tower::{
    BoxError, Layer as _, ServiceBuilder, ServiceExt as _,
    load::{CompleteOnResponse, PeakEwma},
    timeout::{Timeout, TimeoutLayer},
    util::{BoxLayer, BoxService},
};

use crate::{
    Attempt, CircuitBreakerLayer, EndpointLabel, Policy, Pool,
    endpoint::{GrpcCall, Method},
};

/// The initial latency estimate of a new instance, before it has answered.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How fast peak-EWMA forgets a slow answer.
const EWMA_DECAY: Duration = Duration::from_secs(5);

/// The innermost part of an instance's stack, which a user's layer for each
/// instance wraps: the attempt timeout over the gRPC call.
pub type InstanceCall<Req, Resp> = Timeout<GrpcCall<Req, Resp>>;

/// A user's layer for each instance, boxed.
pub(crate) type InstanceLayer<Req, Resp> =
    BoxLayer<InstanceCall<Req, Resp>, Attempt<Req>, Resp, BoxError>;

/// What the discovery task needs.
pub(crate) struct Discovery<Req, Resp> {
    pub(crate) pool: Pool<Req, Resp>,
    pub(crate) policy: Policy,
    pub(crate) tls: Option<ClientTlsConfig>,
    pub(crate) method: Method<Req, Resp>,
    pub(crate) instance_layer: Option<InstanceLayer<Req, Resp>>,
    pub(crate) synced: watch::Sender<bool>,
}

/// Applies the registry's updates to the pool, until they end.
pub(crate) async fn follow<Req, Resp, U>(updates: U, discovery: Discovery<Req, Resp>)
where
    U: Stream<Item = WatchUpdate> + Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let mut updates = std::pin::pin!(updates);
    while let Some(update) = updates.next().await {
        match update {
            WatchUpdate::Upsert(instance) => discovery.upsert(&instance),
            WatchUpdate::Remove(instance) => discovery.remove(&instance),
            WatchUpdate::Synced(_) => {
                discovery.synced.send_replace(true);
            }
        }
    }
}

impl<Req, Resp> Discovery<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn upsert(&self, instance: &Instance) {
        if let Some(address) = self.pool.address_of(&instance.id) {
            if *address == *instance.address {
                // Same instance, same place: keep its connection.
                return;
            }
            // It moved: its old address keeps its breaker.
            self.pool.leave(&instance.id);
        }
        let channel = match self.channel(&instance.address) {
            Ok(channel) => channel,
            Err(why) => {
                tracing::warn!(service = %self.pool.service(), instance = %instance.id, address = %instance.address, "ignoring instance {}: {why}", instance.id);
                return;
            }
        };
        let label = Arc::new(EndpointLabel {
            service: self.pool.service().clone(),
            instance: instance.id.as_str().into(),
            address: instance.address.as_str().into(),
        });
        let timeout = self.policy.timeout;
        let call = ServiceBuilder::new()
            .layer(TimeoutLayer::new(timeout))
            .service(GrpcCall::new(channel, self.method.clone(), timeout));
        let inner = match &self.instance_layer {
            Some(layer) => layer.layer(call),
            None => BoxService::new(call),
        };
        self.pool.join(label, |breaker| {
            ServiceBuilder::new()
                .layer(CircuitBreakerLayer::new(breaker))
                .layer_fn(|service| {
                    PeakEwma::new(
                        service,
                        DEFAULT_RTT,
                        EWMA_DECAY.as_nanos() as f64,
                        CompleteOnResponse::default(),
                    )
                })
                .service(inner)
        });
        tracing::info!(service = %self.pool.service(), instance = %instance.id, address = %instance.address, "instance {} joined", instance.id);
    }

    fn remove(&self, instance: &Instance) {
        if self.pool.leave(&instance.id).is_some() {
            tracing::info!(service = %self.pool.service(), instance = %instance.id, address = %instance.address, "instance {} left", instance.id);
        }
    }

    /// A lazily connected channel to an instance's address, over TLS when
    /// the client has TLS settings, or why there can be none.
    fn channel(&self, address: &str) -> Result<Channel, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
            .map_err(|error| format!("its address is unusable: {error}"))?
            .connect_timeout(self.policy.timeout)
            .tcp_nodelay(true);
        let secure = endpoint.uri().scheme_str() == Some("https");
        let endpoint = match (&self.tls, secure) {
            // The handshake is bounded like the connection: an attempt's
            // timeout.
            (Some(tls), true) => endpoint
                .tls_config(tls.clone().timeout(self.policy.timeout))
                .map_err(|error| format!("TLS does not apply to its address: {error}"))?,
            (Some(_), false) => {
                return Err("its address is plaintext and this client calls over TLS only".into());
            }
            (None, true) => {
                return Err("its address needs TLS and this client has no TLS settings".into());
            }
            (None, false) => endpoint,
        };
        Ok(endpoint.connect_lazy())
    }
}

/// Boxes a user's layer for each instance, with its errors made `BoxError`.
pub(crate) fn instance_layer<L, Req, Resp>(layer: L) -> InstanceLayer<Req, Resp>
where
    L: tower::Layer<InstanceCall<Req, Resp>> + Send + Sync + 'static,
    L::Service: tower::Service<Attempt<Req>, Response = Resp> + Send + 'static,
    <L::Service as tower::Service<Attempt<Req>>>::Error: Into<BoxError>,
    <L::Service as tower::Service<Attempt<Req>>>::Future: Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    BoxLayer::new(tower::layer::layer_fn(move |call| {
        layer.layer(call).map_err(Into::<BoxError>::into)
    }))
}
