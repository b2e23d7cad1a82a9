//! Scenarios 6, 7 and 8: `registryd` (memory store) against etcd doing the
//! same with leases and watches, in the same run.
//!
//! - 6, propagation: from the start of a registration to a watcher seeing
//!   it, (a) idle, (b) while a fleet of instances heartbeats every 3 s,
//!   (c) fanned out to 1,000 watchers. For etcd a registration is one `Put`
//!   on a lease granted beforehand (the grant is not counted: the
//!   comparison is the most favourable to etcd).
//! - 7, cost: CPU of each server while the fleet (10,000 in a full run)
//!   heartbeats every 3 s, and resident memory per live instance.
//! - 8, expiry: how late after its TTL a dead instance's removal reaches a
//!   watcher.
//!
//! Both sides are driven the way their clients would: the registry's gRPC
//! API through the workspace's generated client, etcd through the
//! `etcd-client` crate, except for etcd's lease keep-alives, which go over
//! one `LeaseKeepAlive` stream for every lease, as etcd's own Go client does
//! (`etcd-client` opens a stream per lease, which costs etcd more). The
//! registry's fleet renews its leases the same way, over one `KeepAlive`
//! stream.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use etcd_client::{EventType, PutOptions, WatchOptions};
use futures::{StreamExt as _, future::join_all};
use market_proto::registry::v1::{self as pb, ChangeKind, RemovalReason, watch_response::Event};
use registry_client::RegistryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    charts,
    loadgen::{self, Run},
    procs::{Meter, Metered, Registry, children_running, create_service, memory_kib},
    report::{Check, Row, Section},
    scenarios::Config,
};

/// Debian's etcd.
const ETCD: &str = "/usr/bin/etcd";

/// The fleet's TTL: heartbeats every third of it, 3 s.
const FLEET_TTL: u32 = 9;
/// How often each fleet member heartbeats.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// How long both sides are left idle before each step of 6 (a).
const IDLE_PAUSE: Duration = Duration::from_millis(5);
/// The TTL of scenario 8's instances, in seconds (etcd's minimum lease TTL
/// with the election timeout test-support gives it is below this).
const EXPIRY_TTL: u32 = 2;

