//! W3C trace context on the way out: every attempt carries the context of
//! its own span (`traceparent`, and `tracestate` when the trace has one), so
//! that the instance's server span is the child of the attempt that reached
//! it. In a trace that is sampled out the stack makes no span of its own
//! (but for a call made outside any traced span: it is the trace's root,
//! where the sampler decides), and the context of the span the call was made
//! in goes out instead, marked not sampled.
//!
//! The stack's spans are at `debug` level under the [`TARGET`] target: a
//! process that exports traces enables them (its OpenTelemetry layer), one
//! that does not pays one disabled-callsite check per span. The context is
//! that of the current span when OpenTelemetry traces it (its `tracing`
//! subscriber has the `tracing-opentelemetry` layer); outside any traced
//! span, that of the current OpenTelemetry context, if any (a caller's that
//! a server passes on while it does not trace, or one that code of your own
//! made current); otherwise nothing is written.
//!
//! The headers are written here, in the W3C format, not by OpenTelemetry's
//! global text-map propagator: that one takes a process-wide lock and
//! formats each header through `format!`, a cost paid on every attempt.
//! Another format (B3, say) can be written by a layer of your own around
//! each instance ([`crate::Builder::instance_layer`]).
//!
//! [`TraceContextLayer`] does the same for any HTTP service, a tonic
//! `Channel` for instance, so that a client of your own carries the context
//! of the span it is called in.

use std::task::{Context, Poll};

use http::HeaderValue;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceState};
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of the stack's spans: `call` for each call, `attempt` for each
/// attempt (retries and hedges are siblings under their call).
pub const TARGET: &str = "resilience::trace";

/// The name of the stack's log lines that a trace leaves out, because their
/// span already says it: `ratings using instance 2: ADDRESS`, logged once
/// per attempt, names the instance and address that are the attempt span's
/// `instance` and `address`. A subscriber that adds logged events to its
/// spans (the daemons' does) skips events of this name: as a span event,
/// this line cost a traced call about 6 µs of CPU (`bench caller`, 64
/// callers), more than a tight loop takes to make both of its spans.
pub const LOG_ONLY: &str = "resilience::log_only";

/// The W3C header that carries a trace's and its parent span's ids.
const TRACEPARENT: &str = "traceparent";

/// The W3C header that carries vendors' state along a trace.
const TRACESTATE: &str = "tracestate";

/// Applies `f` to the current trace context: the current span's, when
/// OpenTelemetry traces it; outside any traced span, the current
/// OpenTelemetry context's (a caller's that a server passes on while it does
/// not trace, or one that code of your own made current). `None` when there
/// is none either.
pub fn with_current_context<T>(f: impl Fn(&SpanContext) -> T) -> Option<T> {
    let valid = |context: &opentelemetry::Context| {
        let span = context.span();
        let ids = span.span_context();
        ids.is_valid().then(|| f(ids))
    };
    let span = tracing::Span::current();
    if !span.is_none()
        && let Some(found) = valid(&span.context())
    {
        return Some(found);
    }
    opentelemetry::Context::map_current(valid)
}

/// The current trace context's `traceparent`, and the trace's `tracestate`
/// when it has any ([`with_current_context`]).
fn current_trace_context() -> Option<([u8; TRACEPARENT_LEN], Option<String>)> {
    with_current_context(|ids| (traceparent(ids), tracestate(ids.trace_state())))
}

/// Whether the current trace context ([`with_current_context`]) is that of
/// a trace the sampler did not sample, whose spans would be made only to be
/// dropped. The stack makes no span of its own in such a trace: its calls
/// still carry the trace's context (marked not sampled, so the instances
/// leave it out too), and its log lines the trace's id, but the spans a
/// sampler turned away cost nothing. False outside any trace, and at once
/// where the stack's spans (`debug`) are off.
pub(crate) fn sampled_out() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
        && with_current_context(|ids| !ids.is_sampled()).unwrap_or(false)
}

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// `00-<trace id>-<span id>-<flags>`, the version-00 `traceparent` of `ids`
/// (of its flags, only `sampled` is defined, and written).
fn traceparent(ids: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn hex(out: &mut [u8], bytes: &[u8]) {
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
    }
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(&mut value[3..35], &ids.trace_id().to_bytes());
    hex(&mut value[36..52], &ids.span_id().to_bytes());
    hex(&mut value[53..55], &[ids.trace_flags().to_u8() & 1]);
    value
}

