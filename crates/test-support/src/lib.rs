//! Helpers for whole-system tests: run the workspace's binaries as real
//! processes, wait for what they print instead of sleeping, and signal them.
//!
//! The binaries are taken from the target folder the test itself was built
//! into; the README's test command builds them before the tests run.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

pub use nix::sys::signal::Signal;
use nix::{sys::signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::Notify,
};

mod daemons;
mod etcd;
mod pki;

pub use daemons::{Cluster, Ratings, Registry, StoreKind, Web};
pub use etcd::Etcd;
pub use pki::Pki;

/// How long a test waits for a process to print what it should, by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of one of the workspace's binaries, or `name` itself when it is
/// an absolute path (a system tool).
///
/// # Panics
///
/// When the binary was not built: run the README's test command, which builds
/// every binary first.
pub fn bin(name: &str) -> PathBuf {
    if Path::new(name).is_absolute() {
        return PathBuf::from(name);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which tests/run.sh does)",
        path.display()
    );
    path
}

/// Everything a process printed, line by line, on stdout and stderr.
#[derive(Debug, Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    /// Woken at each new line.
    changed: Notify,
}

/// A running process of ours. It is killed when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    output: Arc<Output>,
}

impl Proc {
    /// Starts a workspace binary with arguments.
    ///
    /// # Panics
    ///
    /// When it cannot be started.
    pub fn spawn<I, S>(name: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(bin(name));
        // Settings come as flags only: nothing from the tests' environment.
        for setting in daemon::SETTINGS_FROM_ENV {
            command.env_remove(setting);
        }
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Output::default());
        let label = format!("{name}[{}]", child.id().unwrap_or_default());
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(collect(
                BufReader::new(stdout),
                output.clone(),
                label.clone(),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect(BufReader::new(stderr), output.clone(), label));
        }
        Self {
            name: name.to_owned(),
            child,
            output,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is still running")
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        let pid = i32::try_from(self.pid()).expect("pid fits in i32");
        signal::kill(Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| panic!("cannot send {sig} to {}: {e}", self.name));
    }

    /// Freezes it with SIGSTOP, and returns once every one of its threads
    /// has stopped. `kill` returns before the stop takes effect: on a busy
    /// machine a thread already running can still answer a request
    /// meanwhile, which a test that froze the process does not expect.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
        let threads = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !all_stopped(&threads) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not stop within 5 s of SIGSTOP",
                self.name
            );
            // The kernel tells no one when a thread stops; look again soon.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many lines it printed so far: a mark for [`Proc::wait_for_line_after`].
    pub fn mark(&self) -> usize {
        self.output.lines.lock().expect("output lock").len()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lines.lock().expect("output lock").join("\n")
    }

    /// Waits for a line containing `needle`, from the start, and returns it.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_line_after(0, needle, READY_TIMEOUT).await
    }

    /// Waits for a line containing `needle` printed after `mark`.
    ///
    /// # Panics
    ///
    /// After `timeout`, with everything the process printed.
    pub async fn wait_for_line_after(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.output.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found = (self.output.lines.lock().expect("output lock"))
                .iter()
                .skip(mark)
                .find(|line| line.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "{} did not print {needle:?} within {timeout:?}; it printed:\n{}",
                    self.name,
                    self.output()
                );
            }
        }
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    ///
    /// When it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the process"),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}; it printed:\n{}",
                self.name,
                self.output()
            ),
        }
    }
}

async fn collect<R: tokio::io::AsyncRead + Unpin>(
    reader: BufReader<R>,
    output: Arc<Output>,
    label: String,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // Shown with the test's output when it fails.
        eprintln!("{label}: {line}");
        output.lines.lock().expect("output lock").push(line);
        output.changed.notify_waiters();
    }
}

/// Parses the address out of a `... listening on 127.0.0.1:7000 ...` line.
///
/// # Panics
///
/// When the line has no such address.
pub fn listening_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .skip_while(|word| *word != "on")
        .nth(1)
        .and_then(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// A plain HTTP/1.1 `GET` over loopback: the status and the body.
///
/// # Panics
///
/// When the server does not answer with a well-formed response.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("headers and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// A free loopback port, for programs that cannot be given port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
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