/// Runs scenarios 6, 7 and 8.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Vec<Section>> {
    let mut s6 = Section::new(
        6,
        "Registry propagation: register → watcher notified, vs etcd",
    );
    let mut s7 = Section::new(7, "Registry cost with a heartbeating fleet, vs etcd");
    let mut s8 = Section::new(8, "Expiry precision: TTL → Removed at a watcher, vs etcd");
    if !Path::new(ETCD).exists() {
        for s in [&mut s6, &mut s7, &mut s8] {
            s.note(format!(
                "{ETCD} is missing (Debian's etcd-server; tests/run.sh installs it): not run."
            ));
        }
        return Ok(vec![s6, s7, s8]);
    }
    let t6 = Instant::now();
    let fleet = cfg.pick(10_000, 2_000);
    let samples = cfg.pick(1000, 100);
    let watchers = 1_000;
    let fan_rounds = cfg.pick(50, 5);
    let expiring = cfg.pick(100, 30);
    let window = cfg.secs(12.0, 4.0);

    let registry = Registry::start(&[]).await?;
    let ours = Ours::new(&registry).await?;
    let (etcd, first_etcd) = start_etcd(None).await?;
    let meter = || {
        Meter::start([
            Metered::of(&registry.daemon),
            Metered {
                name: "etcd".into(),
                pid: first_etcd,
            },
            Metered::this("clients and watchers"),
        ])
    };
    let theirs = Theirs::new(&etcd.endpoints()).await?;

    // 6 (a) idle, and (c) fan-out.
    progress("6 (a) idle and (c) fan-out");
    // Interleaved, one sample of each side in turn, so both see the same
    // moments of a noisy machine.
    let metered = meter();
    let (idle, round_trip) = {
        let (mut o, mut t) = (ours.prober().await?, theirs.prober().await?);
        let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Every step starts after a pause with nothing to do on either side:
        // how idle a server is depends on how long it has been so, which the
        // other side's step before it would otherwise set.
        let pause = || tokio::time::sleep(IDLE_PAUSE);
        for _ in 0..samples {
            pause().await;
            a.push(o.sample().await?);
            pause().await;
            b.push(t.sample().await?);
            pause().await;
            c.push(o.round_trip().await?);
            pause().await;
            d.push(t.round_trip().await?);
        }
        ([events(&a), events(&b)], [events(&c), events(&d)])
    };
    let idle_cost = metered.finish();
    let metered = meter();
    let fan = {
        let (mut o, mut t) = (ours.fan(watchers).await?, theirs.fan(watchers).await?);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..fan_rounds {
            a.extend(o.round(r).await?);
            b.extend(t.round(r).await?);
        }
        [events(&a), events(&b)]
    };
    let t6 = t6.elapsed();
    // 8: expiry.
    progress("8 expiry");
    let t8 = Instant::now();
    let fan_cost = metered.finish();
    let metered = meter();
    let expiry = [ours.expiry(expiring).await?, theirs.expiry(expiring).await?];
    let expiry_cost = metered.finish();
    let t8 = t8.elapsed();
    // 6 (b) and 7: one side at a time under its fleet.
    // A fresh registry and a fresh etcd for the fleet, one after the other,
    // so that each one's memory growth is the fleet's alone and neither
    // shares the CPU with the other.
    registry.daemon.stop().await;
    let old_etcd = first_etcd;
    drop(etcd);
    progress("6 (b) and 7 with the fleet: registryd");
    let registry = Registry::start(&[]).await?;
    let ours = Ours::new(&registry).await?;
    let t7 = Instant::now();
    let (ours_busy, ours_cost, ours_per) = {
        let before = memory_kib(registry.daemon.pid())?.0;
        let heartbeats = ours.fleet(fleet).await?;
        let meter = Meter::start([Metered::of(&registry.daemon), Metered::this("fleet client")]);
        let started = Instant::now();
        let busy = ours.propagation(samples).await?;
        tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
        let cost = meter.finish();
        // Past its TTL, the fleet is still there only if its renewals worked
        // (a quick run's window is shorter than the TTL: wait for it).
        let past_ttl = Duration::from_secs(FLEET_TTL.into()) + HEARTBEAT;
        tokio::time::sleep(past_ttl.saturating_sub(started.elapsed())).await;
        let live = ours.fleet_size().await?;
        anyhow::ensure!(
            live == fleet,
            "registryd lists {live} of the fleet's {fleet} instances after the window: renewals failed"
        );
        stop(heartbeats);
        let after = memory_kib(registry.daemon.pid())?.0;
        (busy, cost, per_instance_bytes(before, after, fleet))
    };
    registry.daemon.stop().await;
    progress("6 (b) and 7 with the fleet: etcd");
    let (etcd, etcd_pid) = start_etcd(Some(old_etcd)).await?;
    let theirs = Theirs::new(&etcd.endpoints()).await?;
    let (theirs_busy, theirs_cost, theirs_per) = {
        let before = memory_kib(etcd_pid)?.0;
        let heartbeats = theirs.fleet(fleet).await?;
        let etcd_proc = Metered {
            name: "etcd".into(),
            pid: etcd_pid,
        };
        let meter = Meter::start([etcd_proc, Metered::this("fleet client")]);
        let started = Instant::now();
        let busy = theirs.propagation(samples).await?;
        tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
        let cost = meter.finish();
        stop(heartbeats);
        let after = memory_kib(etcd_pid)?.0;
        (busy, cost, per_instance_bytes(before, after, fleet))
    };
    let t7 = t7.elapsed();

    // Scenario 6's report.
    s6.note(format!(
        "{samples} registrations one after the other per case, (a) and (c) interleaved between \
         registryd and etcd; (b) with {fleet} instances of another \
         service (etcd: another prefix) heartbeating every {} s; (c) {watchers} watchers over 10 \
         connections, {fan_rounds} registrations, one latency per watcher and registration.",
        HEARTBEAT.as_secs()
    ));
    s6.note("The costs of (b) are scenario 7's table.");
    s6.costs
        .push(("(a) idle, both sides in turn".to_owned(), idle_cost));
    s6.costs.push((
        "(c) 1,000 watchers each, both sides in turn".to_owned(),
        fan_cost,
    ));
    s8.costs
        .push(("expiry, registryd then etcd".to_owned(), expiry_cost));
    let busy_case = format!("{fleet} live, heartbeating");
    let cases = ["idle", busy_case.as_str(), "1,000 watchers"];
    let pairs = [
        (&idle[0], &idle[1]),
        (&ours_busy, &theirs_busy),
        (&fan[0], &fan[1]),
    ];
    let mut rows = Vec::new();
    for (case, (o, t)) in cases.iter().zip(pairs) {
        rows.push(Row::events(format!("registryd, {case}"), o));
        rows.push(Row::events(format!("etcd, {case}"), t));
        let (po, pt) = (o.quantile_us(0.99) as f64, t.quantile_us(0.99) as f64);
        if *case == "idle" {
            rows.push(Row::events(
                "registryd, idle: one `Resolve` round trip",
                &round_trip[0],
            ));
            rows.push(Row::events(
                "etcd, idle: one `Range` round trip",
                &round_trip[1],
            ));
            let floor = round_trip[0].quantile_us(0.99) as f64;
            let their_floor = round_trip[1].quantile_us(0.99) as f64;
            s6.note(format!(
                "(a) also times, after each registration, one round trip that changes nothing: \
                 `Resolve` to registryd, a `Range` read to etcd. A propagation takes a round \
                 trip's two ways (the registration in, the event out), so the round trip is its \
                 floor on that server. Every step of (a) starts after {} ms of nothing. \
                 Round trip p99: registryd {:.3} ms, {:.2}× etcd's propagation p99; etcd \
                 {:.3} ms. Propagation p99 over round trip p99: registryd {:.2}×, etcd {:.2}×.",
                IDLE_PAUSE.as_millis(),
                floor / 1000.0,
                floor / pt,
                their_floor / 1000.0,
                po / floor,
                pt / their_floor,
            ));
        }
        s6.checks.push(Check::ratio(
            format!("{case}: p99 ≤ 0.5× etcd's"),
            po / pt,
            0.5,
            false,
            format!("{:.3} vs {:.3} ms", po / 1000.0, pt / 1000.0),
        ));
    }
    s6.tables
        .push(("Register → watcher notified".to_owned(), rows));
    let (path, name) = cfg.chart("s6-propagation.svg");
    charts::by_case(
        &path,
        "Scenario 6: propagation p99 by registry load",
        "p99 register → notified (ms)",
        &cases.map(str::to_owned),
        &[
            (
                "registryd".to_owned(),
                pairs
                    .iter()
                    .map(|(o, _)| o.quantile_us(0.99) as f64 / 1000.0)
                    .collect(),
            ),
            (
                "etcd".to_owned(),
                pairs
                    .iter()
                    .map(|(_, t)| t.quantile_us(0.99) as f64 / 1000.0)
                    .collect(),
            ),
        ],
    )?;
    s6.charts.push(name);
    s6.took = t6;

    // Scenario 7's report.
    s7.note(format!(
        "{fleet} instances registered (etcd: a lease and a key each), renewed every {} s \
         over one stream (registryd: `KeepAlive`; etcd: `LeaseKeepAlive`), metered over {:.0} s while scenario 6 (b) runs. \
         Memory per instance is the growth of RSS from before the fleet registered to the end.",
        HEARTBEAT.as_secs(),
        window.as_secs_f64()
    ));
    if cfg.quick {
        s7.note("Quick run: a fleet of 2,000, not 10,000.");
    }
    let cpu = |costs: &[crate::procs::Cost]| costs.first().map_or(f64::NAN, |c| c.cpu_pct);
    s7.costs
        .push(("registryd with the fleet".to_owned(), ours_cost.clone()));
    s7.costs
        .push(("etcd with the fleet".to_owned(), theirs_cost.clone()));
    s7.checks.push(Check::ratio(
        "CPU ≤ 0.25× etcd's",
        cpu(&ours_cost) / cpu(&theirs_cost),
        0.25,
        false,
        format!(
            "{:.1} % vs {:.1} % of a core",
            cpu(&ours_cost),
            cpu(&theirs_cost)
        ),
    ));
    s7.checks.push(Check::plain(
        "≤ 1 KiB RSS per live instance",
        format!("{ours_per:.0} B per instance (etcd: {theirs_per:.0} B per lease and key)"),
        ours_per <= 1024.0,
    ));
    s7.took = t7;

    // Scenario 8's report.
    s8.note(format!(
        "{expiring} instances registered {} ms apart with a {EXPIRY_TTL} s TTL and never heartbeated; \
         lateness is when the watcher saw the removal minus (when the registration (etcd: the \
         lease grant) returned + TTL).",
        20
    ));
    s8.tables.push((
        "Lateness of the removal after the TTL".to_owned(),
        vec![
            Row::events("registryd", &expiry[0]),
            Row::events("etcd", &expiry[1]),
        ],
    ));
    let (lo, lt) = (
        expiry[0].quantile_us(0.99) as f64,
        expiry[1].quantile_us(0.99) as f64,
    );
    s8.checks.push(Check::plain(
        "≤ 100 ms late, p99",
        format!(
            "{:.1} ms ({:.2}× the bound; etcd: {:.1} ms)",
            lo / 1000.0,
            lo / 100_000.0,
            lt / 1000.0
        ),
        lo <= 100_000.0,
    ));
    let (path, name) = cfg.chart("s8-expiry.svg");
    charts::latency_distribution(
        &path,
        "Scenario 8: removal lateness after the TTL",
        &[
            ("registryd".to_owned(), &expiry[0].hist),
            ("etcd".to_owned(), &expiry[1].hist),
        ],
    )?;
    s8.charts.push(name);
    s8.took = t8;
    Ok(vec![s6, s7, s8])
}

