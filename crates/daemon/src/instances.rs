//! Running a service's instances the way every service binary here does:
//! each on its own listener, registered with the registry and heartbeating,
//! and at shutdown deregistered first, then drained.
//!
//! A service binary declares its [`Service`], flattens [`InstanceArgs`] into
//! its command line (parsed with [`parse`], which puts the service's name and
//! ports into the help), and hands [`run_instances`] a function that builds
//! the tonic service of one instance from its id.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use clap::{CommandFactory, FromArgMatches};
use registry_client::{Registration, RegistrationConfig, Registries};
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    codegen::{Service as TowerService, http},
    server::NamedService,
};

use crate::{Limits, Serving, TlsArgs, ready, serve_grpc};

/// What a service binary serves, and under which name.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The service's name in the registry, and the prefix of its instances'
    /// ids: `ratings` registers `ratings-1`, `ratings-2`, ...
    pub name: &'static str,
    /// Instance N listens on 127.0.0.1:(`base_port` + N) unless told
    /// otherwise.
    pub base_port: u16,
    /// The limits every instance serves with.
    pub limits: Limits,
    /// The encoded `FileDescriptorSet`s reflection describes.
    pub descriptor_sets: &'static [&'static [u8]],
}

/// The flags every service binary shares: which instances to run, where,
/// and how to register them.
#[derive(Debug, Clone, clap::Args)]
pub struct InstanceArgs {
    /// Which instance this is: it listens on 127.0.0.1:(BASE+N) and registers
    /// as SERVICE-N.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub instance: u16,

    /// How many instances to run in this process, numbered from --instance.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,

    /// Listen here instead of 127.0.0.1:(BASE+N) (port 0 picks a free port).
    /// Only with a single instance.
    #[arg(long)]
    pub listen: Option<SocketAddr>,

    /// The address to register, when it differs from the listening address
    /// (e.g. behind NAT, or when listening on 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,

    /// The id to register (and answer as `served_by`) [default: SERVICE-N].
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

    /// The service token, from `registryctl create-service SERVICE`.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Serve without registering (no registry needed).
    #[arg(long, conflicts_with = "token")]
    pub no_register: bool,

    /// How long the registry keeps an instance that stopped heartbeating
    /// (whole seconds, 1s to 300s); heartbeats go out every third of it.
    #[arg(long, default_value = "30s", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// TLS for the gRPC listener and the calls to the registry; the address
    /// registered is then https://.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// How it writes its log lines.
    #[command(flatten)]
    pub log: crate::LogArgs,
}

/// Parses the process's arguments into `C`, a command line that flattens
/// [`InstanceArgs`], with `service`'s name and ports in the help text.
pub fn parse<C: CommandFactory + FromArgMatches>(service: &Service) -> C {
    parse_adjusted(|command| with_service_help(command, service))
}

/// Parses the process's arguments into `C` with its command line changed by
/// `adjust` first (to give a subcommand that flattens [`InstanceArgs`] its
/// service's help, with [`with_service_help`]).
pub fn parse_adjusted<C: CommandFactory + FromArgMatches>(
    adjust: impl FnOnce(clap::Command) -> clap::Command,
) -> C {
    let mut command = adjust(C::command());
    let mut matches = command.clone().get_matches();
    C::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut command).exit())
}

