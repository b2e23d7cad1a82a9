//! A real OTLP/gRPC trace endpoint on loopback, built from
//! `opentelemetry-proto`'s generated service: the daemons export their spans
//! to it as they would to a collector, and a test looks at what arrived.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{span::SpanKind, status::StatusCode},
};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};

/// The most spans an endpoint keeps; it counts the rest as dropped, so that a
/// runaway test cannot eat the memory.
pub const MAX_SPANS: usize = 100_000;

/// The largest Export message it takes, well above what an exporter's batch
/// of spans comes to.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A collector's trace endpoint: `TraceService/Export` over plaintext gRPC on
/// 127.0.0.1:0. It stops when dropped.
pub struct Otlp {
    addr: SocketAddr,
    state: Arc<State>,
    /// Shuts the gRPC server down gracefully; `None` for a black hole.
    stop: Option<oneshot::Sender<()>>,
    /// The accept loop of a black hole, which holds its connections.
    black_hole: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let received = self.state.lock();
        f.debug_struct("Otlp")
            .field("addr", &self.addr)
            .field("black_hole", &self.black_hole.is_some())
            .field("exports", &received.exports)
            .field("spans", &received.spans.len())
            .field("dropped", &received.dropped)
            .finish()
    }
}

impl Otlp {
    /// Starts serving on a free loopback port; it stops on drop.
    ///
    /// # Panics
    ///
    /// When it cannot bind 127.0.0.1:0.
    pub async fn start() -> Self {
        Self::serve(bind().await)
    }

    /// A port of its own, bound but not listening: a collector that is
    /// down (a connection is refused) until [`Reserved::open`] starts it
    /// there.
    ///
    /// # Panics
    ///
    /// When it cannot bind 127.0.0.1:0.
    pub fn reserve() -> Reserved {
        let bound = tokio::net::TcpSocket::new_v4()
            .and_then(|socket| {
                socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                Ok(socket)
            })
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 for an OTLP endpoint: {e}"));
        let addr = bound
            .local_addr()
            .unwrap_or_else(|e| panic!("the OTLP endpoint's address: {e}"));
        Reserved {
            socket: bound,
            addr,
        }
    }

    fn serve(listener: TcpListener) -> Self {
        let addr = local_addr(&listener);
        let state = Arc::new(State::default());
        let service = TraceServiceServer::new(Collector {
            state: Arc::clone(&state),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    // Dropping the sender stops it as well as sending does.
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                panic!("the OTLP endpoint on {addr} failed: {e}");
            }
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            black_hole: None,
        }
    }

