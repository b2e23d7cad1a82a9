//! The `registryd` command line: parses options into a running registry.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::{MemoryStore, MemoryStoreConfig, ServeConfig, admin_token};
use anyhow::{Context as _, bail};
use clap::Parser;

/// The registry daemon: a catalog of services and the live instances of each.
///
/// Instances register with their service's token and heartbeat to stay
/// listed; consumers resolve or watch a service with its service or consumer
/// token. Create services with `registryctl create-service NAME`.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// How it writes its log lines.
    #[command(flatten)]
    pub log: daemon::LogArgs,

    /// Address to serve gRPC on.
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,

    /// Folder for the catalog and the generated admin token
    /// [default: the per-user state folder, e.g. ~/.local/state/market-registry].
    #[arg(long, env = "REGISTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The admin token. Without it, the token in the data dir's `admin-token`
    /// file is used, and made on first start.
    #[arg(long, env = "REGISTRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// How often an idle watch stream is told it is current.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,

    /// How many recent changes are kept so that watchers can resume
    /// (memory store; etcd keeps its own history).
    #[arg(long, default_value_t = 4096)]
    pub history: usize,

    /// Where instances and the catalog live: `memory` (embedded, the catalog
    /// in the data dir) or `etcd` (shared by any number of replicas).
    #[arg(long, value_enum, default_value = "memory")]
    pub store: StoreKind,

    /// etcd's client URLs, comma-separated (with --store etcd).
    #[arg(
        long,
        env = "REGISTRY_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// The prefix of the registry's keys in etcd, so that several registries
    /// can share one cluster (with --store etcd).
    #[arg(long, default_value = "/market-registry")]
    pub etcd_prefix: String,

    /// Also serve xDS on ADDR (e.g. 127.0.0.1:7001): the Aggregated
    /// Discovery Service, for gRPC clients in any language that dial
    /// `xds:///SERVICE` with a bootstrap from `registryctl xds-bootstrap`.
    /// It takes the same TLS (--tls-dir, --mtls) and the same tokens as the
    /// registry. Off by default; needs a registryd built with the `xds`
    /// feature.
    #[arg(long, value_name = "ADDR")]
    pub xds_listen: Option<SocketAddr>,

    /// The timeout xDS routes give calls of SERVICE instead of the one its
    /// contract declares (`ratings`: 1 s), e.g. `ratings=3s`; `0s` for none.
    /// Repeat it for several services. (Python's grpcio ends calls 1 to 2 s
    /// before such a timeout, grpc/grpc#40633: give it room.)
    #[arg(long, value_name = "SERVICE=DURATION", value_parser = parse_xds_timeout)]
    pub xds_timeout: Vec<(crate::model::ServiceName, Duration)>,

    /// TLS for the gRPC listeners (the registry's and xDS's).
    #[command(flatten)]
    pub tls: daemon::TlsArgs,
}

/// `--xds-timeout SERVICE=DURATION`.
fn parse_xds_timeout(given: &str) -> Result<(crate::model::ServiceName, Duration), String> {
    let (service, timeout) = given
        .split_once('=')
        .ok_or_else(|| format!("{given:?} is not SERVICE=DURATION (e.g. ratings=3s)"))?;
    let service = service.parse().map_err(|e| format!("{e}"))?;
    let timeout = humantime::parse_duration(timeout)
        .map_err(|e| format!("{timeout:?} is not a duration such as 3s or 500ms: {e}"))?;
    Ok((service, timeout))
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Instances in memory, the catalog in the data dir.
    Memory,
    /// Everything in etcd.
    Etcd,
}

/// The default data dir: the per-user state folder.
fn default_data_dir() -> anyhow::Result<PathBuf> {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|dir| dir.join("market-registry"))
        .context("no per-user state folder is known here; pass --data-dir")
}

