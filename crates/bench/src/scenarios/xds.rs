//! Scenario 10: registryd's xDS server (`--xds-listen`, gRFC A27) beside its
//! native `Watch`, on one registryd (memory store), in the same run.
//!
//! - Propagation: one ADS stream that followed a service's Listener →
//!   Cluster → ClusterLoadAssignment chain and ACKed each, and one native
//!   `Watch` of the same service. Instances are registered one at a time;
//!   each registration is timed from its start to its arrival at both, the
//!   `Watch` event and the EDS response that holds the new endpoint (one
//!   registration, two arrival times), then deregistered, and both see the
//!   removal before the next one.
//! - Cost under churn: 1,000 ADS streams (16 per HTTP/2 connection, the most
//!   registryd's xDS listener serves at once on one), each following the
//!   chain and ACKing every response as a gRPC client does, while instances
//!   of the service register and deregister at a steady rate; registryd's
//!   CPU over the churn, from `/proc`. Then the same churn with 1,000 native
//!   `Watch` streams over the same connections' layout, for comparison.
//!   Each subscriber must see every churned instance while it lives and end
//!   with the service's final set: one that lags by an instance's lifetime,
//!   or stops getting responses, fails the run's check.
//!
//! The ADS client is a raw one over `envoy-types`, as in `tests/xds.rs`:
//! the node's metadata carries `REGISTRY_TOKEN`, and each response is ACKed
//! with its version and nonce.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster as XdsCluster,
            core::v3::Node,
            endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier},
            listener::v3::Listener,
            route::v3::{route::Action, route_action::ClusterSpecifier},
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
        service::discovery::v3::{
            DiscoveryRequest, DiscoveryResponse,
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
    },
    google::protobuf::{Struct, Value, value::Kind},
};
use futures::{StreamExt as _, stream};
use market_proto::registry::v1::{self as pb, ChangeKind, watch_response::Event};
use prost::Message as _;
use registry_client::RegistryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    loadgen::Run,
    procs::{Cost, Meter, Metered, Registry, create_service},
    report::{Check, Row, Section},
    scenarios::{Config, register, watch},
};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// The node metadata key of the stream's token (`registryd::xds::TOKEN_KEY`).
const TOKEN_KEY: &str = "REGISTRY_TOKEN";

