//! Proxyless gRPC over the registry's xDS server (gRFC A27), on the
//! embedded store and on a real etcd server: Python's stock `grpcio`
//! (gRPC's C-core) dials `xds:///ratings` with a bootstrap from
//! `registryctl xds-bootstrap`, and follows the registry as instances come
//! and go, with the contract's timeout, retries its calls that an
//! instance answers UNAVAILABLE on another, and ejects that instance;
//! Node.js's stock `@grpc/grpc-js` with `@grpc/grpc-js-xds` does the same
//! dial, reaches every instance, and ends a call without a deadline after
//! exactly the contract's timeout (which grpcio cannot); and a
//! tonic ADS client built from `envoy-types` sees the contract's policy in
//! the resources, and that a stream without a token that may read
//! `ratings` learns nothing of it.
//!
//! registryd must be built with `--features registryd/xds`, and the Node
//! modules installed in tests/node (`npm ci`); tests/run.sh does both.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster as XdsCluster, core::v3::Node,
            endpoint::v3::ClusterLoadAssignment, listener::v3::Listener, route::v3::RouteAction,
        },
        service::discovery::v3::{
            DiscoveryRequest, DiscoveryResponse,
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
    },
    google::protobuf::{Struct, Value, value::Kind},
};
use prost::Message as _;
use serde_json::Value as Json;
use test_support::{Cluster, Signal, StoreKind, socket_addr};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
    sync::mpsc,
};
use tonic::Code;

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// How long a client program may take to answer one command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A registry serving xDS, with `ratings` created, and `extra` arguments.
async fn start(store: StoreKind, extra: &[&str]) -> (Cluster, String) {
    start_on(store, "127.0.0.1:0", extra).await
}

/// A registry serving xDS on `xds_listen`, with `ratings` created, and
/// `extra` arguments.
async fn start_on(store: StoreKind, xds_listen: &str, extra: &[&str]) -> (Cluster, String) {
    let mut args = vec!["--xds-listen", xds_listen];
    args.extend_from_slice(extra);
    let cluster = Cluster::start_with(store, &args).await;
    let xds = cluster.registry.proc.listening("registryd-xds").await;
    (cluster, xds)
}

/// Writes the bootstrap `registryctl xds-bootstrap` prints for `ratings`.
async fn bootstrap(cluster: &Cluster, xds: &str, token: &str) -> PathBuf {
    let addr = socket_addr(xds).to_string();
    let printed = cluster
        .registry
        .ctl(&[
            "xds-bootstrap",
            "ratings",
            "--xds-server",
            &addr,
            "--token",
            token,
        ])
        .await;
    let parsed: Json = serde_json::from_str(&printed).expect("a JSON bootstrap");
    assert_eq!(parsed["xds_servers"][0]["server_uri"], addr.as_str());
    assert_eq!(parsed["node"]["metadata"]["REGISTRY_TOKEN"], token);
    let path = cluster.dir.path().join("xds-bootstrap.json");
    std::fs::write(&path, printed).expect("write the bootstrap");
    path
}

/// The stock gRPC whose xDS support a client program tests.
#[derive(Clone, Copy, Debug)]
enum Language {
    /// `tests/python/xds_client.py`: Python's grpcio.
    Python,
    /// `tests/node/xds_client.js`: Node.js's @grpc/grpc-js with
    /// @grpc/grpc-js-xds.
    Node,
}

impl Language {
    /// The interpreter, the script, and how to install what it needs.
    fn program(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Python => (
                "python3",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/xds_client.py"),
                "install Python 3 and `pip install grpcio`",
            ),
            Self::Node => (
                "node",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/xds_client.js"),
                "install Node.js and run `npm ci` in tests/node",
            ),
        }
    }
}

/// A client program of the same line protocol (`tests/python/xds_client.py`
/// describes it), driven on its stdin: commands in, JSON lines out.
struct XdsClient {
    language: Language,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: PathBuf,
}

