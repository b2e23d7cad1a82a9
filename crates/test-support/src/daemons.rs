//! The project's daemons, started the way a user starts them.

use std::{net::SocketAddr, path::Path, time::Duration};

use crate::{Proc, Signal, socket_addr};

/// A running `registryd` with its own data dir.
#[derive(Debug)]
pub struct Registry {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The admin token, read from the data dir.
    pub admin_token: String,
}

impl Registry {
    /// Starts `registryd` on a free loopback port with `data_dir`, plus
    /// `extra` arguments, and waits until it listens.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", data_dir, extra).await
    }

    /// Starts `registryd` on a given address (to restart it where it was).
    pub async fn start_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "--listen",
            listen,
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn("registryd", &args);
        let addr = socket_addr(&proc.listening("registryd").await);
        let given = extra
            .iter()
            .position(|arg| *arg == "--admin-token")
            .and_then(|at| extra.get(at + 1));
        let admin_token = match given {
            Some(token) => (*token).to_owned(),
            None => std::fs::read_to_string(data_dir.join("admin-token"))
                .expect("registryd writes its admin token into the data dir")
                .trim()
                .to_owned(),
        };
        Self {
            proc,
            addr,
            admin_token,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `registryctl` against this registry with the admin token, and
    /// returns its stdout.
    ///
    /// # Panics
    ///
    /// When it fails.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new(crate::bin("registryctl"));
        for setting in daemon::SETTINGS_FROM_ENV {
            command.env_remove(setting);
        }
        let output = command
            .arg("--registry")
            .arg(self.url())
            .arg("--admin-token")
            .arg(&self.admin_token)
            .args(args)
            .output()
            .await
            .expect("run registryctl");
        assert!(
            output.status.success(),
            "registryctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// `registryctl create-service NAME`: returns the service token.
    pub async fn create_service(&self, name: &str) -> String {
        self.ctl(&["create-service", name]).await.trim().to_owned()
    }

    /// `registryctl create-consumer NAME --services A,B`: returns the
    /// consumer's token.
    pub async fn create_consumer(&self, name: &str, services: &[&str]) -> String {
        let services = services.join(",");
        self.ctl(&["create-consumer", name, "--services", &services])
            .await
            .trim()
            .to_owned()
    }

    /// A gRPC client with a token.
    pub fn client(&self, token: &str) -> registry_client::RegistryClient {
        registry_client::connect(&self.url(), token).expect("a valid address and token")
    }

    /// Stops it with SIGTERM and waits for it to exit cleanly.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    async fn stop_in_place(&mut self) {
        self.proc.signal(Signal::SIGTERM);
        let status = self.proc.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "registryd exited with {status}");
    }
}

/// A running instance of one of the workspace's services.
#[derive(Debug)]
pub struct Instance {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its instance id, `SERVICE-N`.
    pub id: String,
}

impl Instance {
    /// Starts `binary --instance n` (an instance of `service`) on a free
    /// loopback port, registered with `registry` using `token`, plus `extra`
    /// arguments; waits until it is registered.
    pub async fn start(
        binary: &str,
        service: &str,
        registry: &str,
        token: &str,
        n: u16,
        extra: &[&str],
    ) -> Self {
        let instance = n.to_string();
        let mut args = vec![
            "--instance",
            &instance,
            "--listen",
            "127.0.0.1:0",
            "--registry",
            registry,
            "--token",
            token,
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(binary, &args);
        let id = format!("{service}-{n}");
        let addr = socket_addr(&proc.listening(&id).await);
        proc.registered(&id).await;
        Self { proc, addr, id }
    }
}

/// A running `ratings-server` with one instance.
#[derive(Debug)]
pub struct Ratings {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its instance id, `ratings-N`.
    pub id: String,
}

impl Ratings {
    /// Starts instance `n` on a free loopback port, registered with `registry`
    /// using `token`, plus `extra` arguments; waits until it is registered.
    pub async fn start(registry: &str, token: &str, n: u16, extra: &[&str]) -> Self {
        let Instance { proc, addr, id } =
            Instance::start("ratings-server", "ratings", registry, token, n, extra).await;
        Self { proc, addr, id }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Which store a registry under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded store.
    Memory,
    /// A real etcd server started for the test.
    Etcd,
}

/// A registry in a temporary data dir with the `ratings` service created
/// through `registryctl`, ready for ratings instances.
#[derive(Debug)]
pub struct Cluster {
    /// The registry's data dir; deleted on drop.
    pub dir: tempfile::TempDir,
    /// The registry.
    pub registry: Registry,
    /// The `ratings` service token.
    pub token: String,
    /// The etcd under the registry, with `StoreKind::Etcd`.
    pub etcd: Option<crate::Etcd>,
    /// The registry's arguments, to restart it the same way.
    args: Vec<String>,
}

impl Cluster {
    /// Starts `registryd` on the memory store with `extra` arguments and
    /// creates `ratings`.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(StoreKind::Memory, extra).await
    }