/// The `tracestate` of a trace, if it has any state.
fn tracestate(state: &TraceState) -> Option<String> {
    if *state == TraceState::NONE {
        return None;
    }
    Some(state.header()).filter(|header| !header.is_empty())
}

/// Hands each header of the current trace context to `set`, as its name
/// and value: nothing when there is none ([`with_current_context`]).
fn write_trace_context(mut set: impl FnMut(&'static str, &[u8])) {
    let Some((parent, state)) = current_trace_context() else {
        return;
    };
    set(TRACEPARENT, &parent);
    if let Some(state) = state {
        set(TRACESTATE, state.as_bytes());
    }
}

/// Writes the current trace context into gRPC metadata; nothing when there
/// is none.
pub(crate) fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    // Hex digits and dashes; the state's keys and values were checked
    // (printable ASCII) when it was read.
    write_trace_context(|name, value| {
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(value) {
            metadata.insert(name, value);
        }
    });
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
        let headers = request.headers_mut();
        write_trace_context(|name, value| {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name, value);
            }
        });
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

#[cfg(test)]
mod tests {
    use opentelemetry::{
        propagation::TextMapPropagator as _,
        trace::{SpanId, TraceFlags, TraceId, TracerProvider as _},
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tower::ServiceExt as _;
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn ids(flags: TraceFlags, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("a trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("a span id"),
            flags,
            true,
            state,
        )
    }

    /// What OpenTelemetry's own propagator writes for `ids`.
    fn reference(ids: SpanContext) -> std::collections::HashMap<String, String> {
        let mut headers = std::collections::HashMap::new();
        let context = opentelemetry::Context::new().with_remote_span_context(ids);
        TraceContextPropagator::new().inject_context(&context, &mut headers);
        headers
    }

    #[test]
    fn the_traceparent_is_the_one_opentelemetry_writes() {
        for flags in [
            TraceFlags::SAMPLED,
            TraceFlags::NOT_SAMPLED,
            TraceFlags::new(0xff),
        ] {
            let context = ids(flags, TraceState::NONE);
            let ours = traceparent(&context);
            assert_eq!(
                std::str::from_utf8(&ours).expect("ASCII"),
                reference(context)[TRACEPARENT],
                "flags {flags:?}"
            );
        }
        assert_eq!(
            &traceparent(&ids(TraceFlags::SAMPLED, TraceState::NONE)),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn a_tracestate_is_written_only_when_the_trace_has_one() {
        assert_eq!(tracestate(&TraceState::NONE), None);
        let state: TraceState = "proxy=7f,vendor=a1".parse().expect("a tracestate");
        let written = tracestate(&state);
        assert_eq!(
            written.as_deref(),
            Some(reference(ids(TraceFlags::SAMPLED, state))[TRACESTATE].as_str())
        );
        assert_eq!(written.as_deref(), Some("proxy=7f,vendor=a1"));
    }

    /// The headers a request sent through the layer carries.
    async fn sent_headers() -> http::HeaderMap {
        TraceContextLayer
            .layer(tower::service_fn(|request: http::Request<()>| async move {
                Ok::<_, std::convert::Infallible>(request.headers().clone())
            }))
            .oneshot(http::Request::new(()))
            .await
            .expect("infallible")
    }

    /// The layer writes the context of the span a request is sent in: the
    /// trace of the span's parent (here a remote one, with a tracestate),
    /// with the span's own id.
    #[tokio::test]
    async fn the_layer_writes_the_context_of_the_span_it_is_called_in() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);

        let state: TraceState = "proxy=7f".parse().expect("a tracestate");
        let remote =
            opentelemetry::Context::new().with_remote_span_context(ids(TraceFlags::SAMPLED, state));
        let span = tracing::info_span!("call");
        span.set_parent(remote).expect("a parent");
        let own_id = span.context().span().span_context().span_id();

        let headers = sent_headers().instrument(span).await;
        assert_eq!(
            headers[TRACEPARENT],
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{own_id}-01").as_str()
        );
        assert_eq!(headers[TRACESTATE], "proxy=7f");

        // Outside any span, nothing is written.
        let headers = sent_headers().await;
        assert!(headers.is_empty(), "{headers:?}");

        // Outside any traced span, the current OpenTelemetry context's: a
        // caller's, passed on unchanged.
        let upstream = ids(TraceFlags::SAMPLED, TraceState::NONE);
        let _current = opentelemetry::Context::new()
            .with_remote_span_context(upstream)
            .attach();
        let headers = sent_headers().await;
        assert_eq!(
            headers[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