    /// A listener that accepts TCP connections and never answers (a
    /// black-holed collector), for tests that the exporter never blocks a
    /// request. [`Otlp::spans`] stays empty.
    ///
    /// # Panics
    ///
    /// When it cannot bind 127.0.0.1:0.
    pub async fn black_hole() -> Self {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let task = tokio::spawn(async move {
            // Held, never read nor written, until the endpoint is dropped.
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self {
            addr,
            state: Arc::new(State::default()),
            stop: None,
            black_hole: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT`, for `--otlp-endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.lock().spans.clone()
    }

    /// Waits (woken on each export, without polling) until `done(&spans)`
    /// holds, and returns the spans received by then.
    ///
    /// # Panics
    ///
    /// When `done` does not hold after `timeout`, with a summary of the spans
    /// received so far.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        if let Some(spans) = self.arrived_within(timeout, done).await {
            return spans;
        }
        let received = self.state.lock();
        panic!(
            "the spans awaited did not arrive at {} within {timeout:?}: {} span(s) in {} export(s), {} dropped{}",
            self.url(),
            received.spans.len(),
            received.exports,
            received.dropped,
            summary(&received.spans)
        );
    }

    /// Waits as [`Otlp::wait_for`] does, and returns `None` when `done`
    /// does not hold after `timeout`.
    pub async fn arrived_within(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Option<Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first look, so no export slips in between.
        let mut arrivals = self.state.arrivals.subscribe();
        loop {
            arrivals.borrow_and_update();
            let spans = self.spans();
            if done(&spans) {
                return Some(spans);
            }
            // The sender lives in `self.state`, so `changed` cannot fail.
            if tokio::time::timeout_at(deadline, arrivals.changed())
                .await
                .is_err()
            {
                let spans = self.spans();
                return done(&spans).then_some(spans);
            }
        }
    }

    /// How many Export calls arrived.
    pub fn exports(&self) -> usize {
        self.state.lock().exports
    }

    /// How many spans arrived in all, kept or not (without copying them, as
    /// [`Otlp::spans`] does).
    pub fn received(&self) -> usize {
        let received = self.state.lock();
        received.spans.len() + received.dropped
    }

    /// How many spans arrived beyond the first [`MAX_SPANS`], and were not kept.
    pub fn dropped(&self) -> usize {
        self.state.lock().dropped
    }
}

/// The port of a collector that is down, from [`Otlp::reserve`].
#[derive(Debug)]
pub struct Reserved {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl Reserved {
    /// `http://127.0.0.1:PORT`, for `--otlp-endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The collector comes up on this port.
    ///
    /// # Panics
    ///
    /// When the port cannot listen.
    pub fn open(self) -> Otlp {
        let listener = self
            .socket
            .listen(1024)
            .unwrap_or_else(|e| panic!("cannot listen on {} for an OTLP endpoint: {e}", self.addr));
        Otlp::serve(listener)
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server may have stopped already.
            let _ = stop.send(());
        }
        if let Some(task) = self.black_hole.take() {
            task.abort();
        }
    }
}

/// One span as received, flattened for assertions.
///
/// Attribute values are strings: a bool, int or double as Rust prints it, an
/// array's values joined with `,`, a key-value list as `key=value` pairs
/// joined with `,`, bytes in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`, or `""` without one.
    pub service: String,
    /// Every resource attribute.
    pub resource: BTreeMap<String, String>,
    /// The span's name.
    pub name: String,
    /// The trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// The span id, 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id, `""` for a root span.
    pub parent_span_id: String,
    /// `"server"`, `"client"`, `"internal"`, `"producer"`, `"consumer"` or
    /// `"unspecified"`.
    pub kind: &'static str,
    /// The span's attributes.
    pub attributes: BTreeMap<String, String>,
    /// The name and the attributes of each of its events, in order.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// `"unset"`, `"ok"` or `"error"`.
    pub status: &'static str,
    /// The W3C `tracestate` of its trace, `""` without one.
    pub trace_state: String,
}

impl ReceivedSpan {
    /// The value of attribute `key`, when it has one.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// What an endpoint received, and a signal on each export.
struct State {
    received: Mutex<Received>,
    /// Bumped after each export is recorded, to wake [`Otlp::wait_for`].
    arrivals: watch::Sender<()>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            received: Mutex::default(),
            arrivals: watch::Sender::new(()),
        }
    }
}

impl State {
    /// The record, also after a test panicked while holding it.
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: ExportTraceServiceRequest) {
        // Once full, spans are only counted: the endpoint then costs what a
        // collector's decoding does, not what keeping them would.
        let full = self.lock().spans.len() >= MAX_SPANS;
        if full {
            let spans = request
                .resource_spans
                .iter()
                .flat_map(|resource| &resource.scope_spans)
                .map(|scope| scope.spans.len())
                .sum::<usize>();
            let mut received = self.lock();
            received.exports += 1;
            received.dropped += spans;
        } else {
            let spans = flatten(request);
            let mut received = self.lock();
            received.exports += 1;
            let room = MAX_SPANS.saturating_sub(received.spans.len());
            received.dropped += spans.len().saturating_sub(room);
            received.spans.extend(spans.into_iter().take(room));
        }
        self.arrivals.send_modify(|()| {});
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    exports: usize,
    dropped: usize,
}

/// The generated `TraceService`, recording into the endpoint's state.
struct Collector {
    state: Arc<State>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.state.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 for an OTLP endpoint: {e}"))
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("the OTLP endpoint's address: {e}"))
}

/// The spans of an Export, in order.
fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|resource| attributes(&resource.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            let kind = match SpanKind::try_from(span.kind) {
                Ok(SpanKind::Server) => "server",
                Ok(SpanKind::Client) => "client",
                Ok(SpanKind::Internal) => "internal",
                Ok(SpanKind::Producer) => "producer",
                Ok(SpanKind::Consumer) => "consumer",
                Ok(SpanKind::Unspecified) | Err(_) => "unspecified",
            };
            let status = match span.status.map(|status| StatusCode::try_from(status.code)) {
                Some(Ok(StatusCode::Ok)) => "ok",
                Some(Ok(StatusCode::Error)) => "error",
                Some(Ok(StatusCode::Unset) | Err(_)) | None => "unset",
            };
            out.push(ReceivedSpan {
                service: service.clone(),
                resource: resource.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                kind,
                attributes: attributes(&span.attributes),
                events: span
                    .events
                    .iter()
                    .map(|event| (event.name.clone(), attributes(&event.attributes)))
                    .collect(),
                status,
                trace_state: span.trace_state,
            });
        }
    }
    out
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), value(pair.value.as_ref())))
        .collect()
}

