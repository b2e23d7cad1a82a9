//! One page followed across processes: with `--otlp-endpoint`, the shop,
//! the ratings instances and the registry export their spans to a real
//! OTLP/gRPC endpoint (test-support's, built from `opentelemetry-proto`),
//! and W3C trace context ties them into one trace: the page's server span,
//! a client span for each lookup with an attempt span for each try, and the
//! server span of each instance that answered, the child of its attempt.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use test_support::{Cluster, Otlp, Proc, ReceivedSpan, Signal, Web};

/// How long the spans of a page may take to arrive (they are exported in
/// batches, once a second).
const ARRIVAL: Duration = Duration::from_secs(15);

/// A trace context as an upstream proxy would send it: its trace id and the
/// proxy's span id.
fn traceparent(n: u8) -> (String, String, String) {
    let trace = format!(
        "{:032x}",
        0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4700_u128 + u128::from(n)
    );
    let parent = format!("{:016x}", 0x00f0_67aa_0ba9_0200_u64 + u64::from(n));
    (format!("00-{trace}-{parent}-01"), trace, parent)
}

/// The `tracestate` the upstream proxy sends with every page.
const PROXY_STATE: &str = "proxy=7f";

/// `GET /` with a `traceparent` header (and the proxy's `tracestate`); the
/// status.
async fn page(addr: SocketAddr, traceparent: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\ntraceparent: {traceparent}\r\n\
         tracestate: {PROXY_STATE}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

fn of_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.trace_id == trace).collect()
}

fn children<'a>(spans: &[&'a ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .copied()
        .filter(|span| span.parent_span_id == parent.span_id)
        .collect()
}

/// Every span of `trace` is in: the page's, and each of its calls ended.
fn page_done(spans: &[ReceivedSpan], trace: &str, servers: usize) -> bool {
    let spans = of_trace(spans, trace);
    let calls = spans.iter().filter(|s| s.name == "call").count();
    let answered = spans
        .iter()
        .filter(|s| s.service == "ratings-server" && s.kind == "server")
        .count();
    spans
        .iter()
        .any(|s| s.kind == "server" && s.service == "market-web")
        && calls == 4
        && answered >= servers
}

#[tokio::test]
async fn one_page_is_one_trace_from_the_shop_to_the_instances() {
    let otlp = Otlp::start().await;
    let url = otlp.url();
    let traced = ["--otlp-endpoint", url.as_str(), "--log-format", "json"];
    let cluster = Cluster::start(&traced).await;
    let one = cluster.ratings(1, &traced).await;
    let two = cluster.ratings(2, &traced).await;
    let mut args = vec!["--balance", "round-robin", "--retest-delay", "30s"];
    args.extend(traced);
    let web = Web::for_cluster(&cluster, &args).await;

    // A healthy page: the proxy's context is continued.
    let (header, trace, proxy) = traceparent(1);
    assert_eq!(page(web.addr, &header).await, 200);
    let spans = otlp
        .wait_for(ARRIVAL, |spans| page_done(spans, &trace, 4))
        .await;
    let spans = of_trace(&spans, &trace);
    let request = spans
        .iter()
        .find(|s| s.service == "market-web" && s.kind == "server")
        .expect("the page's server span");
    assert_eq!(
        request.parent_span_id, proxy,
        "the proxy's span is its parent"
    );
    assert_eq!(request.name, "GET /");
    let calls = children(&spans, request);
    assert_eq!(calls.len(), 4, "a call per lookup: {calls:#?}");
    for call in &calls {
        assert_eq!((call.name.as_str(), call.kind), ("call", "client"));
        assert_eq!(call.attr("service"), Some("ratings"));
        assert_eq!(call.attr("outcome"), Some("ok"));
        let attempts = children(&spans, call);
        assert_eq!(
            attempts.len(),
            1,
            "a healthy call is one attempt: {attempts:#?}"
        );
        let attempt = attempts[0];
        assert_eq!((attempt.name.as_str(), attempt.kind), ("attempt", "client"));
        assert_eq!(attempt.attr("outcome"), Some("ok"));
        let instance = attempt.attr("instance").expect("the attempt's instance");
        // The instance's server span is the child of the attempt that reached it.
        let served = children(&spans, attempt);
        assert_eq!(served.len(), 1, "{attempt:#?}: {served:#?}");
        assert_eq!(served[0].service, "ratings-server");
        assert_eq!(served[0].kind, "server");
        assert_eq!(served[0].name, "market.ratings.v1.Ratings/Get");
        assert_eq!(
            served[0].trace_state, PROXY_STATE,
            "the proxy's tracestate went along to the instance"
        );
        assert!([one.id.as_str(), two.id.as_str()].contains(&instance));
        // The log's `using instance` line says what the attempt's fields
        // say, and is left out of the trace.
        assert!(
            !call
                .events
                .iter()
                .chain(&attempt.events)
                .any(|(name, _)| name.contains("using instance")),
            "{call:#?}\n{attempt:#?}"
        );
    }
    let instances: BTreeSet<&str> = calls
        .iter()
        .flat_map(|call| children(&spans, call))
        .filter_map(|attempt| attempt.attr("instance"))
        .collect();
    assert_eq!(
        instances.len(),
        2,
        "round robin reached both: {instances:?}"
    );

    // Both processes' log lines for the page carry its trace id.
    let logged = |proc: &test_support::Proc, needle: &str| {
        proc.child()
            .lines_after(0)
            .iter()
            .filter(|line| line.contains(needle))
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .any(|line| line["trace_id"] == trace.as_str())
    };
    assert!(logged(&web.proc, "ASK for"), "{}", web.proc.output());
    assert!(
        logged(&web.proc, "ratings using instance "),
        "{}",
        web.proc.output()
    );
    assert!(
        logged(&one.proc, "GET ") || logged(&two.proc, "GET "),
        "{}\n{}",
        one.proc.output(),
        two.proc.output()
    );

    // A paused instance: its attempts time out, and each is retried on the
    // other instance, a sibling under the same call.
    one.proc.signal(Signal::SIGSTOP);
    let (header, trace, _) = traceparent(2);
    assert_eq!(page(web.addr, &header).await, 200);
    let spans = otlp
        .wait_for(ARRIVAL, |spans| {
            let spans = of_trace(spans, &trace);
            spans.iter().filter(|s| s.name == "call").count() == 4
                && spans
                    .iter()
                    .any(|s| s.name == "attempt" && s.attr("outcome") == Some("timeout"))
        })
        .await;
    one.proc.signal(Signal::SIGCONT);
    let spans = of_trace(&spans, &trace);
    let retried: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "call")
        .filter(|call| children(&spans, call).len() == 2)
        .collect();
    assert!(!retried.is_empty(), "a call was retried: {spans:#?}");
    for call in retried {
        let attempts = children(&spans, call);
        let timed_out = attempts
            .iter()
            .find(|a| a.attr("outcome") == Some("timeout"))
            .unwrap_or_else(|| panic!("a timed-out attempt: {attempts:#?}"));
        assert_eq!(timed_out.attr("instance"), Some(one.id.as_str()));
        assert_eq!(timed_out.status, "error");
        let retry = attempts
            .iter()
            .find(|a| a.attr("outcome") == Some("ok"))
            .unwrap_or_else(|| panic!("a retry that answered: {attempts:#?}"));
        assert_eq!(retry.attr("instance"), Some(two.id.as_str()));
        assert_eq!(call.attr("outcome"), Some("ok"));
    }
    // The breaker opened on the call that timed out: an event of its attempt.
    assert!(
        spans.iter().any(|s| s.name == "attempt"
            && s.events
                .iter()
                .any(|(name, _)| name.contains("OPEN breaker"))),
        "{spans:#?}"
    );
}

