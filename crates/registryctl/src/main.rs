//! `registryctl`: the registry's command-line client.
#![allow(clippy::print_stdout)]

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use market_proto::registry::v1::{self as pb, watch_response::Event};
use registry_client::{Registries, RegistryClient};
use serde::Serialize;

/// Manage the registry's services and look at their instances.
///
/// Admin commands (create-service, delete-service, create-consumer,
/// delete-consumer, services, deregister by id) use the admin token:
/// --admin-token, REGISTRY_ADMIN_TOKEN, or the `admin-token` file in the
/// registry's data dir. Reading a service (instances, watch) also works with
/// that service's token, or a consumer token that may read it (--token).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The registry's address; several, comma-separated, are tried in order.
    #[arg(
        long,
        env = "REGISTRY_ADDR",
        default_value = "http://127.0.0.1:7000",
        value_delimiter = ',',
        global = true
    )]
    registry: Vec<String>,

    /// The admin token.
    #[arg(
        long,
        env = "REGISTRY_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,

    /// A service or consumer token, for reading a service it may read.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// The registry's data dir, to read its `admin-token` file
    /// [default: the per-user state folder, e.g. ~/.local/state/market-registry].
    #[arg(long, env = "REGISTRY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// Call the registry over TLS, trusting `ca.crt` and presenting
    /// `tls.crt`/`tls.key` from DIR (as registryd's --tls-dir).
    #[arg(long, env = "MARKET_TLS_DIR", value_name = "DIR", global = true)]
    tls_dir: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add a service; prints its token alone on stdout (shown only once).
    CreateService {
        /// The service's name: 1 to 63 of a-z, 0-9 and '-'.
        name: String,
        /// Use this service token instead of a new one (for deployments that
        /// provision their secrets), read from this environment variable.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
        /// Use this consumer token, read from this environment variable.
        #[arg(long, value_name = "VAR")]
        consumer_token_env: Option<String>,
        /// Succeed without changes when the service exists already.
        #[arg(long)]
        if_missing: bool,
    },
    /// Remove a service, its tokens and its instances.
    DeleteService {
        /// The service's name.
        name: String,
    },
    /// Add a named consumer; prints its token alone on stdout (shown only once).
    ///
    /// The token may read (instances, watch) exactly the services given and
    /// nothing else: it never registers, renews or removes instances, and is
    /// never the admin's. One token for a caller of several services, e.g.
    /// `create-consumer market-web --services ratings,recommendations`.
    CreateConsumer {
        /// Who reads, for the operator (e.g. market-web): 1 to 63 of a-z,
        /// 0-9 and '-'.
        name: String,
        /// The services it may read, comma-separated: 1 to 64 services that
        /// exist (e.g. ratings,recommendations).
        #[arg(long, value_name = "NAME,...", value_delimiter = ',', required = true)]
        services: Vec<String>,
        /// Use this token instead of a new one (for deployments that
        /// provision their secrets), read from this environment variable.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
        /// Succeed without changes when the consumer exists already (its
        /// services are then as they were: delete it to change them).
        #[arg(long)]
        if_missing: bool,
    },
    /// Remove a named consumer; its token stops working at once.
    DeleteConsumer {
        /// The consumer's name.
        name: String,
    },
    /// List the services.
    Services,
    /// List a service's live instances.
    Instances {
        /// The service's name.
        service: String,
    },
    /// Print a service's instances, then each change as it happens.
    Watch {
        /// The service's name.
        service: String,
        /// Resume after this revision instead of starting with a snapshot.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Print a gRPC xDS bootstrap (JSON) for clients of SERVICE.
    ///
    /// A stock gRPC client (grpc-go, grpc-java, Python's grpcio, anything on
    /// gRPC's C-core) reads it when GRPC_XDS_BOOTSTRAP names the file, and
    /// then dials `xds:///SERVICE`: it learns the live instances from the
    /// registry's xDS server (registryd --xds-listen ADDR) and balances over
    /// them itself, with the contract's timeout. For example:
    ///
    ///   registryctl xds-bootstrap ratings --xds-server 127.0.0.1:7001 \
    ///       --token "$CONSUMER_TOKEN" > bootstrap.json
    ///   GRPC_XDS_BOOTSTRAP=bootstrap.json python3 client.py  # dials xds:///ratings
    ///
    /// The token (--token, or REGISTRY_TOKEN) goes into the node's metadata
    /// as REGISTRY_TOKEN: a consumer token that may read SERVICE (a named
    /// consumer's or the service's own), never the admin's. Keep the file
    /// as secret as the token. With --tls-dir the client speaks TLS to the
    /// xDS server, trusting DIR/ca.crt and presenting DIR/tls.crt and
    /// DIR/tls.key (for --mtls).
    XdsBootstrap {
        /// The service the client calls (it dials xds:///SERVICE).
        service: String,
        /// The registry's xDS address, HOST:PORT (as registryd --xds-listen
        /// announced it; an http:// or https:// prefix is dropped).
        #[arg(long, value_name = "HOST:PORT")]
        xds_server: String,
    },
    /// Remove an instance at once.
    Deregister {
        /// The service's name.
        service: String,
        /// The instance's id (see `instances`).
        instance_id: String,
    },
}

