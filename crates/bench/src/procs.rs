//! The processes under test: the workspace's own binaries started on
//! loopback the way a user starts them, and what each one costs (CPU time
//! and resident memory, read from `/proc`).
//!
//! test-support's `Proc` is made for tests: it logs at `info` and echoes
//! every line it reads. Under load the daemons log every call at `info`, so
//! here each binary runs with per-call logs off (`RUST_LOG` below) and what
//! it prints is kept, not echoed. Readiness is the daemons' JSON lines, as
//! everywhere.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub(crate) use daemon::supervise::Signal;
use daemon::supervise::{Child, Spawn, socket_addr};
use tokio::process::Command;

/// How long a process may take to announce that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many of a process's last lines are kept, for error messages.
const KEPT_LINES: usize = 2_000;

/// The `RUST_LOG` each binary runs with: readiness lines stay, per-call lines
/// (`GET camera => 45`, `ratings using instance 2`, `ASK`/`GOT`/`WAITED`)
/// go, so the log pipe is not what is measured.
fn log_filter(name: &str) -> &'static str {
    match name {
        "registryd" => "warn,registryd::cli=info",
        "ratings-server" => "warn,ratings_server::cli=info,registry_client=info",
        "market-web" => "warn,market_web::cli=info,market_web::ratings=error",
        _ => "warn",
    }
}

/// The path of one of the workspace's binaries: they are built into the same
/// folder as this one (`target/release`).
pub(crate) fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the bench's own executable")?;
    let dir = exe
        .parent()
        .context("the bench's executable has no folder")?;
    // `cargo bench`-style layouts put the executable in `deps/`.
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --release --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// A running process of the benchmark, started through the one supervisor
/// (`daemon::supervise`), which it derefs to; its name (`ratings-server #2`)
/// names it in the report. It is killed when dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
}

impl std::ops::Deref for Daemon {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Daemon {
    /// Starts `program` (a workspace binary's name, or an absolute path),
    /// its lines kept, not echoed.
    pub(crate) fn spawn(
        name: impl Into<String>,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, program, args, &[])
    }

    /// [`Daemon::spawn`], with environment variables set for it alone.
    pub(crate) fn spawn_with_env(
        name: impl Into<String>,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let path = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            bin(program)?
        };
        let child = envs
            .iter()
            .fold(Spawn::new(name, path).args(args), |spawn, (key, value)| {
                spawn.env(key, value)
            })
            .log(log_filter(program))
            .keep(KEPT_LINES)
            .spawn()?;
        Ok(Self { child })
    }

    /// Stops it with SIGTERM, waiting up to 10 s, then kills it.
    pub(crate) async fn stop(mut self) {
        self.child.stop(Duration::from_secs(10)).await;
    }
}

// === the market's daemons ===

/// A `registryd` on the memory store with the `ratings` service created.
#[derive(Debug)]
pub(crate) struct Registry {
    /// The process.
    pub(crate) daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// The admin token.
    pub(crate) admin_token: String,
    /// The `ratings` service token.
    pub(crate) token: String,
    /// The data dir, removed on drop.
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts `registryd` on a free loopback port with `extra` arguments, and
    /// creates the `ratings` service with `registryctl`.
    pub(crate) async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot make a data dir")?;
        let data_dir = dir
            .path()
            .to_str()
            .context("non-UTF-8 temp dir")?
            .to_owned();
        let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", &data_dir];
        args.extend_from_slice(extra);
        let daemon = Daemon::spawn("registryd", "registryd", &args)?;
        let url = daemon.listening("registryd", READY_TIMEOUT).await?;
        // On first start it generates its admin token into the data dir.
        let admin_token = std::fs::read_to_string(dir.path().join("admin-token"))
            .context("registryd wrote no admin token into its data dir")?
            .trim()
            .to_owned();
        let token = create_service(&url, &admin_token, "ratings").await?;
        Ok(Self {
            daemon,
            url,
            admin_token,
            token,
            _dir: dir,
        })
    }

    /// The registry as the client libraries see it, with the `ratings` token.
    pub(crate) fn registries(&self) -> anyhow::Result<registry_client::Registries> {
        Ok(registry_client::Registries::new(
            [self.url.as_str()],
            &self.token,
        )?)
    }
}