/// Starts a one-member etcd with test-support (on tmpfs), and finds its pid
/// (not `old`, a member stopped just before).
async fn start_etcd(old: Option<u32>) -> anyhow::Result<(test_support::Etcd, u32)> {
    let etcd = test_support::Etcd::start(1).await;
    let pid = etcd_pid(old)?;
    Ok((etcd, pid))
}

/// The pid of the etcd this process started, other than `old`.
fn etcd_pid(old: Option<u32>) -> anyhow::Result<u32> {
    let exe = std::fs::canonicalize(ETCD).unwrap_or_else(|_| ETCD.into());
    children_running(&exe)
        .into_iter()
        .find(|pid| Some(*pid) != old)
        .context("cannot find the etcd process started for the bench")
}

/// Says which part runs now (the registry scenarios take a while).
fn progress(what: &str) {
    eprintln!("bench:   {what}…");
}

/// How late each instance of `due` (its expected removal time) was removed,
/// from the removals `arrivals` reports as they arrive.
async fn lateness<K: std::hash::Hash + Eq>(
    arrivals: &mut mpsc::UnboundedReceiver<(K, Instant)>,
    mut due: std::collections::HashMap<K, Instant>,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    while !due.is_empty() {
        let (key, at) = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
            .await
            .context("no removal within 30 s")?
            .context("the watch ended")?;
        if let Some(expected) = due.remove(&key) {
            latencies.push(at.saturating_duration_since(expected));
        }
    }
    Ok(latencies)
}

