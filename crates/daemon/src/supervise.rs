//! Starting the market's daemons and waiting until they are ready: the one
//! supervisor that the demo, the chaos soak, the test helpers and the
//! benchmark suite share.
//!
//! Every child gets the same environment rules: none of the variables our
//! binaries read settings from ([`SETTINGS_FROM_ENV`]) is passed on, so a
//! setting reaches a child only as a flag, and `RUST_LOG` is set to what the
//! supervisor asks for. Readiness is read from the child's stdout as the
//! JSON lines of [`ready`], never from its human log wording; the other
//! lines are kept (a bounded number of them) for callers that wait on what a
//! process logged about its work, and for error messages.
//!
//! [`SETTINGS_FROM_ENV`]: crate::SETTINGS_FROM_ENV

use std::{
    collections::VecDeque,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    process::Command,
    sync::Notify,
};

use crate::ready::{self, Event};

/// How a child is to be started: [`Spawn::new`], then the builder methods,
/// then [`Spawn::spawn`].
#[derive(Debug, Clone)]
pub struct Spawn {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    /// Settings for the child alone, on top of what it inherits.
    envs: Vec<(OsString, OsString)>,
    log: String,
    echo: bool,
    label: Option<String>,
    own_group: bool,
    keep: usize,
}

impl Spawn {
    /// `program` under `name`, which labels its lines and errors.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            log: "info".to_owned(),
            echo: false,
            label: None,
            own_group: false,
            keep: 10_000,
        }
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child alone, one of
    /// [`crate::SETTINGS_FROM_ENV`] included (those are removed only from
    /// what it inherits). `RUST_LOG` is [`Spawn::log`]'s.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The child's `RUST_LOG` (default `info`).
    #[must_use]
    pub fn log(mut self, filter: impl Into<String>) -> Self {
        self.log = filter.into();
        self
    }

    /// Shows every line it prints on stderr, behind its label (by default
    /// only panics are shown).
    #[must_use]
    pub fn echo(mut self) -> Self {
        self.echo = true;
        self
    }

    /// What its lines shown on stderr start with (default `NAME[PID]:`).
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Puts it in a process group of its own, so that a Ctrl-C in the
    /// supervisor's terminal reaches only the supervisor, which then stops
    /// its children in order.
    #[must_use]
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// Keeps its last `lines` lines (default 10,000); older ones are
    /// dropped, so that memory stays bounded however long it runs.
    #[must_use]
    pub fn keep(mut self, lines: usize) -> Self {
        self.keep = lines.max(1);
        self
    }

    /// The command this starts, with the environment rules applied.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        for setting in crate::SETTINGS_FROM_ENV {
            command.env_remove(setting);
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .env("RUST_LOG", &self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.own_group {
            command.process_group(0);
        }
        command
    }

    /// Starts it.
    ///
    /// # Errors
    ///
    /// When the program cannot be started.
    pub fn spawn(self) -> anyhow::Result<Child> {
        let mut child = self
            .command()
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        let output = Arc::new(Output {
            kept: Mutex::new(Kept::default()),
            keep: self.keep,
            changed: Notify::new(),
            open_streams: AtomicUsize::new(2),
            panics: AtomicUsize::new(0),
        });
        let label = self
            .label
            .clone()
            .unwrap_or_else(|| format!("{}[{}]:", self.name, child.id().unwrap_or_default()));
        let echo = self.echo;
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>);
        for (stream, events) in [(stdout, true), (stderr, false)] {
            match stream {
                Some(stream) => {
                    tokio::spawn(collect(stream, output.clone(), label.clone(), echo, events));
                }
                None => output.stream_closed(),
            }
        }
        Ok(Child {
            name: self.name,
            child,
            output,
        })
    }
}

/// What a child printed.
#[derive(Debug)]
struct Output {
    kept: Mutex<Kept>,
    keep: usize,
    /// Woken at each new line, and when a stream closes.
    changed: Notify,
    /// Of stdout and stderr, how many are still open: at 0 the child has
    /// exited (or closed both, which a daemon of ours does not do).
    open_streams: AtomicUsize,
    panics: AtomicUsize,
}

#[derive(Debug, Default)]
struct Kept {
    /// The last lines, stdout and stderr interleaved as they came.
    lines: VecDeque<String>,
    /// How many lines were printed in all.
    total: usize,
    /// Every readiness event, in order (a handful per daemon).
    events: Vec<Event>,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stream_closed(&self) {
        self.open_streams.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn ended(&self) -> bool {
        self.open_streams.load(Ordering::Acquire) == 0
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    output: Arc<Output>,
    label: String,
    echo: bool,
    events: bool,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let panicked = line.contains("panicked at");
        if echo || panicked {
            eprintln!("{label} {line}");
        }
        if panicked {
            output.panics.fetch_add(1, Ordering::Relaxed);
        }
        let event = if events { ready::parse(&line) } else { None };
        let mut kept = output.lock();
        if let Some(event) = event {
            kept.events.push(event);
        }
        if kept.lines.len() == output.keep {
            kept.lines.pop_front();
        }
        kept.lines.push_back(line);
        kept.total += 1;
        drop(kept);
        output.changed.notify_waiters();
    }
    output.stream_closed();
}

/// A running child. It is killed when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: tokio::process::Child,
    output: Arc<Output>,
}

