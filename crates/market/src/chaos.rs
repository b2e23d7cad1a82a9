//! `market chaos`: the demo under sustained, random faults.
//!
//! Runs the demo's topology (registry, the instances of every service of
//! the demo, shop) as separate processes, loads pages at a fixed rate (open
//! loop: a page's latency counts from when it was due, so a stalled shop
//! cannot hide its stall), and, for the given duration, pauses, kills and
//! restarts instances of every service, adds slow and flaky ones, and
//! restarts the registry. One base instance of each service is always left
//! alone. At the end it checks the invariants a user of the shop relies on,
//! prints a summary, writes it as JSON when asked, and fails when one broke.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use daemon::supervise::Signal;
use market_proto::registry::v1::ResolveRequest;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::Instant,
};

use crate::{
    Counts, DemoService, SERVICES,
    supervise::{self, Output, Proc, READY, socket_addr},
};

/// The items of the shop, whose ratings every page should show.
const ITEMS: [&str; 4] = ["basketball", "briefcase", "camera", "football"];

/// How late past its TTL a dead instance may still be listed: the registry
/// expires leases within milliseconds; this leaves room for a loaded machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// The longest the shop's memory is given to settle under the first faults
/// before it is the baseline for the end's comparison.
const SETTLE: Duration = Duration::from_secs(60);

/// The logs the driver needs from its processes: readiness lines, warnings
/// and panics.
const LOG: &str = "warn,registryd::cli=info,ratings_server::cli=info,market_web::cli=info,\
                   registry_client::registration=info";

/// How `market chaos` runs.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChaosArgs {
    /// How long faults are injected, after the warm-up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Pages per second, due at fixed times whatever the shop's latency.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=2000))]
    rate: u32,

    /// The mean time between two faults (each gap is drawn from 0.5 to 1.5
    /// times it); at least 100ms.
    #[arg(long, default_value = "2s", value_parser = parse_fault_every)]
    fault_every: Duration,

    /// How many instances of each service faults may strike (each
    /// service's flag, e.g. --instances for ratings, is added from
    /// [`SERVICES`]).
    #[arg(skip)]
    pub(crate) counts: Counts,

    /// The instances' TTL (whole seconds, 1s to 300s): how long a dead one
    /// stays listed at most.
    #[arg(long, default_value = "3s", value_parser = daemon::instances::parse_ttl)]
    ttl: Duration,

    /// Pages loaded before the faults start.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warm_up: Duration,

    /// The seed of the fault schedule [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,

    /// Write the summary here as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Show every process's log (only warnings and readiness are logged).
    #[arg(long)]
    verbose: bool,

    /// The shop's client policy.
    #[command(flatten)]
    policy: market_web::cli::PolicyArgs,
}

fn parse_fault_every(s: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if every < Duration::from_millis(100) {
        return Err(format!("{s} is shorter than 100ms"));
    }
    Ok(every)
}

/// What one page showed.
#[derive(Debug, Clone)]
struct Page {
    /// When it was due, from the start of the load.
    due: Duration,
    /// From when it was due to its last byte.
    latency: Duration,
    /// The HTTP status, 0 when the request failed.
    status: u16,
    /// Each item's rating as shown, in the order of [`ITEMS`].
    ratings: [Shown; 4],
    /// Whether it showed each panel, in the order of [`panels`].
    panels: Vec<bool>,
    /// Whether it was due while faults were injected (not in the warm-up).
    faulty: bool,
}

/// How an item's rating appeared on a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Live,
    Cached,
    Missing,
}

impl Shown {
    fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Cached => "cached",
            Self::Missing => "missing",
        }
    }
}

