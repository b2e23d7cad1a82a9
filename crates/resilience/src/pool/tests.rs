//! The pool with `tower_test` mocks for instances and paused time: picks,
//! avoidance, failing fast, and breakers that outlive a registration.

use std::{sync::Arc, time::Duration};

use tokio_test::assert_ready_err;
use tower::{
    BoxError, Service as _, ServiceExt as _,
    load::{CompleteOnResponse, PeakEwma},
    util::BoxService,
};
use tower_test::mock;

use super::*;
use crate::{BreakerState, CircuitBreakerLayer};

type Handle = mock::Handle<Attempt<&'static str>, &'static str>;

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_limit: 1,
        retest_delay: Duration::from_secs(30),
        max_open: Duration::from_secs(300),
        jitter: 0.0,
    }
}

fn pool(balance: Balance) -> Pool<&'static str, &'static str> {
    Pool::new("ratings".into(), balance, policy(), Duration::from_secs(1))
}

/// Lists a mocked instance `id` at `address`; returns its handle.
fn join(pool: &Pool<&'static str, &'static str>, id: &str, address: &str) -> Handle {
    let (service, handle) = mock::pair::<Attempt<&'static str>, &'static str>();
    let label = Arc::new(EndpointLabel {
        service: "ratings".into(),
        instance: id.into(),
        address: address.into(),
    });
    pool.join(label, |breaker| {
        tower::ServiceBuilder::new()
            .layer(CircuitBreakerLayer::new(breaker))
            .layer_fn(|s| {
                PeakEwma::new(
                    s,
                    Duration::from_millis(1),
                    5e9,
                    CompleteOnResponse::default(),
                )
            })
            .service(BoxService::new(service.map_err(Into::<BoxError>::into)))
    });
    handle
}

/// Lists instances `a`, `b` and `c` at `http://a`, `http://b` and
/// `http://c`, in the order `joined`; returns their handles in address order.
fn join_abc(pool: &Pool<&'static str, &'static str>, joined: [&str; 3]) -> [Handle; 3] {
    let mut handles: Vec<(&str, Handle)> = joined
        .into_iter()
        .map(|id| (id, join(pool, id, &format!("http://{id}"))))
        .collect();
    handles.sort_by_key(|(id, _)| *id);
    let handles: Vec<Handle> = handles.into_iter().map(|(_, handle)| handle).collect();
    handles
        .try_into()
        .unwrap_or_else(|_| unreachable!("three handles"))
}

/// Sends `attempt` through the pool and answers it from whichever handle
/// got it, with `answer`; returns the index of that handle.
async fn send(
    pool: &mut Pool<&'static str, &'static str>,
    handles: &mut [&mut Handle],
    attempt: Attempt<&'static str>,
    answer: Result<&'static str, BoxError>,
) -> (usize, Result<Served<&'static str>, BoxError>) {
    pool.ready().await.expect("an instance is up");
    let response = pool.call(attempt);
    let mut answer = Some(answer);
    for _ in 0..100 {
        for (i, handle) in handles.iter_mut().enumerate() {
            if let Poll::Ready(Some((_, reply))) = handle.poll_request() {
                match answer.take().expect("one request per attempt") {
                    Ok(value) => reply.send_response(value),
                    Err(error) => reply.send_error(error),
                }
                return (i, response.await);
            }
        }
        tokio::task::yield_now().await;
    }
    panic!("no instance got the attempt");
}

/// Sends `n` copies of `attempt`, each answered; returns which handle got
/// each, and the address its answer came back with.
async fn spread(
    pool: &mut Pool<&'static str, &'static str>,
    handles: &mut [&mut Handle],
    attempt: &Attempt<&'static str>,
    n: usize,
) -> Vec<(usize, Arc<str>)> {
    let mut picks = Vec::new();
    for _ in 0..n {
        let (i, served) = send(pool, handles, attempt.clone(), Ok("45")).await;
        picks.push((i, served.expect("answered").instance.address.clone()));
    }
    picks
}

/// Which handle got each attempt.
fn order(picks: &[(usize, Arc<str>)]) -> Vec<usize> {
    picks.iter().map(|(i, _)| *i).collect()
}

/// Sends an attempt that the instance it reaches fails `UNAVAILABLE`;
/// returns the address the failure came back with.
async fn fail(
    pool: &mut Pool<&'static str, &'static str>,
    handles: &mut [&mut Handle],
) -> Arc<str> {
    let unavailable: BoxError = tonic::Status::unavailable("down").into();
    let (_, result) = send(pool, handles, Attempt::new("camera"), Err(unavailable)).await;
    let error = result.expect_err("it failed");
    let failed = error
        .downcast_ref::<Failed>()
        .expect("a failure with its instance");
    failed
        .instance()
        .expect("the instance that failed")
        .address
        .clone()
}

/// Checks that the pool fails fast: no listed instance's breaker admits.
async fn assert_all_down(pool: &mut Pool<&'static str, &'static str>) {
    let error = assert_ready_err!(futures::poll!(std::future::poll_fn(
        |cx| pool.poll_ready(cx)
    )));
    assert!(error.is::<AllServicesDown>(), "{error}");
}

