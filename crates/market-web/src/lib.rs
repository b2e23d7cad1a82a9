//! `market-web`: the Datawire Market shop, in Rust.
//!
//! A map of the crate:
//!
//! - [`catalog`]: the four items and exact money;
//! - [`cart`]: a visitor's cart and the shop's messages;
//! - `session`: signed session cookies over an in-memory store;
//! - [`ratings`]: the page's ratings, asked in parallel through the resilient
//!   `RatingsClient`, with the last good answers cached (moka);
//! - [`panels`]: the parts of the page other services make (the "You may
//!   also like" panel of `recommendations`), one call each per page beside
//!   the ratings, left out when it fails;
//! - `metrics`: `/metrics`, and [`history`], the last five minutes that
//!   `/status` draws (as SVG, by `svg`) and `/api/status` gives;
//! - [`app`]: the routes, as a `Router` that tests drive without a socket;
//! - [`cli`]: the `market-web` command line, shared with the `market` demo.

pub mod app;
pub mod cart;
pub mod catalog;
pub mod cli;
mod error;
pub mod history;
pub mod metrics;
pub mod panels;
pub mod ratings;
mod session;
mod svg;
#[cfg(test)]
mod tests;

use std::{future::Future, sync::Arc, time::Duration};

pub use crate::{
    app::{AppState, app},
    error::AppError,
};

/// The longest a request may take before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests served at once; more are answered 503 at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;

/// The longest a client may take to send a request's head; then the
/// connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers), in bytes; a larger
/// one is answered 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The most headers a request may have; more are answered 431.
pub const MAX_HEADERS: usize = 64;

/// How long, at shutdown, requests in flight may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the app without panels: the monolith when `client` is `None`.
pub fn state(client: Option<ratings_client::RatingsClient>, fresh_for: Duration) -> AppState {
    state_with(client, Vec::new(), fresh_for)
}

/// Builds the app with `panels` beside the ratings.
pub fn state_with(
    client: Option<ratings_client::RatingsClient>,
    panels: Vec<Arc<dyn panels::Panel>>,
    fresh_for: Duration,
) -> AppState {
    let mut services: Vec<(&'static str, metrics::Endpoints)> = Vec::new();
    if let Some(client) = client.clone() {
        services.push((
            ratings_client::SERVICE,
            Box::new(move || client.endpoints()),
        ));
    }
    for panel in &panels {
        let panel = Arc::clone(panel);
        services.push((
            panel.service(),
            Box::new(move || panel.client().endpoints()),
        ));
    }
    let metrics = metrics::Metrics::new(services);
    let ratings = ratings::Ratings::new(client, fresh_for, metrics.clone());
    AppState::new(
        ratings,
        panels,
        metrics,
        axum_extra::extract::cookie::Key::generate(),
    )
}

/// Serves `state` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish (for at most 10 s).
///
/// Every limit is explicit: the request head ([`MAX_HEADER_BYTES`],
/// [`MAX_HEADERS`]: 431 beyond), the time to send it
/// ([`HEADER_READ_TIMEOUT`]: the connection is closed), a request's time
/// ([`REQUEST_TIMEOUT`]: 408), requests at once ([`MAX_CONCURRENT_REQUESTS`],
/// for the whole server: 503 beyond), and form bodies (in [`app`]: 413).
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let service = limited(app(state));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: keep serving the others.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    Ok(())
}

/// The span of one request: a new trace, or the continuation of the one
/// its `traceparent` carries (an upstream proxy's). At debug level, so that
/// only a shop that exports traces (or logs at debug) pays for it.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "market_web::trace",
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        http.method = request.method().as_str(),
        http.path = request.uri().path(),
    );
    if !span.is_disabled() {
        span.record(
            "otel.name",
            format!("{} {}", request.method(), request.uri().path()),
        );
    }
    daemon::telemetry::server_span(span, request.headers())
}

/// The app behind the server-wide limits, traced.
fn limited<B>(
    app: axum::Router,
) -> impl tower::Service<
    axum::http::Request<B>,
    Response = axum::response::Response<
        impl axum::body::HttpBody<Data = axum::body::Bytes, Error = impl Into<tower::BoxError>>
        + Send
        + 'static,
    >,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    use axum::{error_handling::HandleErrorLayer, http::StatusCode};
    tower::ServiceBuilder::new()
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG),
                ),
        )
        // Inside the trace layer: a page whose span was not made (traces
        // paused) passes its caller's trace context on to the lookups.
        .layer(daemon::telemetry::PassContextOnLayer)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1")],
                "The shop is serving too many requests at once; try again in a moment.\n",
            )
        }))
        .load_shed()
        .concurrency_limit(MAX_CONCURRENT_REQUESTS)
        .service(app)
}
