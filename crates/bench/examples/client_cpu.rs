//! The client's CPU per call, one client kind at a time: what scenario 1 of
//! the bench cannot separate, since its variants share one process.
//!
//! Start three instances first, then run one kind at a time:
//!
//! ```text
//! for n in 1 2 3; do target/release/ratings-server --instance $n --no-register & done
//! cargo run --release -p bench --example client_cpu -- stack 64 5
//! ```
//!
//! Kinds: `stack` (the full stack over the three instances, as the contract
//! configures it), `balance` (tonic's `balance_list` over them), `direct` (a
//! `Channel` to the first), `direct-deadline` (the same, each call sending a
//! `grpc-timeout` as the stack does), `round-robin` (three `Channel`s taken
//! in turn, each call with a `grpc-timeout`). It prints the calls a second
//! and the process's CPU time per call (user and system, from
//! `/proc/self/stat`), measured after 200 calls of warm-up.

// A command-line tool: its result goes to standard output.
#![allow(clippy::print_stdout)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, future::BoxFuture};
use market_proto::ratings::v1::{GetRatingRequest, ratings_client::RatingsClient as GrpcClient};
use ratings_client::{RatingsClient, contract_policy};
use registry_client::{Instance, WatchUpdate};
use tonic::transport::{Channel, Endpoint};

type Call = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// The process's CPU time so far (clock ticks of 10 ms).
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = stat.rfind(')').context("no ')' in /proc/self/stat")? + 2;
    let fields: Vec<&str> = stat[after_name..].split(' ').collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true))
}

/// `Get("camera")` on a plain tonic client, with a `grpc-timeout` or not.
fn grpc_get(
    mut client: GrpcClient<Channel>,
    deadline: bool,
) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let mut request = tonic::Request::new(GetRatingRequest {
            thing_id: "camera".into(),
        });
        if deadline {
            request.set_timeout(Duration::from_millis(999));
        }
        client.get(request).await?;
        Ok(())
    })
}

async fn call_of(kind: &str, urls: &[String]) -> anyhow::Result<Call> {
    Ok(match kind {
        "stack" => {
            let mut updates: Vec<WatchUpdate> = urls
                .iter()
                .enumerate()
                .map(|(i, url)| {
                    WatchUpdate::Upsert(Instance {
                        id: format!("ratings-{}", i + 1),
                        address: url.clone(),
                        metadata: Default::default(),
                        ttl: Duration::from_secs(30),
                    })
                })
                .collect();
            updates.push(WatchUpdate::Synced(1));
            let updates = futures::stream::iter(updates).chain(futures::stream::pending());
            let client = RatingsClient::new(updates, contract_policy())?;
            client.synced().await;
            Arc::new(move || {
                let client = client.clone();
                Box::pin(async move {
                    client.get("camera").await?;
                    Ok(())
                })
            })
        }
        "balance" => {
            let endpoints = urls
                .iter()
                .map(|url| endpoint(url))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let client = GrpcClient::new(Channel::balance_list(endpoints.into_iter()));
            Arc::new(move || grpc_get(client.clone(), false))
        }
        "direct" | "direct-deadline" => {
            let client = GrpcClient::new(endpoint(&urls[0])?.connect().await?);
            let deadline = kind == "direct-deadline";
            Arc::new(move || grpc_get(client.clone(), deadline))
        }
        "round-robin" => {
            let mut clients = Vec::new();
            for url in urls {
                clients.push(GrpcClient::new(endpoint(url)?.connect().await?));
            }
            let next = AtomicUsize::new(0);
            Arc::new(move || {
                let i = next.fetch_add(1, Ordering::Relaxed) % clients.len();
                grpc_get(clients[i].clone(), true)
            })
        }
        other => {
            bail!("unknown kind {other:?}: stack, balance, direct, direct-deadline or round-robin")
        }
    })
}

#[tokio::main(worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, callers, seconds] = args.as_slice() else {
        bail!("usage: client_cpu KIND CALLERS SECONDS");
    };
    let callers: usize = callers.parse().context("CALLERS: a number")?;
    let seconds: u64 = seconds.parse().context("SECONDS: a whole number")?;
    let urls: Vec<String> = (1..=3)
        .map(|n| format!("http://127.0.0.1:{}", 8000 + n))
        .collect();
    let call = call_of(kind, &urls).await?;
    for _ in 0..200 {
        call()
            .await
            .context("warming up: are the three instances running?")?;
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_time()?;
    let started = Instant::now();
    let callers: Vec<_> = (0..callers)
        .map(|_| {
            let (call, calls, stop) = (call.clone(), calls.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call().await?;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_time()? - cpu_before).as_secs_f64();
    let calls = calls.load(Ordering::Relaxed) as f64;
    println!(
        "{kind}: {:.0} calls/s, {:.1} µs of client CPU per call ({:.0} % of a core)",
        calls / elapsed,
        cpu * 1e6 / calls,
        cpu / elapsed * 100.0
    );
    Ok(())
}
