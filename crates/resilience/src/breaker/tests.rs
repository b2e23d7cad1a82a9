//! Every transition of the breaker, with `tower_test::mock` and paused time.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::BoxError;
use tower_test::mock::{self, Handle, Spawn};

use super::*;

type Mocked = Spawn<CircuitBreaker<mock::Mock<&'static str, &'static str>>>;

fn label() -> EndpointLabel {
    EndpointLabel {
        service: "ratings".into(),
        instance: "ratings-1".into(),
        address: "http://127.0.0.1:8001".into(),
    }
}

fn policy(failure_limit: u32) -> BreakerPolicy {
    BreakerPolicy {
        failure_limit,
        retest_delay: Duration::from_secs(30),
        max_open: Duration::from_secs(300),
        jitter: 0.0,
    }
}

fn breaker_with(
    policy: BreakerPolicy,
) -> (Mocked, Handle<&'static str, &'static str>, Arc<Breaker>) {
    let breaker = Breaker::new(label(), policy);
    let shared = breaker.clone();
    let (service, handle) = mock::spawn_with(move |mock| CircuitBreaker::new(mock, shared.clone()));
    (service, handle, breaker)
}

fn unavailable() -> BoxError {
    tonic::Status::unavailable("connection refused").into()
}

/// Sends one call through and answers it with `answer`.
async fn call(
    service: &mut Mocked,
    handle: &mut Handle<&'static str, &'static str>,
    answer: Result<&'static str, BoxError>,
) -> Result<&'static str, BoxError> {
    assert_ready_ok!(service.poll_ready());
    let response = service.call("camera");
    let (_, reply) = handle
        .next_request()
        .await
        .expect("the call reached the endpoint");
    match answer {
        Ok(value) => reply.send_response(value),
        Err(error) => reply.send_error(error),
    }
    response.await
}

/// Sends one call through and answers it `UNAVAILABLE`.
async fn fail(service: &mut Mocked, handle: &mut Handle<&'static str, &'static str>) {
    call(service, handle, Err(unavailable())).await.unwrap_err();
}

/// Lets time pass, and the tasks due by then (the retest timer) run.
async fn pass(duration: Duration) {
    tokio::time::sleep(duration).await;
    tokio::task::yield_now().await;
}

fn state(breaker: &Breaker) -> BreakerState {
    breaker.snapshot().state
}

