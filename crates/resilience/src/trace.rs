//! W3C trace context on the way out: every attempt carries the context of
//! its own span (`traceparent`, `tracestate`), so that the instance's server
//! span is the child of the attempt that reached it.
//!
//! The stack's spans are at `debug` level under the [`TARGET`] target: a
//! process that exports traces enables them (its OpenTelemetry layer), one
//! that does not pays one disabled-callsite check per span. The context is
//! written by the global text-map propagator, which does nothing until a
//! process installs one.
//!
//! [`TraceContextLayer`] does the same for any HTTP service, a tonic
//! `Channel` for instance, so that a client of your own carries the context
//! of the span it is called in.

use std::task::{Context, Poll};

use opentelemetry::propagation::Injector;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of the stack's spans: `call` for each call, `attempt` for each
/// attempt (retries and hedges are siblings under their call).
pub const TARGET: &str = "resilience::trace";

/// Writes the current span's context into gRPC metadata; nothing when no
/// span is entered or no propagator is installed.
pub(crate) fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    let span = tracing::Span::current();
    if span.is_none() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Adds the trace context of the span a request is sent in to its headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> TraceContext<S> {
        TraceContext { inner }
    }
}

/// The service of [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceContext<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        let span = tracing::Span::current();
        if !span.is_none() {
            let context = span.context();
            opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.inject_context(&context, &mut HeaderInjector(request.headers_mut()));
            });
        }
        self.inner.call(request)
    }
}

/// How an attempt ended, as its span says: `ok`, `timeout`, `breaker-open`
/// (no instance's breaker let it go), `no-other-instance`, or `error`.
pub(crate) fn outcome(error: Option<&tower::BoxError>) -> &'static str {
    match error {
        None => "ok",
        Some(error) if crate::error::is_timeout(error) => "timeout",
        Some(error) if error.is::<crate::AllServicesDown>() => "breaker-open",
        Some(error) if error.is::<crate::NoOtherInstance>() => "no-other-instance",
        Some(_) => "error",
    }
}

/// Records how the attempt or call of `span` ended.
pub(crate) fn record_outcome(span: &tracing::Span, outcome: &'static str) {
    span.record("outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
    }
}