impl XdsClient {
    /// The client of `ratings` in `language` through `cluster`'s xDS server
    /// at `xds`, with a consumer token of its own and `registryctl`'s
    /// bootstrap.
    async fn for_ratings(language: Language, cluster: &Cluster, xds: &str) -> Self {
        let consumer = format!("{language:?}").to_lowercase();
        let token = cluster
            .registry
            .create_consumer(&consumer, &["ratings"])
            .await;
        let bootstrap = bootstrap(cluster, xds, &token).await;
        Self::start(language, &bootstrap, cluster.dir.path()).await
    }

    async fn start(language: Language, bootstrap: &Path, dir: &Path) -> Self {
        let (program, script, install) = language.program();
        let stderr = dir.join(format!("xds-client-{language:?}.stderr"));
        let mut command = tokio::process::Command::new(program);
        // The bootstrap reaches gRPC through the script alone.
        command.env_remove("GRPC_XDS_BOOTSTRAP");
        command.env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
        for setting in daemon::SETTINGS_FROM_ENV {
            command.env_remove(setting);
        }
        let mut child = command
            .arg(script)
            .arg(bootstrap)
            .arg("xds:///ratings")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("a file for stderr"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {install}"));
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut client = Self {
            language,
            child,
            stdin,
            lines,
            stderr,
        };
        client.line_with("started").await;
        client
    }

    /// Sends a command.
    async fn command(&mut self, line: &str) {
        let language = self.language;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("the {language:?} client reads no command: {e}"));
        self.stdin.flush().await.expect("flush");
    }