impl Child {
    /// The name it was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id (0 once it has been waited for).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Sends it `signal`.
    ///
    /// # Errors
    ///
    /// When it has been waited for already, or the signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .with_context(|| format!("{} has exited", self.name))?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// Freezes it with SIGSTOP and returns once every one of its threads has
    /// stopped: `kill` returns before the stop takes effect, and on a busy
    /// machine a thread already running could still answer meanwhile.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent, or it has not stopped within 5 s.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        let threads = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !all_stopped(&threads) {
            if std::time::Instant::now() >= deadline {
                bail!("{} did not stop within 5 s of SIGSTOP", self.name);
            }
            // The kernel tells no one when a thread stops; look again soon.
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// How many panics it has reported so far.
    pub fn panics(&self) -> usize {
        self.output.panics.load(Ordering::Relaxed)
    }

    /// How many lines it printed so far: a mark for
    /// [`Child::wait_for_line_after`] and [`Child::lines_after`].
    pub fn mark(&self) -> usize {
        self.output.lock().total
    }

    /// The kept lines printed after `mark`.
    pub fn lines_after(&self, mark: usize) -> Vec<String> {
        let kept = self.output.lock();
        let first = kept.total - kept.lines.len();
        kept.lines
            .iter()
            .skip(mark.saturating_sub(first))
            .cloned()
            .collect()
    }

    /// Every kept line, one per line.
    pub fn output(&self) -> String {
        self.lines_after(0).join("\n")
    }

    /// Its last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let kept = self.output.lock();
        let skip = kept.lines.len().saturating_sub(n);
        let tail: Vec<&str> = kept.lines.iter().skip(skip).map(String::as_str).collect();
        tail.join("\n")
    }

    /// Waits for a line containing `needle` printed after `mark`, and
    /// returns it.
    ///
    /// # Errors
    ///
    /// After `timeout`, or when it exits first, with its last lines.
    pub async fn wait_for_line_after(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.wait(timeout, &format!("print {needle:?}"), |kept| {
            let first = kept.total - kept.lines.len();
            kept.lines
                .iter()
                .skip(mark.saturating_sub(first))
                .find(|line| line.contains(needle))
                .cloned()
        })
        .await
    }

    /// Waits for the first readiness event that `wanted` picks, and returns
    /// it.
    ///
    /// # Errors
    ///
    /// After `timeout`, or when it exits first, with its last lines.
    pub async fn ready(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Event> {
        self.wait(timeout, what, |kept| {
            kept.events.iter().find(|e| wanted(e)).cloned()
        })
        .await
    }

    /// Waits until `instance` (a daemon's own name for one without
    /// instances) listens, and returns the URL to call it at.
    ///
    /// # Errors
    ///
    /// As [`Child::ready`].
    pub async fn listening(&self, instance: &str, timeout: Duration) -> anyhow::Result<String> {
        let event = self
            .ready(
                &format!("say that {instance} listens"),
                timeout,
                |event| matches!(event, Event::Listening { instance: i, .. } if i == instance),
            )
            .await?;
        match event {
            Event::Listening { address, .. } => Ok(address),
            Event::Registered { .. } => unreachable!("only a listening event is picked"),
        }
    }

    /// Waits until `instance` is registered.
    ///
    /// # Errors
    ///
    /// As [`Child::ready`].
    pub async fn registered(&self, instance: &str, timeout: Duration) -> anyhow::Result<()> {
        self.ready(
            &format!("register {instance}"),
            timeout,
            |event| matches!(event, Event::Registered { instance: i, .. } if i == instance),
        )
        .await
        .map(drop)
    }

    async fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        found: impl Fn(&Kept) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.output.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = found(&self.output.lock()) {
                return Ok(found);
            }
            if self.output.ended() {
                bail!(
                    "{} exited before it did {what}; its last lines:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!(
                    "{} did not {what} within {timeout:?}; its last lines:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
        }
    }

    /// Waits until it has exited, at most `timeout`.
    ///
    /// # Errors
    ///
    /// When it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "{} did not exit within {timeout:?}; its last lines:\n{}",
                    self.name,
                    self.tail(40)
                )
            })?
            .with_context(|| format!("cannot wait for {}", self.name))
    }

    /// Asks it to stop (SIGTERM, and SIGCONT, since a paused process cannot
    /// act on SIGTERM until it runs again) and waits at most `grace` for it
    /// to exit; then kills it. Returns how it exited, or `None` when it had
    /// to be killed.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = self.signal(Signal::SIGTERM);
        let _ = self.signal(Signal::SIGCONT);
        if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
            return Some(status);
        }
        let _ = self.child.kill().await;
        None
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    ///
    /// # Errors
    ///
    /// When it cannot be killed.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("cannot kill {}", self.name))
    }
}