/// Stops a fleet's tasks.
fn stop(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.abort();
    }
}

/// RSS growth per instance, in bytes.
fn per_instance_bytes(before_kib: u64, after_kib: u64, n: usize) -> f64 {
    after_kib.saturating_sub(before_kib) as f64 * 1024.0 / n.max(1) as f64
}

/// A run of event latencies.
fn events(latencies: &[Duration]) -> Run {
    let mut run = loadgen::Run::from_latencies(latencies);
    run.elapsed = latencies.iter().sum();
    run
}

/// One side's fan-out: watchers that report each arrival, and a way to
/// register instance `r`.
struct FanOut<K> {
    watchers: usize,
    arrivals: mpsc::UnboundedReceiver<(K, Instant)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Registers instance `r`: its key and when the registration started.
    register: Register<K>,
}

/// Registers instance `r` of a fan-out: its key and when the registration
/// started.
type Register<K> = Box<
    dyn Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<(K, Instant)>> + Send>>
        + Send
        + Sync,
>;

impl<K: PartialEq> FanOut<K> {
    /// Registers instance `r` and waits until every watcher saw it: each
    /// watcher's latency.
    async fn round(&mut self, r: usize) -> anyhow::Result<Vec<Duration>> {
        let (key, start) = (self.register)(r).await?;
        let mut latencies = Vec::with_capacity(self.watchers);
        while latencies.len() < self.watchers {
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), self.arrivals.recv())
                .await
                .context("the watchers were not all notified within 30 s")?
                .context("every watcher ended")?;
            if got == key {
                latencies.push(at.saturating_duration_since(start));
            }
        }
        Ok(latencies)
    }
}