    /// Starts `registryd` on `store` with `extra` arguments and creates `ratings`.
    pub async fn start_with(store: StoreKind, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let etcd = match store {
            StoreKind::Memory => None,
            StoreKind::Etcd => {
                let etcd = crate::Etcd::start(1).await;
                args.extend([
                    "--store".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    etcd.endpoints(),
                ]);
                Some(etcd)
            }
        };
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let registry = Registry::start(dir.path(), &arg_refs).await;
        let token = registry.create_service("ratings").await;
        assert!(
            token.starts_with("svc_"),
            "create-service prints the token alone: {token:?}"
        );
        Self {
            dir,
            registry,
            token,
            etcd,
            args,
        }
    }

    /// Starts ratings instance `n` registered here.
    pub async fn ratings(&self, n: u16, extra: &[&str]) -> Ratings {
        Ratings::start(&self.registry.url(), &self.token, n, extra).await
    }

    /// The registry as a client library sees it.
    pub fn registries(&self) -> registry_client::Registries {
        registry_client::Registries::new([self.registry.url()], &self.token)
            .expect("a valid address and token")
    }

    /// Stops the registry (SIGTERM) and waits until it exited.
    pub async fn stop_registry(&mut self) {
        self.registry.stop_in_place().await;
    }

    /// Starts the registry again where it was, the same way.
    pub async fn start_registry(&mut self) {
        let listen = self.registry.addr.to_string();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.registry = Registry::start_on(&listen, self.dir.path(), &args).await;
    }
}

/// A running `market-web`.
#[derive(Debug)]
pub struct Web {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Web {
    /// The addresses the market logged in its `ratings using instance N:
    /// ADDRESS` lines after `mark`, in order.
    pub fn instances_used(&self, mark: usize) -> Vec<String> {
        self.proc
            .output()
            .lines()
            .skip(mark)
            .filter_map(|line| line.split("ratings using instance ").nth(1))
            .filter_map(|rest| rest.split_whitespace().nth(1).map(str::to_owned))
            .collect()
    }

    /// Starts `market-web` on a free loopback port with `args`, and waits
    /// until it listens.
    pub async fn start(args: &[&str]) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let proc = Proc::spawn("market-web", &all);
        let addr = socket_addr(&proc.listening("market-web").await);
        Self { proc, addr }
    }

    /// `market-web` in front of `cluster`'s registry, with `args`.
    pub async fn for_cluster(cluster: &Cluster, args: &[&str]) -> Self {
        let url = cluster.registry.url();
        let mut all = vec![
            "--registry",
            url.as_str(),
            "--token",
            cluster.token.as_str(),
        ];
        all.extend_from_slice(args);
        Self::start(&all).await
    }

    /// `GET path`: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        crate::http_get(self.addr, path).await
    }

    /// A new visitor of this shop, with no cookie yet.
    pub fn visitor(&self) -> Visitor {
        Visitor {
            addr: self.addr,
            cookies: Vec::new(),
            csrf: None,
        }
    }
}

/// A visitor of a shop over plain HTTP, as a browser without scripts is:
/// it keeps the cookies it is given and sends the page's forms back with
/// their csrf token.
#[derive(Debug)]
pub struct Visitor {
    addr: SocketAddr,
    cookies: Vec<(String, String)>,
    csrf: Option<String>,
}

impl Visitor {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &crate::HttpResponse) {
        for set in response.header_values("set-cookie") {
            let pair = set.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            self.cookies.retain(|(n, _)| n != name);
            self.cookies.push((name.to_owned(), value.to_owned()));
        }
    }

    /// `GET /`, with the visitor's cookies: the status and the page. The
    /// page's csrf token is kept for the next form.
    ///
    /// # Panics
    ///
    /// When the shop does not answer.
    pub async fn page(&mut self) -> (u16, String) {
        let cookie = self.cookie_header();
        let response = crate::http_request(self.addr, "GET", "/", &[("Cookie", &cookie)], "").await;
        self.keep_cookies(&response);
        self.csrf = response
            .body
            .split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned);
        (response.status, response.body)
    }

    /// Sends the page's form with `field=value` (`addCart=camera`,
    /// `checkout=1`), as the page's buttons do, and returns the status of
    /// the answer (a redirect to `/` when it was accepted). Loads the page
    /// first when no page was loaded yet.
    ///
    /// # Panics
    ///
    /// When the shop does not answer.
    pub async fn submit(&mut self, field: &str, value: &str) -> u16 {
        if self.csrf.is_none() {
            self.page().await;
        }
        let csrf = self
            .csrf
            .clone()
            .expect("the page has a form with a csrf token");
        let cookie = self.cookie_header();
        let response = crate::http_request(
            self.addr,
            "POST",
            "/",
            &[
                ("Cookie", &cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &format!("csrf={csrf}&{field}={value}"),
        )
        .await;
        self.keep_cookies(&response);
        response.status
    }
}