/// Runs `registryd` as the command line says, until SIGINT or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.progress_interval.is_zero() || cli.progress_interval > Duration::from_secs(3600) {
        bail!("--progress-interval must be more than 0s and at most 1h");
    }

    let data_dir = match &cli.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let admin_token = match cli.admin_token.as_deref() {
        Some(token) if !token.trim().is_empty() => token.trim().to_owned(),
        Some(_) => bail!("--admin-token is empty"),
        None => {
            let (token, created) = admin_token::load_or_create(&data_dir).with_context(|| {
                format!(
                    "cannot read or create the admin token in {}",
                    data_dir.display()
                )
            })?;
            let path = admin_token::path_in(&data_dir);
            if created {
                tracing::info!(path = %path.display(), "generated the admin token in {}", path.display());
            } else {
                tracing::info!(path = %path.display(), "using the admin token in {}", path.display());
            }
            token
        }
    };

    let tls = cli.tls.load()?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let xds = match cli.xds_listen {
        Some(at) => Some(xds_listener(at, &cli.xds_timeout).await?),
        None if !cli.xds_timeout.is_empty() => bail!("--xds-timeout needs --xds-listen"),
        None => None,
    };
    let mode = daemon::tls::describe(tls.as_ref());
    tracing::info!(tls = mode, "gRPC TLS: {mode}");
    let config = ServeConfig {
        admin_token,
        progress_every: cli.progress_interval,
        tls: tls.as_ref().map(daemon::Tls::server),
    };
    match cli.store {
        StoreKind::Memory => {
            let store = MemoryStore::open(MemoryStoreConfig {
                data_dir: Some(data_dir.clone()),
                history: cli.history,
                ..MemoryStoreConfig::default()
            })
            .with_context(|| format!("cannot open the catalog in {}", data_dir.display()))?;
            tracing::info!(%addr, store = "memory", data_dir = %data_dir.display(), "registryd listening on {addr}");
            serve_store(Arc::new(store), config, listener, xds).await?;
        }
        StoreKind::Etcd => serve_on_etcd(&cli, config, listener, addr, xds).await?,
    }
    tracing::info!("registryd stopped");
    Ok(())
}

/// The xDS server's listener, for `--xds-listen`.
#[cfg(feature = "xds")]
type XdsListener = crate::xds::XdsServe;
#[cfg(not(feature = "xds"))]
type XdsListener = std::convert::Infallible;

#[cfg(feature = "xds")]
async fn xds_listener(
    at: SocketAddr,
    overrides: &[(crate::model::ServiceName, Duration)],
) -> anyhow::Result<XdsListener> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("cannot listen for xDS on {at}"))?;
    let mut timeouts = crate::xds::Timeouts::from_contracts()
        .context("cannot read the contracts' timeouts for xDS routes")?;
    for (service, timeout) in overrides {
        timeouts.set(service, *timeout);
    }
    Ok(crate::xds::XdsServe { listener, timeouts })
}

#[cfg(not(feature = "xds"))]
#[allow(clippy::unused_async)]
async fn xds_listener(
    _: SocketAddr,
    _: &[(crate::model::ServiceName, Duration)],
) -> anyhow::Result<XdsListener> {
    bail!(
        "this registryd was built without xDS support; build it with `--features registryd/xds` to use --xds-listen"
    )
}

/// Serves the registry over `store`, and xDS beside it when asked, once
/// both listeners are announced.
async fn serve_store<S: crate::Store>(
    store: Arc<S>,
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    xds: Option<XdsListener>,
) -> anyhow::Result<()> {
    announce("registryd", listener.local_addr()?, &config);
    match xds {
        None => crate::serve(store, config, listener, shutting_down()).await?,
        #[cfg(feature = "xds")]
        Some(xds) => {
            let at = xds.listener.local_addr()?;
            tracing::info!(addr = %at, "registryd serving xDS on {at}");
            announce("registryd-xds", at, &config);
            crate::serve_with_xds(store, config, listener, xds, shutting_down()).await?;
        }
        #[cfg(not(feature = "xds"))]
        Some(never) => match never {},
    }
    Ok(())
}

#[cfg(feature = "etcd")]
async fn serve_on_etcd(
    cli: &Cli,
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    xds: Option<XdsListener>,
) -> anyhow::Result<()> {
    let store = crate::store::EtcdStore::connect(crate::store::EtcdStoreConfig {
        endpoints: cli.etcd_endpoints.clone(),
        prefix: cli.etcd_prefix.clone(),
    })
    .await
    .with_context(|| format!("cannot reach etcd at {}", cli.etcd_endpoints.join(",")))?;
    tracing::info!(%addr, store = "etcd", endpoints = %cli.etcd_endpoints.join(","), prefix = %cli.etcd_prefix, "registryd listening on {addr}");
    serve_store(Arc::new(store), config, listener, xds).await
}

#[cfg(not(feature = "etcd"))]
async fn serve_on_etcd(
    _: &Cli,
    _: ServeConfig,
    _: tokio::net::TcpListener,
    _: SocketAddr,
    _: Option<XdsListener>,
) -> anyhow::Result<()> {
    bail!(
        "this registryd was built without etcd support; build it with `--features registryd/etcd` (which needs protoc)"
    )
}

/// Tells a supervisor, on stdout, where `what` (the registry, or its xDS
/// server) listens.
fn announce(what: &str, addr: SocketAddr, config: &ServeConfig) {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    daemon::ready::announce(&daemon::ready::Event::listening(
        what,
        format!("{scheme}://{addr}"),
    ));
}

/// SIGINT or SIGTERM, logged.
async fn shutting_down() {
    daemon::shutdown_signal().await;
    tracing::info!("shutting down");
}