impl Cli {
    /// The registry replicas, called with `token`.
    fn registries(&self, token: &str) -> anyhow::Result<Registries> {
        let tls = self
            .tls_dir
            .as_deref()
            .map(|dir| daemon::Tls::from_dir(dir, false))
            .transpose()?;
        Ok(Registries::with_tls(
            &self.registry,
            token,
            tls.as_ref().map(daemon::Tls::client),
        )?)
    }

    fn admin_token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.admin_token {
            return Ok(token.clone());
        }
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::state_dir()
                .or_else(dirs::data_local_dir)
                .map(|d| d.join("market-registry"))
                .context("no admin token: pass --admin-token or --data-dir")?,
        };
        let path = dir.join("admin-token");
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no admin token: pass --admin-token, set REGISTRY_ADMIN_TOKEN, or point --data-dir at the registry's data dir (cannot read {})",
                path.display()
            )
        })?;
        Ok(token.trim().to_owned())
    }

    /// The token for reading: a service or consumer token if given, else the admin's.
    fn read_token(&self) -> anyhow::Result<String> {
        match &self.token {
            Some(token) => Ok(token.clone()),
            None => self.admin_token(),
        }
    }
}

/// The value of the environment variable `var` names, or empty without one.
fn from_env(var: Option<&str>) -> anyhow::Result<String> {
    match var {
        Some(var) => std::env::var(var).with_context(|| format!("{var} is not set")),
        None => Ok(String::new()),
    }
}

/// Runs a unary call on the first replica that answers.
async fn call<T, F, Fut>(registries: &Registries, mut f: F) -> anyhow::Result<T>
where
    F: FnMut(RegistryClient) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last = None;
    for _ in 0..3 {
        let (client, address) = registries.client();
        let address = address.to_owned();
        match tokio::time::timeout(Duration::from_secs(5), f(client)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) if status.code() != tonic::Code::Unavailable => {
                return Err(refused(&status));
            }
            Ok(Err(status)) => last = Some(format!("{address}: {}", status.message())),
            Err(_) => last = Some(format!("{address}: no answer within 5s")),
        }
        registries.failed(&address);
    }
    bail!("the registry is unreachable ({})", last.unwrap_or_default())
}

fn refused(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the registry refused: {:?}: {}",
        status.code(),
        status.message()
    )
}

#[derive(Serialize)]
struct InstanceJson<'a> {
    service: &'a str,
    instance_id: &'a str,
    address: &'a str,
    metadata: &'a std::collections::HashMap<String, String>,
    ttl_seconds: u32,
    lease_id: u64,
    revision: u64,
}