    /// The next JSON line that has `key`.
    async fn line_with(&mut self, key: &str) -> Json {
        let language = self.language;
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            let line = match line {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => panic!(
                    "the {language:?} client exited ({:?}): {}",
                    self.child.try_wait(),
                    self.stderr_tail()
                ),
                Ok(Err(e)) => panic!("cannot read the {language:?} client: {e}"),
                Err(_) => panic!(
                    "no {key:?} line from the {language:?} client within {COMMAND_TIMEOUT:?}: {}",
                    self.stderr_tail()
                ),
            };
            eprintln!("[{language:?} xds_client] {line}");
            let value: Json =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if value.get(key).is_some() {
                return value;
            }
        }
    }

    /// Runs a command that ends with a summary, and returns it.
    async fn summary(&mut self, command: &str) -> Json {
        self.command(command).await;
        self.line_with("summary").await
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// How many calls each instance answered, in a summary.
fn served(summary: &Json, instance: &str) -> u64 {
    summary["served"][instance].as_u64().unwrap_or(0)
}

/// Python's grpcio ends a call 1 to 2 s before a timeout from its service
/// config, xDS's included (grpc/grpc#40633, grpc/grpc#34547: C-core reads
/// the call's start on a clock whose zero is 1 s and a fraction later than
/// the one it checks the deadline against; every release from 1.46 on):
/// with the ratings contract's 1 s, every call would fail at once. Calls
/// here get room.
const PYTHON_ROOM: [&str; 2] = ["--xds-timeout", "ratings=5s"];

async fn python_follows_instances_as_they_come_and_go(store: StoreKind) {
    let (cluster, xds) = start(store, &PYTHON_ROOM).await;
    let mut instances = Vec::new();
    for n in 1..=3 {
        instances.push(cluster.ratings(n, &[]).await);
    }
    let mut python = XdsClient::for_ratings(Language::Python, &cluster, &xds).await;

    let summary = python.summary("calls 30").await;
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    for id in ["ratings-1", "ratings-2", "ratings-3"] {
        assert!(served(&summary, id) > 0, "{id} got no call: {summary}");
    }

    // SIGTERM: the instance deregisters first, then drains.
    let mark = cluster.registry.proc.mark();
    instances[0].proc.signal(Signal::SIGTERM);
    cluster
        .registry
        .proc
        .wait_for_line_after(mark, "deregistered ratings-1 at", Duration::from_secs(10))
        .await;
    let summary = python.summary("window 2").await;
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    if let Some(last) = summary["last"]["ratings-1"].as_f64() {
        assert!(
            last < 1.0,
            "ratings-1 answered {last} s after it left: {summary}"
        );
    }
    assert!(served(&summary, "ratings-2") > 0 && served(&summary, "ratings-3") > 0);

    // A new instance gets calls within a second of registering.
    let _fourth = cluster.ratings(4, &[]).await;
    let summary = python.summary("window 1").await;
    assert!(
        served(&summary, "ratings-4") > 0,
        "ratings-4 got no call within 1 s: {summary}"
    );
    python.command("quit").await;
}

/// gRPC keeps the last resources it got while its xDS server is away, and
/// reconnects: the calls go on through a registry restart, and a change
/// after it reaches the client. The xDS listener keeps its port (a client
/// dials the address in its bootstrap); the instances renew every second.
async fn python_keeps_calling_through_a_registry_restart(store: StoreKind) {
    let listen = format!("127.0.0.1:{}", test_support::free_port());
    let (mut cluster, xds) = start_on(store, &listen, &PYTHON_ROOM).await;
    let mut instances = Vec::new();
    for n in 1..=3 {
        instances.push(cluster.ratings(n, &["--ttl", "3s"]).await);
    }
    let mut python = XdsClient::for_ratings(Language::Python, &cluster, &xds).await;
    let summary = python.summary("calls 12").await;
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");

    cluster.stop_registry().await;
    let down = python.summary("window 1").await;
    assert_eq!(
        down["errors"],
        serde_json::json!({}),
        "calls while the registry is down: {down}"
    );
    for id in ["ratings-1", "ratings-2", "ratings-3"] {
        assert!(
            served(&down, id) > 0,
            "{id} got no call while the registry was down: {down}"
        );
    }

    cluster.start_registry().await;
    let again = cluster.registry.proc.listening("registryd-xds").await;
    assert_eq!(
        socket_addr(&again),
        socket_addr(&xds),
        "the same xDS address"
    );
    // The instances register again (the memory store starts empty) or
    // renew (etcd kept them); a new one joins, and the client hears of it
    // once it has reconnected. gRPC redials its xDS server with a backoff
    // of 1 s growing 1.6 times an attempt, ±20 % (gRPC's connection
    // backoff), so when depends on how long the registry took to come back:
    // the client calls until every instance has answered, for 20 s at most.
    let _fourth = cluster.ratings(4, &["--ttl", "3s"]).await;
    let after = python
        .summary("until 20 ratings-1 ratings-2 ratings-3 ratings-4")
        .await;
    eprintln!(
        "FIGURE {store:?}: while the registry was down {down}; after its restart, ratings-4 answered first after {} s: {after}",
        after["first"]["ratings-4"]
    );
    assert!(
        served(&after, "ratings-4") > 0,
        "the client reconnected and learnt of ratings-4: {after}"
    );
    for id in ["ratings-1", "ratings-2", "ratings-3"] {
        assert!(
            served(&after, id) > 0,
            "{id} got no call after the restart: {after}"
        );
    }
    python.command("quit").await;
}

/// One call in `language` without a deadline of its own to an instance
/// that answers after 3 s: its code and how long it took.
async fn call_without_deadline(
    language: Language,
    store: StoreKind,
    extra: &[&str],
) -> (Json, f64) {
    let (cluster, xds) = start(store, extra).await;
    let _slow = cluster.ratings(1, &["--delay", "3s"]).await;
    let mut client = XdsClient::for_ratings(language, &cluster, &xds).await;
    client.command("no-deadline").await;
    let call = client.line_with("elapsed").await;
    client.command("quit").await;
    let elapsed = call["elapsed"].as_f64().expect("elapsed");
    (call, elapsed)
}

async fn a_call_without_a_deadline_is_ended_by_the_route_before_the_slow_answer(store: StoreKind) {
    // The ratings contract's 1 s (the Rust client below checks that the
    // route carries exactly that) ends the call, never the instance's 3 s.
    // grpcio ends it early, by 1 to 2 s (grpc/grpc#40633), so only the
    // upper bound can be checked.
    let (call, elapsed) = call_without_deadline(Language::Python, store, &[]).await;
    eprintln!("FIGURE {store:?}: a call with the contract's 1 s timeout ended after {elapsed} s");
    assert_eq!(call["code"], "DEADLINE_EXCEEDED", "{call}");
    assert!(elapsed < 1.5, "ended after {elapsed} s: {call}");
}

/// grpc-js-xds applies the route's `max_stream_duration` (gRFC A31) as the
/// deadline of a call that has none, and ends the call when it runs out:
/// after the contract's 1 s, not before (as grpcio does) nor at the
/// instance's 3 s. The Node client connects its channel (the xDS
/// resolution included) before it reads commands, so the time is the
/// call's own.
///
/// grpc-js also sends that deadline as `grpc-timeout`, which the instance
/// (tonic) enforces too, at the same instant, and answers as `CANCELLED`
/// "Timeout expired" (tonic's mapping): on a loaded machine that answer
/// sometimes reaches the client before its own timer fires, and is the
/// call's status.
async fn node_ends_a_call_without_a_deadline_after_the_contracts_timeout(store: StoreKind) {
    let (call, elapsed) = call_without_deadline(Language::Node, store, &[]).await;
    eprintln!(
        "FIGURE {store:?}: a Node call without a deadline, the contract's 1 s timeout, ended {} after {elapsed} s",
        call["code"]
    );
    let by_the_instance = call["code"] == "CANCELLED" && call["details"] == "Timeout expired";
    assert!(
        call["code"] == "DEADLINE_EXCEEDED" || by_the_instance,
        "{call}"
    );
    assert!(
        (0.8..1.6).contains(&elapsed),
        "ended after {elapsed} s, not about 1 s: {call}"
    );
}

/// grpc-js's calls over xDS reach every instance the registry lists, each
/// answered within the contract's 1 s.
async fn node_calls_reach_every_instance(store: StoreKind) {
    let (cluster, xds) = start(store, &[]).await;
    let mut instances = Vec::new();
    for n in 1..=3 {
        instances.push(cluster.ratings(n, &[]).await);
    }
    let mut node = XdsClient::for_ratings(Language::Node, &cluster, &xds).await;
    let summary = node.summary("calls 30").await;
    eprintln!("FIGURE {store:?}: 30 Node calls over xDS: {summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    for id in ["ratings-1", "ratings-2", "ratings-3"] {
        assert!(served(&summary, id) > 0, "{id} got no call: {summary}");
    }
    node.command("quit").await;
}

/// The route's retry policy (one retry on UNAVAILABLE) and the cluster's
/// outlier detection, in grpcio: with one instance failing every call,
/// no call fails once both are connected, since each attempt that met it
/// was retried on the other;
/// with grpcio's retries turned off some do (so the failing instance was
/// picked); and once outlier detection has swept (every second) it is
/// ejected, and no call fails even without retries.
async fn python_retries_unavailable_on_another_instance_then_ejects_it(store: StoreKind) {
    let (cluster, xds) = start(store, &PYTHON_ROOM).await;
    let _healthy = cluster.ratings(1, &[]).await;
    let _failing = cluster.ratings(2, &["--fail-rate", "1"]).await;
    let mut python = XdsClient::for_ratings(Language::Python, &cluster, &xds).await;

    // A warm-up, its errors not counted: until both instances are
    // connected, round robin has only one to pick, and a retry is a new
    // pick (unlike our client's, which avoids the instance that failed),
    // so a call that meets the failing instance first may meet it again.
    python.summary("calls 1").await;
    python.summary("window 0.1").await;
    // grpcio retries by default: the xDS route's policy applies. The calls
    // take a few milliseconds: outlier detection's first sweep, a second
    // after the channel got its cluster, comes after them.
    let retried = python.summary("calls 30").await;
    assert_eq!(retried["errors"], serde_json::json!({}), "{retried}");
    assert_eq!(served(&retried, "ratings-1"), 30, "{retried}");

    // The same on a new channel without retries: the failing instance is
    // picked, until outlier detection ejects it.
    python.command("retries off").await;
    python.line_with("retries").await;
    let unretried = python.summary("calls 30").await;
    let failed = unretried["errors"]["UNAVAILABLE"].as_u64().unwrap_or(0);
    eprintln!("FIGURE {store:?}: with retries {retried}; without {unretried}");
    assert!(failed > 0, "ratings-2 was never picked: {unretried}");
    let _sweep = python.summary("window 1.5").await;
    let ejected = python.summary("calls 30").await;
    assert_eq!(
        ejected["errors"],
        serde_json::json!({}),
        "ratings-2 is ejected for the contract's 30 s: {ejected}"
    );
    python.command("quit").await;
}

// === a Rust ADS client ===

type Responses = tonic::Streaming<DiscoveryResponse>;

/// An ADS stream opened with `token` in the node's metadata (none: no
/// metadata at all), whose first request asks for `names` of `type_url`.
async fn ads(
    xds: &str,
    token: Option<&str>,
    type_url: &str,
    names: &[&str],
) -> Result<(mpsc::UnboundedSender<DiscoveryRequest>, Responses), tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(xds.to_owned())
        .await
        .expect("connect to the xDS server");
    let metadata = token.map(|token| Struct {
        fields: [(
            "REGISTRY_TOKEN".to_owned(),
            Value {
                kind: Some(Kind::StringValue(token.to_owned())),
            },
        )]
        .into(),
    });
    let mut first = request(type_url, names, None);
    first.node = Some(Node {
        id: "tests-xds".into(),
        metadata,
        ..Default::default()
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(first).expect("queued");
    let responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, responses))
}

