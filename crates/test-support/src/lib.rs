//! Helpers for whole-system tests: run the workspace's binaries as real
//! processes through the one supervisor (`daemon::supervise`), wait for
//! their readiness and for what they print instead of sleeping, and signal
//! them.
//!
//! The binaries are taken from the target folder the test itself was built
//! into; the README's test command builds them before the tests run.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

pub use daemon::supervise::Signal;

mod daemons;
mod etcd;
pub mod otlp;
mod pki;

pub use daemons::{Cluster, Instance, Ratings, Registry, StoreKind, Visitor, Web};
pub use etcd::Etcd;
pub use otlp::{Otlp, ReceivedSpan, Reserved};
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

/// A running process of ours, started through the one supervisor
/// (`daemon::supervise`) with its output echoed into the test's. It is
/// killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: daemon::supervise::Child,
}

impl Proc {
    /// Starts a workspace binary (or a system tool, by absolute path) with
    /// arguments, logging at `info`.
    ///
    /// # Panics
    ///
    /// When it cannot be started.
    pub fn spawn<I, S>(name: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let spawn = daemon::supervise::Spawn::new(name, bin(name))
            .args(args)
            .echo()
            // A test may look at everything a process printed.
            .keep(usize::MAX);
        Self::from_spawn(spawn)
    }

    /// Starts what `spawn` describes, its lines echoed into the test's
    /// output (shown when the test fails) behind its name and pid.
    ///
    /// # Panics
    ///
    /// When it cannot be started.
    pub fn from_spawn(spawn: daemon::supervise::Spawn) -> Self {
        let child = spawn.spawn().unwrap_or_else(|e| panic!("{e:#}"));
        Self { child }
    }

    /// The supervisor's handle, for what this wrapper does not offer.
    pub fn child(&self) -> &daemon::supervise::Child {
        &self.child
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends a signal.
    ///
    /// # Panics
    ///
    /// When it cannot be sent.
    pub fn signal(&self, sig: Signal) {
        self.child.signal(sig).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Freezes it with SIGSTOP, and returns once every one of its threads
    /// has stopped.
    ///
    /// # Panics
    ///
    /// When it did not stop within 5 s.
    pub fn freeze(&self) {
        self.child.freeze().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// How many lines it printed so far: a mark for [`Proc::wait_for_line_after`].
    pub fn mark(&self) -> usize {
        self.child.mark()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// Waits until `instance` (a daemon's own name, for one without
    /// instances) announces that it listens, and returns its URL.
    ///
    /// # Panics
    ///
    /// After [`READY_TIMEOUT`], or when it exits first.
    pub async fn listening(&self, instance: &str) -> String {
        self.child
            .listening(instance, READY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until `instance` announces that it is registered.
    ///
    /// # Panics
    ///
    /// After [`READY_TIMEOUT`], or when it exits first.
    pub async fn registered(&self, instance: &str) {
        self.child
            .registered(instance, READY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits for a line containing `needle`, from the start, and returns it.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_line_after(0, needle, READY_TIMEOUT).await
    }

    /// Waits for a line containing `needle` printed after `mark`.
    ///
    /// # Panics
    ///
    /// After `timeout`, or when it exits first, with what it printed last.
    pub async fn wait_for_line_after(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> String {
        self.child
            .wait_for_line_after(mark, needle, timeout)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    ///
    /// When it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.child
            .wait_exit(timeout)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// The socket address of a URL a daemon announced, `http://127.0.0.1:7000`.
///
/// # Panics
///
/// When it is not one.
pub fn socket_addr(url: &str) -> SocketAddr {
    daemon::supervise::socket_addr(url).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The value of the sample `name` (without labels) in a Prometheus text
/// exposition, such as a daemon's `/metrics`.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A plain HTTP/1.1 `GET` over loopback: the status and the body.
///
/// # Panics
///
/// When the server does not answer with a well-formed response.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_request(addr, "GET", path, &[], "").await;
    (response.status, response.body)
}

/// An HTTP response, as [`http_request`] read it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Its status code.
    pub status: u16,
    /// Its headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// Its body, as text.
    pub body: String,
}

impl HttpResponse {
    /// Every value of the header `name` (lower case).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One plain HTTP/1.1 request over loopback, with `headers` and `body`
/// (a `Content-Length` is added when the body is not empty).
///
/// # Panics
///
/// When the server does not answer with a well-formed response.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    if !body.is_empty() {
        let _ = write!(request, "Content-Length: {}\r\n", body.len());
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("headers and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A free loopback port, for programs that cannot be given port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Runs each named `async fn(StoreKind)` of the calling test file on both
/// stores, as the tests `memory::NAME` and `etcd::NAME`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::StoreKind::Memory).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::StoreKind::Etcd).await;
                }
            )*
        }
    };
}
