//! Logs and traces, the same way in every daemon.
//!
//! - Logs go to stderr, filtered by `RUST_LOG` (default `info`): text for
//!   people, or with `--log-format json` one JSON object per line, with the
//!   time, level, target, the daemon's name, the message and fields, the
//!   spans it happened in and, when traces are on, the trace and span ids.
//! - Traces are off by default. `--otlp-endpoint URL` (or the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`) exports spans over OTLP/gRPC, batched
//!   and bounded: a request never waits for the collector, and a span that
//!   cannot go (the queue is full, or its batch failed) is dropped and
//!   counted ([`spans_dropped`]). `OTEL_SERVICE_NAME` and
//!   `OTEL_RESOURCE_ATTRIBUTES` name the process as usual. With traces on,
//!   W3C trace context (`traceparent`, `tracestate`) is read from every
//!   request served ([`ServerSpanLayer`], [`server_span`]) and written into
//!   every call the client stack makes.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use opentelemetry::{propagation::Extractor, trace::TraceContextExt as _};
use tower::{Layer, Service};
use tracing::{Instrument as _, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    Layer as _,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

mod collector;

/// The target of the servers' spans.
pub const TARGET: &str = "daemon::trace";

/// How a binary writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line per event, its fields after the message.
    #[default]
    Text,
    /// For log pipelines: one JSON object per line, with the time, level,
    /// target, message and fields, the spans it happened in, and the trace
    /// and span ids when traces are on.
    Json,
}

impl LogFormat {
    /// The flag that gives this format to a child.
    pub fn to_arg(self) -> &'static str {
        match self {
            Self::Text => "--log-format=text",
            Self::Json => "--log-format=json",
        }
    }
}

/// `--log-format` and `--otlp-endpoint`, which every daemon takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// How to write log lines (to stderr): text for people, json for log
    /// pipelines (one object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export traces over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 [default: no traces]. OTEL_SERVICE_NAME and
    /// OTEL_RESOURCE_ATTRIBUTES name this process.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl LogArgs {
    /// The flags that give these settings to a child (which reads no
    /// setting from the environment when a supervisor started it).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![self.log_format.to_arg().to_owned()];
        if let Some(endpoint) = &self.otlp_endpoint {
            args.push(format!("--otlp-endpoint={endpoint}"));
        }
        args
    }
}

/// The most spans waiting for export; one more is dropped (and counted).
pub const MAX_QUEUED_SPANS: usize = 2048;

/// How long one export may take before its batch counts as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a batch goes, unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// Whether this process exports traces: set once, by [`init_logging`].
static TRACES_ON: AtomicBool = AtomicBool::new(false);
static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Spans handed to the batch processor and not yet exported or dropped.
static SPANS_PENDING: AtomicU64 = AtomicU64::new(0);
/// Whether the collector takes the exports ([`collector`]).
static COLLECTOR: collector::Breaker = collector::Breaker::new();

/// Spans this process exported so far.
pub fn spans_exported() -> u64 {
    SPANS_EXPORTED.load(Ordering::Relaxed)
}

/// Spans this process dropped so far: the queue was full, their export
/// failed (the collector is down, or did not answer in time), or they were
/// not made at all because the last export had failed ([`collector`]).
pub fn spans_dropped() -> u64 {
    SPANS_DROPPED.load(Ordering::Relaxed)
}

/// What [`init_logging`] set up; flushes the spans still queued (for at most
/// a few seconds) when dropped.
#[derive(Debug)]
#[must_use = "dropping it at once flushes and stops the traces"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(EXPORT_TIMEOUT)
        {
            tracing::debug!(%error, "the last spans were not all exported");
        }
    }
}