fn request(type_url: &str, names: &[&str], ack: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

async fn next(responses: &mut Responses) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response in time")
        .expect("no error")
        .expect("the stream goes on")
}

/// The names of the Listeners in a response.
fn listeners(response: &DiscoveryResponse) -> Vec<String> {
    assert_eq!(response.type_url, LISTENER);
    response
        .resources
        .iter()
        .map(|r| Listener::decode(r.value.as_slice()).unwrap().name)
        .collect()
}

/// The action of the one route of the one Listener.
fn route_action(response: &DiscoveryResponse) -> RouteAction {
    use envoy_types::pb::envoy::{
        config::route::v3::route::Action,
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
    };
    let listener = Listener::decode(response.resources[0].value.as_slice()).unwrap();
    let api = listener.api_listener.unwrap().api_listener.unwrap();
    let manager = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
    let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
        panic!("an inline route");
    };
    let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
        panic!("a route action");
    };
    action.clone()
}

/// The retry policy of the one route: what it retries on, and how often.
fn route_retries(response: &DiscoveryResponse) -> Option<(String, u32)> {
    let retry = route_action(response).retry_policy?;
    Some((retry.retry_on, retry.num_retries?.value))
}

/// The `max_stream_duration` of the one route of the one Listener.
fn route_timeout(response: &DiscoveryResponse) -> Option<Duration> {
    let limit = route_action(response).max_stream_duration?;
    let max = limit.max_stream_duration.unwrap();
    assert_eq!(limit.grpc_timeout_header_max, Some(max));
    Some(Duration::new(max.seconds as u64, max.nanos as u32))
}

