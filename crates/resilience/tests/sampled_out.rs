//! The stack's spans and the sampler: a trace that is sampled out costs the
//! stack no span, and its context still goes out with every attempt. A test
//! binary of its own: its tests set `tracing` subscribers, and `tracing`
//! caches per callsite whether any subscriber wants it, which tests without
//! one, on other threads of the same binary, would decide too.

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
use tower::{Service as _, ServiceExt as _};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// The upstream's trace, which every page continues.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Counts the stack's spans as they are made.
#[derive(Clone, Default)]
struct StackSpans(Arc<AtomicUsize>);

impl StackSpans {
    fn made(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

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

/// Traces on, as the daemons set them up (the SDK's default sampler
/// follows the parent's decision; no context made current on enter), for
/// this thread: the stack's spans, counted.
fn traced() -> (StackSpans, tracing::subscriber::DefaultGuard) {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let made = StackSpans::default();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_context_activation(false),
        )
        .with(made.clone());
    (made, tracing::subscriber::set_default(subscriber))
}

/// A page's span, the child of an upstream's that carries the sampler's
/// decision in `flags`; and its span id.
fn page(flags: TraceFlags) -> (tracing::Span, SpanId) {
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
    let id = page.context().span().span_context().span_id();
    (page, id)
}

/// Synced updates listing `instances`.
fn listing(instances: &[&str]) -> impl futures::Stream<Item = WatchUpdate> + Send + 'static {
    let upserts: Vec<WatchUpdate> = instances
        .iter()
        .enumerate()
        .map(|(port, id)| {
            WatchUpdate::Upsert(Instance {
                id: (*id).to_owned(),
                address: format!("http://127.0.0.1:{}", port + 1),
                metadata: Default::default(),
                ttl: Duration::from_secs(10),
            })
        })
        .chain([WatchUpdate::Synced(1)])
        .collect();
    futures::stream::iter(upserts).chain(futures::stream::pending())
}

/// The `traceparent` each attempt carried, as the instances got them.
type Sent = Arc<Mutex<Vec<Option<String>>>>;

fn traceparent_of(request: &tonic::Request<()>) -> Option<String> {
    request
        .metadata()
        .get("traceparent")
        .map(|value| value.to_str().expect("ASCII").to_owned())
}

/// In a trace that the sampler turned away, the stack makes no span (each
/// would only be dropped), but the trace's context still goes out with the
/// call, marked not sampled, so that the instance leaves it out too. In a
/// sampled trace it makes the call's span and the attempt's, and the
/// instance's parent is the attempt.
#[tokio::test]
async fn a_trace_sampled_out_costs_the_stack_no_span_but_its_context_still_goes_out() {
    let (made, _traced) = traced();
    let sent = Sent::default();
    let seen = sent.clone();
    let client = Client::<(), ()>::builder("ratings", Policy::default())
        .build(listing(&["a"]), move |_, request: tonic::Request<()>| {
            seen.lock().unwrap().push(traceparent_of(&request));
            futures::future::ready(Ok(tonic::Response::new(())))
        })
        .expect("a valid policy");
    client.synced().await;

    let call_in_page = |flags| {
        let (page, page_id) = page(flags);
        let call = client.clone().oneshot(()).instrument(page);
        let sent = sent.clone();
        async move {
            call.await.expect("answered");
            let traceparent = sent.lock().unwrap().pop().flatten();
            (page_id, traceparent.expect("a traceparent went out"))
        }
    };

    let (page_id, traceparent) = call_in_page(TraceFlags::NOT_SAMPLED).await;
    assert_eq!(made.made(), 0, "no span of the stack's");
    assert_eq!(traceparent, format!("00-{TRACE}-{page_id}-00"));

    let (page_id, traceparent) = call_in_page(TraceFlags::SAMPLED).await;
    assert_eq!(made.made(), 2, "the call's and the attempt's");
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

/// A call in a trace that is sampled out keeps the trace for the attempts
/// it sends later, from polls outside the span it was made in (here a task
/// of its own): its retry carries the page's context too, and makes no span
/// either.
#[tokio::test]
async fn a_retry_sent_from_another_task_stays_in_the_sampled_out_trace() {
    let (made, _traced) = traced();
    let sent = Sent::default();
    let seen = sent.clone();
    let attempts = Arc::new(AtomicUsize::new(0));
    let client = Client::<(), ()>::builder("ratings", Policy::default())
        .build(
            listing(&["a", "b"]),
            move |_, request: tonic::Request<()>| {
                seen.lock().unwrap().push(traceparent_of(&request));
                let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        // Fails only once the call is polled from its task.
                        tokio::task::yield_now().await;
                        Err(tonic::Status::unavailable("down"))
                    } else {
                        Ok(tonic::Response::new(()))
                    }
                }
            },
        )
        .expect("a valid policy");
    client.synced().await;

    let (page, page_id) = page(TraceFlags::NOT_SAMPLED);
    let mut client = client;
    let ready = client.ready().await.expect("ready");
    let call = page.in_scope(|| ready.call(()));
    tokio::spawn(call)
        .await
        .expect("the task ends")
        .expect("the retry answered");

    let sent = sent.lock().unwrap().clone();
    let expected = Some(format!("00-{TRACE}-{page_id}-00"));
    assert_eq!(
        sent,
        [expected.clone(), expected],
        "the attempt and its retry"
    );
    assert_eq!(made.made(), 0, "no span of the stack's");
}