impl<K> Drop for FanOut<K> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// === registryd ===

/// Registers instances of `bench` one at a time and times each until the
/// watcher sees it.
struct OursProber {
    client: RegistryClient,
    stream: tonic::Streaming<pb::WatchResponse>,
    round: u32,
    next: usize,
}

impl OursProber {
    async fn sample(&mut self) -> anyhow::Result<Duration> {
        let id = format!("p{}-{}", self.round, self.next);
        self.next += 1;
        // Timed to the event's arrival, whether or not the answer to the
        // registration came first.
        let Self { client, stream, .. } = self;
        let start = Instant::now();
        let (lease, seen) =
            tokio::try_join!(super::register(client, "bench", &id, 9, 30), async {
                Ours::wait_for(stream, ChangeKind::Added, &id).await?;
                anyhow::Ok(Instant::now())
            })?;
        let took = seen - start;
        self.client
            .clone()
            .deregister(pb::DeregisterRequest {
                lease_id: lease,
                ..Default::default()
            })
            .await?;
        Ok(took)
    }

    /// One `Resolve` of the service, which changes nothing and notifies no
    /// one: the round trip a registration cannot beat.
    async fn round_trip(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.client
            .clone()
            .resolve(pb::ResolveRequest {
                service: "bench".into(),
            })
            .await?;
        Ok(start.elapsed())
    }
}

/// The registry side: a client per service (each has its own token).
struct Ours {
    url: String,
    /// `bench`: propagation.
    bench: (RegistryClient, String),
    /// `fan`: fan-out.
    fan: (RegistryClient, String),
    /// `expiry`: scenario 8.
    expiry: (RegistryClient, String),
    /// `fleet`: the heartbeating instances.
    fleet: (RegistryClient, String),
}

