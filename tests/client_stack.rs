//! The resilient client stack against real ratings instances, discovered
//! through a real registry: balancing, breakers, retries, hedging, failing
//! fast, and riding out a registry outage.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ratings_client::{RatingsClient, contract_policy};
use resilience::{Balance, BreakerState, CallError, Policy};
use test_support::{Cluster, Ratings, Signal};

async fn client(cluster: &Cluster, policy: Policy) -> RatingsClient {
    let client = RatingsClient::discover(cluster.registries(), policy).expect("a valid policy");
    client.synced().await;
    client
}

fn round_robin() -> Policy {
    Policy {
        balance: Balance::RoundRobin,
        ..contract_policy()
    }
}

/// Calls `get("camera")` `n` times in sequence; counts the answers by instance.
async fn spread(client: &RatingsClient, n: usize) -> HashMap<String, usize> {
    let mut by_instance = HashMap::new();
    for _ in 0..n {
        let rating = client.get("camera").await.expect("a rating");
        assert_eq!(rating.tenths, 45);
        *by_instance.entry(rating.served_by).or_insert(0) += 1;
    }
    by_instance
}

fn breaker(client: &RatingsClient, instance: &str) -> resilience::BreakerSnapshot {
    client
        .endpoints()
        .into_iter()
        .find(|e| e.instance == instance)
        .unwrap_or_else(|| panic!("{instance} is known"))
        .breaker
}

#[tokio::test]
async fn round_robin_spreads_calls_evenly_in_address_order() {
    let cluster = Cluster::start(&[]).await;
    let _instances = [
        cluster.ratings(1, &[]).await,
        cluster.ratings(2, &[]).await,
        cluster.ratings(3, &[]).await,
    ];
    let client = client(&cluster, round_robin()).await;
    assert_eq!(client.endpoints().len(), 3);

    let by_instance = spread(&client, 30).await;
    eprintln!("FIGURE round_robin_30_calls={by_instance:?}");
    for id in ["ratings-1", "ratings-2", "ratings-3"] {
        assert_eq!(by_instance.get(id), Some(&10), "{by_instance:?}");
    }
}

#[tokio::test]
async fn p2c_routes_around_a_slow_instance() {
    let cluster = Cluster::start(&[]).await;
    let _instances = [
        cluster.ratings(1, &[]).await,
        cluster.ratings(2, &[]).await,
        cluster.ratings(3, &["--delay", "50ms"]).await,
    ];
    let client = client(&cluster, contract_policy()).await;
    assert_eq!(client.policy().balance, Balance::P2c);

    let by_instance = spread(&client, 300).await;
    let slow = by_instance.get("ratings-3").copied().unwrap_or(0);
    eprintln!(
        "FIGURE p2c_300_calls={by_instance:?} slow_share={:.1}%",
        slow as f64 / 3.0
    );
    assert!(
        slow < 30,
        "the slow instance got {slow} of 300 calls: {by_instance:?}"
    );
}

/// Two instances; the first in address order is returned paused, with the
/// other's id.
async fn pause_first(
    cluster: &Cluster,
    client: &RatingsClient,
    instances: &[Ratings],
) -> (String, String) {
    let order = client.endpoints();
    assert_eq!(order.len(), 2, "both instances are known");
    let (first, second) = (order[0].instance.clone(), order[1].instance.clone());
    let paused = instances
        .iter()
        .find(|i| i.id == first)
        .expect("a running instance");
    paused.proc.freeze();
    let _ = cluster;
    (first, second)
}