/// `registryctl create-service NAME`: the service token.
pub(crate) async fn create_service(
    url: &str,
    admin_token: &str,
    name: &str,
) -> anyhow::Result<String> {
    let mut command = Command::new(bin("registryctl")?);
    for setting in daemon::SETTINGS_FROM_ENV {
        command.env_remove(setting);
    }
    let output = command
        .args(["--registry", url, "--admin-token", admin_token])
        .args(["create-service", name])
        .output()
        .await
        .context("cannot run registryctl")?;
    if !output.status.success() {
        bail!(
            "registryctl create-service {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)
        .context("registryctl printed non-UTF-8")?
        .trim()
        .to_owned())
}

/// A `ratings-server` running one instance.
#[derive(Debug)]
pub(crate) struct Ratings {
    /// The process.
    pub(crate) daemon: Daemon,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl Ratings {
    /// Starts instance `n` registered with `registry`, plus `extra`
    /// arguments; waits until it is registered.
    pub(crate) async fn start(registry: &Registry, n: u16, extra: &[&str]) -> anyhow::Result<Self> {
        let instance = n.to_string();
        let mut args = vec![
            "--instance",
            &instance,
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.url,
            "--token",
            &registry.token,
        ];
        args.extend_from_slice(extra);
        let daemon = Daemon::spawn(format!("ratings-server #{n}"), "ratings-server", &args)?;
        let id = format!("ratings-{n}");
        let addr = socket_addr(&daemon.listening(&id, READY_TIMEOUT).await?)?;
        daemon.registered(&id, READY_TIMEOUT).await?;
        Ok(Self { daemon, addr })
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A registry and three ratings instances, the cluster of most scenarios.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The registry.
    pub(crate) registry: Registry,
    /// The instances, `ratings-1` to `ratings-N`.
    pub(crate) instances: Vec<Ratings>,
}

impl Cluster {
    /// Starts a registry and `n` instances, instance `i` (from 1) with
    /// `extra(i)` arguments.
    pub(crate) async fn start(n: u16, extra: impl Fn(u16) -> Vec<String>) -> anyhow::Result<Self> {
        let registry = Registry::start(&[]).await?;
        let mut instances = Vec::new();
        for i in 1..=n {
            let args = extra(i);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            instances.push(Ratings::start(&registry, i, &args).await?);
        }
        Ok(Self {
            registry,
            instances,
        })
    }

    /// Every process, for the meter.
    pub(crate) fn daemons(&self) -> Vec<&Daemon> {
        std::iter::once(&self.registry.daemon)
            .chain(self.instances.iter().map(|i| &i.daemon))
            .collect()
    }
}

/// A running `market-web` in front of a cluster.
#[derive(Debug)]
pub(crate) struct Web {
    /// The process.
    pub(crate) daemon: Daemon,
    /// Where it serves HTTP.
    pub(crate) addr: SocketAddr,
}

impl Web {
    /// Starts `market-web` on a free loopback port for `registry`, plus
    /// `extra` arguments, and waits until it listens; `label` names it in
    /// the report.
    pub(crate) async fn start(
        label: &str,
        registry: &Registry,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.url,
            "--token",
            &registry.token,
        ];
        args.extend_from_slice(extra);
        let daemon = Daemon::spawn(format!("market-web ({label})"), "market-web", &args)?;
        let addr = socket_addr(&daemon.listening("market-web", READY_TIMEOUT).await?)?;
        Ok(Self { daemon, addr })
    }
}

// === what a process costs ===

/// One process to meter: a name for the report and its pid.
#[derive(Debug, Clone)]
pub(crate) struct Metered {
    /// The report's name.
    pub(crate) name: String,
    /// Its pid.
    pub(crate) pid: u32,
}

impl Metered {
    /// A daemon.
    pub(crate) fn of(daemon: &Daemon) -> Self {
        Self {
            name: daemon.name().to_owned(),
            pid: daemon.pid(),
        }
    }

    /// The benchmark process itself (the load generator, and the client
    /// stack when the scenario calls through it in process).
    pub(crate) fn this(role: &str) -> Self {
        Self {
            name: format!("bench ({role})"),
            pid: std::process::id(),
        }
    }
}

/// What a process cost over a measured interval.
#[derive(Debug, Clone)]
pub(crate) struct Cost {
    /// The report's name.
    pub(crate) name: String,
    /// CPU time over wall time, in % of one core.
    pub(crate) cpu_pct: f64,
    /// Resident memory at the end, KiB.
    pub(crate) rss_kib: u64,
    /// The most resident memory it ever had, KiB (`VmHWM`).
    pub(crate) peak_rss_kib: u64,
}

/// Measures CPU and memory of processes between `start` and `finish`.
#[derive(Debug)]
pub(crate) struct Meter {
    procs: Vec<(Metered, u64)>,
    started: Instant,
}

impl Meter {
    /// Takes the processes' CPU times now.
    pub(crate) fn start(procs: impl IntoIterator<Item = Metered>) -> Self {
        let procs = procs
            .into_iter()
            .map(|p| {
                let ticks = cpu_ticks(p.pid).unwrap_or_default();
                (p, ticks)
            })
            .collect();
        Self {
            procs,
            started: Instant::now(),
        }
    }

    /// Each process's CPU share since `start`, and its memory now.
    pub(crate) fn finish(&self) -> Vec<Cost> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let hz = clock_ticks_per_second();
        self.procs
            .iter()
            .map(|(p, before)| {
                let after = cpu_ticks(p.pid).unwrap_or(*before);
                let (rss_kib, peak_rss_kib) = memory_kib(p.pid).unwrap_or_default();
                Cost {
                    name: p.name.clone(),
                    cpu_pct: (after.saturating_sub(*before)) as f64 / hz / wall * 100.0,
                    rss_kib,
                    peak_rss_kib,
                }
            })
            .collect()
    }
}

/// utime + stime of a process, in clock ticks (`/proc/<pid>/stat`).
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name, field 2, may hold spaces: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line; `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// `VmRSS` and `VmHWM` of a process, KiB (`/proc/<pid>/status`).
pub(crate) fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_default()
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// The kernel's clock ticks per second, for `/proc` CPU times.
pub(crate) fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |hz| hz as f64)
}

/// The pids of this process's children running `exe` (to meter a server that
/// a helper started, such as test-support's etcd).
pub(crate) fn children_running(exe: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            parent == Some(me)
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|path| path == exe)
        })
        .collect()
}