fn value(value: Option<&AnyValue>) -> String {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(array)) => array
            .values
            .iter()
            .map(|v| self::value(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::KvlistValue(list)) => list
            .values
            .iter()
            .map(|pair| format!("{}={}", pair.key, self::value(pair.value.as_ref())))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::BytesValue(bytes)) => hex(bytes),
        // An index into a profile's string table, which traces do not have.
        Some(Value::StringValueStrindex(index)) => format!("strindex:{index}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing into a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// One line per span: service, name, trace, span, parent.
fn summary(spans: &[ReceivedSpan]) -> String {
    let mut out = String::new();
    for span in spans {
        let parent = if span.parent_span_id.is_empty() {
            "-"
        } else {
            &span.parent_span_id
        };
        let _ = write!(
            out,
            "\n  {} {:?} trace={} span={} parent={parent}",
            span.service, span.name, span.trace_id, span.span_id
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::trace_service_client::TraceServiceClient,
        common::v1::ArrayValue,
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event},
    };

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn string(s: &str) -> any_value::Value {
        any_value::Value::StringValue(s.to_owned())
    }

    fn request() -> ExportTraceServiceRequest {
        let trace_id: Vec<u8> = (1..=16).collect();
        let parent = Span {
            trace_id: trace_id.clone(),
            span_id: vec![0xaa, 0xbb, 0xcc, 0xdd, 0, 1, 2, 3],
            name: "GET /ratings".to_owned(),
            kind: SpanKind::Server as i32,
            attributes: vec![
                kv("http.route", string("/ratings")),
                kv("http.status_code", any_value::Value::IntValue(200)),
                kv("cache.hit", any_value::Value::BoolValue(true)),
                kv("ratio", any_value::Value::DoubleValue(0.5)),
                kv(
                    "tags",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(string("a")),
                            },
                            AnyValue {
                                value: Some(any_value::Value::IntValue(2)),
                            },
                        ],
                    }),
                ),
            ],
            status: Some(Status {
                code: StatusCode::Ok as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let child = Span {
            trace_id,
            span_id: vec![0, 0, 0, 0, 0, 0, 0, 0x2a],
            parent_span_id: parent.span_id.clone(),
            trace_state: "market=1".to_owned(),
            name: "registry.Resolve".to_owned(),
            kind: SpanKind::Client as i32,
            events: vec![Event {
                name: "retry".to_owned(),
                attributes: vec![kv("attempt", any_value::Value::IntValue(2))],
                ..Default::default()
            }],
            status: Some(Status {
                code: StatusCode::Error as i32,
                message: "unavailable".to_owned(),
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", string("ratings-server")),
                        kv("service.instance.id", string("r1")),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![parent, child],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[tokio::test]
    async fn receives_and_flattens_exported_spans() {
        let otlp = Otlp::start().await;
        assert!(otlp.spans().is_empty());
        assert_eq!(otlp.exports(), 0);

        let mut client = TraceServiceClient::connect(otlp.url())
            .await
            .expect("connect to the endpoint");
        let response = client.export(request()).await.expect("export");
        assert_eq!(response.into_inner(), ExportTraceServiceResponse::default());

        let spans = otlp
            .wait_for(Duration::from_secs(5), |spans| spans.len() == 2)
            .await;
        assert_eq!(otlp.exports(), 1);
        assert_eq!(otlp.dropped(), 0);

        let parent = &spans[0];
        assert_eq!(parent.service, "ratings-server");
        assert_eq!(
            parent
                .resource
                .get("service.instance.id")
                .map(String::as_str),
            Some("r1")
        );
        assert_eq!(parent.name, "GET /ratings");
        assert_eq!(parent.trace_id, "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(parent.span_id, "aabbccdd00010203");
        assert_eq!(parent.parent_span_id, "");
        assert_eq!(parent.kind, "server");
        assert_eq!(parent.status, "ok");
        assert_eq!(parent.attr("http.route"), Some("/ratings"));
        assert_eq!(parent.attr("http.status_code"), Some("200"));
        assert_eq!(parent.attr("cache.hit"), Some("true"));
        assert_eq!(parent.attr("ratio"), Some("0.5"));
        assert_eq!(parent.attr("tags"), Some("a,2"));
        assert_eq!(parent.attr("missing"), None);
        assert!(parent.events.is_empty());

        let child = &spans[1];
        assert_eq!(child.service, "ratings-server");
        assert_eq!(child.name, "registry.Resolve");
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.span_id, "000000000000002a");
        assert_eq!(child.parent_span_id, parent.span_id);
        assert_eq!(
            (parent.trace_state.as_str(), child.trace_state.as_str()),
            ("", "market=1")
        );
        assert_eq!(child.kind, "client");
        assert_eq!(child.status, "error");
        assert!(child.attributes.is_empty());
        assert_eq!(child.events.len(), 1);
        assert_eq!(child.events[0].0, "retry");
        assert_eq!(
            child.events[0].1.get("attempt").map(String::as_str),
            Some("2")
        );

        // A second export is woken on, not polled for.
        let waiter = otlp.wait_for(Duration::from_secs(5), |spans| spans.len() == 4);
        let export = async {
            client.export(request()).await.expect("second export");
        };
        let (spans, ()) = tokio::join!(waiter, export);
        assert_eq!(spans.len(), 4);
        assert_eq!(otlp.exports(), 2);
    }

    #[tokio::test]
    #[should_panic(expected = "GET /ratings")]
    async fn wait_for_panics_with_what_arrived() {
        let otlp = Otlp::start().await;
        let mut client = TraceServiceClient::connect(otlp.url())
            .await
            .expect("connect to the endpoint");
        client.export(request()).await.expect("export");
        otlp.wait_for(Duration::from_millis(300), |spans| spans.len() > 2)
            .await;
    }

    #[test]
    fn keeps_at_most_max_spans() {
        let state = State::default();
        let one = || {
            let mut request = request();
            request.resource_spans[0].scope_spans[0].spans.truncate(1);
            request
        };
        state.record(one());
        let span = state.lock().spans[0].clone();
        state.lock().spans = vec![span; MAX_SPANS - 1];
        state.record(request());
        {
            let received = state.lock();
            assert_eq!(received.spans.len(), MAX_SPANS);
            assert_eq!(received.dropped, 1);
            assert_eq!(received.exports, 2);
        }
        // Full, it counts what arrives and keeps what it had.
        let kept = state.lock().spans[MAX_SPANS - 1].span_id.clone();
        state.record(request());
        let received = state.lock();
        assert_eq!(received.spans.len(), MAX_SPANS);
        assert_eq!(received.spans[MAX_SPANS - 1].span_id, kept);
        assert_eq!(received.dropped, 3);
        assert_eq!(received.exports, 3);
    }

    #[tokio::test]
    async fn black_hole_accepts_and_never_answers() {
        let otlp = Otlp::black_hole().await;
        let addr = otlp.url().trim_start_matches("http://").to_owned();
        tokio::net::TcpStream::connect(&addr)
            .await
            .expect("the black hole accepts TCP connections");

        let channel = tonic::transport::Endpoint::from_shared(otlp.url())
            .expect("a valid endpoint")
            .connect_lazy();
        let mut client = TraceServiceClient::new(channel);
        let mut export = tonic::Request::new(request());
        export.set_timeout(Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(5), client.export(export))
            .await
            .expect("the client's timeout ends the call")
            .expect_err("a black hole never answers");
        assert!(
            status.code() == tonic::Code::DeadlineExceeded
                || (status.code() == tonic::Code::Cancelled
                    && status.message().contains("Timeout expired")),
            "{status:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(otlp.spans().is_empty());
        assert_eq!(otlp.exports(), 0);
    }

    #[tokio::test]
    async fn a_reserved_port_refuses_until_it_opens() {
        let reserved = Otlp::reserve();
        let url = reserved.url();
        let addr = url.trim_start_matches("http://").to_owned();
        let refused = tokio::net::TcpStream::connect(&addr)
            .await
            .expect_err("nothing listens on a reserved port");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        let otlp = reserved.open();
        assert_eq!(otlp.url(), url, "it opens on the port it reserved");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("a valid endpoint")
            .connect_lazy();
        TraceServiceClient::new(channel)
            .export(request())
            .await
            .expect("the opened endpoint takes exports");
        assert_eq!(otlp.exports(), 1);
        assert!(!otlp.spans().is_empty());
    }
}