fn address(pool: &Pool<&'static str, &'static str>, state: BreakerState) -> Vec<String> {
    pool.listed()
        .into_iter()
        .filter(|e| e.breaker.state == state)
        .map(|e| e.address)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn round_robin_rotates_in_address_order_and_skips_what_an_attempt_avoids() {
    let mut pool = pool(Balance::RoundRobin);
    // Joined out of order: the rotation follows the addresses.
    let [mut a, mut b, mut c] = join_abc(&pool, ["c", "a", "b"]);
    let handles = &mut [&mut a, &mut b, &mut c];
    let picks = spread(&mut pool, handles, &Attempt::new("camera"), 6).await;
    assert_eq!(order(&picks), [0, 1, 2, 0, 1, 2]);

    let mut retry = Attempt::new("camera");
    retry.avoid.push("http://a".into());
    let picks = spread(&mut pool, handles, &retry, 4).await;
    assert_eq!(order(&picks), [1, 2, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_avoids_every_ready_instance_is_not_sent() {
    let mut pool = pool(Balance::P2c);
    let mut a = join(&pool, "a", "http://a");
    let mut b = join(&pool, "b", "http://b");
    let mut retry = Attempt::new("camera");
    retry.avoid = vec!["http://a".into(), "http://b".into()];
    assert!(!pool.can_serve(&retry));
    pool.ready().await.unwrap();
    let error = pool.call(retry).await.expect_err("nowhere to go");
    assert!(error.is::<NoOtherInstance>(), "{error}");
    assert!(a.poll_request().is_pending());
    assert!(b.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn p2c_never_sends_a_retry_where_it_was_avoided() {
    let mut pool = pool(Balance::P2c);
    let [mut a, mut b, mut c] = join_abc(&pool, ["a", "b", "c"]);
    let mut retry = Attempt::new("camera");
    retry.avoid.push("http://b".into());
    let picks = spread(&mut pool, &mut [&mut a, &mut b, &mut c], &retry, 60).await;
    let mut counts = [0; 3];
    for (i, address) in picks {
        counts[i] += 1;
        assert_eq!(&*address, ["http://a", "http://b", "http://c"][i]);
    }
    assert_eq!(counts[1], 0, "{counts:?}");
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failure_comes_back_with_its_instance_and_fails_fast_once_every_breaker_is_open() {
    let mut pool = pool(Balance::RoundRobin);
    let mut a = join(&pool, "a", "http://a");
    assert_eq!(&*fail(&mut pool, &mut [&mut a]).await, "http://a");
    assert_eq!(address(&pool, BreakerState::Open), ["http://a"]);

    assert_all_down(&mut pool).await;
}

#[tokio::test(start_paused = true)]
async fn an_address_that_leaves_and_comes_back_gets_its_breaker_back() {
    let mut pool = pool(Balance::RoundRobin);
    let mut a = join(&pool, "ratings-1", "http://a");
    fail(&mut pool, &mut [&mut a]).await;
    assert_eq!(address(&pool, BreakerState::Open), ["http://a"]);

    // Its lease expires: unlisted, but its breaker stays, and shows as absent.
    assert_eq!(pool.leave("ratings-1").as_deref(), Some("http://a"));
    assert!(pool.listed().is_empty());
    let absent = pool.absent();
    assert_eq!(absent.len(), 1);
    assert_eq!(absent[0].address, "http://a");
    assert_eq!(absent[0].breaker.state, BreakerState::Open);

    // It registers again, even under another id: the open breaker is back.
    let mut a = join(&pool, "ratings-1b", "http://a");
    assert_eq!(address(&pool, BreakerState::Open), ["http://a"]);
    assert!(pool.absent().is_empty());
    assert_all_down(&mut pool).await;
    assert!(a.poll_request().is_pending(), "no call while open");
}

#[tokio::test(start_paused = true)]
async fn the_retest_runs_while_the_address_is_away_and_its_probe_goes_to_it_on_return() {
    let mut pool = pool(Balance::RoundRobin);
    let mut a = join(&pool, "ratings-1", "http://a");
    let mut b = join(&pool, "ratings-2", "http://b");
    fail(&mut pool, &mut [&mut a, &mut b]).await;
    pool.leave("ratings-1");

    tokio::time::sleep(Duration::from_secs(30)).await;
    tokio::task::yield_now().await;
    assert_eq!(pool.absent()[0].breaker.state, BreakerState::HalfOpen);

    let mut a = join(&pool, "ratings-1", "http://a");
    let mut went_to_a = 0;
    for _ in 0..4 {
        let (i, served) = send(
            &mut pool,
            &mut [&mut a, &mut b],
            Attempt::new("camera"),
            Ok("45"),
        )
        .await;
        served.unwrap();
        went_to_a += usize::from(i == 0);
    }
    assert!(went_to_a >= 1, "the probe went to the returning address");
    assert_eq!(address(&pool, BreakerState::Closed).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_away_longer_than_max_open_is_forgotten() {
    let mut pool = pool(Balance::RoundRobin);
    let mut a = join(&pool, "ratings-1", "http://a");
    fail(&mut pool, &mut [&mut a]).await;
    pool.leave("ratings-1");
    tokio::time::sleep(policy().max_open - Duration::from_secs(1)).await;
    assert_eq!(pool.absent().len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pool.absent().is_empty());
    assert_eq!(pool.lock().breakers.len(), 0);

    // Coming back after that, it starts afresh.
    let _a = join(&pool, "ratings-1", "http://a");
    assert_eq!(address(&pool, BreakerState::Closed), ["http://a"]);
}