impl Ours {
    async fn new(registry: &Registry) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for name in ["bench", "fan", "expiry", "fleet"] {
            let token = create_service(&registry.url, &registry.admin_token, name).await?;
            clients.push((registry_client::connect(&registry.url, &token)?, token));
        }
        let mut clients = clients.into_iter();
        let mut next = || clients.next().expect("four clients");
        Ok(Self {
            url: registry.url.clone(),
            bench: next(),
            fan: next(),
            expiry: next(),
            fleet: next(),
        })
    }

    /// Waits on `stream` for a change of `kind` to instance `id`.
    async fn wait_for(
        stream: &mut tonic::Streaming<pb::WatchResponse>,
        kind: ChangeKind,
        id: &str,
    ) -> anyhow::Result<()> {
        while let Some(message) = stream.message().await? {
            if let Some(Event::Change(change)) = message.event
                && change.kind() == kind
                && change
                    .instance
                    .as_ref()
                    .is_some_and(|i| i.instance_id == id)
            {
                return Ok(());
            }
        }
        anyhow::bail!("the watch of {id} ended")
    }

    /// A watcher of `bench` and a client that registers there.
    async fn prober(&self) -> anyhow::Result<OursProber> {
        let (client, _) = &self.bench;
        Ok(OursProber {
            stream: super::watch(client, "bench").await?.0,
            client: client.clone(),
            round: rand_suffix(),
            next: 0,
        })
    }

    /// `samples` propagation latencies, one after the other.
    async fn propagation(&self, samples: usize) -> anyhow::Result<Run> {
        let mut prober = self.prober().await?;
        let mut latencies = Vec::new();
        for _ in 0..samples {
            latencies.push(prober.sample().await?);
        }
        Ok(events(&latencies))
    }

    /// `watchers` watchers of `fan`, over a connection per 100 (the
    /// registry serves at most 256 calls per connection).
    async fn fan(&self, watchers: usize) -> anyhow::Result<FanOut<String>> {
        let (client, token) = &self.fan;
        let (tx, rx) = mpsc::unbounded_channel::<(String, Instant)>();
        let mut connections = Vec::new();
        for _ in 0..watchers.div_ceil(100) {
            connections.push(registry_client::connect(&self.url, token)?);
        }
        let mut tasks = Vec::new();
        for w in 0..watchers {
            let (mut stream, _) = super::watch(&connections[w / 100], "fan").await?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(message)) = stream.message().await {
                    let at = Instant::now();
                    if let Some(Event::Change(change)) = message.event
                        && change.kind() == ChangeKind::Added
                        && let Some(instance) = change.instance
                    {
                        let _ = tx.send((instance.instance_id, at));
                    }
                }
            }));
        }
        let client = client.clone();
        Ok(FanOut {
            watchers,
            arrivals: rx,
            tasks,
            register: Box::new(move |r| {
                let client = client.clone();
                Box::pin(async move {
                    let id = format!("f{r}");
                    let start = Instant::now();
                    super::register(&client, "fan", &id, 9, 30).await?;
                    Ok((id, start))
                })
            }),
        })
    }

    async fn expiry(&self, n: usize) -> anyhow::Result<Run> {
        let (client, _) = &self.expiry;
        let (mut stream, _) = super::watch(client, "expiry").await?;
        // Removals are timed as they arrive, while registrations still go on.
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
        let reader = tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let at = Instant::now();
                if let Some(Event::Change(change)) = message.event
                    && change.kind() == ChangeKind::Removed
                    && change.reason() == RemovalReason::Expired
                    && let Some(instance) = change.instance
                {
                    let _ = tx.send((instance.instance_id, at));
                }
            }
        });
        let mut due = std::collections::HashMap::new();
        for i in 0..n {
            let id = format!("e{i}");
            super::register(client, "expiry", &id, 9, EXPIRY_TTL).await?;
            due.insert(id, Instant::now() + Duration::from_secs(EXPIRY_TTL.into()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let latencies = lateness(&mut rx, due).await;
        reader.abort();
        Ok(events(&latencies?))
    }

    /// How many instances of `fleet` the registry lists.
    async fn fleet_size(&self) -> anyhow::Result<usize> {
        let (client, _) = &self.fleet;
        let resolved = client
            .clone()
            .resolve(pb::ResolveRequest {
                service: "fleet".into(),
            })
            .await?;
        Ok(resolved.into_inner().instances.len())
    }

    /// Registers `n` instances of `fleet` and renews each every 3 s over one
    /// `KeepAlive` stream, until the returned tasks are aborted.
    async fn fleet(&self, n: usize) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let (client, _) = &self.fleet;
        let ids: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
        let mut leases = Vec::new();
        for chunk in ids.chunks(64) {
            let registered = join_all(
                chunk
                    .iter()
                    .map(|id| super::register(client, "fleet", id, 9, FLEET_TTL)),
            )
            .await;
            for lease in registered {
                leases.push(lease?);
            }
        }
        // One `KeepAlive` stream for the fleet, as etcd's side uses one
        // `LeaseKeepAlive` stream.
        let (tx, rx) = mpsc::channel::<pb::KeepAliveRequest>(65_536);
        let mut responses = client
            .clone()
            .keep_alive(ReceiverStream::new(rx))
            .await
            .context("cannot open registryd's keep-alive stream")?
            .into_inner();
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = responses.next().await {} });
        let tx = Arc::new(tx);
        let beats = spread(leases, move |lease_id| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(pb::KeepAliveRequest { lease_id }).await;
            }
        });
        Ok(vec![beats, drain])
    }
}

/// A suffix that keeps a run's instance ids apart from another's.
fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Calls `beat` for every lease once per [`HEARTBEAT`], spread evenly over
/// the period in ticks of 10 ms, until aborted.
fn spread<T, F, Fut>(leases: Vec<T>, beat: F) -> tokio::task::JoinHandle<()>
where
    T: Copy + Send + Sync + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let tick = Duration::from_millis(10);
        let ticks = (HEARTBEAT.as_millis() / tick.as_millis()) as usize;
        let per_tick = leases.len().div_ceil(ticks);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for chunk in leases.chunks(per_tick.max(1)).cycle() {
            interval.tick().await;
            for lease in chunk {
                tokio::spawn(beat(*lease));
            }
        }
    })
}

