//! Starts the demo's processes, shows where they are, and stops them in order.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use market_proto::registry::v1::CreateServiceRequest;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::Notify,
};

use crate::DemoArgs;

/// How many of a process's latest lines are kept to spot its readiness.
const KEPT_LINES: usize = 256;

/// How long a process may take to be ready before the demo gives up.
const READY: Duration = Duration::from_secs(30);

/// One process of the demo, with what it printed.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    lines: Arc<Mutex<VecDeque<String>>>,
    printed: Arc<Notify>,
    panics: Arc<AtomicUsize>,
}

/// What becomes of a process's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// Shown on stderr behind the process's name.
    Echo,
    /// Only scanned, for readiness and panics.
    Quiet,
}

impl Proc {
    /// Starts `market <args…>` in its own process group (so that Ctrl-C
    /// reaches only the demo, which then stops everything in order), with its
    /// output shown behind its name.
    fn spawn(exe: &PathBuf, name: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::start(exe, name, args, Output::Echo, None)
    }

    /// Like [`Proc::spawn`], with its output `shown` or not and, when
    /// given, `RUST_LOG` set to `log`.
    pub(crate) fn start(
        exe: &PathBuf,
        name: &str,
        args: &[String],
        shown: Output,
        log: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(exe);
        if let Some(log) = log {
            command.env("RUST_LOG", log);
        }
        // Every setting comes as a flag: nothing from the demo's shell.
        for setting in daemon::SETTINGS_FROM_ENV {
            command.env_remove(setting);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let printed = Arc::new(Notify::new());
        let panics = Arc::new(AtomicUsize::new(0));
        let outputs = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ];
        for output in outputs.into_iter().flatten() {
            let (lines, printed, panics, label) = (
                lines.clone(),
                printed.clone(),
                panics.clone(),
                format!("{name:>10} |"),
            );
            tokio::spawn(async move {
                let mut reader = BufReader::new(output).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if shown == Output::Echo {
                        eprintln!("{label} {line}");
                    }
                    if line.contains("panicked at") {
                        eprintln!("{label} {line}");
                        panics.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
                    // Only the start-up lines are needed; keep memory bounded.
                    if lines.len() == KEPT_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                    printed.notify_waiters();
                }
            });
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            printed,
            panics,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// How many panics it has reported so far.
    pub(crate) fn panics(&self) -> usize {
        self.panics.load(Ordering::Relaxed)
    }

    /// Sends it `signal`; a process that is gone already is not an error.
    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits until it has exited, at most `timeout`.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {timeout:?}", self.name))?
            .with_context(|| format!("cannot wait for {}", self.name))?;
        Ok(())
    }

    /// Waits for a line containing `needle` and returns it.
    pub(crate) async fn ready(&mut self, needle: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let printed = self.printed.notified();
            tokio::pin!(printed);
            printed.as_mut().enable();
            let found = self
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|line| line.contains(needle))
                .cloned();
            if let Some(line) = found {
                return Ok(line);
            }
            tokio::select! {
                () = &mut printed => {}
                status = self.child.wait() => bail!("{} exited ({}) before it was ready", self.name, status?),
                () = tokio::time::sleep_until(deadline) => bail!("{} was not ready within {READY:?}", self.name),
            }
        }
    }

    /// Asks it to stop (SIGTERM) and waits until it did.
    pub(crate) async fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        // A paused instance cannot act on SIGTERM until it runs again.
        self.signal(Signal::SIGCONT);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop within 10 s; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

/// The address in a `… listening on 127.0.0.1:7000 …` or `… http://127.0.0.1:5000` line.
pub(crate) fn address_in(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .filter_map(|word| word.trim_start_matches("http://").parse().ok())
        .next()
}

/// The port in a `listening on port 8001` line.
pub(crate) fn port_in(line: &str) -> Option<u16> {
    line.split("listening on port ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub(crate) async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the market binary")?;
    let any = |addr: SocketAddr| {
        if args.any_ports {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            addr
        }
    };
    // The registry's data dir lives as long as the demo.
    let data_dir = tempfile::Builder::new().prefix("market-demo-").tempdir()?;
    let mut procs: Vec<Proc> = Vec::new();
    let result = start(
        &exe,
        &args,
        data_dir.path(),
        any(args.registry_listen),
        any(args.listen),
        &mut procs,
    )
    .await;
    match result {
        Ok(banner) => {
            println!("{banner}");
            daemon::shutdown_signal().await;
            println!(
                "\nStopping: ratings instances first (they deregister), then the shop and the registry."
            );
        }
        Err(error) => eprintln!("the demo could not start: {error:#}"),
    }
    // Instances first, so that they deregister while the registry still runs.
    for proc in procs.iter_mut().rev() {
        proc.stop().await;
    }
    println!("Stopped.");
    Ok(())
}