impl<'a> From<&'a pb::Instance> for InstanceJson<'a> {
    fn from(i: &'a pb::Instance) -> Self {
        Self {
            service: &i.service,
            instance_id: &i.instance_id,
            address: &i.address,
            metadata: &i.metadata,
            ttl_seconds: i.ttl_seconds,
            lease_id: i.lease_id,
            revision: i.revision,
        }
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::CreateService {
            name,
            token_env,
            consumer_token_env,
            if_missing,
        } => {
            let registries = cli.registries(&cli.admin_token()?)?;
            let request = pb::CreateServiceRequest {
                name: name.clone(),
                token: from_env(token_env.as_deref())?,
                consumer_token: from_env(consumer_token_env.as_deref())?,
            };
            let created = call(&registries, |mut c| {
                let request = request.clone();
                async move { c.create_service(request).await }
            })
            .await;
            let created = match created {
                Err(error) if *if_missing && error.to_string().contains("AlreadyExists") => {
                    eprintln!("service {name} exists already; nothing changed");
                    return Ok(());
                }
                other => other?,
            };
            if cli.json {
                print_json(&serde_json::json!({
                    "service": name,
                    "token": created.token,
                    "consumer_token": created.consumer_token,
                }))?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "created service {name}; the token above registers instances. \
                     A read-only consumer token: {}\nBoth are shown only now.",
                    created.consumer_token
                );
            }
        }
        Command::DeleteService { name } => {
            let registries = cli.registries(&cli.admin_token()?)?;
            let request = pb::DeleteServiceRequest { name: name.clone() };
            let deleted = call(&registries, |mut c| {
                let request = request.clone();
                async move { c.delete_service(request).await }
            })
            .await?;
            if cli.json {
                print_json(
                    &serde_json::json!({ "service": name, "removed_instances": deleted.removed_instances }),
                )?;
            } else {
                println!(
                    "deleted service {name} and {} live instance(s)",
                    deleted.removed_instances
                );
            }
        }
        Command::CreateConsumer {
            name,
            services,
            token_env,
            if_missing,
        } => {
            let registries = cli.registries(&cli.admin_token()?)?;
            let request = pb::CreateConsumerRequest {
                name: name.clone(),
                services: services.clone(),
                token: from_env(token_env.as_deref())?,
            };
            let created = call(&registries, |mut c| {
                let request = request.clone();
                async move { c.create_consumer(request).await }
            })
            .await;
            let created = match created {
                Err(error) if *if_missing && error.to_string().contains("AlreadyExists") => {
                    eprintln!("consumer {name} exists already; nothing changed");
                    return Ok(());
                }
                other => other?,
            };
            if cli.json {
                print_json(&serde_json::json!({
                    "consumer": created.name,
                    "services": created.services,
                    "token": created.token,
                }))?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "created consumer {}; the token above may only read {}. It is shown only now.",
                    created.name,
                    created.services.join(", ")
                );
            }
        }
        Command::DeleteConsumer { name } => {
            let registries = cli.registries(&cli.admin_token()?)?;
            let request = pb::DeleteConsumerRequest { name: name.clone() };
            call(&registries, |mut c| {
                let request = request.clone();
                async move { c.delete_consumer(request).await }
            })
            .await?;
            if cli.json {
                print_json(&serde_json::json!({ "consumer": name, "deleted": true }))?;
            } else {
                println!("deleted consumer {name}; its token no longer works");
            }
        }
        Command::Services => {
            let registries = cli.registries(&cli.admin_token()?)?;
            let listed = call(&registries, |mut c| async move {
                c.list_services(pb::ListServicesRequest {}).await
            })
            .await?;
            if cli.json {
                let services: Vec<_> = listed
                    .services
                    .iter()
                    .map(|s| serde_json::json!({"name": s.name, "live_instances": s.live_instances, "created_at_unix": s.created_at_unix}))
                    .collect();
                print_json(&services)?;
            } else {
                println!("{:<32} {:>9}", "SERVICE", "INSTANCES");
                for s in &listed.services {
                    println!("{:<32} {:>9}", s.name, s.live_instances);
                }
            }
        }
        Command::Instances { service } => {
            let registries = cli.registries(&cli.read_token()?)?;
            let request = pb::ResolveRequest {
                service: service.clone(),
            };
            let resolved = call(&registries, |mut c| {
                let request = request.clone();
                async move { c.resolve(request).await }
            })
            .await?;
            if cli.json {
                let instances: Vec<InstanceJson<'_>> =
                    resolved.instances.iter().map(InstanceJson::from).collect();
                print_json(
                    &serde_json::json!({ "revision": resolved.revision, "instances": instances }),
                )?;
            } else {
                println!("{:<24} {:<32} {:>5}", "INSTANCE", "ADDRESS", "TTL");
                for i in &resolved.instances {
                    println!(
                        "{:<24} {:<32} {:>4}s",
                        i.instance_id, i.address, i.ttl_seconds
                    );
                }
            }
        }
        Command::Watch { service, since } => {
            let registries = cli.registries(&cli.read_token()?)?;
            let (mut client, _) = registries.client();
            let request = pb::WatchRequest {
                service: service.clone(),
                since_revision: *since,
            };
            let mut stream = client
                .watch(request)
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            while let Some(message) = stream.next().await {
                let message = message.map_err(|s| refused(&s))?;
                print_event(message.event, cli.json)?;
            }
            bail!("the registry ended the watch");
        }
        Command::XdsBootstrap {
            service,
            xds_server,
        } => {
            let bootstrap = registry_client::xds_bootstrap(
                service,
                xds_server,
                cli.token.as_deref(),
                cli.tls_dir.as_deref(),
            )
            .context("cannot write the bootstrap")?;
            println!("{}", serde_json::to_string_pretty(&bootstrap)?);
        }
        Command::Deregister {
            service,
            instance_id,
        } => {
            let registries = cli.registries(&cli.read_token()?)?;
            let request = pb::DeregisterRequest {
                lease_id: 0,
                service: service.clone(),
                instance_id: instance_id.clone(),
            };
            let removed = call(&registries, |mut c| {
                let request = request.clone();
                async move { c.deregister(request).await }
            })
            .await?;
            let address = removed.instance.map(|i| i.address).unwrap_or_default();
            if cli.json {
                print_json(
                    &serde_json::json!({"service": service, "instance_id": instance_id, "address": address}),
                )?;
            } else {
                println!("deregistered {instance_id} at {address}");
            }
        }
    }
    Ok(())
}