// === etcd ===

/// Puts keys under `/bench/` (each on a lease granted beforehand) one at a
/// time and times each until the watcher sees it.
struct TheirsProber {
    client: etcd_client::Client,
    stream: etcd_client::WatchStream,
    round: u32,
    next: usize,
}

impl TheirsProber {
    async fn sample(&mut self) -> anyhow::Result<Duration> {
        let key = format!("/bench/p{}-{}", self.round, self.next);
        self.next += 1;
        let lease = self.client.lease_grant(30, None).await?.id();
        // Timed to the event's arrival, whether or not the answer to the
        // put came first.
        let Self { client, stream, .. } = self;
        let start = Instant::now();
        let ((), seen) = tokio::try_join!(Theirs::put_leased(client, key.clone(), lease), async {
            Theirs::wait_for(stream, EventType::Put, &key).await?;
            anyhow::Ok(Instant::now())
        })?;
        let took = seen - start;
        self.client.lease_revoke(lease).await?;
        Ok(took)
    }

    /// One read of a key that does not exist: a round trip that changes
    /// nothing and notifies no one.
    async fn round_trip(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.client.get("/bench/none", None).await?;
        Ok(start.elapsed())
    }
}

/// The etcd side.
struct Theirs {
    endpoints: String,
    client: etcd_client::Client,
}

/// etcd's `LeaseKeepAliveRequest`, for one keep-alive stream shared by every
/// lease (etcd-client offers one stream per lease only).
#[derive(Clone, PartialEq, prost::Message)]
struct KeepAliveRequest {
    /// The lease.
    #[prost(int64, tag = "1")]
    id: i64,
}

/// etcd's `LeaseKeepAliveResponse`, without its header.
#[derive(Clone, PartialEq, prost::Message)]
struct KeepAliveResponse {
    /// The lease.
    #[prost(int64, tag = "2")]
    id: i64,
    /// Its new TTL.
    #[prost(int64, tag = "3")]
    ttl: i64,
}