/// What the shop's `/metrics` counts as dropped spans.
async fn spans_dropped(web: &Web) -> u64 {
    let (status, body) = web.get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    let dropped = test_support::metric(&body, "market_spans_dropped_total")
        .unwrap_or_else(|| panic!("no market_spans_dropped_total in {body}"));
    dropped as u64
}

/// A collector that is down costs the shop no spans. After the first
/// export fails, the shop says it paused its traces, and a page makes none
/// of its nine spans (its request, four calls, four attempts); each one not
/// made counts as dropped. Once a probe period, one page is traced to try
/// the collector again: when the collector is back, that page's trace
/// arrives whole, the shop says its traces resumed, and every page is
/// traced again.
#[tokio::test]
async fn traces_pause_while_the_collector_is_down_and_resume_when_it_is_back() {
    let collector = Otlp::reserve();
    let url = collector.url();
    let cluster = Cluster::start(&[]).await;
    let _one = cluster.ratings(1, &[]).await;
    let web = Web::for_cluster(&cluster, &["--otlp-endpoint", url.as_str()]).await;

    assert_eq!(page(web.addr, &traceparent(5).0).await, 200);
    web.proc.wait_for_line("traces paused").await;
    let before = spans_dropped(&web).await;
    let pages = 10;
    for n in 0..pages {
        assert_eq!(page(web.addr, &traceparent(20 + n).0).await, 200);
    }
    let dropped = spans_dropped(&web).await - before;
    // Ten pages take far less than a probe period: one of them at most
    // was traced (and its spans, when their export failed, dropped later).
    assert!(
        dropped >= 9 * u64::from(pages - 1),
        "{dropped} spans dropped for {pages} pages: {}",
        web.proc.output()
    );

    let mark = web.proc.mark();
    let otlp = collector.open();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = 40;
    loop {
        let (header, trace, _) = traceparent(n);
        assert_eq!(page(web.addr, &header).await, 200);
        let arrived = otlp
            .arrived_within(Duration::from_secs(2), |spans| page_done(spans, &trace, 0))
            .await;
        if arrived.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no page was traced after the collector came back: {otlp:?}\n{}",
            web.proc.output()
        );
        n += 1;
    }
    web.proc
        .wait_for_line_after(mark, "traces resumed", ARRIVAL)
        .await;
    // Closed again: the very next page is traced.
    let (header, trace, _) = traceparent(n + 1);
    assert_eq!(page(web.addr, &header).await, 200);
    otlp.wait_for(ARRIVAL, |spans| page_done(spans, &trace, 0))
        .await;
}

