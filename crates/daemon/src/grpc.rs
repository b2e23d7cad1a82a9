//! Serving a tonic service the way every daemon here does: gRPC health and
//! reflection beside it, every limit explicit, small messages sent at once,
//! and at shutdown a bounded drain during which health answers NOT_SERVING.

use std::{convert::Infallible, future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    body::Body,
    codegen::{Service, http},
    server::NamedService,
    transport::{ServerTlsConfig, server::TcpIncoming},
};

use crate::{ReflectionError, reflection_services, serve_with_drain};

/// The limits a daemon serves with; every one is explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a call may take to answer (a stream, its first response)
    /// before it is answered DEADLINE_EXCEEDED.
    pub call_timeout: Duration,
    /// Calls in flight on one connection before further ones wait (a
    /// streaming call holds its slot until its response headers are sent,
    /// not for the whole stream).
    pub calls_per_connection: usize,
    /// The largest request header block, in bytes.
    pub max_header_bytes: u32,
    /// How long, at shutdown, calls in flight may take to finish.
    pub drain: Duration,
}

impl Limits {
    /// The limits of a service that answers small requests quickly: no call
    /// takes longer than 30 s to answer, even with `--delay`; one connection
    /// holds at most 1,024 calls at once; a request's headers are at most
    /// 16 KiB; calls in flight at shutdown get 5 s.
    pub const SERVICE: Self = Self {
        call_timeout: Duration::from_secs(30),
        calls_per_connection: 1024,
        max_header_bytes: 16 * 1024,
        drain: Duration::from_secs(5),
    };
}

/// Why a daemon's gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not read the contract's descriptors.
    #[error(transparent)]
    Reflection(#[from] ReflectionError),
    /// The transport failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What a daemon serves besides its service, and how.
#[derive(Debug, Clone)]
pub struct Serving<'a> {
    /// TLS for the listener; plaintext when `None`.
    pub tls: Option<ServerTlsConfig>,
    /// The limits of every connection and call.
    pub limits: Limits,
    /// The encoded `FileDescriptorSet`s reflection describes (gRPC health's
    /// own is added).
    pub descriptor_sets: &'a [&'a [u8]],
}

/// Serves `service` on `listener`, with gRPC health (SERVING) and reflection
/// (v1 and v1alpha), until `shutdown` resolves. Then health answers
/// NOT_SERVING, `on_stop` runs (to end the service's long streams, say), and
/// the calls in flight get `limits.drain` to finish.
///
/// # Errors
///
/// When the descriptors or the TLS settings are unusable, or the transport
/// fails.
pub async fn serve_grpc<S>(
    service: S,
    listener: TcpListener,
    serving: Serving<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_stop: impl FnOnce() + Send + 'static,
) -> Result<(), ServeError>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<S>().await;
    let mut descriptor_sets = serving.descriptor_sets.to_vec();
    descriptor_sets.push(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let reflection = reflection_services(&descriptor_sets)?;

    // Small messages both ways: do not wait to fill a segment.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = serving.tls {
        server = server.tls_config(tls)?;
    }
    let limits = serving.limits;
    let router = server
        .timeout(limits.call_timeout)
        .concurrency_limit_per_connection(limits.calls_per_connection)
        .http2_max_header_list_size(limits.max_header_bytes)
        .layer(crate::telemetry::ServerSpanLayer)
        .add_routes(reflection)
        .add_service(health_service)
        .add_service(service);
    serve_with_drain(
        |stop| {
            router.serve_with_incoming_shutdown(incoming, async move {
                stop.await;
                health.set_not_serving::<S>().await;
                on_stop();
            })
        },
        shutdown,
        limits.drain,
    )
    .await?;
    Ok(())
}
