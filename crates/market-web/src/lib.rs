//! `market-web`: the Datawire Market shop, in Rust.
//!
//! A map of the crate:
//!
//! - [`catalog`]: the four items and exact money;
//! - [`cart`]: a visitor's cart and the shop's messages;
//! - `session`: signed session cookies over an in-memory store;
//! - [`ratings`]: the page's ratings, asked in parallel through the resilient
//!   `RatingsClient`, with the last good answers cached (moka);
//! - `metrics`: `/metrics`;
//! - [`app`]: the routes, as a `Router` that tests drive without a socket;
//! - [`cli`]: the `market-web` command line, shared with the `market` demo.

pub mod app;
pub mod cart;
pub mod catalog;
pub mod cli;
mod error;
pub mod metrics;
pub mod ratings;
mod session;

use std::{future::Future, time::Duration};

pub use crate::{
    app::{AppState, app},
    error::AppError,
};

/// The longest a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests served at once; more wait.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;

/// Builds the app: the monolith when `client` is `None`.
pub fn state(client: Option<ratings_client::RatingsClient>, fresh_for: Duration) -> AppState {
    let metrics = metrics::Metrics::new(client.clone());
    let ratings = ratings::Ratings::new(client, fresh_for, metrics.clone());
    AppState::new(
        ratings,
        metrics,
        axum_extra::extract::cookie::Key::generate(),
    )
}

/// Serves `state` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // A request that takes longer than this gets 408; more than this many
    // requests at once wait for a slot.
    let app = app(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::DEBUG),
                )
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG),
                ),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