/// The run's findings, as printed and written to `--json`.
#[derive(Debug, Serialize)]
struct Summary {
    seed: u64,
    warm_up_s: f64,
    duration_s: f64,
    rate: u32,
    pages: usize,
    /// Pages by HTTP status; 0 counts requests that got no answer.
    statuses: BTreeMap<u16, usize>,
    latency_ms: Percentiles,
    /// The pages due while faults were injected.
    faulty_latency_ms: Percentiles,
    /// Per item: how many pages showed its rating live, cached or not at all.
    ratings: BTreeMap<&'static str, BTreeMap<&'static str, usize>>,
    /// Pages due after an item's rating was first shown that did not show it.
    missing_after_first_rating: usize,
    /// How often each panel was shown.
    panels: BTreeMap<&'static str, PanelShown>,
    /// Faults injected, by kind.
    faults: BTreeMap<&'static str, usize>,
    events: Vec<Event>,
    web_rss_kib_after_warm_up: u64,
    /// market-web's resident memory once the first faults have been dealt
    /// with (a third of the faulty period, at most a minute, into it): the
    /// baseline the end is compared with.
    web_rss_kib_settled: u64,
    /// When that baseline was taken, in seconds since the start of the load.
    settled_at_s: u64,
    web_rss_kib_at_end: u64,
    /// market-web's resident memory every 10 s: seconds since the start of
    /// the load, and KiB.
    web_rss_kib_samples: Vec<(u64, u64)>,
    /// Instances still listed though dead for longer than their TTL.
    stale_registrations: Vec<String>,
    /// Panics reported in any process's log.
    panics: usize,
    /// The invariants that did not hold; empty when the run passed.
    violations: Vec<String>,
}

/// How often a panel was shown: in the warm-up, under faults, and warm-up
/// pages without it after it had first been shown.
#[derive(Debug, Default, Serialize)]
struct PanelShown {
    warm_up: usize,
    under_faults: usize,
    warm_up_missing_after_first: usize,
}

/// The services whose panel the page shows (every one but ratings): a
/// panel's element has its service's name as its `id`.
fn panels() -> impl Iterator<Item = &'static str> {
    SERVICES
        .iter()
        .map(DemoService::name)
        .filter(|name| *name != ratings_server::SERVICE.name)
}