/// Sets up logging (and traces, when asked) for the daemon `service`, as
/// `args` say. Spans are exported from threads of their own (the batch
/// processor's, and a one-thread runtime for the OTLP connection), never
/// from the caller's runtime.
pub fn init_logging(args: &LogArgs, service: &'static str) -> Telemetry {
    let filter = log_filter();
    let logs = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(JsonLines { service })
            .with_filter(filter)
            .boxed(),
    };
    let (traces, provider) = match args.otlp_endpoint.as_deref() {
        Some(endpoint) => match tracer_provider(endpoint, service) {
            Ok(provider) => {
                use opentelemetry::trace::TracerProvider as _;
                // The spans' contexts are read from the spans themselves
                // (`OpenTelemetrySpanExt::context`); OpenTelemetry's
                // current context is read only outside any traced span (a
                // caller's passed on while traces are paused). Entering a
                // span, once per poll of its future, need not make its
                // context current, nor time how long it was busy and idle. The
                // thread a span started on says nothing of a task's work,
                // nor the source line of a span named after what it does.
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer(service))
                    .with_context_activation(false)
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_location(false)
                    .with_filter(traced())
                    .boxed();
                (Some(layer), Some(provider))
            }
            Err(error) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("no traces: cannot export to {endpoint}: {error}");
                }
                (None, None)
            }
        },
        None => (None, None),
    };
    TRACES_ON.store(traces.is_some(), Ordering::Relaxed);
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if let (Some(endpoint), Some(_)) = (&args.otlp_endpoint, &provider) {
        tracing::info!(%endpoint, "exporting traces to {endpoint}");
    }
    Telemetry { provider }
}

/// What is logged: `RUST_LOG`'s directives, `info` when unset.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// What the trace layer records: the spans of the stack, the servers and
/// the shop (at `debug`, whatever the log filter says), and the events that
/// happen in them when they are logged: a trace carries what the log
/// carries, and an event the log leaves out costs nothing in the trace
/// either. The stack's per-attempt `using instance` line is left out: the
/// attempt span's fields say the same. While the collector does not take
/// the exports, the spans are not made ([`collector`]), and each one turned
/// away counts as dropped.
///
/// The events are chosen by the log filter, which is told nothing of the
/// spans entered and left (an `EnvFilter` takes a lock at each), so a
/// directive scoped to a span (`[name]=debug`) chooses no event here.
struct Traced(tracing_subscriber::EnvFilter);

fn traced() -> Traced {
    Traced(log_filter())
}

/// One of the spans traced: the stack's, the servers' or the shop's.
fn is_traced_span(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    meta.is_span()
        && (target == TARGET
            || target == resilience::trace::TARGET
            || target == "market_web::trace")
}

/// An event, and not one of the stack's log lines that only repeat their
/// span's fields ([`resilience::trace::LOG_ONLY`]).
fn is_traced_event(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_event() && meta.name() != resilience::trace::LOG_ONLY
}

impl<S> tracing_subscriber::layer::Filter<S> for Traced
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if is_traced_span(meta) {
            let admitted = COLLECTOR.admits(|| cx.lookup_current().is_some());
            if !admitted {
                SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            return admitted;
        }
        is_traced_event(meta) && tracing_subscriber::layer::Filter::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if is_traced_span(meta) {
            // Asked at each span: the collector may be down.
            tracing::subscriber::Interest::sometimes()
        } else if is_traced_event(meta) {
            tracing_subscriber::layer::Filter::<S>::callsite_enabled(&self.0, meta)
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let events = tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.0);
        events.map(|events| events.max(tracing::level_filters::LevelFilter::DEBUG))
    }
}

fn tracer_provider(
    endpoint: &str,
    service: &'static str,
) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    // The exporter's connection is a task of that runtime.
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?
    };
    let exporter = Counting {
        exporter,
        runtime: Some(runtime),
        endpoint: endpoint.to_owned(),
    };
    let mut batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUED_SPANS);
    if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        batch = batch.with_scheduled_delay(EXPORT_EVERY);
    }
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch.build())
        .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(Bounded(processor))
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// The exporter, on a runtime of its own, counting what went and what
/// failed.
///
/// The batch processor's thread exports each batch: it turns the spans
/// into OTLP messages and waits for the collector's answer, while the
/// connection (encoding the message, writing it, reading the answer) runs
/// on a one-thread runtime kept for it. So no part of an export runs on
/// the runtime that serves requests, whose threads it would hold up for as
/// long as a batch takes to encode.
#[derive(Debug)]
struct Counting<E> {
    exporter: E,
    /// `None` once dropped; it is shut down without waiting for its tasks,
    /// which is allowed on any thread.
    runtime: Option<tokio::runtime::Runtime>,
    /// The collector's address, for the log.
    endpoint: String,
}