/// How long both subscribers are left idle before each registration.
const IDLE_PAUSE: Duration = Duration::from_millis(5);
/// Streams per HTTP/2 connection: registryd's xDS listener declares 16
/// calls per connection (`calls_per_connection` in `xds::LIMITS`), so
/// 1,000 streams go over 63 connections; the `Watch` side gets the same
/// layout. (That limit is a tower concurrency limit, which a stream holds
/// only until its response headers: 100 streams a connection work too.)
const STREAMS_PER_CONNECTION: usize = 16;
/// Instances of the churned service that stay up throughout (so that each
/// EDS response carries a service's worth of endpoints, not just the churn).
const BASE: usize = 10;
/// How long each churned instance lives before it deregisters.
const LIFE: Duration = Duration::from_secs(1);
/// How long the subscribers may take, after the churn, to all reach the
/// final set.
const SETTLE: Duration = Duration::from_secs(15);
/// How long one awaited arrival may take.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs scenario 10.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(
        10,
        "xDS: register → xDS client sees it, beside the native Watch; CPU with 1,000 xDS subscribers under churn",
    );
    let samples = cfg.pick(1000, 100);
    let subscribers = cfg.pick(1000, 100);
    let rate = 10; // registrations (and as many deregistrations) a second
    let window = cfg.secs(10.0, 3.0);

    let (registry, xds) = start_registry().await?;

    // Propagation.
    progress("10 propagation: xDS and Watch, same registrations");
    let token = create_service(&registry.url, &registry.admin_token, "xdsprop").await?;
    let measured = propagation(&registry.url, &xds, &token, "xdsprop", samples).await?;
    registry.daemon.stop().await;
    let (xds_run, watch_run, call_run) = (
        events(&measured.xds),
        events(&measured.watch),
        events(&measured.call),
    );

    // Cost under churn: xDS, then Watch, each on a service of its own.
    let churn = Churn {
        rate,
        total: (rate as f64 * window.as_secs_f64()).round() as usize,
    };
    progress(&format!(
        "10 churn: {subscribers} xDS subscribers, {} instances at {rate}/s",
        churn.total
    ));
    let xds_side = churn_side(Side::Xds, "xdschurn", subscribers, &churn).await?;
    progress(&format!(
        "10 churn: {subscribers} Watch subscribers, the same churn"
    ));
    let watch_side = churn_side(Side::Watch, "watchchurn", subscribers, &churn).await?;

    // The report.
    let label = |n: usize| {
        if n == 1000 {
            "1,000".to_owned()
        } else {
            n.to_string()
        }
    };
    section.note(format!(
        "registryd on the memory store, serving its gRPC API and xDS (`--xds-listen`). \
         Propagation, on one registryd: {samples} instances registered one at a time, each after {} ms of nothing, \
         seen by one native `Watch` stream and one ADS stream (its own connection) that followed \
         Listener → Cluster → ClusterLoadAssignment and ACKed each response; each registration is \
         timed from its start to the `Watch` event and to the EDS response holding the new \
         endpoint, then deregistered, and both see the removal before the next one.",
        IDLE_PAUSE.as_millis()
    ));
    section.note(format!(
        "Churn: {} subscribers of one service, {STREAMS_PER_CONNECTION} streams per \
         HTTP/2 connection (the `calls_per_connection` of registryd's xDS listener; the \
         `Watch` side gets the same layout); the service keeps {BASE} instances \
         and {} more register at {rate}/s, each deregistering {} s later ({} registrations and as \
         many deregistrations); registryd's CPU is metered from the first registration to the \
         last deregistration. The xDS side runs first, then the `Watch` side, each on a fresh \
         registryd (so that each one's memory growth is its own). A subscriber delivers a churned instance when some response \
         (EDS) or event (`Watch`) shows it; every subscriber must deliver every instance and end \
         with the {BASE} that stay within {} s of the churn's end.",
        label(subscribers),
        churn.total,
        LIFE.as_secs_f64(),
        churn.total,
        SETTLE.as_secs()
    ));
    section.note(
        "EDS is state of the world: each response carries every endpoint of the service, and \
         registryd publishes a service's latest resources to its streams (a slow stream skips to \
         the latest). `Watch` sends one small event per change. The bench's client process \
         (ADS or `Watch` streams, and the churn) shares the 2 cores with registryd.",
    );
    if cfg.quick {
        section.note(format!(
            "Quick run: {samples} registrations, {subscribers} subscribers, {:.0} s of churn.",
            window.as_secs_f64()
        ));
    }
    section.tables.push((
        "Register → subscriber sees it".to_owned(),
        vec![
            Row::events("xDS: EDS response, idle, one stream", &xds_run),
            Row::events("native `Watch` event, idle, one stream", &watch_run),
            Row::events(
                "the `Register` call's answer (the same registrations)",
                &call_run,
            ),
            Row::events(
                format!(
                    "xDS, {} subscribers under churn (each subscriber, each instance)",
                    label(subscribers)
                ),
                &xds_side.latencies,
            ),
            Row::events(
                format!(
                    "`Watch`, {} subscribers under churn (each subscriber, each instance)",
                    label(subscribers)
                ),
                &watch_side.latencies,
            ),
        ],
    ));
    let xds_cost = with_rss_growth(&xds_side);
    let watch_cost = with_rss_growth(&watch_side);
    section.costs.push((
        format!("churn, {} xDS subscribers", label(subscribers)),
        xds_cost,
    ));
    section.costs.push((
        format!("churn, {} `Watch` subscribers", label(subscribers)),
        watch_cost,
    ));

    let (px, pw) = (
        xds_run.quantile_us(0.99) as f64,
        watch_run.quantile_us(0.99) as f64,
    );
    section.checks.push(Check::ratio(
        "idle: xDS p99 ≤ 2× `Watch` p99, same registrations",
        px / pw,
        2.0,
        false,
        format!(
            "{:.3} vs {:.3} ms; p50 {:.3} vs {:.3} ms",
            px / 1000.0,
            pw / 1000.0,
            xds_run.quantile_us(0.5) as f64 / 1000.0,
            watch_run.quantile_us(0.5) as f64 / 1000.0
        ),
    ));
    let cpu = |costs: &[Cost]| costs.first().map_or(f64::NAN, |c| c.cpu_pct);
    let (cx, cw) = (cpu(&xds_side.cost), cpu(&watch_side.cost));
    // No fixed target: the issue asks for the figure. It is stated beside
    // `Watch`'s under the same churn, as context.
    section.note(format!(
        "**registryd's CPU under the churn: {cx:.1} % of a core with {} xDS subscribers, \
         {cw:.1} % with as many `Watch` subscribers ({:.2}×)**, for {} EDS responses a second \
         (each ACKed) against {} `Watch` messages a second. No fixed target: context only. \
         Everything else on the machine (other processes, and time the hypervisor took) \
         used {:.0} % of a core during the xDS churn and {:.0} % during the `Watch` churn.",
        label(subscribers),
        cx / cw,
        xds_side.per_second(),
        watch_side.per_second(),
        xds_side.others_pct,
        watch_side.others_pct,
    ));
    let (lx, lw) = (
        xds_side.latencies.quantile_us(0.99) as f64,
        watch_side.latencies.quantile_us(0.99) as f64,
    );
    section.note(format!(
        "The idle target, xDS p99 ≤ 2× `Watch`'s: both start from the same change in the \
         store; xDS adds a hop through the service's cache task and the stream's session, which \
         2× bounds with room for a noisy machine. Under the churn, with {} subscribers each, \
         xDS's p99 is {:.2}× `Watch`'s ({:.1} vs {:.1} ms; context, no target); {:.0} % of the \
         (subscriber, change) pairs got no EDS response of their own, coalesced into a later \
         one (a stream is sent the latest version), against {:.0} % of `Watch` events missed.",
        label(subscribers),
        lx / lw,
        lx / 1000.0,
        lw / 1000.0,
        xds_side.skipped_pct(),
        watch_side.skipped_pct(),
    ));
    for (name, side) in [("xDS", &xds_side), ("`Watch`", &watch_side)] {
        section.checks.push(Check::plain(
            format!("{name}: every subscriber saw every churned instance and the final set"),
            side.delivery(),
            side.all_delivered(),
        ));
    }
    section.took = started.elapsed();
    Ok(section)
}