/// Whether `body` shows `panel`'s panel.
fn shown_panel(body: &str, panel: &str) -> bool {
    body.contains(&format!(r#"id="{panel}""#))
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Default, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut latencies: Vec<Duration>) -> Self {
        if latencies.is_empty() {
            return Self::default();
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1].as_secs_f64() * 1e3
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }
}

/// A fault or its end, timed from the start of the faults.
#[derive(Debug, Clone, Serialize)]
struct Event {
    at_s: f64,
    what: String,
}

/// What undoes a fault, later.
#[derive(Debug)]
enum Undo {
    /// SIGCONT to a paused instance.
    Resume(String),
    /// Start a killed or stopped instance again.
    Restart(String),
    /// Stop an added slow or flaky instance.
    Retire(String),
}

/// An instance the driver runs, of one of the demo's services.
struct Instance {
    service: &'static DemoService,
    proc: Proc,
    paused: bool,
    /// Slow or flaky, added by a fault: never struck again.
    extra: bool,
}

/// The processes of the run.
struct Topology {
    exe: PathBuf,
    shown: Output,
    data_dir: tempfile::TempDir,
    admin: String,
    /// Each service's token, by service name.
    tokens: BTreeMap<&'static str, String>,
    registry_addr: SocketAddr,
    registry: Proc,
    web: Proc,
    web_addr: SocketAddr,
    ttl: Duration,
    /// The instances running now, by id.
    instances: BTreeMap<String, Instance>,
    /// Instances that are stopped, and since when.
    dead_since: HashMap<String, Instant>,
    /// Processes that have exited, kept for their panic counts.
    retired: Vec<Proc>,
    /// How many slow or flaky instances were added so far, to name them.
    extras: u32,
}

/// The base instance of `service`, never struck.
fn base(service: &DemoService) -> String {
    format!("{}-base", service.name())
}

/// The service an instance id (`SERVICE-...`) belongs to.
fn service_of(id: &str) -> &'static DemoService {
    SERVICES
        .iter()
        .find(|service| {
            id.strip_prefix(service.name())
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .unwrap_or(&SERVICES[0])
}

impl Topology {
    async fn start(args: &ChaosArgs) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the market binary")?;
        let shown = if args.verbose {
            Output::Echo
        } else {
            Output::Quiet
        };
        let data_dir = tempfile::Builder::new().prefix("market-chaos-").tempdir()?;
        let admin = registryd::auth::generate(registryd::auth::TokenKind::Admin);
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let (registry, registry_addr) =
            start_registry(&exe, shown, loopback, data_dir.path(), &admin).await?;
        let url = format!("http://{registry_addr}");
        let registry_api = registry_client::connect(&url, &admin)?;
        let mut tokens = BTreeMap::new();
        let mut instances = BTreeMap::new();
        for service in &SERVICES {
            let token = supervise::create_service(&registry_api, service)
                .await?
                .token;
            let struck = args.counts.of(service);
            let ids = std::iter::once(base(service))
                .chain((1..=struck).map(|n| format!("{}-{n}", service.name())));
            for id in ids {
                let proc =
                    start_instance(&exe, shown, &url, service, &token, args.ttl, &id, &[]).await?;
                instances.insert(
                    id,
                    Instance {
                        service,
                        proc,
                        paused: false,
                        extra: false,
                    },
                );
            }
            tokens.insert(service.name(), token);
        }
        let consumer = supervise::create_shop_consumer(&registry_api).await?;

        let mut web_args = vec![
            "market-web".to_owned(),
            "--listen".to_owned(),
            loopback.to_string(),
            "--registry".to_owned(),
            url,
            "--token".to_owned(),
            consumer,
        ];
        web_args.extend(args.policy.to_args());
        let web = supervise::start(&exe, "market-web", &web_args, shown, LOG)?;
        let web_addr = socket_addr(&web.listening("market-web", READY).await?)?;
        Ok(Self {
            exe,
            shown,
            data_dir,
            admin,
            tokens,
            registry_addr,
            registry,
            web,
            web_addr,
            ttl: args.ttl,
            instances,
            dead_since: HashMap::new(),
            retired: Vec::new(),
            extras: 0,
        })
    }

    fn registry_url(&self) -> String {
        format!("http://{}", self.registry_addr)
    }

    /// Starts instance `id` with `extra` arguments and waits until it is
    /// registered.
    async fn start_instance(&mut self, id: &str, extra: &[String]) -> anyhow::Result<()> {
        let service = service_of(id);
        let proc = start_instance(
            &self.exe,
            self.shown,
            &self.registry_url(),
            service,
            &self.tokens[service.name()],
            self.ttl,
            id,
            extra,
        )
        .await?;
        self.dead_since.remove(id);
        self.instances.insert(
            id.to_owned(),
            Instance {
                service,
                proc,
                paused: false,
                extra: !extra.is_empty(),
            },
        );
        Ok(())
    }

    /// Ends instance `id` with `signal` (SIGKILL or SIGTERM) and waits until
    /// it exited.
    async fn end_instance(&mut self, id: &str, signal: Signal) -> anyhow::Result<()> {
        let Some(mut instance) = self.instances.remove(id) else {
            return Ok(());
        };
        instance.proc.signal(signal)?;
        instance.proc.signal(Signal::SIGCONT)?;
        instance.proc.wait_exit(Duration::from_secs(10)).await?;
        self.dead_since.insert(id.to_owned(), Instant::now());
        self.retired.push(instance.proc);
        Ok(())
    }

    /// Stops the registry (SIGTERM) and starts it again where it was.
    async fn restart_registry(&mut self) -> anyhow::Result<()> {
        self.registry.signal(Signal::SIGTERM)?;
        self.registry.wait_exit(Duration::from_secs(10)).await?;
        let (registry, _) = start_registry(
            &self.exe,
            self.shown,
            self.registry_addr,
            self.data_dir.path(),
            &self.admin,
        )
        .await?;
        let old = std::mem::replace(&mut self.registry, registry);
        self.retired.push(old);
        Ok(())
    }

    /// Instances a fault may strike now: running, not paused, not the base
    /// and not an added one.
    fn strikable(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter(|(id, instance)| {
                **id != base(instance.service) && !instance.paused && !instance.extra
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Injects one random fault; returns what it did and schedules its undo.
    async fn strike(
        &mut self,
        rng: &mut StdRng,
        undo: &mut Vec<(Instant, Undo)>,
    ) -> anyhow::Result<(&'static str, String)> {
        let now = Instant::now();
        let between = |rng: &mut StdRng, low: f64, high: f64| {
            Duration::from_secs_f64(rng.random_range(low..high))
        };
        let targets = self.strikable();
        let extras = self.instances.values().filter(|i| i.extra).count();
        // Weighted choice among the faults possible now.
        let mut choices: Vec<(&'static str, u32)> = vec![("restart-registry", 1)];
        if !targets.is_empty() {
            choices.extend([("pause", 3), ("kill", 2), ("stop", 1)]);
        }
        if extras < 2 {
            choices.extend([("add-slow", 2), ("add-flaky", 2)]);
        }
        let total: u32 = choices.iter().map(|(_, w)| w).sum();
        let mut pick = rng.random_range(0..total);
        let kind = choices
            .iter()
            .find(|(_, weight)| {
                if pick < *weight {
                    true
                } else {
                    pick -= weight;
                    false
                }
            })
            .map(|(kind, _)| *kind)
            .expect("a choice");
        let target =
            (!targets.is_empty()).then(|| targets[rng.random_range(0..targets.len())].clone());
        // An added instance joins one of the services, drawn too.
        let joins = SERVICES[rng.random_range(0..SERVICES.len())].name();
        let what = match (kind, target) {
            ("pause", Some(id)) => {
                let span = between(rng, 0.5, 4.0);
                if let Some(instance) = self.instances.get_mut(&id) {
                    instance.proc.signal(Signal::SIGSTOP)?;
                    instance.paused = true;
                }
                undo.push((now + span, Undo::Resume(id.clone())));
                format!("paused {id} for {span:.1?}")
            }
            ("kill", Some(id)) => {
                let span = between(rng, 1.0, 6.0);
                self.end_instance(&id, Signal::SIGKILL).await?;
                undo.push((now + span, Undo::Restart(id.clone())));
                format!("killed {id} (SIGKILL), back in {span:.1?}")
            }
            ("stop", Some(id)) => {
                let span = between(rng, 1.0, 6.0);
                self.end_instance(&id, Signal::SIGTERM).await?;
                undo.push((now + span, Undo::Restart(id.clone())));
                format!("stopped {id} (SIGTERM), back in {span:.1?}")
            }
            ("add-slow", _) => {
                let span = between(rng, 3.0, 10.0);
                let delay = Duration::from_millis(rng.random_range(50..600));
                self.extras += 1;
                let id = format!("{joins}-slow-{}", self.extras);
                let delay_arg = format!("{}ms", delay.as_millis());
                self.start_instance(&id, &["--delay".to_owned(), delay_arg])
                    .await?;
                undo.push((now + span, Undo::Retire(id.clone())));
                format!("added {id} answering after {delay:?}, for {span:.1?}")
            }
            ("add-flaky", _) => {
                let span = between(rng, 3.0, 10.0);
                self.extras += 1;
                let id = format!("{joins}-flaky-{}", self.extras);
                self.start_instance(&id, &["--fail-rate".to_owned(), "0.5".to_owned()])
                    .await?;
                undo.push((now + span, Undo::Retire(id.clone())));
                format!("added {id} failing half its calls, for {span:.1?}")
            }
            _ => {
                self.restart_registry().await?;
                "restarted registryd".to_owned()
            }
        };
        Ok((kind, what))
    }

    /// Undoes a fault; returns what it did.
    async fn undo(&mut self, undo: Undo) -> anyhow::Result<String> {
        Ok(match undo {
            Undo::Resume(id) => {
                if let Some(instance) = self.instances.get_mut(&id) {
                    instance.proc.signal(Signal::SIGCONT)?;
                    instance.paused = false;
                }
                format!("resumed {id}")
            }
            Undo::Restart(id) => {
                self.start_instance(&id, &[]).await?;
                format!("restarted {id}")
            }
            Undo::Retire(id) => {
                self.end_instance(&id, Signal::SIGTERM).await?;
                format!("retired {id}")
            }
        })
    }

    /// Instances the registry lists though they have been dead for longer
    /// than their TTL (plus a little slack), of every service.
    async fn stale_registrations(&self) -> anyhow::Result<Vec<String>> {
        let registry = registry_client::connect(&self.registry_url(), &self.admin)?;
        let mut listed = Vec::new();
        for service in &SERVICES {
            listed.extend(
                registry
                    .clone()
                    .resolve(ResolveRequest {
                        service: service.name().into(),
                    })
                    .await
                    .with_context(|| format!("cannot resolve {} at the end", service.name()))?
                    .into_inner()
                    .instances,
            );
        }
        let now = Instant::now();
        Ok(listed
            .into_iter()
            .map(|instance| instance.instance_id)
            .filter(|id| match self.dead_since.get(id) {
                Some(since) => now.duration_since(*since) > self.ttl + EXPIRY_SLACK,
                None => !self.instances.contains_key(id),
            })
            .collect())
    }

    fn panics(&self) -> usize {
        self.instances
            .values()
            .map(|instance| instance.proc.panics())
            .chain(self.retired.iter().map(Proc::panics))
            .sum::<usize>()
            + self.registry.panics()
            + self.web.panics()
    }

    /// Stops everything: instances first (they deregister), then the shop,
    /// then the registry.
    async fn stop(&mut self) {
        for instance in self.instances.values_mut() {
            supervise::stop(&mut instance.proc).await;
        }
        supervise::stop(&mut self.web).await;
        supervise::stop(&mut self.registry).await;
    }
}

/// Starts `registryd` on `listen` and waits until it listens.
async fn start_registry(
    exe: &PathBuf,
    shown: Output,
    listen: SocketAddr,
    data_dir: &std::path::Path,
    admin: &str,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let args = [
        "registryd".to_owned(),
        "--listen".to_owned(),
        listen.to_string(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
        "--admin-token".to_owned(),
        admin.to_owned(),
    ];
    let registry = supervise::start(exe, "registryd", &args, shown, LOG)?;
    let addr = socket_addr(&registry.listening("registryd", READY).await?)?;
    Ok((registry, addr))
}

/// Starts an instance of `service` named `id` and waits until it is
/// registered.
#[allow(clippy::too_many_arguments)]
async fn start_instance(
    exe: &PathBuf,
    shown: Output,
    registry: &str,
    service: &DemoService,
    token: &str,
    ttl: Duration,
    id: &str,
    extra: &[String],
) -> anyhow::Result<Proc> {
    let mut args = vec![
        service.subcommand.to_owned(),
        "--instance-id".to_owned(),
        id.to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--registry".to_owned(),
        registry.to_owned(),
        "--token".to_owned(),
        token.to_owned(),
        "--ttl".to_owned(),
        humantime::format_duration(ttl).to_string(),
    ];
    args.extend_from_slice(extra);
    let proc = supervise::start(exe, id, &args, shown, LOG)?;
    proc.listening(id, READY).await?;
    proc.registered(id, READY).await?;
    Ok(proc)
}

/// Loads `GET /` at `rate` per second from `start` for `span`; pages due at
/// or after `faults` are marked faulty.
async fn load(
    addr: SocketAddr,
    rate: u32,
    start: Instant,
    span: Duration,
    faults: Duration,
) -> Vec<Page> {
    let visitors: Vec<Visitor> = (0..VISITORS).map(|_| Visitor::default()).collect();
    let mut pages = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    for k in 0u64.. {
        let due = Duration::from_secs_f64(k as f64 / f64::from(rate));
        if due >= span {
            break;
        }
        tokio::time::sleep_until(start + due).await;
        let visitor = visitors[(k % VISITORS) as usize].clone();
        running.spawn(async move {
            let (status, body) = fetch(addr, &visitor).await;
            Page {
                due,
                latency: start.elapsed().saturating_sub(due),
                status,
                ratings: ITEMS.map(|item| shown_in(&body, item)),
                panels: panels().map(|panel| shown_panel(&body, panel)).collect(),
                faulty: due >= faults,
            }
        });
        while let Some(done) = running.try_join_next() {
            pages.extend(done.ok());
        }
    }
    while let Some(done) = running.join_next().await {
        pages.extend(done.ok());
    }
    pages.sort_by_key(|page| page.due);
    pages
}

/// How long a page may take before it counts as unanswered.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many visitors the pages come from, each keeping its session cookie,
/// so that the shop's memory measures leaks, not new visitors' sessions.
const VISITORS: u64 = 16;

/// A visitor's session cookie (`name=value`), once the shop set one.
type Visitor = Arc<Mutex<Option<String>>>;

/// `GET /` over a new connection as `visitor`: the status (0 without an
/// answer) and the response.
async fn fetch(addr: SocketAddr, visitor: &Visitor) -> (u16, String) {
    let cookie = visitor
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_ref()
        .map(|cookie| format!("Cookie: {cookie}\r\n"))
        .unwrap_or_default();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let Ok(Ok(response)) = tokio::time::timeout(PAGE_TIMEOUT, exchange).await else {
        return (0, String::new());
    };
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let set = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("set-cookie").then(|| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
    });
    if let Some(cookie) = set {
        *visitor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cookie);
    }
    (status, response)
}

/// How the page shows `item`'s rating.
fn shown_in(page: &str, item: &str) -> Shown {
    let Some(start) = page.find(&format!("id=\"item-{item}\"")) else {
        return Shown::Missing;
    };
    let card = &page[start..];
    let card = &card[..card.find("</article>").unwrap_or(card.len())];
    if card.contains("(live)") {
        Shown::Live
    } else if card.contains("(as of ") {
        Shown::Cached
    } else {
        Shown::Missing
    }
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read the memory use of process {pid}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Runs the soak as `args` say; fails when an invariant broke.
pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!(
        "chaos: seed {seed}; {:?} warm-up, then {:?} of faults, {} pages/s",
        args.warm_up, args.duration, args.rate
    );
    // Ctrl-C or SIGTERM stops every process started (each runs in its own
    // process group, so the signal reaches only this one).
    let mut interrupted = std::pin::pin!(daemon::shutdown_signal());
    let mut topology = tokio::select! {
        topology = Topology::start(&args) => topology?,
        () = &mut interrupted => bail!("interrupted while starting"),
    };
    let result = tokio::select! {
        result = soak(&args, seed, &mut topology) => Some(result),
        () = &mut interrupted => None,
    };
    topology.stop().await;
    let Some(result) = result else {
        bail!("interrupted; every process it started has stopped");
    };
    let summary = result?;
    print(&summary);
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !summary.violations.is_empty() {
        bail!(
            "{} invariant(s) broke: {}",
            summary.violations.len(),
            summary.violations.join("; ")
        );
    }
    Ok(())
}

/// The load and the faults, then the checks.
async fn soak(args: &ChaosArgs, seed: u64, topology: &mut Topology) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let faults_start = start + args.warm_up;
    let end = faults_start + args.duration;
    let load = tokio::spawn(load(
        topology.web_addr,
        args.rate,
        start,
        args.warm_up + args.duration,
        args.warm_up,
    ));

    let web_pid = topology.web.pid();
    let rss_samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn({
        let samples = rss_samples.clone();
        async move {
            let mut every = tokio::time::interval_at(start, Duration::from_secs(10));
            loop {
                every.tick().await;
                let Ok(kib) = rss_kib(web_pid) else {
                    return;
                };
                samples
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push((start.elapsed().as_secs(), kib));
            }
        }
    });

    // The warm-up runs on a schedule: nothing to wait on but the clock.
    tokio::time::sleep_until(faults_start).await;
    let rss_after_warm_up = rss_kib(topology.web.pid())?;

    let mut rng = StdRng::seed_from_u64(seed);
    let gap = |rng: &mut StdRng| args.fault_every.mul_f64(rng.random_range(0.5..1.5));
    let mut next_fault = faults_start + gap(&mut rng);
    let mut undo: Vec<(Instant, Undo)> = Vec::new();
    let mut events = Vec::new();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let at = |instant: Instant| {
        instant
            .saturating_duration_since(faults_start)
            .as_secs_f64()
    };
    loop {
        let wake = undo
            .iter()
            .map(|(when, _)| *when)
            .chain([next_fault, end])
            .min()
            .unwrap_or(end);
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        while let Some(due) = undo.iter().position(|(when, _)| *when <= now) {
            let (_, action) = undo.swap_remove(due);
            let what = topology.undo(action).await?;
            events.push(Event {
                at_s: at(Instant::now()),
                what,
            });
        }
        if now >= next_fault {
            let (kind, what) = topology.strike(&mut rng, &mut undo).await?;
            *faults.entry(kind).or_default() += 1;
            events.push(Event {
                at_s: at(Instant::now()),
                what,
            });
            next_fault = Instant::now() + gap(&mut rng);
        }
    }

    let pages = load.await.context("the load generator panicked")?;
    let rss_at_end = rss_kib(topology.web.pid())?;
    sampler.abort();
    let rss_samples = std::mem::take(
        &mut *rss_samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    // Paused instances run again before the end's checks.
    for (_, action) in undo.drain(..) {
        if let Undo::Resume(id) = action {
            let what = topology.undo(Undo::Resume(id)).await?;
            events.push(Event {
                at_s: at(Instant::now()),
                what,
            });
        }
    }
    let stale = topology.stale_registrations().await?;
    let panics = topology.panics();
    Ok(summarize(
        args,
        seed,
        &pages,
        faults,
        events,
        (rss_after_warm_up, rss_at_end, rss_samples),
        stale,
        panics,
    ))
}

/// Counts, percentiles and the invariants' verdicts.
#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &ChaosArgs,
    seed: u64,
    pages: &[Page],
    faults: BTreeMap<&'static str, usize>,
    events: Vec<Event>,
    (rss_after_warm_up, rss_at_end, rss_samples): (u64, u64, Vec<(u64, u64)>),
    stale: Vec<String>,
    panics: usize,
) -> Summary {
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut ratings: BTreeMap<&'static str, BTreeMap<&'static str, usize>> = BTreeMap::new();
    // When each item's rating was first on a page: the page's last byte.
    let mut first_shown: [Option<Duration>; 4] = [None; 4];
    let mut missing_after_first = 0;
    // Each panel: when it was first shown, and how often.
    let mut panel_first: Vec<Option<Duration>> = panels().map(|_| None).collect();
    let mut panels_shown: BTreeMap<&'static str, PanelShown> = panels()
        .map(|panel| (panel, PanelShown::default()))
        .collect();
    for page in pages {
        *statuses.entry(page.status).or_default() += 1;
        for ((panel, shown), first) in panels().zip(&page.panels).zip(&mut panel_first) {
            let counts = panels_shown.entry(panel).or_default();
            match (*shown, page.faulty) {
                (true, faulty) => {
                    *if faulty {
                        &mut counts.under_faults
                    } else {
                        &mut counts.warm_up
                    } += 1;
                    first.get_or_insert(page.due + page.latency);
                }
                (false, false) if first.is_some_and(|first| page.due > first) => {
                    counts.warm_up_missing_after_first += 1;
                }
                (false, _) => {}
            }
        }
        for (i, item) in ITEMS.iter().enumerate() {
            let shown = page.ratings[i];
            *ratings
                .entry(item)
                .or_default()
                .entry(shown.name())
                .or_default() += 1;
            match (shown, first_shown[i]) {
                (Shown::Missing, Some(first)) if page.due > first && page.status == 200 => {
                    missing_after_first += 1;
                }
                (Shown::Live | Shown::Cached, None) => {
                    first_shown[i] = Some(page.due + page.latency);
                }
                _ => {}
            }
        }
    }
    let latency = Percentiles::of(pages.iter().map(|page| page.latency).collect());
    let faulty_latency = Percentiles::of(
        pages
            .iter()
            .filter(|page| page.faulty)
            .map(|page| page.latency)
            .collect(),
    );

    let mut violations = Vec::new();
    let server_errors: usize = statuses.range(500..).map(|(_, n)| n).sum();
    if server_errors > 0 {
        violations.push(format!("{server_errors} page(s) answered 5xx"));
    }
    let other: usize = statuses
        .iter()
        .filter(|(status, _)| **status != 200 && **status < 500)
        .map(|(_, n)| n)
        .sum();
    if other > 0 {
        violations.push(format!("{other} page(s) got no answer or not 200"));
    }
    if missing_after_first > 0 {
        violations.push(format!(
            "{missing_after_first} item(s) on pages without a rating after it had been shown"
        ));
    }
    // A panel may be left out while a fault strikes its service, but not in
    // the calm of the warm-up once it was shown, and not for the whole run:
    // its service's base instance is never struck.
    for (panel, shown) in &panels_shown {
        if shown.warm_up == 0 {
            violations.push(format!("no page of the warm-up showed the {panel} panel"));
        }
        if shown.warm_up_missing_after_first > 0 {
            violations.push(format!(
                "{} warm-up page(s) without the {panel} panel after it had been shown",
                shown.warm_up_missing_after_first
            ));
        }
        if shown.under_faults == 0 {
            violations.push(format!("no page under faults showed the {panel} panel"));
        }
    }
    if latency.p99 > 1200.0 {
        violations.push(format!("p99 page latency {:.0} ms > 1200 ms", latency.p99));
    }
    if latency.p50 >= 20.0 {
        violations.push(format!("p50 page latency {:.1} ms >= 20 ms", latency.p50));
    }
    if !stale.is_empty() {
        violations.push(format!(
            "still listed though dead longer than their TTL: {}",
            stale.join(", ")
        ));
    }
    // The first faults make the shop allocate what it needs to handle them
    // (new instances' channels, open breakers, error paths); its memory
    // settles after that, so the end is compared with the memory then.
    let settle = (args.duration / 3).min(SETTLE);
    let settled_at = (args.warm_up + settle).as_secs();
    let (settled_at, settled) = rss_samples
        .iter()
        .copied()
        .find(|(at, _)| *at >= settled_at)
        .unwrap_or((settled_at, rss_after_warm_up));
    // Only growth counts: memory given back is no leak.
    let growth = rss_at_end.saturating_sub(settled) as f64 / settled.max(1) as f64;
    if growth > 0.10 {
        violations.push(format!(
            "market-web's memory went from {settled} KiB at {settled_at} s to {rss_at_end} KiB at the end ({:+.0} %)",
            (rss_at_end as f64 / settled.max(1) as f64 - 1.0) * 100.0
        ));
    }
    if panics > 0 {
        violations.push(format!("{panics} panic(s) in the logs"));
    }
    Summary {
        seed,
        warm_up_s: args.warm_up.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        rate: args.rate,
        pages: pages.len(),
        statuses,
        latency_ms: latency,
        faulty_latency_ms: faulty_latency,
        ratings,
        missing_after_first_rating: missing_after_first,
        panels: panels_shown,
        faults,
        events,
        web_rss_kib_after_warm_up: rss_after_warm_up,
        web_rss_kib_settled: settled,
        settled_at_s: settled_at,
        web_rss_kib_at_end: rss_at_end,
        web_rss_kib_samples: rss_samples,
        stale_registrations: stale,
        panics,
        violations,
    }
}

/// The summary for people.
#[allow(clippy::print_stdout)]
fn print(summary: &Summary) {
    let l = &summary.latency_ms;
    let f = &summary.faulty_latency_ms;
    println!("chaos summary (seed {})", summary.seed);
    println!(
        "  pages: {} at {}/s over {:.0} s; statuses {:?}",
        summary.pages,
        summary.rate,
        summary.warm_up_s + summary.duration_s,
        summary.statuses
    );
    println!(
        "  latency ms, all pages:    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    println!(
        "  latency ms, under faults: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        f.p50, f.p90, f.p99, f.p999, f.max
    );
    for (item, shown) in &summary.ratings {
        println!("  {item:<11} {shown:?}");
    }
    let faulty_pages = (summary.duration_s * f64::from(summary.rate)).round();
    for (panel, shown) in &summary.panels {
        println!(
            "  {panel} panel: {} warm-up pages, {} of about {faulty_pages} pages under faults",
            shown.warm_up, shown.under_faults
        );
    }
    println!("  faults: {:?}", summary.faults);
    println!(
        "  market-web RSS: {} KiB after the warm-up, {} KiB at {} s (settled), {} KiB at the end",
        summary.web_rss_kib_after_warm_up,
        summary.web_rss_kib_settled,
        summary.settled_at_s,
        summary.web_rss_kib_at_end
    );
    println!(
        "  stale registrations: {}; panics: {}",
        summary.stale_registrations.len(),
        summary.panics
    );
    if summary.violations.is_empty() {
        println!("  every invariant held");
    } else {
        for violation in &summary.violations {
            println!("  BROKEN: {violation}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_how_a_page_shows_each_rating() {
        let page = r#"<article class="item" id="item-camera"><p class="rating">rating: 4.5/5 <span class="freshness">(live)</span></p></article>
<article class="item" id="item-football"><p class="rating">rating: 2.2/5 <span class="freshness">(as of 3 s ago)</span></p></article>
<article class="item" id="item-briefcase"><p class="rating none">no rating yet</p></article>"#;
        assert_eq!(shown_in(page, "camera"), Shown::Live);
        assert_eq!(shown_in(page, "football"), Shown::Cached);
        assert_eq!(shown_in(page, "briefcase"), Shown::Missing);
        assert_eq!(shown_in(page, "basketball"), Shown::Missing);
    }

    #[test]
    fn instances_belong_to_the_service_their_id_names() {
        for service in &SERVICES {
            let name = service.name();
            assert_eq!(service_of(&format!("{name}-base")).name(), name);
            assert_eq!(service_of(&format!("{name}-slow-2")).name(), name);
            assert_eq!(service_of(&format!("{name}-1")).name(), name);
            assert_eq!(
                base(service_of(&format!("{name}-flaky-3"))),
                format!("{name}-base")
            );
        }
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let latencies = (1..=1000).map(Duration::from_millis).collect();
        let p = Percentiles::of(latencies);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500.0, 990.0, 999.0, 1000.0));
    }
}