/// The socket address of a URL a daemon announced (`http://127.0.0.1:7000`).
///
/// # Errors
///
/// When `url` names no IP address and port.
pub fn socket_addr(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("{url:?} is not an http://IP:PORT address"))
}

/// Whether every thread listed in `threads` (a `/proc/<pid>/task`) is
/// stopped by a signal: state `T` in its `stat`, after the name in
/// parentheses.
fn all_stopped(threads: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(threads) else {
        return false;
    };
    entries.flatten().all(|thread| {
        std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
            stat.rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().next())
                == Some("T")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Spawn {
        Spawn::new("sh", "/bin/sh").args(["-c", script])
    }

    /// What a command sets (`Some`) and removes (`None`) of its environment.
    fn envs(command: &Command) -> Vec<(String, Option<String>)> {
        command
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
                (text(k), v.map(text))
            })
            .collect()
    }

    #[tokio::test]
    async fn readiness_is_read_from_json_lines_not_from_log_wording() {
        let child = shell(
            r#"echo 'INFO listening on port 1 instance=svc-1' >&2
               echo '{"ready":"listening","service":"svc","instance":"svc-1","address":"http://127.0.0.1:1"}'
               echo '{"ready":"registered","service":"svc","instance":"svc-1"}'
               sleep 5"#,
        )
        .spawn()
        .unwrap();
        let address = child
            .listening("svc-1", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(address, "http://127.0.0.1:1");
        child
            .registered("svc-1", Duration::from_secs(5))
            .await
            .unwrap();
        // A log line alone is no readiness.
        let error = child
            .listening("svc-2", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("did not say that svc-2 listens"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_child_that_exits_before_it_is_ready_fails_the_wait_at_once() {
        let child = shell("echo 'cannot listen' >&2; exit 3").spawn().unwrap();
        let error = child
            .listening("svc-1", Duration::from_secs(30))
            .await
            .unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("exited before"), "{error}");
        assert!(error.contains("cannot listen"), "{error}");
    }

    #[test]
    fn children_get_no_setting_from_the_environment_and_the_log_filter_asked_for() {
        let command = shell("true").log("warn").command();
        let envs = envs(&command);
        for setting in crate::SETTINGS_FROM_ENV {
            assert!(
                envs.contains(&(setting.to_owned(), None)),
                "{setting} is not removed: {envs:?}"
            );
        }
        assert!(envs.contains(&("RUST_LOG".to_owned(), Some("warn".to_owned()))));
    }

    #[test]
    fn a_setting_asked_for_reaches_the_child_even_one_it_would_not_inherit() {
        let command = shell("true")
            .env("OTEL_TRACES_SAMPLER", "always_off")
            .env("LOG_FORMAT", "json")
            .command();
        let envs = envs(&command);
        assert!(envs.contains(&(
            "OTEL_TRACES_SAMPLER".to_owned(),
            Some("always_off".to_owned())
        )));
        assert!(envs.contains(&("LOG_FORMAT".to_owned(), Some("json".to_owned()))));
        assert!(
            envs.contains(&("REGISTRY_TOKEN".to_owned(), None)),
            "{envs:?}"
        );
    }

    #[test]
    fn announced_urls_become_socket_addresses() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7000));
        assert_eq!(socket_addr("http://127.0.0.1:7000").unwrap(), addr);
        assert_eq!(socket_addr("https://127.0.0.1:7000/").unwrap(), addr);
        assert!(socket_addr("http://localhost:7000").is_err());
    }

    #[tokio::test]
    async fn only_the_last_lines_are_kept() {
        let mut child = shell("for i in $(seq 1 50); do echo line $i; done")
            .keep(10)
            .spawn()
            .unwrap();
        child.wait_exit(Duration::from_secs(5)).await.unwrap();
        child
            .wait(Duration::from_secs(5), "close", |kept| {
                (kept.total == 50).then_some(())
            })
            .await
            .unwrap();
        assert_eq!(child.mark(), 50);
        let kept = child.lines_after(0);
        assert_eq!(kept.len(), 10);
        assert_eq!(kept[0], "line 41");
        assert_eq!(child.lines_after(48), ["line 49", "line 50"]);
    }
}