/// A registryd on the memory store serving xDS too, and its xDS address.
async fn start_registry() -> anyhow::Result<(Registry, String)> {
    let registry = Registry::start(&["--xds-listen", "127.0.0.1:0"])
        .await
        .context(
            "cannot start registryd with --xds-listen (is it built with `--features registryd/xds`?)",
        )?;
    let xds = registry
        .daemon
        .listening("registryd-xds", Duration::from_secs(30))
        .await?;
    Ok((registry, xds))
}

/// Says which part runs now.
fn progress(what: &str) {
    eprintln!("bench:   {what}…");
}

/// A run of event latencies.
fn events(latencies: &[Duration]) -> Run {
    let mut run = Run::from_latencies(latencies);
    run.elapsed = latencies.iter().sum();
    run
}

/// A side's costs, registryd's name saying how much its RSS grew as the
/// streams opened and over the churn.
fn with_rss_growth(side: &ChurnSide) -> Vec<Cost> {
    let mut costs = side.cost.clone();
    if let Some(first) = costs.first_mut() {
        first.name = format!(
            "{} (RSS {:+.1} MiB as the streams opened, {:+.1} MiB over the churn)",
            first.name,
            side.rss_streams_kib as f64 / 1024.0,
            side.rss_churn_kib as f64 / 1024.0
        );
    }
    costs
}

// === the ADS client ===