/// `command` with [`InstanceArgs`]' help naming `service` and its ports.
pub fn with_service_help(command: clap::Command, service: &Service) -> clap::Command {
    let (name, base) = (service.name, service.base_port);
    command
        .mut_arg("instance", |a| {
            a.help(format!(
                "Which instance this is: it listens on 127.0.0.1:({base}+N) and registers as {name}-N"
            ))
        })
        .mut_arg("listen", |a| {
            a.help(format!(
                "Listen here instead of 127.0.0.1:({base}+N) (port 0 picks a free port); only with a single instance"
            ))
        })
        .mut_arg("instance_id", |a| {
            a.help(format!(
                "The id to register (and answer as `served_by`) [default: {name}-N]; only with a single instance"
            ))
        })
        .mut_arg("token", |a| {
            a.help(format!(
                "The `{name}` service token, from `registryctl create-service {name}`"
            ))
        })
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

/// One instance to run.
struct Plan {
    id: String,
    listen: SocketAddr,
}

impl InstanceArgs {
    /// The instances these flags ask for.
    fn plans(&self, service: &Service) -> anyhow::Result<Vec<Plan>> {
        if self.count > 1
            && (self.listen.is_some() || self.instance_id.is_some() || self.advertise.is_some())
        {
            bail!(
                "--listen, --advertise and --instance-id name one instance; they cannot be used with --count"
            );
        }
        (self.instance..self.instance.saturating_add(self.count))
            .map(|n| {
                let listen = match self.listen {
                    Some(listen) => listen,
                    None => {
                        let port = service.base_port.checked_add(n).with_context(|| {
                            format!(
                                "--instance {n}: port {}+{n} is beyond 65535; pass --listen",
                                service.base_port
                            )
                        })?;
                        SocketAddr::from(([127, 0, 0, 1], port))
                    }
                };
                let id = match &self.instance_id {
                    Some(id) => id.clone(),
                    None => format!("{}-{n}", service.name),
                };
                Ok(Plan { id, listen })
            })
            .collect()
    }

    /// The address consumers are to call an instance listening on `addr` at.
    fn advertised(&self, addr: SocketAddr, tls: bool) -> anyhow::Result<String> {
        Ok(match &self.advertise {
            Some(address) if tls && !address.starts_with("https://") => bail!(
                "--advertise {address}: this instance serves TLS, so consumers must call an https:// address"
            ),
            Some(address) if !tls && address.starts_with("https://") => {
                bail!("--advertise {address}: an https:// address needs TLS; pass --tls-dir")
            }
            Some(address) => address.clone(),
            None if addr.ip().is_unspecified() => {
                bail!(
                    "listening on {addr}: pass --advertise with the address consumers should call"
                )
            }
            None if tls => format!("https://{addr}"),
            None => format!("http://{addr}"),
        })
    }
}

/// Runs the instances `args` asks for, each serving `make(id)` with gRPC
/// health and reflection and registered as `service.name`, until SIGINT or
/// SIGTERM, or until a server fails. Then each instance deregisters first,
/// so that consumers stop calling it, and only then drains its calls.
///
/// Each instance announces on stdout, for a supervisor, when it listens and
/// when it is registered ([`ready`]).
///
/// # Errors
///
/// When the flags contradict one another, a listener cannot be bound, the
/// TLS settings cannot be loaded, or a server fails.
pub async fn run_instances<S>(
    service: &Service,
    args: InstanceArgs,
    mut make: impl FnMut(&str) -> S,
) -> anyhow::Result<()>
where
    S: TowerService<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let plans = args.plans(service)?;
    let tls = args.tls.load()?;
    let mode = crate::tls::describe(tls.as_ref());
    tracing::info!(tls = mode, "gRPC TLS: {mode}");
    let registries = match (&args.token, args.no_register) {
        (_, true) => None,
        (Some(token), false) => Some(Registries::with_tls(
            &args.registry,
            token,
            tls.as_ref().map(crate::Tls::client),
        )?),
        (None, false) => bail!(
            "no registry token: pass --token or set REGISTRY_TOKEN to the `{name}` service token \
             (from `registryctl create-service {name}`), or pass --no-register",
            name = service.name
        ),
    };

    let shutdown = CancellationToken::new();
    let mut servers = Vec::new();
    let mut registrations = Vec::new();
    for plan in plans {
        let listener = tokio::net::TcpListener::bind(plan.listen)
            .await
            .with_context(|| format!("cannot listen on {} for {}", plan.listen, plan.id))?;
        let addr = listener.local_addr()?;
        let advertise = args.advertised(addr, tls.is_some())?;
        tracing::info!(instance = %plan.id, %addr, "listening on port {}", addr.port());
        let serving = Serving {
            tls: tls.as_ref().map(crate::Tls::server),
            limits: service.limits,
            descriptor_sets: service.descriptor_sets,
        };
        servers.push(tokio::spawn(serve_grpc(
            make(&plan.id),
            listener,
            serving,
            shutdown.clone().cancelled_owned(),
            || {},
        )));
        ready::announce(&ready::Event::Listening {
            service: service.name.to_owned(),
            instance: plan.id.clone(),
            address: advertise.clone(),
        });
        if let Some(registries) = &registries {
            let registration = Registration::spawn(
                registries.clone(),
                RegistrationConfig {
                    service: service.name.into(),
                    instance_id: plan.id.clone(),
                    address: advertise,
                    metadata: Default::default(),
                    ttl: args.ttl,
                },
            );
            let registered = ready::Event::Registered {
                service: service.name.to_owned(),
                instance: plan.id,
            };
            let mut lease = registration.watch_lease();
            tokio::spawn(async move {
                if lease.wait_for(Option::is_some).await.is_ok() {
                    ready::announce(&registered);
                }
            });
            registrations.push(registration);
        }
    }

    // Until a signal, unless a server stops first (its TLS settings were
    // refused, say): then there is nothing left to serve.
    let mut failed = None;
    tokio::select! {
        () = crate::shutdown_signal() => {
            tracing::info!("shutting down: deregistering, then finishing calls in flight");
        }
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