/// A shop whose collector is down makes no span, but passes its caller's
/// trace context on, as a hop that does not trace does: the instance (whose
/// collector works) serves each page's lookups in the caller's trace, and
/// the shop's log lines for the page carry the caller's trace id.
#[tokio::test]
async fn a_paused_shop_passes_the_callers_trace_context_on() {
    let down = Otlp::reserve();
    let down_url = down.url();
    let otlp = Otlp::start().await;
    let url = otlp.url();
    let cluster = Cluster::start(&[]).await;
    let _one = cluster.ratings(1, &["--otlp-endpoint", url.as_str()]).await;
    let web = Web::for_cluster(
        &cluster,
        &["--otlp-endpoint", down_url.as_str(), "--log-format", "json"],
    )
    .await;
    assert_eq!(page(web.addr, &traceparent(60).0).await, 200);
    web.proc.wait_for_line("traces paused").await;

    // Pages well within a probe period: one of them at most is traced by
    // the shop (its own spans then dropped with their export).
    let pages: Vec<u8> = (61..64).collect();
    for &n in &pages {
        assert_eq!(page(web.addr, &traceparent(n).0).await, 200);
    }
    for &n in &pages {
        let (_, trace, _) = traceparent(n);
        let served = |spans: &[ReceivedSpan]| {
            of_trace(spans, &trace)
                .iter()
                .filter(|s| s.service == "ratings-server" && s.kind == "server")
                .count()
        };
        otlp.wait_for(ARRIVAL, |spans| served(spans) == 4).await;
        let logged = web
            .proc
            .child()
            .lines_after(0)
            .iter()
            .filter(|line| line.contains("ASK for"))
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["trace_id"] == trace.as_str())
            .count();
        assert_eq!(logged, 4, "a line per lookup: {}", web.proc.output());
    }
    drop(down);
}

#[tokio::test]
async fn the_registry_continues_a_callers_trace() {
    let otlp = Otlp::start().await;
    let url = otlp.url();
    let cluster = Cluster::start(&["--otlp-endpoint", url.as_str()]).await;
    let (header, trace, parent) = traceparent(3);
    let mut client = cluster.registry.client(&cluster.token);
    let mut request = tonic::Request::new(market_proto::registry::v1::ResolveRequest {
        service: "ratings".to_owned(),
    });
    request
        .metadata_mut()
        .insert("traceparent", header.parse().expect("a header value"));
    client.resolve(request).await.expect("resolve");
    let spans = otlp
        .wait_for(ARRIVAL, |spans| !of_trace(spans, &trace).is_empty())
        .await;
    let spans = of_trace(&spans, &trace);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].service, "registryd");
    assert_eq!(spans[0].kind, "server");
    assert_eq!(spans[0].parent_span_id, parent);
    assert_eq!(spans[0].name, "market.registry.v1.Registry/Resolve");
}

/// The one-command demo gives `--otlp-endpoint` and `--log-format` to every
/// process it starts: a page is one trace from the shop to the instances,
/// the registry exports its own spans, and the lines the demo echoes are
/// JSON behind each process's name.
#[tokio::test]
async fn the_demo_traces_every_process_it_starts() {
    let otlp = Otlp::start().await;
    let url = otlp.url();
    let mut demo = Proc::spawn(
        "market",
        [
            "--any-ports",
            "--otlp-endpoint",
            url.as_str(),
            "--log-format",
            "json",
        ],
    );
    let shop = test_support::socket_addr(&demo.listening("market").await);
    let (header, trace, proxy) = traceparent(4);
    assert_eq!(page(shop, &header).await, 200);
    let spans = otlp
        .wait_for(ARRIVAL, |spans| {
            let traced: BTreeSet<(&str, &str)> = of_trace(spans, &trace)
                .iter()
                .map(|span| (span.service.as_str(), span.kind))
                .collect();
            traced.contains(&("market-web", "server"))
                && traced.contains(&("ratings-server", "server"))
                && spans.iter().any(|span| span.service == "registryd")
        })
        .await;
    let request = of_trace(&spans, &trace)
        .into_iter()
        .find(|span| span.service == "market-web" && span.kind == "server")
        .expect("the page's server span");
    assert_eq!(request.parent_span_id, proxy);

    // The ratings instance's line for one of the page's lookups, as the
    // demo echoed it: JSON behind the process's name, in the page's trace.
    let lines = demo.child().lines_after(0);
    let logged = lines
        .iter()
        .filter_map(|line| line.split_once(" | "))
        .filter(|(name, _)| name.trim().starts_with("ratings-"))
        .filter_map(|(_, json)| serde_json::from_str::<serde_json::Value>(json).ok())
        .find(|line| line["trace_id"] == trace.as_str());
    let logged = logged.unwrap_or_else(|| panic!("no JSON line of the trace: {}", demo.output()));
    assert_eq!(logged["service"], "ratings-server", "{logged}");

    // It stops what it started, in order, as on Ctrl-C.
    demo.signal(Signal::SIGINT);
    assert!(demo.wait_exit(Duration::from_secs(20)).await.success());
}