fn print_event(event: Option<Event>, json: bool) -> anyhow::Result<()> {
    match event {
        Some(Event::Snapshot(snapshot)) => {
            if json {
                let instances: Vec<InstanceJson<'_>> =
                    snapshot.instances.iter().map(InstanceJson::from).collect();
                print_json(
                    &serde_json::json!({"snapshot": {"revision": snapshot.revision, "instances": instances}}),
                )?;
            } else {
                println!(
                    "= snapshot at revision {}: {} instance(s)",
                    snapshot.revision,
                    snapshot.instances.len()
                );
                for i in &snapshot.instances {
                    println!("  {} {}", i.instance_id, i.address);
                }
            }
        }
        Some(Event::Change(change)) => {
            let kind = pb::ChangeKind::try_from(change.kind).unwrap_or(pb::ChangeKind::Unspecified);
            let reason = pb::RemovalReason::try_from(change.reason)
                .unwrap_or(pb::RemovalReason::Unspecified);
            let instance = change.instance.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({"change": {
                    "kind": kind.as_str_name(),
                    "reason": reason.as_str_name(),
                    "revision": change.revision,
                    "instance": InstanceJson::from(&instance),
                }}))?;
            } else {
                match kind {
                    pb::ChangeKind::Added => {
                        println!(
                            "+ {} {} (revision {})",
                            instance.instance_id, instance.address, change.revision
                        );
                    }
                    _ => {
                        let why = match reason {
                            pb::RemovalReason::Expired => "expired",
                            pb::RemovalReason::ServiceDeleted => "service deleted",
                            _ => "deregistered",
                        };
                        println!(
                            "- {} {} ({why}, revision {})",
                            instance.instance_id, instance.address, change.revision
                        );
                    }
                }
            }
        }
        Some(Event::Progress(progress)) if json => {
            print_json(&serde_json::json!({"progress": {"revision": progress.revision}}))?;
        }
        Some(Event::Progress(_)) | None => {}
    }
    Ok(())
}
