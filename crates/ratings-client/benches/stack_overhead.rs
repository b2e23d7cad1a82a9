//! The client stack's own cost: the same `Get("camera")` over loopback, once
//! through a plain tonic `Channel` to one instance, once through the full
//! stack (discovery, p2c balance, breaker, peak-EWMA, timeout, retry budget)
//! over the same single instance.
//!
//! `cargo bench -p ratings-client` prints the median time per call of each
//! (its inverse is the throughput of one caller).

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt as _;
use market_proto::ratings::v1::{GetRatingRequest, ratings_client::RatingsClient as GrpcClient};
use ratings_client::{RatingsClient, contract_policy};
use ratings_server::{Faults, RatingsService};
use registry_client::{Instance, WatchUpdate};

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let service = RatingsService::new("ratings-1", Faults::default());
        tokio::spawn(ratings_server::serve(
            service,
            listener,
            futures::future::pending(),
        ));
        address
    });

    let direct = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .expect("an address")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        GrpcClient::new(channel)
    });
    let stack = runtime.block_on(async {
        let instance = Instance {
            id: "ratings-1".into(),
            address: address.clone(),
            metadata: Default::default(),
            ttl: Duration::from_secs(30),
        };
        let updates =
            futures::stream::iter([WatchUpdate::Upsert(instance), WatchUpdate::Synced(1)])
                .chain(futures::stream::pending());
        let client = RatingsClient::new(updates, contract_policy()).expect("a valid policy");
        client.synced().await;
        client.get("camera").await.expect("warm up");
        client
    });

    let mut group = c.benchmark_group("get_camera");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("direct_channel", |b| {
        b.to_async(&runtime).iter(|| get_direct(direct.clone()));
    });
    group.bench_function("full_stack", |b| {
        b.to_async(&runtime)
            .iter(|| get_through_stack(stack.clone()));
    });
    group.finish();

    // The same calls from 64 callers at once: the time per call is the
    // inverse of the throughput, so contention in the stack shows here.
    let mut group = c.benchmark_group("get_camera_64_callers");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("direct_channel", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let direct = direct.clone();
            concurrently(iters, move || get_direct(direct.clone()))
        });
    });
    group.bench_function("full_stack", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let stack = stack.clone();
            concurrently(iters, move || get_through_stack(stack.clone()))
        });
    });
    group.finish();
}

/// `Get("camera")` on a plain tonic client.
async fn get_direct(mut client: GrpcClient<tonic::transport::Channel>) {
    let request = GetRatingRequest {
        thing_id: "camera".into(),
    };
    black_box(client.get(request).await.expect("a rating"));
}

/// `Get("camera")` through the full stack.
async fn get_through_stack(stack: RatingsClient) {
    black_box(stack.get("camera").await.expect("a rating"));
}

/// Makes `iters` calls from [`CALLERS`] tasks at once; the time they took.
async fn concurrently<F, Fut>(iters: u64, call: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    const CALLERS: u64 = 64;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let call = call.clone();
            // Spread `iters` over the callers, the first ones taking the rest.
            let n = iters / CALLERS + u64::from(i < iters % CALLERS);
            tokio::spawn(async move {
                for _ in 0..n {
                    call().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a caller");
    }
    started.elapsed()
}

criterion_group!(benches, overhead);
criterion_main!(benches);