#[tokio::test(start_paused = true)]
async fn closed_counts_consecutive_failures_and_opens_at_the_limit() {
    let (mut service, mut handle, breaker) = breaker_with(policy(3));
    fail(&mut service, &mut handle).await;
    fail(&mut service, &mut handle).await;
    assert_eq!(breaker.snapshot().consecutive_failures, 2);
    // A success resets the count: failures must be consecutive.
    call(&mut service, &mut handle, Ok("45")).await.unwrap();
    assert_eq!(breaker.snapshot().consecutive_failures, 0);
    for _ in 0..2 {
        call(&mut service, &mut handle, Err(unavailable()))
            .await
            .unwrap_err();
    }
    assert_eq!(state(&breaker), BreakerState::Closed);
    fail(&mut service, &mut handle).await;
    assert_eq!(state(&breaker), BreakerState::Open);
    assert_eq!(breaker.snapshot().retest_in, Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn an_open_endpoint_is_pending_never_errors_and_is_never_called() {
    let (mut service, mut handle, breaker) = breaker_with(policy(1));
    fail(&mut service, &mut handle).await;
    assert_eq!(state(&breaker), BreakerState::Open);

    assert_pending!(service.poll_ready());
    pass(Duration::from_secs(29)).await;
    assert_pending!(service.poll_ready());
    assert!(
        handle.poll_request().is_pending(),
        "an open endpoint is never called"
    );
}

#[tokio::test(start_paused = true)]
async fn the_retest_timer_wakes_the_waiting_caller() {
    let (mut service, mut handle, breaker) = breaker_with(policy(1));
    fail(&mut service, &mut handle).await;
    assert_pending!(service.poll_ready());
    assert!(!service.is_woken());

    pass(Duration::from_secs(30)).await;
    assert!(service.is_woken(), "the breaker arranges its own wake-up");
    assert_eq!(state(&breaker), BreakerState::HalfOpen);
    assert_ready_ok!(service.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_one_probe_through() {
    let (mut service, mut handle, breaker) = breaker_with(policy(1));
    fail(&mut service, &mut handle).await;
    pass(Duration::from_secs(30)).await;

    // A second caller on a clone of the same endpoint shares the breaker.
    let mut other = Spawn::new(service.get_ref().clone());
    assert_ready_ok!(service.poll_ready());
    assert_ready_ok!(other.poll_ready());
    let probe = service.call("camera");
    assert_eq!(breaker.snapshot().in_flight, 1);
    // The probe is in flight: nobody else may go, and a call that raced past
    // the readiness check is refused without reaching the endpoint.
    assert_pending!(service.poll_ready());
    assert_pending!(other.poll_ready());
    let raced = other.call("camera").await.unwrap_err();
    assert!(raced.is::<crate::BreakerOpen>(), "{raced}");

    let (_, reply) = handle.next_request().await.unwrap();
    assert!(
        handle.poll_request().is_pending(),
        "only the probe reached the endpoint"
    );
    reply.send_response("45");
    probe.await.unwrap();
    assert_eq!(state(&breaker), BreakerState::Closed);
    assert!(service.is_woken() || other.is_woken());
    assert_ready_ok!(service.poll_ready());
    assert_ready_ok!(other.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
    let (mut service, mut handle, breaker) = breaker_with(BreakerPolicy {
        max_open: Duration::from_secs(100),
        ..policy(1)
    });
    fail(&mut service, &mut handle).await;
    for expected in [60, 100, 100] {
        let retest_in = breaker.snapshot().retest_in.unwrap();
        pass(retest_in).await;
        assert_eq!(state(&breaker), BreakerState::HalfOpen);
        call(&mut service, &mut handle, Err(unavailable()))
            .await
            .unwrap_err();
        assert_eq!(state(&breaker), BreakerState::Open);
        assert_eq!(
            breaker.snapshot().retest_in,
            Some(Duration::from_secs(expected))
        );
    }
    // A successful probe closes it and the next opening starts over.
    pass(Duration::from_secs(100)).await;
    call(&mut service, &mut handle, Ok("45")).await.unwrap();
    assert_eq!(state(&breaker), BreakerState::Closed);
    fail(&mut service, &mut handle).await;
    assert_eq!(breaker.snapshot().retest_in, Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn a_cap_equal_to_the_retest_delay_gives_a_fixed_period() {
    let (mut service, mut handle, breaker) = breaker_with(BreakerPolicy {
        max_open: Duration::from_secs(30),
        jitter: 0.2,
        ..policy(1)
    });
    fail(&mut service, &mut handle).await;
    for _ in 0..4 {
        assert_eq!(breaker.snapshot().retest_in, Some(Duration::from_secs(30)));
        pass(Duration::from_secs(30)).await;
        call(&mut service, &mut handle, Err(unavailable()))
            .await
            .unwrap_err();
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_fraction() {
    let policy = BreakerPolicy {
        jitter: 0.2,
        ..policy(1)
    };
    for _ in 0..100 {
        let period = policy.open_period(1);
        assert!(
            period >= Duration::from_secs(60) && period <= Duration::from_secs(72),
            "{period:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_the_slot() {
    let (mut service, mut handle, breaker) = breaker_with(policy(1));
    fail(&mut service, &mut handle).await;
    pass(Duration::from_secs(30)).await;
    assert_ready_ok!(service.poll_ready());
    let probe = service.call("camera");
    assert_pending!(service.poll_ready());
    drop(probe);
    assert_eq!(state(&breaker), BreakerState::HalfOpen);
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    drop(handle.next_request().await);
}

#[tokio::test(start_paused = true)]
async fn answers_from_a_healthy_server_are_successes() {
    let (mut service, mut handle, breaker) = breaker_with(policy(1));
    for status in [
        tonic::Status::not_found("no such item"),
        tonic::Status::invalid_argument("bad id"),
        tonic::Status::permission_denied("no"),
    ] {
        call(&mut service, &mut handle, Err(status.into()))
            .await
            .unwrap_err();
        assert_eq!(state(&breaker), BreakerState::Closed);
    }
}

#[test]
fn failures_are_classified_as_the_contract_says() {
    use tonic::Code;
    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::ResourceExhausted,
        Code::Internal,
        Code::Unknown,
    ] {
        assert_eq!(
            classify(&tonic::Status::new(code, "x").into()),
            Outcome::Failure,
            "{code:?}"
        );
    }
    for code in [
        Code::NotFound,
        Code::InvalidArgument,
        Code::AlreadyExists,
        Code::FailedPrecondition,
    ] {
        assert_eq!(
            classify(&tonic::Status::new(code, "x").into()),
            Outcome::Success,
            "{code:?}"
        );
    }
    assert_eq!(
        classify(&tower::timeout::error::Elapsed::new().into()),
        Outcome::Failure
    );
    let refused: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
    assert_eq!(classify(&refused), Outcome::Failure);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_opens_at_once_not_after_the_timeout() {
    let (mut service, mut handle, breaker) = breaker_with(policy(1));
    let start = Instant::now();
    let refused: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
    call(&mut service, &mut handle, Err(refused))
        .await
        .unwrap_err();
    assert_eq!(state(&breaker), BreakerState::Open);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_balancer_keeps_an_open_endpoint_and_routes_around_it() {
    use futures::StreamExt as _;
    use tower::{Service as _, ServiceExt as _, discover::Change};

    let (mock_a, mut handle_a) = mock::pair::<&'static str, &'static str>();
    let (mock_b, mut handle_b) = mock::pair::<&'static str, &'static str>();
    let breaker_a = Breaker::new(label(), policy(1));
    let breaker_b = Breaker::new(label(), policy(1));
    let constant = |s| tower::load::Constant::new(s, 0u32);
    let changes: Vec<Result<_, std::convert::Infallible>> = vec![
        Ok(Change::Insert(
            "a",
            CircuitBreaker::new(constant(mock_a), breaker_a.clone()),
        )),
        Ok(Change::Insert(
            "b",
            CircuitBreaker::new(constant(mock_b), breaker_b.clone()),
        )),
    ];
    let discover = futures::stream::iter(changes).chain(futures::stream::pending());
    let mut balance = tower::balance::p2c::Balance::new(Box::pin(discover));

    // Open a's breaker with one failure.
    breaker_a.admit();
    breaker_a.record(CallKind::Normal, Outcome::Failure, Duration::ZERO);
    assert_eq!(state(&breaker_a), BreakerState::Open);

    for _ in 0..20 {
        balance.ready().await.unwrap();
        let response = balance.call("camera");
        let (_, reply) = handle_b.next_request().await.unwrap();
        reply.send_response("45");
        response.await.unwrap();
    }
    assert!(
        handle_a.poll_request().is_pending(),
        "the open endpoint got no call"
    );
    assert_eq!(
        balance.len(),
        2,
        "the balancer still holds the open endpoint"
    );
    assert_eq!(breaker_b.snapshot().calls, 20);

    // After the retest delay a gets its probe.
    pass(Duration::from_secs(30)).await;
    let mut probed = false;
    for _ in 0..40 {
        balance.ready().await.unwrap();
        let response = balance.call("camera");
        tokio::select! {
            Some((_, reply)) = handle_a.next_request() => { reply.send_response("45"); probed = true; }
            Some((_, reply)) = handle_b.next_request() => reply.send_response("45"),
        }
        response.await.unwrap();
        if probed {
            break;
        }
    }
    assert!(probed, "the half-open endpoint was probed");
    assert_eq!(state(&breaker_a), BreakerState::Closed);
}

mod model {
    //! The breaker against a reference model, for random sequences of
    //! successes, failures and clock advances.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Succeed,
        Fail,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Succeed),
            Just(Op::Fail),
            (1u64..=70).prop_map(Op::Advance)
        ]
    }

    /// The reference: a plain state machine over whole seconds.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Model {
        Closed(u32),
        Open { until: u64, reopened: u32 },
        HalfOpen { reopened: u32 },
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_breaker_matches_the_model(limit in 1u32..4, cap in 30u64..200, ops in prop::collection::vec(op(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async move {
                let policy = BreakerPolicy {
                    failure_limit: limit,
                    retest_delay: Duration::from_secs(30),
                    max_open: Duration::from_secs(cap),
                    jitter: 0.0,
                };
                let breaker = Breaker::new(label(), policy);
                let start = Instant::now();
                let mut now = 0u64;
                let mut model = Model::Closed(0);
                let waker = futures::task::noop_waker();
                for op in ops {
                    match op {
                        Op::Advance(secs) => {
                            tokio::time::sleep(Duration::from_secs(secs)).await;
                            now += secs;
                            if let Model::Open { until, reopened } = model && now >= until {
                                model = Model::HalfOpen { reopened };
                            }
                        }
                        Op::Succeed | Op::Fail => {
                            let admitted = breaker.gate(&waker) == Gate::Pass;
                            let expected = !matches!(model, Model::Open { .. });
                            prop_assert_eq!(admitted, expected, "gate at {}s in {:?}", now, model);
                            if !admitted {
                                continue;
                            }
                            let kind = breaker.admit().expect("admitted after the gate passed");
                            let failed = matches!(op, Op::Fail);
                            breaker.record(kind, if failed { Outcome::Failure } else { Outcome::Success }, Duration::ZERO);
                            model = match (model, failed) {
                                (Model::Closed(_), false) => Model::Closed(0),
                                (Model::Closed(n), true) if n + 1 >= limit => Model::Open { until: now + 30.min(cap), reopened: 0 },
                                (Model::Closed(n), true) => Model::Closed(n + 1),
                                (Model::HalfOpen { .. }, false) => Model::Closed(0),
                                (Model::HalfOpen { reopened }, true) => {
                                    let period = (30u64 << (reopened + 1).min(31)).min(cap);
                                    Model::Open { until: now + period, reopened: reopened + 1 }
                                }
                                (Model::Open { .. }, _) => unreachable!(),
                            };
                        }
                    }
                    let seen = breaker.snapshot();
                    let (state, retest_in) = match model {
                        Model::Closed(n) => {
                            prop_assert_eq!(seen.consecutive_failures, n);
                            (BreakerState::Closed, None)
                        }
                        Model::Open { until, .. } => (BreakerState::Open, Some(Duration::from_secs(until - now))),
                        Model::HalfOpen { .. } => (BreakerState::HalfOpen, None),
                    };
                    // The retest timer may not have run yet at the exact instant.
                    let seen_state = if seen.state == BreakerState::Open && seen.retest_in == Some(Duration::ZERO) {
                        BreakerState::HalfOpen
                    } else {
                        seen.state
                    };
                    prop_assert_eq!(seen_state, state, "at {}s", now);
                    if state == BreakerState::Open {
                        prop_assert_eq!(seen.retest_in, retest_in);
                    }
                    prop_assert_eq!(Instant::now() - start, Duration::from_secs(now));
                }
                Ok(())
            })?;
        }
    }
}
