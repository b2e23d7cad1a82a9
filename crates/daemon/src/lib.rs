//! What every binary of the market does the same way: log to stderr
//! (filtered by `RUST_LOG`, as text with colour only on a terminal, or as
//! JSON lines with `--log-format json`), stop on SIGINT
//! (Ctrl-C) or SIGTERM, take their gRPC TLS settings from one folder, and
//! serve their gRPC service with health, reflection in both protocol
//! versions, explicit limits and a bounded drain ([`serve_grpc`]), run a
//! service's instances registered ([`run_instances`]) and announce their
//! readiness for machines ([`ready`]). [`supervise`] is the other side: the
//! one supervisor that starts them and waits for that readiness.

mod faults;
mod grpc;
pub mod instances;
pub mod ready;
mod reflection;
pub mod supervise;
pub mod telemetry;
pub mod tls;

pub use faults::Faults;
pub use grpc::{Limits, ServeError, Serving, serve_grpc};
pub use instances::{InstanceArgs, Service, run_instances};
pub use reflection::{ReflectionError, reflection_services};
pub use telemetry::{LogArgs, LogFormat, Telemetry, init_logging};
pub use tls::{Tls, TlsArgs, TlsError};

/// Every environment variable a binary of this workspace reads a setting
/// from: each is the fallback of one of its flags.
///
/// A supervisor that gives its children their settings as flags removes all
/// of these from their environment, so that a variable exported in the shell
/// that started it (`MARKET_TLS_DIR`, say) cannot turn a plaintext child into
/// a TLS one, nor hand it a token it was not meant to have. The market demo,
/// the test helpers and the benchmark suite all do; `tests/environment.rs`
/// checks this list against every binary's `--help`.
pub const SETTINGS_FROM_ENV: [&str; 11] = [
    "LOG_FORMAT",
    "MARKET_LISTEN",
    "MARKET_MTLS",
    "MARKET_TLS_DIR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "REGISTRY_ADDR",
    "REGISTRY_ADMIN_TOKEN",
    "REGISTRY_DATA_DIR",
    "REGISTRY_ETCD_ENDPOINTS",
    "REGISTRY_LISTEN",
    "REGISTRY_TOKEN",
];

/// Resolves on SIGINT or SIGTERM (only SIGINT where SIGTERM cannot be
/// watched, which is logged).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs a server until `shutdown` resolves, then gives it at most `drain` to
/// finish the calls in flight.
///
/// `serve` builds the server with the future it is given as its own
/// shutdown signal: that fires when `shutdown` does, and the server stops
/// accepting and finishes its calls. After `drain` this returns even if
/// connections are still open (a client that stopped reading, or a paused
/// process holding an HTTP/2 connection, which never acknowledges the
/// server's GOAWAY): the daemon then exits, which closes them. (A server's
/// connection tasks are its own; a caller that keeps running after this
/// returns keeps serving them until their peers go.)
pub async fn serve_with_drain<F, E>(
    serve: impl FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> F,
    shutdown: impl std::future::Future<Output = ()>,
    drain: std::time::Duration,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    let stop = tokio_util::sync::CancellationToken::new();
    let server = serve(stop.clone().cancelled_owned());
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {}
    }
    stop.cancel();
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("connections still open {drain:?} after shutdown began; closing them");
            Ok(())
        }
    }
}