#[tokio::test]
async fn a_paused_instance_costs_one_timeout_then_is_routed_around_probed_and_recovers() {
    let cluster = Cluster::start(&[]).await;
    let instances = [cluster.ratings(1, &[]).await, cluster.ratings(2, &[]).await];
    let mut policy = round_robin();
    policy.breaker.retest_delay = Duration::from_secs(2);
    policy.breaker.max_open = Duration::from_secs(2);
    let client = client(&cluster, policy).await;
    let (paused, healthy) = pause_first(&cluster, &client, &instances).await;

    // The first call goes to the paused instance, times out after 1 s, and
    // is answered by the other one through the retry.
    let start = Instant::now();
    let rating = client
        .get("camera")
        .await
        .expect("answered through the retry");
    let elapsed = start.elapsed();
    eprintln!("FIGURE paused_first_call_ms={}", elapsed.as_millis());
    assert_eq!(rating.served_by, healthy);
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1300),
        "{elapsed:?}"
    );
    assert_eq!(breaker(&client, &paused).state, BreakerState::Open);

    // The next 100 calls all succeed, quickly, and none goes to it.
    let calls_before = breaker(&client, &paused).calls;
    let start = Instant::now();
    let by_instance = spread(&client, 100).await;
    eprintln!(
        "FIGURE paused_next_100_calls_ms={}",
        start.elapsed().as_millis()
    );
    assert_eq!(by_instance.get(&healthy), Some(&100), "{by_instance:?}");
    assert_eq!(breaker(&client, &paused).calls, calls_before);

    // After the retest delay, exactly one probe goes to it, however many
    // callers there are; they all get their answer.
    let retest_in = breaker(&client, &paused).retest_in.expect("open");
    tokio::time::sleep(retest_in + Duration::from_millis(50)).await;
    assert_eq!(breaker(&client, &paused).state, BreakerState::HalfOpen);
    let calls_before = breaker(&client, &paused).calls;
    let concurrent = (0..20).map(|_| client.get("camera"));
    for result in futures::future::join_all(concurrent).await {
        assert_eq!(result.expect("answered").served_by, healthy);
    }
    assert_eq!(
        breaker(&client, &paused).calls - calls_before,
        1,
        "one probe"
    );
    assert_eq!(
        breaker(&client, &paused).state,
        BreakerState::Open,
        "the probe timed out"
    );

    // It comes back: the next probe closes the breaker and traffic returns.
    instances
        .iter()
        .find(|i| i.id == paused)
        .expect("paused")
        .proc
        .signal(Signal::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker(&client, &paused).state != BreakerState::Closed {
        assert!(
            Instant::now() < deadline,
            "the breaker closes after SIGCONT"
        );
        client.get("camera").await.expect("answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let by_instance = spread(&client, 10).await;
    assert_eq!(by_instance.get(&paused), Some(&5), "{by_instance:?}");
    assert_eq!(by_instance.get(&healthy), Some(&5), "{by_instance:?}");
}

#[tokio::test]
async fn hedging_answers_in_about_the_hedge_delay_when_an_instance_is_paused() {
    let cluster = Cluster::start(&[]).await;
    let instances = [cluster.ratings(1, &[]).await, cluster.ratings(2, &[]).await];
    let policy = Policy {
        hedge_after: Some(Duration::from_millis(50)),
        ..round_robin()
    };
    let client = client(&cluster, policy).await;
    let (paused, healthy) = pause_first(&cluster, &client, &instances).await;

    let start = Instant::now();
    let rating = client.get("camera").await.expect("answered by the hedge");
    let elapsed = start.elapsed();
    eprintln!("FIGURE hedged_call_ms={}", elapsed.as_millis());
    assert_eq!(rating.served_by, healthy);
    assert!(
        elapsed >= Duration::from_millis(50) && elapsed < Duration::from_millis(250),
        "{elapsed:?}"
    );
    // The losing attempt still runs to its timeout and opens the breaker.
    let deadline = Instant::now() + Duration::from_secs(3);
    while breaker(&client, &paused).state != BreakerState::Open {
        assert!(
            Instant::now() < deadline,
            "the hedged-away attempt opens the breaker: {:?}",
            client.endpoints()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    instances
        .iter()
        .find(|i| i.id == paused)
        .expect("paused")
        .proc
        .signal(Signal::SIGCONT);
}

#[tokio::test]
async fn with_every_instance_dead_calls_fail_fast() {
    let cluster = Cluster::start(&[]).await;
    let mut instances = [cluster.ratings(1, &[]).await, cluster.ratings(2, &[]).await];
    let client = client(&cluster, contract_policy()).await;
    spread(&client, 4).await;

    for instance in &mut instances {
        instance.proc.signal(Signal::SIGKILL);
        instance.proc.wait_exit(Duration::from_secs(5)).await;
    }
    // Refused connections open the breakers at once, without a timeout.
    let start = Instant::now();
    let mut opened = false;
    for _ in 0..10 {
        if let Err(CallError::AllServicesDown(_)) = client.get("camera").await {
            opened = true;
            break;
        }
    }
    assert!(opened, "every breaker opened");
    eprintln!(
        "FIGURE breakers_open_after_kill_ms={}",
        start.elapsed().as_millis()
    );
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "no timeout was waited: {:?}",
        start.elapsed()
    );

    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let start = Instant::now();
        let result = client.get("camera").await;
        slowest = slowest.max(start.elapsed());
        let error = result.expect_err("nobody is there");
        assert!(matches!(error, CallError::AllServicesDown(_)), "{error}");
        assert_eq!(error.to_string(), "all services are down");
    }
    eprintln!("FIGURE all_down_slowest_of_100_us={}", slowest.as_micros());
    assert!(slowest < Duration::from_millis(5), "{slowest:?}");
}

#[tokio::test]
async fn a_registry_outage_changes_nothing_and_new_instances_appear_after_it() {
    let mut cluster = Cluster::start(&[]).await;
    let _instances = [cluster.ratings(1, &[]).await, cluster.ratings(2, &[]).await];
    let client = client(&cluster, round_robin()).await;

    cluster.stop_registry().await;
    let by_instance = spread(&client, 20).await;
    assert_eq!(
        by_instance.len(),
        2,
        "both instances still serve: {by_instance:?}"
    );

    cluster.start_registry().await;
    let _three = cluster.ratings(3, &[]).await;
    let start = Instant::now();
    loop {
        let rating = client.get("camera").await.expect("a rating");
        if rating.served_by == "ratings-3" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the new instance is picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "FIGURE new_instance_after_registry_restart_ms={}",
        start.elapsed().as_millis()
    );
    let by_instance = spread(&client, 30).await;
    assert_eq!(by_instance.len(), 3, "{by_instance:?}");
}

/// The client is a tower `Service`: a user's layer goes around the whole of
/// it, and another around each instance, both with `ServiceBuilder`. Here
/// each instance may take one call at a time, so four calls at once to two
/// slow instances go two by two, each instance taking two.
#[tokio::test]
async fn users_wrap_the_client_and_each_instance_in_layers_of_their_own() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use market_proto::ratings::v1::{GetRatingRequest, ratings_client::RatingsClient as Grpc};
    use resilience::{Attempt, Client};
    use tower::{ServiceBuilder, ServiceExt as _, limit::ConcurrencyLimitLayer};

    const DELAY: Duration = Duration::from_millis(200);
    let cluster = Cluster::start(&[]).await;
    let _instances = [
        cluster.ratings(1, &["--delay", "200ms"]).await,
        cluster.ratings(2, &["--delay", "200ms"]).await,
    ];
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let client = Client::builder("ratings", contract_policy())
        .instance_layer(
            ServiceBuilder::new()
                .layer(ConcurrencyLimitLayer::new(1))
                .map_request(move |attempt: Attempt<GetRatingRequest>| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    attempt
                })
                .into_inner(),
        )
        .discover(cluster.registries(), |channel, request| async move {
            Grpc::new(channel).get(request).await
        })
        .expect("a valid policy");
    client.synced().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = ServiceBuilder::new()
        .map_request(move |request: GetRatingRequest| {
            counted.fetch_add(1, Ordering::Relaxed);
            request
        })
        .service(client.clone());

    let start = Instant::now();
    let answers = futures::future::join_all((0..4).map(|_| {
        service.clone().oneshot(GetRatingRequest {
            thing_id: "camera".into(),
        })
    }))
    .await;
    let elapsed = start.elapsed();
    let mut by_instance = HashMap::new();
    for answer in answers {
        let served = answer.expect("every call is answered");
        assert_eq!(served.response.rating, 45);
        *by_instance
            .entry(served.response.served_by)
            .or_insert(0usize) += 1;
    }
    eprintln!(
        "FIGURE layered_4_calls_ms={} by_instance={by_instance:?}",
        elapsed.as_millis()
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        4,
        "the outer layer saw every call"
    );
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        4,
        "the instance layer saw every attempt, and none was retried"
    );
    assert_eq!(by_instance.get("ratings-1"), Some(&2), "{by_instance:?}");
    assert_eq!(by_instance.get("ratings-2"), Some(&2), "{by_instance:?}");
    // One at a time per instance: two rounds of the delay, not one.
    assert!(elapsed >= 2 * DELAY, "{elapsed:?}");
    assert!(
        elapsed < 2 * DELAY + Duration::from_millis(500),
        "{elapsed:?}"
    );
}