async fn start(
    exe: &PathBuf,
    args: &DemoArgs,
    data_dir: &std::path::Path,
    registry_listen: SocketAddr,
    listen: SocketAddr,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    let mut web_args = vec![
        "market-web".to_owned(),
        "--listen".to_owned(),
        listen.to_string(),
    ];
    let mut token = None;
    let mut registry_url = None;
    if args.monolith {
        web_args.push("--monolith".to_owned());
    } else {
        let admin = registryd::auth::generate(registryd::auth::TokenKind::Admin);
        let mut registry = Proc::spawn(
            exe,
            "registryd",
            &[
                "registryd".to_owned(),
                "--listen".to_owned(),
                registry_listen.to_string(),
                "--data-dir".to_owned(),
                data_dir.display().to_string(),
                "--admin-token".to_owned(),
                admin.clone(),
            ],
        )?;
        let line = registry.ready("registryd listening on").await?;
        let addr = address_in(&line).context("registryd did not say where it listens")?;
        let url = format!("http://{addr}");
        rows.push(format!(
            "  {:<12} pid {:<8} {url}",
            "registryd",
            registry.pid()
        ));
        procs.push(registry);

        // The `ratings` service entry (what `dwc create-service ratings` did).
        let created = registry_client::connect(&url, &admin)?
            .create_service(CreateServiceRequest {
                name: "ratings".into(),
                ..Default::default()
            })
            .await
            .context("cannot create the ratings service")?
            .into_inner();

        for n in 1..=args.instances {
            let mut ratings_args = vec![
                "ratings-server".to_owned(),
                "--instance".to_owned(),
                n.to_string(),
                "--registry".to_owned(),
                url.clone(),
                "--token".to_owned(),
                created.token.clone(),
            ];
            if args.any_ports {
                ratings_args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
            }
            let name = format!("ratings-{n}");
            let mut instance = Proc::spawn(exe, &name, &ratings_args)?;
            let port = port_in(&instance.ready("listening on port").await?).context("no port")?;
            instance.ready(&format!("registered {name}")).await?;
            rows.push(format!(
                "  {name:<12} pid {:<8} http://127.0.0.1:{port}",
                instance.pid()
            ));
            procs.push(instance);
        }
        web_args.extend([
            "--registry".to_owned(),
            url.clone(),
            "--token".to_owned(),
            created.token.clone(),
        ]);
        web_args.extend(args.policy.to_args());
        token = Some(created.token);
        registry_url = Some(url);
    }

    let mut web = Proc::spawn(exe, "market-web", &web_args)?;
    let line = web.ready("market-web listening on").await?;
    let addr = address_in(&line).context("market-web did not say where it listens")?;
    rows.push(format!(
        "  {:<12} pid {:<8} http://{addr}",
        "market-web",
        web.pid()
    ));
    procs.push(web);

    let mut banner = format!(
        "\nThe market is open: http://{addr}/\n\n{}\n",
        rows.join("\n")
    );
    if let (Some(token), Some(url)) = (token, registry_url) {
        let first = procs.get(1).filter(|p| p.name.starts_with("ratings-"));
        if let Some(first) = first {
            let pid = first.pid();
            banner.push_str(&format!(
                "\nThe walkthrough, with {name}:\n  pause it:   kill -STOP {pid}\n  resume it:  kill -CONT {pid}\n  stop it:    kill {pid}\n",
                name = first.name
            ));
        }
        banner.push_str(&format!(
            "  start another instance:\n    cargo run --release --bin market -- ratings-server --instance {next} --registry {url} --token {token}\n",
            next = args.instances + 1
        ));
        banner.push_str(&format!("  breakers and cache: http://{addr}/status\n"));
    }
    banner.push_str("\nCtrl-C stops everything.");
    Ok(banner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_are_read_from_log_lines() {
        assert_eq!(
            address_in("INFO registryd: registryd listening on 127.0.0.1:7000 addr=127.0.0.1:7000"),
            Some(SocketAddr::from(([127, 0, 0, 1], 7000)))
        );
        assert_eq!(
            address_in(
                "INFO market_web::cli: market-web listening on http://127.0.0.1:5000 addr=127.0.0.1:5000"
            ),
            Some(SocketAddr::from(([127, 0, 0, 1], 5000)))
        );
        assert_eq!(
            port_in("INFO ratings_server::cli: listening on port 8001 instance=ratings-1"),
            Some(8001)
        );
    }
}