impl Theirs {
    /// Puts `key` on `lease`, as a registration: the value is an address.
    async fn put_leased(
        client: &mut etcd_client::Client,
        key: impl Into<Vec<u8>>,
        lease: i64,
    ) -> anyhow::Result<()> {
        client
            .put(
                key,
                "http://127.0.0.1:9",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    async fn new(endpoints: &str) -> anyhow::Result<Self> {
        let client = etcd_client::Client::connect([endpoints], None)
            .await
            .context("cannot connect to etcd")?;
        Ok(Self {
            endpoints: endpoints.to_owned(),
            client,
        })
    }

    async fn watch(
        client: &etcd_client::Client,
        prefix: &str,
    ) -> anyhow::Result<etcd_client::WatchStream> {
        let mut stream = client
            .clone()
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .context("cannot watch etcd")?;
        // The first message says the watch was created.
        stream
            .message()
            .await?
            .context("the etcd watch ended at once")?;
        Ok(stream)
    }

    /// Waits on `stream` for an event of `kind` on `key`.
    async fn wait_for(
        stream: &mut etcd_client::WatchStream,
        kind: EventType,
        key: &str,
    ) -> anyhow::Result<()> {
        while let Some(response) = stream.message().await? {
            if response.events().iter().any(|e| {
                e.event_type() == kind && e.kv().is_some_and(|kv| kv.key() == key.as_bytes())
            }) {
                return Ok(());
            }
        }
        anyhow::bail!("the etcd watch of {key} ended")
    }

    /// A watcher of `/bench/` and a client that puts keys there.
    async fn prober(&self) -> anyhow::Result<TheirsProber> {
        Ok(TheirsProber {
            stream: Self::watch(&self.client, "/bench/").await?,
            client: self.client.clone(),
            round: rand_suffix(),
            next: 0,
        })
    }

    /// `samples` propagation latencies, one after the other.
    async fn propagation(&self, samples: usize) -> anyhow::Result<Run> {
        let mut prober = self.prober().await?;
        let mut latencies = Vec::new();
        for _ in 0..samples {
            latencies.push(prober.sample().await?);
        }
        Ok(events(&latencies))
    }

    /// `watchers` watchers of `/fan/`, over a connection per 100.
    async fn fan(&self, watchers: usize) -> anyhow::Result<FanOut<Vec<u8>>> {
        let (tx, rx) = mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
        let mut connections = Vec::new();
        for _ in 0..watchers.div_ceil(100) {
            connections.push(etcd_client::Client::connect([self.endpoints.as_str()], None).await?);
        }
        let mut tasks = Vec::new();
        for w in 0..watchers {
            let mut stream = Self::watch(&connections[w / 100], "/fan/").await?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(response)) = stream.message().await {
                    let at = Instant::now();
                    for event in response.events() {
                        if event.event_type() == EventType::Put
                            && let Some(kv) = event.kv()
                        {
                            let _ = tx.send((kv.key().to_vec(), at));
                        }
                    }
                }
            }));
        }
        let client = self.client.clone();
        Ok(FanOut {
            watchers,
            arrivals: rx,
            tasks,
            register: Box::new(move |r| {
                let mut client = client.clone();
                Box::pin(async move {
                    let key = format!("/fan/f{r}");
                    let lease = client.lease_grant(30, None).await?.id();
                    let start = Instant::now();
                    Theirs::put_leased(&mut client, key.clone(), lease).await?;
                    Ok((key.into_bytes(), start))
                })
            }),
        })
    }

    async fn expiry(&self, n: usize) -> anyhow::Result<Run> {
        let mut client = self.client.clone();
        let mut stream = Self::watch(&client, "/expiry/").await?;
        // Deletions are timed as they arrive, while registrations still go on.
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
        let reader = tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let at = Instant::now();
                for event in response.events() {
                    if event.event_type() == EventType::Delete
                        && let Some(kv) = event.kv()
                    {
                        let _ = tx.send((kv.key().to_vec(), at));
                    }
                }
            }
        });
        let mut due = std::collections::HashMap::new();
        for i in 0..n {
            let key = format!("/expiry/e{i}");
            let lease = client.lease_grant(EXPIRY_TTL.into(), None).await?.id();
            due.insert(
                key.clone().into_bytes(),
                Instant::now() + Duration::from_secs(EXPIRY_TTL.into()),
            );
            Self::put_leased(&mut client, key, lease).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let latencies = lateness(&mut rx, due).await;
        reader.abort();
        Ok(events(&latencies?))
    }

    /// Grants `n` leases with a key each under `/fleet/` and keeps each alive
    /// every 3 s over one `LeaseKeepAlive` stream, until the returned tasks
    /// are aborted.
    async fn fleet(&self, n: usize) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let mut leases = Vec::new();
        let ids: Vec<usize> = (0..n).collect();
        for chunk in ids.chunks(64) {
            let granted = join_all(chunk.iter().map(|i| {
                let mut client = self.client.clone();
                async move {
                    let lease = client.lease_grant(FLEET_TTL.into(), None).await?.id();
                    Self::put_leased(&mut client, format!("/fleet/i{i}"), lease).await?;
                    anyhow::Ok(lease)
                }
            }))
            .await;
            for lease in granted {
                leases.push(lease?);
            }
        }
        let channel = tonic::transport::Endpoint::from_shared(self.endpoints.clone())?
            .connect()
            .await
            .context("cannot connect to etcd for keep-alives")?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.context("etcd's channel is not ready")?;
        let (tx, rx) = mpsc::channel::<KeepAliveRequest>(65_536);
        // etcd answers the stream's headers with its first response, and the
        // call below waits for those headers: send a first keep-alive now.
        if let Some(first) = leases.first() {
            tx.send(KeepAliveRequest { id: *first }).await?;
        }
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/etcdserverpb.Lease/LeaseKeepAlive",
        );
        let codec = tonic_prost::ProstCodec::<KeepAliveRequest, KeepAliveResponse>::default();
        let mut responses = grpc
            .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
            .await
            .context("cannot open etcd's keep-alive stream")?
            .into_inner();
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = responses.next().await {} });
        let tx = Arc::new(tx);
        let beats = spread(leases, move |id| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(KeepAliveRequest { id }).await;
            }
        });
        Ok(vec![beats, drain])
    }
}
