//! Real etcd servers (Debian's `etcd-server`) for tests: one member or a
//! cluster, on free loopback ports, with temporary data dirs.

use std::time::Duration;

use crate::{Proc, Signal, free_port};

/// The etcd binary.
const ETCD: &str = "/usr/bin/etcd";
/// The etcd command line client.
const ETCDCTL: &str = "/usr/bin/etcdctl";

/// An etcd cluster of one or more members.
#[derive(Debug)]
pub struct Etcd {
    members: Vec<Option<Proc>>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `size` members and waits until every one serves clients.
    ///
    /// # Panics
    ///
    /// When etcd is not installed (the README's test command installs it) or
    /// does not come up.
    pub async fn start(size: usize) -> Self {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server (tests/run.sh does)"
        );
        // On tmpfs where there is one: etcd fsyncs every write, and a test is
        // about the registry's logic, not the disk's latency.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).expect("temp dir")
        } else {
            tempfile::tempdir().expect("temp dir")
        };
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut client_urls = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = dir.path().join(format!("m{i}"));
            let args = [
                "--name".to_owned(),
                format!("m{i}"),
                "--data-dir".to_owned(),
                data.display().to_string(),
                "--listen-client-urls".to_owned(),
                client_url.clone(),
                "--advertise-client-urls".to_owned(),
                client_url.clone(),
                "--listen-peer-urls".to_owned(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".to_owned(),
                peer_url,
                "--initial-cluster".to_owned(),
                initial_cluster.clone(),
                "--initial-cluster-token".to_owned(),
                "market-test".to_owned(),
                "--initial-cluster-state".to_owned(),
                "new".to_owned(),
                // Short election timeouts keep failover tests quick on loopback.
                "--heartbeat-interval".to_owned(),
                "50".to_owned(),
                "--election-timeout".to_owned(),
                "500".to_owned(),
            ];
            members.push(Some(Proc::spawn(ETCD, args)));
            client_urls.push(client_url);
        }
        for member in members.iter().flatten() {
            member
                .wait_for_line_after(0, "ready to serve client requests", Duration::from_secs(30))
                .await;
        }
        Self {
            members,
            client_urls,
            _dir: dir,
        }
    }

    /// The client URLs, comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.client_urls.join(",")
    }

    /// Kills member `i` (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut member) = self.members[i].take() {
            member.signal(Signal::SIGKILL);
            member.wait_exit(Duration::from_secs(10)).await;
        }
    }

    /// Freezes member `i` (SIGSTOP): it holds its connections and answers
    /// nothing until [`Etcd::thaw`].
    pub fn freeze(&self, i: usize) {
        self.members[i].as_ref().expect("a running member").freeze();
    }

    /// Lets a frozen member `i` go on (SIGCONT).
    pub fn thaw(&self, i: usize) {
        self.members[i]
            .as_ref()
            .expect("a running member")
            .signal(Signal::SIGCONT);
    }

    /// `etcdctl compact` at `revision`: history before it is gone.
    pub async fn compact(&self, revision: u64) {
        let output = tokio::process::Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoints())
            .arg("compact")
            .arg(revision.to_string())
            .output()
            .await
            .expect("run etcdctl");
        assert!(
            output.status.success(),
            "etcdctl compact failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
