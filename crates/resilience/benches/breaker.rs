//! The circuit breaker's own cost per call, with no network in the way: the
//! same trivial service called bare and behind a `CircuitBreaker` (closed),
//! and the readiness check of an open breaker (what a balancer pays for an
//! instance it must skip).
//!
//! `cargo bench -p resilience --bench breaker` prints the median time of each.

use std::{
    convert::Infallible,
    future::poll_fn,
    hint::black_box,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use resilience::{BreakerPolicy, CircuitBreaker, EndpointLabel, breaker::Breaker};
use tower::{Service, ServiceExt as _};

fn label() -> EndpointLabel {
    EndpointLabel {
        service: Arc::from("ratings"),
        instance: Arc::from("ratings-1"),
        address: Arc::from("http://127.0.0.1:8001"),
    }
}

/// Readies `service` and calls it once with `request`.
async fn call<S: Service<u64>>(service: &mut S, request: u64) -> Result<S::Response, S::Error> {
    service.ready().await?.call(request).await
}

fn breaker(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let echo = || tower::service_fn(|n: u64| async move { Ok::<_, Infallible>(n) });

    let mut bare = echo();
    c.bench_function("call/bare", |b| {
        b.iter(|| runtime.block_on(call(&mut bare, black_box(7))));
    });

    let mut guarded = CircuitBreaker::new(echo(), Breaker::new(label(), BreakerPolicy::default()));
    c.bench_function("call/closed breaker", |b| {
        b.iter(|| runtime.block_on(call(&mut guarded, black_box(7))));
    });

    // One failure opens it (the contract's limit); its retest is far off.
    let mut open = runtime.block_on(async {
        let failing = tower::service_fn(|_: u64| async { Err::<u64, _>("refused") });
        let mut open = CircuitBreaker::new(
            failing,
            Breaker::new(
                label(),
                BreakerPolicy {
                    retest_delay: Duration::from_secs(3600),
                    ..BreakerPolicy::default()
                },
            ),
        );
        let _ = call(&mut open, 0).await;
        open
    });
    let waker = std::task::Waker::noop();
    c.bench_function("poll_ready/open breaker", |b| {
        b.iter(|| {
            let mut cx = Context::from_waker(waker);
            let ready = runtime.block_on(poll_fn(|_| Poll::Ready(open.poll_ready(&mut cx))));
            assert!(black_box(ready).is_pending());
        });
    });
}

criterion_group!(benches, breaker);
criterion_main!(benches);
