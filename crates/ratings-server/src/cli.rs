//! The `ratings-server` command line: runs one or more ratings instances and
//! registers each with the registry.

use std::{net::SocketAddr, time::Duration};

use crate::{Faults, RatingsService};
use anyhow::{Context as _, bail};
use clap::Parser;
use registry_client::{Registration, RegistrationConfig, Registries};
use tokio_util::sync::CancellationToken;

/// The ratings microservice.
///
/// `ratings-server` alone is instance 1 on port 8001; `--instance N` listens
/// on 8000+N; `--count K` runs K instances (N .. N+K-1) in one process. Each
/// registers as service `ratings` with the registry and heartbeats; on Ctrl-C
/// or SIGTERM each deregisters first, then finishes the calls in flight.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// Which instance this is: it listens on 127.0.0.1:(8000+N) and registers
    /// as `ratings-N`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=57535))]
    pub instance: u16,

    /// How many instances to run in this process, numbered from --instance.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,

    /// Listen here instead of 127.0.0.1:(8000+N) (port 0 picks a free port).
    /// Only with a single instance.
    #[arg(long)]
    pub listen: Option<SocketAddr>,

    /// The address to register, when it differs from the listening address
    /// (e.g. behind NAT, or when listening on 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,

    /// The id to register (and answer as `served_by`) [default: ratings-N].
    /// Only with a single instance.
    #[arg(long)]
    pub instance_id: Option<String>,

    /// The registry's address; several, comma-separated, fail over in order.
    #[arg(
        long,
        env = "REGISTRY_ADDR",
        default_value = "http://127.0.0.1:7000",
        value_delimiter = ','
    )]
    pub registry: Vec<String>,

    /// The `ratings` service token, from `registryctl create-service ratings`.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Serve without registering (no registry needed).
    #[arg(long, conflicts_with = "token")]
    pub no_register: bool,

    /// How long the registry keeps an instance that stopped heartbeating
    /// (whole seconds, 1s to 300s); heartbeats go out every third of it.
    #[arg(long, default_value = "30s", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Added latency for every call, e.g. `50ms` (fault injection).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub delay: Duration,

    /// Fraction of calls, 0 to 1, answered UNAVAILABLE (fault injection).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,

    /// TLS for the gRPC listener and the calls to the registry; the address
    /// registered is then https://.
    #[command(flatten)]
    pub tls: daemon::TlsArgs,
}

/// Parses a TTL as the registry accepts it: whole seconds, 1s to 300s.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if ttl.subsec_nanos() != 0 || !(1..=300).contains(&ttl.as_secs()) {
        return Err(format!(
            "{s} is not a whole number of seconds from 1s to 300s"
        ));
    }
    Ok(ttl)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("{s} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{s} is not between 0 and 1"));
    }
    Ok(rate)
}

/// One instance to run.
struct Plan {
    id: String,
    listen: SocketAddr,
}

/// Runs the instances as the command line says, until SIGINT or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.count > 1
        && (cli.listen.is_some() || cli.instance_id.is_some() || cli.advertise.is_some())
    {
        bail!(
            "--listen, --advertise and --instance-id name one instance; they cannot be used with --count"
        );
    }
    let tls = cli.tls.load()?;
    let mode = daemon::tls::describe(tls.as_ref());
    tracing::info!(tls = mode, "gRPC TLS: {mode}");
    let registries = match (&cli.token, cli.no_register) {
        (_, true) => None,
        (Some(token), false) => Some(Registries::with_tls(
            &cli.registry,
            token,
            tls.as_ref().map(daemon::Tls::client),
        )?),
        (None, false) => bail!(
            "no registry token: pass --token or set REGISTRY_TOKEN to the `ratings` service token \
             (from `registryctl create-service ratings`), or pass --no-register"
        ),
    };
    let faults = Faults {
        delay: cli.delay,
        fail_rate: cli.fail_rate,
    };

    let plans: Vec<Plan> = (cli.instance..cli.instance.saturating_add(cli.count))
        .map(|n| Plan {
            id: cli
                .instance_id
                .clone()
                .unwrap_or_else(|| format!("ratings-{n}")),
            listen: cli
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000 + n))),
        })
        .collect();

    let shutdown = CancellationToken::new();
    let mut servers = Vec::new();
    let mut registrations = Vec::new();
    for plan in plans {
        let listener = tokio::net::TcpListener::bind(plan.listen)
            .await
            .with_context(|| format!("cannot listen on {} for {}", plan.listen, plan.id))?;
        let addr = listener.local_addr()?;
        let advertise = match &cli.advertise {
            Some(address) if tls.is_some() && !address.starts_with("https://") => bail!(
                "--advertise {address}: this instance serves TLS, so consumers must call an https:// address"
            ),
            Some(address) if tls.is_none() && address.starts_with("https://") => {
                bail!("--advertise {address}: an https:// address needs TLS; pass --tls-dir")
            }
            Some(address) => address.clone(),
            None if addr.ip().is_unspecified() => {
                bail!(
                    "listening on {addr}: pass --advertise with the address consumers should call"
                )
            }
            None if tls.is_some() => format!("https://{addr}"),
            None => format!("http://{addr}"),
        };
        tracing::info!(instance = %plan.id, %addr, "listening on port {}", addr.port());
        let service = RatingsService::new(plan.id.clone(), faults);
        servers.push(tokio::spawn(crate::serve_with_tls(
            service,
            listener,
            tls.as_ref().map(daemon::Tls::server),
            shutdown.clone().cancelled_owned(),
        )));
        if let Some(registries) = &registries {
            registrations.push(Registration::spawn(
                registries.clone(),
                RegistrationConfig {
                    service: "ratings".into(),
                    instance_id: plan.id,
                    address: advertise,
                    metadata: Default::default(),
                    ttl: cli.ttl,
                },
            ));
        }
    }

    // Until a signal, unless a server stops first (its TLS settings were
    // refused, say): then there is nothing left to serve.
    let mut failed = None;
    tokio::select! {
        () = wait_for_signal() => {}
        (ended, index, _) = futures::future::select_all(servers.iter_mut()) => {
            let error = match ended {
                Ok(Ok(())) => anyhow::anyhow!("stopped unexpectedly"),
                Ok(Err(error)) => error.into(),
                Err(panic) => anyhow::anyhow!("panicked: {panic}"),
            };
            tracing::error!("server {index} failed: {error:#}; stopping");
            servers.remove(index);
            failed = Some(error);
        }
    }
    // Deregister first, so consumers stop calling before the servers stop.
    for result in
        futures::future::join_all(registrations.into_iter().map(Registration::deregister)).await
    {
        if let Err(status) = result {
            tracing::warn!(
                "could not deregister: {}; the lease will expire instead",
                status.message()
            );
        }
    }
    shutdown.cancel();
    for server in servers {
        server.await.context("a server task panicked")??;
    }
    if let Some(error) = failed {
        return Err(error.context("a gRPC server failed"));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    daemon::shutdown_signal().await;
    tracing::info!("shutting down: deregistering, then finishing calls in flight");
}