async fn streams_without_a_token_for_ratings_learn_nothing_of_it(store: StoreKind) {
    let (cluster, xds) = start(store, &[]).await;
    let _ratings = cluster.ratings(1, &[]).await;
    cluster.registry.create_service("reviews").await;
    let reviews = cluster
        .registry
        .create_consumer("reviewer", &["reviews"])
        .await;
    let readers = cluster
        .registry
        .create_consumer("reader", &["ratings"])
        .await;

    for (token, says) in [
        (None, "has no REGISTRY_TOKEN in its metadata"),
        (Some("con_not-a-token-of-this-registry"), "unknown token"),
    ] {
        let refused = match ads(&xds, token, LISTENER, &["ratings"]).await {
            Err(status) => status,
            // The refusal may come as the stream's first message.
            Ok((_tx, mut responses)) => responses
                .message()
                .await
                .expect_err("a stream without a valid token is refused"),
        };
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{token:?}: {refused:?}"
        );
        assert!(refused.message().contains(says), "{token:?}: {refused:?}");
    }

    // A token that may read `reviews` but not `ratings`: every type answers
    // as if `ratings` did not exist, and a change of ratings sends nothing.
    let (tx, mut responses) = ads(&xds, Some(&reviews), LISTENER, &["ratings"])
        .await
        .expect("the stream opens");
    let lds = next(&mut responses).await;
    assert!(listeners(&lds).is_empty(), "{lds:?}");
    tx.send(request(CLUSTER, &["ratings"], None)).unwrap();
    let cds = next(&mut responses).await;
    assert_eq!(cds.type_url, CLUSTER);
    assert!(cds.resources.is_empty(), "{cds:?}");
    tx.send(request(ENDPOINTS, &["ratings"], None)).unwrap();
    let _second = cluster.ratings(2, &[]).await;
    // Requests are answered in order: had the endpoints or the change been
    // sent, they would come before the answer to this listener request.
    tx.send(request(LISTENER, &["ratings", "reviews"], Some(&lds)))
        .unwrap();
    let lds = next(&mut responses).await;
    assert_eq!(listeners(&lds), ["reviews"], "{lds:?}");

    // The same requests with a token that may read `ratings`.
    let (tx, mut responses) = ads(&xds, Some(&readers), LISTENER, &["ratings"])
        .await
        .expect("the stream opens");
    let lds = next(&mut responses).await;
    assert_eq!(listeners(&lds), ["ratings"]);
    assert_eq!(
        route_timeout(&lds),
        Some(Duration::from_secs(1)),
        "the contract's"
    );
    assert_eq!(
        route_retries(&lds),
        Some(("unavailable".to_owned(), 1)),
        "the contract's one retry"
    );
    tx.send(request(CLUSTER, &["ratings"], None)).unwrap();
    let cds = next(&mut responses).await;
    assert_eq!(cds.type_url, CLUSTER);
    let ratings = XdsCluster::decode(cds.resources[0].value.as_slice()).unwrap();
    let outliers = ratings
        .outlier_detection
        .expect("the contract's breaker as outlier detection");
    let ejection = outliers.base_ejection_time.unwrap();
    assert_eq!(
        (ejection.seconds, ejection.nanos),
        (30, 0),
        "the contract's retest_delay"
    );
    assert_eq!(outliers.enforcing_failure_percentage.unwrap().value, 100);
    tx.send(request(ENDPOINTS, &["ratings"], None)).unwrap();
    let eds = next(&mut responses).await;
    assert_eq!(eds.type_url, ENDPOINTS);
    let assignment = ClusterLoadAssignment::decode(eds.resources[0].value.as_slice()).unwrap();
    assert_eq!(assignment.cluster_name, "ratings");
    assert_eq!(
        assignment.endpoints[0].lb_endpoints.len(),
        2,
        "{assignment:?}"
    );
}

test_support::on_both_stores!(
    python_follows_instances_as_they_come_and_go,
    python_keeps_calling_through_a_registry_restart,
    python_retries_unavailable_on_another_instance_then_ejects_it,
    a_call_without_a_deadline_is_ended_by_the_route_before_the_slow_answer,
    node_ends_a_call_without_a_deadline_after_the_contracts_timeout,
    node_calls_reach_every_instance,
    streams_without_a_token_for_ratings_learn_nothing_of_it,
);