/// One ADS stream: where its requests go, and its responses.
struct Ads {
    requests: mpsc::UnboundedSender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

/// A request of `type_url` for `names`, ACKing `ack` when given.
fn request(type_url: &str, names: &[String], ack: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.to_vec(),
        version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

impl Ads {
    /// Opens a stream on `channel` as node `node` with `token` in its
    /// metadata, and follows `service`'s chain as a gRPC client does: its
    /// Listener, the cluster its route names, that cluster's endpoints, each
    /// ACKed. Returns the stream and the names it subscribed to by type,
    /// once the first EDS response came (returned too).
    async fn subscribe(
        channel: Channel,
        node: String,
        token: &str,
        service: &str,
    ) -> anyhow::Result<(Self, Subscribed, DiscoveryResponse)> {
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let listeners = vec![service.to_owned()];
        let mut first = request(LISTENER, &listeners, None);
        first.node = Some(Node {
            id: node,
            metadata: Some(Struct {
                fields: [(
                    TOKEN_KEY.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(token.to_owned())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(first).context("queue the first request")?;
        let responses = client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .context("cannot open an ADS stream")?
            .into_inner();
        let mut ads = Self {
            requests: tx,
            responses,
        };
        let mut subscribed = Subscribed {
            listeners,
            clusters: Vec::new(),
            endpoints: Vec::new(),
        };
        loop {
            let response = ads.next().await?;
            ads.ack(&subscribed, &response);
            match response.type_url.as_str() {
                LISTENER if subscribed.clusters.is_empty() => {
                    subscribed.clusters = vec![route_cluster(&response)?];
                    ads.send(request(CLUSTER, &subscribed.clusters, None))?;
                }
                CLUSTER if subscribed.endpoints.is_empty() => {
                    subscribed.endpoints = vec![eds_name(&response)?];
                    ads.send(request(ENDPOINTS, &subscribed.endpoints, None))?;
                }
                ENDPOINTS => return Ok((ads, subscribed, response)),
                _ => {}
            }
        }
    }

    fn send(&self, request: DiscoveryRequest) -> anyhow::Result<()> {
        self.requests
            .send(request)
            .map_err(|_| anyhow::anyhow!("the ADS stream's requests ended"))
    }

    /// ACKs `response`: the same names, its version and nonce.
    fn ack(&self, subscribed: &Subscribed, response: &DiscoveryResponse) {
        let _ = self.send(request(
            &response.type_url,
            subscribed.of(&response.type_url),
            Some(response),
        ));
    }

    /// ACKs every response up to the next EDS one, and returns when that
    /// arrived and the instances it lists; `None` once the stream ends or
    /// sends an EDS response that does not decode.
    async fn next_endpoints(&mut self, subscribed: &Subscribed) -> Option<(Instant, Vec<String>)> {
        while let Ok(Some(response)) = self.responses.message().await {
            let at = Instant::now();
            self.ack(subscribed, &response);
            if response.type_url == ENDPOINTS {
                return endpoint_ids(&response).ok().map(|ids| (at, ids));
            }
        }
        None
    }

    async fn next(&mut self) -> anyhow::Result<DiscoveryResponse> {
        tokio::time::timeout(ARRIVAL_TIMEOUT, self.responses.message())
            .await
            .context("no ADS response within 10 s")?
            .context("the ADS stream failed")?
            .context("the ADS stream ended")
    }
}

/// The names an ADS stream subscribed to, by type.
#[derive(Debug, Clone)]
struct Subscribed {
    listeners: Vec<String>,
    clusters: Vec<String>,
    endpoints: Vec<String>,
}

impl Subscribed {
    fn of(&self, type_url: &str) -> &[String] {
        match type_url {
            LISTENER => &self.listeners,
            CLUSTER => &self.clusters,
            _ => &self.endpoints,
        }
    }
}

/// The cluster the one route of the one Listener in `response` sends to
/// (the route configuration is inline: registryd sends no RDS).
fn route_cluster(response: &DiscoveryResponse) -> anyhow::Result<String> {
    let resource = response
        .resources
        .first()
        .context("the LDS response has no Listener")?;
    let listener = Listener::decode(resource.value.as_slice())?;
    let api = listener
        .api_listener
        .and_then(|a| a.api_listener)
        .context("the Listener has no api_listener")?;
    let manager = HttpConnectionManager::decode(api.value.as_slice())?;
    let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
        anyhow::bail!("the Listener's route configuration is not inline");
    };
    let action = routes
        .virtual_hosts
        .first()
        .and_then(|host| host.routes.first())
        .and_then(|route| route.action.clone());
    match action {
        Some(Action::Route(action)) => match action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => Ok(name),
            other => anyhow::bail!("the route names no cluster: {other:?}"),
        },
        other => anyhow::bail!("the Listener's route has no route action: {other:?}"),
    }
}

/// The name EDS knows the one Cluster in `response` by.
fn eds_name(response: &DiscoveryResponse) -> anyhow::Result<String> {
    let resource = response
        .resources
        .first()
        .context("the CDS response has no Cluster")?;
    let cluster = XdsCluster::decode(resource.value.as_slice())?;
    Ok(cluster
        .eds_cluster_config
        .map(|eds| eds.service_name)
        .filter(|name| !name.is_empty())
        .unwrap_or(cluster.name))
}

/// The instance ids (the endpoints' `hostname`) in an EDS response.
fn endpoint_ids(response: &DiscoveryResponse) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for resource in &response.resources {
        let assignment = ClusterLoadAssignment::decode(resource.value.as_slice())?;
        for locality in assignment.endpoints {
            for endpoint in locality.lb_endpoints {
                if let Some(HostIdentifier::Endpoint(endpoint)) = endpoint.host_identifier {
                    ids.push(endpoint.hostname);
                }
            }
        }
    }
    Ok(ids)
}

// === the registry's side ===

async fn deregister(client: &RegistryClient, lease: u64) -> anyhow::Result<()> {
    client
        .clone()
        .deregister(pb::DeregisterRequest {
            lease_id: lease,
            ..Default::default()
        })
        .await
        .context("cannot deregister")?;
    Ok(())
}

// === propagation ===

/// What a subscriber saw of an instance, and when.
#[derive(Debug)]
enum Seen {
    Added(String, Instant),
    Removed(String, Instant),
}

/// The latencies of one propagation run, one of each per registration.
#[derive(Debug, Default)]
struct Propagation {
    /// To the EDS response with the new endpoint.
    xds: Vec<Duration>,
    /// To the `Watch` event.
    watch: Vec<Duration>,
    /// To the `Register` call's answer.
    call: Vec<Duration>,
}

/// Registers `samples` instances of `service` one at a time: for each, how
/// long from the start of its registration to the EDS response with it, to
/// the `Watch` event, and to its answer.
async fn propagation(
    url: &str,
    xds: &str,
    token: &str,
    service: &str,
    samples: usize,
) -> anyhow::Result<Propagation> {
    let client = registry_client::connect(url, token)?;
    // The ADS stream, on a connection of its own.
    let channel = Endpoint::from_shared(xds.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {xds}"))?;
    let (mut ads, subscribed, _) =
        Ads::subscribe(channel, "bench-propagation".into(), token, service).await?;
    let (xtx, mut xrx) = mpsc::unbounded_channel::<Seen>();
    // Arrivals are timed by a task per subscriber, as they come.
    let ads_reader = tokio::spawn(async move {
        let mut known: HashSet<String> = HashSet::new();
        while let Some((at, ids)) = ads.next_endpoints(&subscribed).await {
            let now: HashSet<String> = ids.into_iter().collect();
            for id in now.difference(&known) {
                let _ = xtx.send(Seen::Added(id.clone(), at));
            }
            for id in known.difference(&now) {
                let _ = xtx.send(Seen::Removed(id.clone(), at));
            }
            known = now;
        }
    });
    let (mut stream, _) = watch(&client, service).await?;
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Seen>();
    let watch_reader = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            let at = Instant::now();
            if let Some(Event::Change(change)) = message.event {
                let added = change.kind() == ChangeKind::Added;
                let Some(instance) = change.instance else {
                    continue;
                };
                let seen = if added {
                    Seen::Added(instance.instance_id, at)
                } else {
                    Seen::Removed(instance.instance_id, at)
                };
                let _ = wtx.send(seen);
            }
        }
    });
    let mut measured = Propagation::default();
    let result = async {
        for i in 0..samples {
            tokio::time::sleep(IDLE_PAUSE).await;
            let id = format!("p{i}");
            let start = Instant::now();
            let lease = register(&client, service, &id, 20_000 + i as u16, 30).await?;
            measured.call.push(start.elapsed());
            measured
                .xds
                .push(arrival(&mut xrx, &id, true).await? - start);
            measured
                .watch
                .push(arrival(&mut wrx, &id, true).await? - start);
            deregister(&client, lease).await?;
            arrival(&mut xrx, &id, false).await?;
            arrival(&mut wrx, &id, false).await?;
        }
        anyhow::Ok(())
    }
    .await;
    ads_reader.abort();
    watch_reader.abort();
    result?;
    Ok(measured)
}

/// When `id` was added (or removed) at a subscriber.
async fn arrival(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    id: &str,
    added: bool,
) -> anyhow::Result<Instant> {
    loop {
        let next = tokio::time::timeout(ARRIVAL_TIMEOUT, seen.recv())
            .await
            .with_context(|| format!("{id} did not reach a subscriber within 10 s"))?
            .context("a subscriber ended")?;
        match next {
            Seen::Added(got, at) if added && got == id => return Ok(at),
            Seen::Removed(got, at) if !added && got == id => return Ok(at),
            _ => {}
        }
    }
}

// === cost under churn ===

/// The churn: `total` instances registered at `rate` a second, each
/// deregistered [`LIFE`] after it registered.
struct Churn {
    rate: u32,
    total: usize,
}

/// Which kind of subscribers a churn run has.
#[derive(Clone, Copy)]
enum Side {
    /// ADS streams.
    Xds,
    /// Native `Watch` streams.
    Watch,
}

/// What one subscriber saw, updated as it goes.
#[derive(Debug)]
struct Tally {
    /// When it first saw churned instance `n`.
    first: Vec<Option<Instant>>,
    /// Churned instances it shows now.
    live: usize,
    /// Base instances it shows now.
    base: usize,
    /// EDS responses or `Watch` messages received.
    updates: u64,
    /// Whether its stream ended.
    ended: bool,
}

impl Tally {
    fn new(total: usize) -> Self {
        Self {
            first: vec![None; total],
            live: 0,
            base: 0,
            updates: 0,
            ended: false,
        }
    }

    /// Takes in what the subscriber shows now, as of `at`.
    fn show<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>, at: Instant) {
        let (mut live, mut base) = (0, 0);
        for id in ids {
            match parse(id) {
                Some(Id::Churned(n)) => {
                    live += 1;
                    if let Some(slot) = self.first.get_mut(n)
                        && slot.is_none()
                    {
                        *slot = Some(at);
                    }
                }
                Some(Id::Base) => base += 1,
                None => {}
            }
        }
        self.live = live;
        self.base = base;
    }

    fn settled(&self) -> bool {
        self.live == 0 && self.base == BASE && self.first.iter().all(Option::is_some)
    }
}

enum Id {
    Churned(usize),
    Base,
}

fn parse(id: &str) -> Option<Id> {
    if let Some(n) = id.strip_prefix('c') {
        n.parse().ok().map(Id::Churned)
    } else if id.starts_with('b') {
        Some(Id::Base)
    } else {
        None
    }
}

/// What a churn run measured.
struct ChurnSide {
    /// registryd's, then the bench's, cost over the churn.
    cost: Vec<Cost>,
    /// registryd's RSS growth while the subscribers opened their streams,
    /// KiB.
    rss_streams_kib: i64,
    /// registryd's RSS growth over the churn, KiB.
    rss_churn_kib: i64,
    /// Register → seen, for every subscriber and churned instance seen.
    latencies: Run,
    subscribers: usize,
    total: usize,
    /// (subscriber, instance) pairs seen.
    delivered: usize,
    /// Subscribers that did not see every instance, or did not end with
    /// the final set, or whose stream ended.
    failed: usize,
    /// Updates (EDS responses or `Watch` messages) received over the churn,
    /// all subscribers.
    updates: u64,
    /// The fewest updates a subscriber got over the churn.
    fewest: u64,
    /// The churn's length.
    metered: Duration,
    /// The CPU every other process on the machine used over the churn, in
    /// % of one core: whether something else loaded the machine.
    others_pct: f64,
}

impl ChurnSide {
    fn per_second(&self) -> String {
        format!(
            "{:.0}",
            self.updates as f64 / self.metered.as_secs_f64().max(1e-9)
        )
    }

    /// The share of the changes' updates that no subscriber got, in %: EDS
    /// versions skipped for a later one, or `Watch` events lost.
    fn skipped_pct(&self) -> f64 {
        let expected = (self.subscribers * 2 * self.total) as f64;
        (1.0 - self.updates as f64 / expected.max(1.0)).max(0.0) * 100.0
    }

    fn all_delivered(&self) -> bool {
        self.failed == 0 && self.delivered == self.subscribers * self.total
    }

    fn delivery(&self) -> String {
        format!(
            "{} of {} (subscriber, instance) sightings; {} of {} subscribers failed; {} updates \
             received over the churn, at least {} per subscriber, for {} changes",
            self.delivered,
            self.subscribers * self.total,
            self.failed,
            self.subscribers,
            self.updates,
            self.fewest,
            2 * self.total
        )
    }
}

/// Starts a registryd of its own (so that its memory growth is this side's
/// alone), opens `subscribers` streams of `side` on `service` (created
/// here, with [`BASE`] instances), runs the churn, and tells what registryd
/// cost and what each subscriber saw.
async fn churn_side(
    side: Side,
    service: &str,
    subscribers: usize,
    churn: &Churn,
) -> anyhow::Result<ChurnSide> {
    let (registry, xds) = start_registry().await?;
    let result = churn_on(&registry, &xds, side, service, subscribers, churn).await;
    registry.daemon.stop().await;
    result
}

/// [`churn_side`] on `registry`, whose xDS address is `xds`.
async fn churn_on(
    registry: &Registry,
    xds: &str,
    side: Side,
    service: &str,
    subscribers: usize,
    churn: &Churn,
) -> anyhow::Result<ChurnSide> {
    let token = create_service(&registry.url, &registry.admin_token, service).await?;
    let client = registry_client::connect(&registry.url, &token)?;
    for b in 0..BASE {
        register(&client, service, &format!("b{b}"), 10_000 + b as u16, 300).await?;
    }
    let rss_before = crate::procs::memory_kib(registry.daemon.pid())?.0;
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..subscribers)
        .map(|_| Arc::new(Mutex::new(Tally::new(churn.total))))
        .collect();
    let connections = subscribers.div_ceil(STREAMS_PER_CONNECTION);
    let tasks = match side {
        Side::Xds => {
            let mut channels = Vec::new();
            for _ in 0..connections {
                channels.push(
                    Endpoint::from_shared(xds.to_owned())?
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .with_context(|| format!("cannot connect to {xds}"))?,
                );
            }
            let opened = stream::iter(0..subscribers)
                .map(|s| {
                    let channel = channels[s / STREAMS_PER_CONNECTION].clone();
                    let token = token.clone();
                    let tally = tallies[s].clone();
                    async move {
                        let (ads, subscribed, first) =
                            Ads::subscribe(channel, format!("bench-{s}"), &token, service).await?;
                        let ids = endpoint_ids(&first)?;
                        tally
                            .lock()
                            .expect("tally")
                            .show(ids.iter().map(String::as_str), Instant::now());
                        anyhow::Ok(tokio::spawn(follow_ads(ads, subscribed, tally)))
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?
        }
        Side::Watch => {
            let mut clients = Vec::new();
            for _ in 0..connections {
                clients.push(registry_client::connect(&registry.url, &token)?);
            }
            let opened = stream::iter(0..subscribers)
                .map(|s| {
                    let client = clients[s / STREAMS_PER_CONNECTION].clone();
                    let tally = tallies[s].clone();
                    async move {
                        let (stream, first) = watch(&client, service).await?;
                        let mut known = HashSet::new();
                        take_watch(&mut known, first, &tally, Instant::now());
                        anyhow::Ok(tokio::spawn(follow_watch(stream, known, tally)))
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?
        }
    };
    let stop_tasks = || {
        for task in &tasks {
            task.abort();
        }
    };
    let synced = tallies
        .iter()
        .filter(|t| t.lock().expect("tally").base == BASE)
        .count();
    if synced != subscribers {
        stop_tasks();
        anyhow::bail!("only {synced} of {subscribers} subscribers saw the {BASE} base instances");
    }
    let rss_opened = crate::procs::memory_kib(registry.daemon.pid())?.0;
    let updates_before: Vec<u64> = tallies
        .iter()
        .map(|t| t.lock().expect("tally").updates)
        .collect();

    // The churn, metered.
    let meter = Meter::start([
        Metered::of(&registry.daemon),
        Metered::this("subscribers and churn"),
    ]);
    let metered_from = Instant::now();
    let busy_before = machine_busy_ticks();
    let starts = match run_churn(&client, service, churn).await {
        Ok(starts) => starts,
        Err(error) => {
            stop_tasks();
            return Err(error);
        }
    };
    let cost = meter.finish();
    let metered = metered_from.elapsed();
    let busy = machine_busy_ticks().saturating_sub(busy_before) as f64
        / clock_ticks() as f64
        / metered.as_secs_f64().max(1e-9)
        * 100.0;
    let others_pct = (busy - cost.iter().map(|c| c.cpu_pct).sum::<f64>()).max(0.0);
    let rss_after = crate::procs::memory_kib(registry.daemon.pid())?.0;
    let updates: u64 = tallies
        .iter()
        .zip(&updates_before)
        .map(|(t, before)| t.lock().expect("tally").updates - before)
        .sum();
    let fewest = tallies
        .iter()
        .zip(&updates_before)
        .map(|(t, before)| t.lock().expect("tally").updates - before)
        .min()
        .unwrap_or(0);

    // Every subscriber should reach the final set soon after.
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline
        && !tallies.iter().all(|t| {
            let t = t.lock().expect("tally");
            t.settled() || t.ended
        })
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tasks();
    let mut latencies = Vec::with_capacity(subscribers * churn.total);
    let (mut delivered, mut failed) = (0, 0);
    for tally in &tallies {
        let tally = tally.lock().expect("tally");
        for (first, start) in tally.first.iter().zip(&starts) {
            if let Some(at) = first {
                delivered += 1;
                latencies.push(at.saturating_duration_since(*start));
            }
        }
        failed += usize::from(!tally.settled() || tally.ended);
    }
    Ok(ChurnSide {
        cost,
        rss_streams_kib: rss_opened as i64 - rss_before as i64,
        rss_churn_kib: rss_after as i64 - rss_opened as i64,
        latencies: events(&latencies),
        subscribers,
        total: churn.total,
        delivered,
        failed,
        updates,
        fewest,
        metered,
        others_pct,
    })
}

/// The CPU time every process on the machine used so far, in clock ticks
/// (the first line of `/proc/stat`, idle and waiting left out).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    line.split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, ticks)| ticks.parse::<u64>().ok())
        .sum()
}

/// The kernel's clock ticks per second.
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |hz| hz as u64)
}

/// Registers `churn.total` instances of `service` at `churn.rate` a second,
/// each deregistered [`LIFE`] later; returns when each registration started.
async fn run_churn(
    client: &RegistryClient,
    service: &str,
    churn: &Churn,
) -> anyhow::Result<Vec<Instant>> {
    let mut starts = Vec::with_capacity(churn.total);
    let mut live: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / churn.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..churn.total {
        tick.tick().await;
        expire(client, &mut live).await?;
        let start = Instant::now();
        let port = 30_000 + (n % 30_000) as u16;
        let lease = register(client, service, &format!("c{n}"), port, 30).await?;
        starts.push(start);
        live.push_back((lease, start));
    }
    while let Some((_, at)) = live.front().copied() {
        tokio::time::sleep(LIFE.saturating_sub(at.elapsed())).await;
        expire(client, &mut live).await?;
    }
    Ok(starts)
}

/// Deregisters the instances of `live` (oldest first) that have lived
/// [`LIFE`].
async fn expire(
    client: &RegistryClient,
    live: &mut VecDeque<(u64, Instant)>,
) -> anyhow::Result<()> {
    while let Some((lease, at)) = live.front().copied()
        && at.elapsed() >= LIFE
    {
        deregister(client, lease).await?;
        live.pop_front();
    }
    Ok(())
}

/// Follows an ADS stream: ACKs every response, and tallies each EDS one.
async fn follow_ads(mut ads: Ads, subscribed: Subscribed, tally: Arc<Mutex<Tally>>) {
    while let Some((at, ids)) = ads.next_endpoints(&subscribed).await {
        let mut tally = tally.lock().expect("tally");
        tally.updates += 1;
        tally.show(ids.iter().map(String::as_str), at);
    }
    tally.lock().expect("tally").ended = true;
}

/// Follows a `Watch` stream, and tallies each message.
async fn follow_watch(
    mut stream: tonic::Streaming<pb::WatchResponse>,
    mut known: HashSet<String>,
    tally: Arc<Mutex<Tally>>,
) {
    while let Ok(Some(message)) = stream.message().await {
        let at = Instant::now();
        take_watch(&mut known, message, &tally, at);
    }
    tally.lock().expect("tally").ended = true;
}

/// Applies one `Watch` message to what a subscriber knows.
fn take_watch(
    known: &mut HashSet<String>,
    message: pb::WatchResponse,
    tally: &Mutex<Tally>,
    at: Instant,
) {
    match message.event {
        Some(Event::Snapshot(snapshot)) => {
            *known = snapshot
                .instances
                .into_iter()
                .map(|i| i.instance_id)
                .collect();
        }
        Some(Event::Change(change)) => {
            let added = change.kind() == ChangeKind::Added;
            if let Some(instance) = change.instance {
                if added {
                    known.insert(instance.instance_id);
                } else {
                    known.remove(&instance.instance_id);
                }
            }
        }
        Some(Event::Progress(_)) | None => return,
    }
    let mut tally = tally.lock().expect("tally");
    tally.updates += 1;
    tally.show(known.iter().map(String::as_str), at);
}