impl<E> Drop for Counting<E> {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counting<E>
{
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.len() as u64;
        let export = self.exporter.export(batch);
        let result = match &self.runtime {
            // The processor's thread blocks on its exports anyway; here it
            // does so with the exporter's runtime entered, its timers and
            // connection at hand.
            Some(runtime) if tokio::runtime::Handle::try_current().is_err() => {
                runtime.handle().block_on(export)
            }
            _ => export.await,
        };
        SPANS_PENDING.fetch_sub(spans, Ordering::Relaxed);
        let endpoint = &self.endpoint;
        match &result {
            Ok(()) => {
                SPANS_EXPORTED.fetch_add(spans, Ordering::Relaxed);
                if COLLECTOR.exported() {
                    tracing::info!(%endpoint, "traces resumed: the collector at {endpoint} takes them again");
                }
            }
            Err(error) => {
                SPANS_DROPPED.fetch_add(spans, Ordering::Relaxed);
                if COLLECTOR.failed() {
                    let every = collector::PROBE_EVERY;
                    tracing::warn!(
                        %endpoint, %error,
                        "traces paused: the collector at {endpoint} did not take them; no span is \
                         made until it does, but for one trace every {every:?} that tries it again"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.exporter.set_resource(resource);
    }
}

/// The batch processor, behind a bound of its own: at most
/// [`MAX_QUEUED_SPANS`] wait for export (its queue never fills), and a span
/// beyond them is dropped here, where it is counted.
#[derive(Debug)]
struct Bounded<P>(P);

impl<P: opentelemetry_sdk::trace::SpanProcessor> opentelemetry_sdk::trace::SpanProcessor
    for Bounded<P>
{
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        let queued = SPANS_PENDING.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_SPANS as u64 {
            SPANS_PENDING.fetch_sub(1, Ordering::Relaxed);
            SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.0.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

// === incoming trace context ===

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The trace context `headers` carry (`traceparent`, `tracestate`), if any.
fn incoming_context(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    context.span().span_context().is_valid().then_some(context)
}

/// A server span named `name` for a request with `headers`: the child of
/// the trace context they carry (`traceparent`), or the root of a new trace.
/// A disabled span (traces off) costs nothing more.
pub fn server_span(target_span: tracing::Span, headers: &http::HeaderMap) -> tracing::Span {
    if !target_span.is_disabled()
        && let Some(parent) = incoming_context(headers)
    {
        let _ = target_span.set_parent(parent);
    }
    target_span
}

/// The trace context to pass on for a request with `headers` whose server
/// `span` is not traced although this process exports traces: they are
/// paused ([`collector`]). A hop that does not trace still passes its
/// caller's context on, unchanged, so that the calls made while serving
/// the request stay in the caller's trace (the client stack writes the
/// current OpenTelemetry context when no traced span is entered), and its
/// log lines carry the caller's trace id. `None` when traces are off, when
/// the span is traced, or when the headers carry no context.
pub fn passed_on(
    span: &tracing::Span,
    headers: &http::HeaderMap,
) -> Option<opentelemetry::Context> {
    if !TRACES_ON.load(Ordering::Relaxed) {
        return None;
    }
    // A span that the trace layer turned away may still be made for the
    // other layers: what tells is whether it has a trace context.
    if !span.is_disabled() && span.context().span().span_context().is_valid() {
        return None;
    }
    incoming_context(headers)
}

/// A request's future, with the caller's trace context made current while
/// it is polled when its span is not traced ([`passed_on`]).
pub type PassedOn<F> = futures::future::Either<F, opentelemetry::context::WithContext<F>>;

/// `future`, with `context` (if any) made current while it is polled.
fn with_passed_on<F>(future: F, context: Option<opentelemetry::Context>) -> PassedOn<F> {
    use opentelemetry::context::FutureExt as _;
    match context {
        Some(context) => futures::future::Either::Right(future.with_context(context)),
        None => futures::future::Either::Left(future),
    }
}

/// Passes the caller's trace context on while traces are paused, for an
/// HTTP service whose request span is made by a layer outside this one
/// (tower-http's `TraceLayer`, which enters it while calling the service
/// inside): see [`passed_on`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PassContextOnLayer;

impl<S> Layer<S> for PassContextOnLayer {
    type Service = PassContextOn<S>;

    fn layer(&self, inner: S) -> PassContextOn<S> {
        PassContextOn { inner }
    }
}

/// The service of [`PassContextOnLayer`].
#[derive(Debug, Clone)]
pub struct PassContextOn<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for PassContextOn<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PassedOn<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A process that does not trace looks up no span.
        let context = TRACES_ON
            .load(Ordering::Relaxed)
            .then(|| passed_on(&tracing::Span::current(), request.headers()))
            .flatten();
        with_passed_on(self.inner.call(request), context)
    }
}

/// Serves every gRPC call in a server span that continues the caller's
/// trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSpanLayer;

impl<S> Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> ServerSpan<S> {
        ServerSpan { inner }
    }
}

/// The service of [`ServerSpanLayer`].
#[derive(Debug, Clone)]
pub struct ServerSpan<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ServerSpan<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<PassedOn<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = tracing::debug_span!(
            target: TARGET,
            "server",
            otel.name = tracing::field::Empty,
            otel.kind = "server",
            rpc.system = "grpc",
        );
        if !span.is_disabled() {
            span.record("otel.name", request.uri().path().trim_start_matches('/'));
        }
        let span = server_span(span, request.headers());
        let context = passed_on(&span, request.headers());
        with_passed_on(self.inner.call(request), context).instrument(span)
    }
}

// === JSON lines ===

/// One JSON object per event.
struct JsonLines {
    service: &'static str,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = serde_json::Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("service".into(), self.service.into());
        line.insert("fields".into(), fields.into());
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<serde_json::Value> =
                scope.from_root().map(|span| span.name().into()).collect();
            if !spans.is_empty() {
                line.insert("spans".into(), spans.into());
            }
        }
        // The trace of the span the event happened in, which may be one the
        // log filter does not show (the stack's spans are at debug level);
        // or, outside any traced span, the current OpenTelemetry context's
        // (a caller's, passed on while traces are paused).
        if let Some((trace_id, span_id)) =
            resilience::trace::with_current_context(|ids| (ids.trace_id(), ids.span_id()))
        {
            line.insert("trace_id".into(), trace_id.to_string().into());
            line.insert("span_id".into(), span_id.to_string().into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;

    use super::*;

    /// A request passes the context it came with on only in a process that
    /// exports traces, and only when its own span is not traced (they are
    /// paused); then unchanged.
    #[test]
    fn a_request_passes_its_callers_context_on_only_while_its_span_is_not_traced() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let not_made = tracing::Span::none();

        TRACES_ON.store(false, Ordering::Relaxed);
        assert!(passed_on(&not_made, &headers).is_none(), "traces off");

        TRACES_ON.store(true, Ordering::Relaxed);
        let passed = passed_on(&not_made, &headers).expect("passed on while paused");
        let span = passed.span();
        let ids = span.span_context();
        assert_eq!(
            ids.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(ids.span_id().to_string(), "00f067aa0ba902b7");
        assert!(ids.is_sampled() && ids.is_remote());
        assert!(
            passed_on(&not_made, &http::HeaderMap::new()).is_none(),
            "no context came"
        );

        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let traced = tracing::info_span!("server");
            assert!(passed_on(&traced, &headers).is_none(), "its span is traced");
        });
    }
}
