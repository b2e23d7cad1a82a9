//! The scenarios of issue #6, one module each (6, 7 and 8 share the
//! registry's; 10 is registryd's xDS server), and what they share: the run's settings and the callers of
//! `Ratings.Get` and of the page that they compare.

use std::{future::Future, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use market_proto::{
    ratings::v1::{GetRatingRequest, ratings_client::RatingsClient as GrpcClient},
    registry::v1 as pb,
};
use ratings_client::{RatingsClient, contract_policy};
use registry_client::RegistryClient;
use resilience::Policy;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use crate::{
    http::Pool,
    loadgen::Outcome,
    procs::{Cluster, Registry, Web},
};

pub(crate) mod down;
pub(crate) mod memory;
pub(crate) mod page;
pub(crate) mod registry;
pub(crate) mod slow;
pub(crate) mod stack;
pub(crate) mod stop;
pub(crate) mod xds;

/// The run's settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The smoke run: shorter runs, fewer rounds and sizes.
    pub(crate) quick: bool,
    /// Where the report and charts go.
    pub(crate) out: PathBuf,
}

impl Config {
    /// `full` in a full run, `quick` in a quick one, in seconds.
    pub(crate) fn secs(&self, full: f64, quick: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { quick } else { full })
    }

    /// `full` or `quick`.
    pub(crate) fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }

    /// The path of a chart file, and its name relative to the report.
    pub(crate) fn chart(&self, name: &str) -> (PathBuf, String) {
        (self.out.join(name), name.to_owned())
    }
}

/// A boxed call, so that callers of different kinds share one type.
pub(crate) type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// Adapts a [`Call`] to the load generator's `Fn() -> Future`.
pub(crate) fn caller(
    call: &Call,
) -> impl Fn() -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Clone + Send + Sync + 'static {
    let call = call.clone();
    move || call()
}

/// `ratings-7` → 7: the instance that answered.
fn instance_number(served_by: &str) -> u32 {
    served_by
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `Get("camera")` through the project's full stack (discovery through the
/// registry, balance, breaker, timeout, retry budget), with `policy`.
pub(crate) async fn stack_call(
    registry: &Registry,
    policy: Policy,
) -> anyhow::Result<(Call, RatingsClient)> {
    let client = RatingsClient::discover(registry.registries()?, policy)?;
    tokio::time::timeout(Duration::from_secs(10), client.synced())
        .await
        .context("the stack did not sync with the registry within 10 s")?;
    let kept = client.clone();
    let call: Call = Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            client
                .get("camera")
                .await
                .map(|rating| instance_number(&rating.served_by))
                .map_err(|_| ())
        })
    });
    Ok((call, kept))
}

/// `Get("camera")` through the contract's policy.
pub(crate) async fn contract_stack_call(registry: &Registry) -> anyhow::Result<Call> {
    Ok(stack_call(registry, contract_policy()).await?.0)
}

/// `Get("camera")` on a plain tonic client over `channel`; with a `timeout`,
/// each call sends the `grpc-timeout` a fresh attempt of the stack sends: the
/// timeout less the moment since the attempt began, in whole milliseconds
/// rounded down, i.e. a millisecond less.
fn grpc_call(channel: Channel, timeout: Option<Duration>) -> anyhow::Result<Call> {
    let client = GrpcClient::new(channel);
    let header: Option<MetadataValue<Ascii>> = timeout
        .map(|t| MetadataValue::try_from(format!("{}m", t.as_millis().saturating_sub(1).max(1))))
        .transpose()?;
    Ok(Arc::new(move || {
        let mut client = client.clone();
        let mut request = tonic::Request::new(GetRatingRequest {
            thing_id: "camera".into(),
        });
        if let Some(header) = &header {
            request
                .metadata_mut()
                .insert("grpc-timeout", header.clone());
        }
        Box::pin(async move {
            client
                .get(request)
                .await
                .map(|response| instance_number(&response.into_inner().served_by))
                .map_err(|_| ())
        })
    }))
}

fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true))
}

/// A direct tonic `Channel` to the cluster's first instance.
pub(crate) async fn direct_call(cluster: &Cluster) -> anyhow::Result<Call> {
    let url = cluster.instances[0].url();
    let channel = endpoint(&url)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    grpc_call(channel, None)
}

/// tonic's `balance_channel` (here through `balance_list`, which feeds it)
/// over every instance of the cluster; with a `timeout`, sent as each call's
/// `grpc-timeout`.
pub(crate) fn balance_channel_call(
    cluster: &Cluster,
    timeout: Option<Duration>,
) -> anyhow::Result<Call> {
    let endpoints = cluster
        .instances
        .iter()
        .map(|i| endpoint(&i.url()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    grpc_call(Channel::balance_list(endpoints.into_iter()), timeout)
}

/// Calls `call` `n` times, one after the other (to open connections and
/// warm the balancers up); fails if none succeeds.
pub(crate) async fn warm_up(call: &Call, n: usize) -> anyhow::Result<()> {
    let mut ok = 0;
    for _ in 0..n {
        ok += usize::from(call().await.is_ok());
    }
    anyhow::ensure!(ok > 0, "no call succeeded while warming up");
    Ok(())
}

/// `GET /` on the shop as one visitor (the session cookie of a first visit,
/// sent with every request), each answer a 200.
pub(crate) async fn page_call(web: &Web) -> anyhow::Result<Call> {
    let first = Pool::new(web.addr, "/", None);
    let (status, cookie) = first.get().await.context("the first page")?;
    anyhow::ensure!(status == 200, "the first page answered {status}");
    let cookie = cookie.context("the first page set no session cookie")?;
    let pool = Pool::new(web.addr, "/", Some(&cookie));
    Ok(Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            match pool.get().await {
                Ok((200, _)) => Ok(0),
                _ => Err(()),
            }
        })
    }))
}

/// The session cookie of a first visit to `web`, for tools that send one
/// fixed request (wrk).
pub(crate) async fn session_cookie(web: &Web) -> anyhow::Result<String> {
    let (_, cookie) = Pool::new(web.addr, "/", None).get().await?;
    cookie.context("the first page set no session cookie")
}

/// Registers `id` in `service` at `http://127.0.0.1:PORT`: its lease.
pub(crate) async fn register(
    client: &RegistryClient,
    service: &str,
    id: &str,
    port: u16,
    ttl: u32,
) -> anyhow::Result<u64> {
    let response = client
        .clone()
        .register(pb::RegisterRequest {
            service: service.into(),
            instance_id: id.into(),
            address: format!("http://127.0.0.1:{port}"),
            metadata: Default::default(),
            ttl_seconds: ttl,
        })
        .await
        .with_context(|| format!("cannot register {id} in {service}"))?;
    Ok(response.into_inner().lease_id)
}

/// A native `Watch` of `service`, and its first message (the snapshot).
pub(crate) async fn watch(
    client: &RegistryClient,
    service: &str,
) -> anyhow::Result<(tonic::Streaming<pb::WatchResponse>, pb::WatchResponse)> {
    let mut stream = client
        .clone()
        .watch(pb::WatchRequest {
            service: service.into(),
            since_revision: 0,
        })
        .await
        .with_context(|| format!("cannot watch {service}"))?
        .into_inner();
    let first = stream.message().await?.context("the watch ended at once")?;
    Ok((stream, first))
}
