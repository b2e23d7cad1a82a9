//! The stack's spans and the sampler: a trace that is sampled out costs the
//! stack no span. A test binary of its own: it sets a `tracing` subscriber,
//! and `tracing` caches per callsite whether any subscriber wants it, which
//! tests on other threads of one binary would decide too.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use registry_client::{Instance, WatchUpdate};
use resilience::{Client, Policy};
use tower::ServiceExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Counts the stack's spans as they are made.
#[derive(Clone, Default)]
struct StackSpans(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StackSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().target() == resilience::trace::TARGET {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// In a trace that the sampler turned away, the stack makes no span (each
/// would only be dropped), but the trace's context still goes out with the
/// call, marked not sampled, so that the instance leaves it out too. In a
/// sampled trace it makes the call's span and the attempt's, and the
/// instance's parent is the attempt.
#[tokio::test]
async fn a_trace_sampled_out_costs_the_stack_no_span_but_its_context_still_goes_out() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let made = StackSpans::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(made.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let updates = futures::stream::iter([
        WatchUpdate::Upsert(Instance {
            id: "a".to_owned(),
            address: "http://127.0.0.1:1".to_owned(),
            metadata: Default::default(),
            ttl: Duration::from_secs(10),
        }),
        WatchUpdate::Synced(1),
    ])
    .chain(futures::stream::pending());
    // The `traceparent` of each call, as the instance would get it.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let seen = sent.clone();
    let client = Client::<(), ()>::builder("ratings", Policy::default())
        .build(updates, move |_, request: tonic::Request<()>| {
            let traceparent = request
                .metadata()
                .get("traceparent")
                .map(|value| value.to_str().expect("ASCII").to_owned());
            seen.lock().unwrap().push(traceparent);
            futures::future::ready(Ok(tonic::Response::new(())))
        })
        .expect("a valid policy");
    client.synced().await;

    // One call in a page's span, the child of an upstream's that carries
    // the sampler's decision: the page's span id and the call's traceparent.
    let call_in_page = |flags: TraceFlags| {
        let upstream = SpanContext::new(
            TraceId::from_hex(TRACE).expect("a trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("a span id"),
            flags,
            true,
            TraceState::NONE,
        );
        let page = tracing::info_span!("page");
        page.set_parent(opentelemetry::Context::new().with_remote_span_context(upstream))
            .expect("a parent");
        let page_id = page.context().span().span_context().span_id();
        let call = client.clone().oneshot(()).instrument(page);
        let sent = sent.clone();
        async move {
            call.await.expect("answered");
            let traceparent = sent.lock().unwrap().pop().flatten();
            (page_id, traceparent.expect("a traceparent went out"))
        }
    };

    let (page_id, traceparent) = call_in_page(TraceFlags::NOT_SAMPLED).await;
    assert_eq!(made.0.load(Ordering::SeqCst), 0, "no span of the stack's");
    assert_eq!(traceparent, format!("00-{TRACE}-{page_id}-00"));

    let (page_id, traceparent) = call_in_page(TraceFlags::SAMPLED).await;
    assert_eq!(
        made.0.load(Ordering::SeqCst),
        2,
        "the call's and the attempt's"
    );
    assert!(
        traceparent.starts_with(&format!("00-{TRACE}-")),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-01"), "{traceparent}");
    assert!(
        !traceparent.contains(&page_id.to_string()),
        "the instance's parent is the attempt: {traceparent}"
    );
}
