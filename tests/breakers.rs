//! Circuit breakers that belong to an instance's address, with real
//! processes: a breaker outlives the instance dropping out of the registry
//! and registering again, so a paused instance is retested on the breaker's
//! schedule and a crash-looping one is not handed a fresh, closed breaker at
//! each restart.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ratings_client::{RatingsClient, contract_policy};
use resilience::{Balance, BreakerState, EndpointSnapshot, Policy};
use test_support::{Cluster, Proc, Signal, Web};

/// The retest delay of the contract and of `market-web` by default.
const RETEST_DELAY: Duration = Duration::from_secs(30);

/// Loads the shop page; returns the body.
async fn load(web: &Web) -> String {
    let (status, body) = web.get("/").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn count(body: &str, needle: &str) -> usize {
    body.matches(needle).count()
}

/// Where the first line containing `needle` after `mark` is in the market's
/// output, if it was printed.
fn line_index(web: &Web, mark: usize, needle: &str) -> Option<usize> {
    web.proc
        .output()
        .lines()
        .enumerate()
        .skip(mark)
        .find(|(_, line)| line.contains(needle))
        .map(|(index, _)| index)
}

/// Loads one page and waits until the market logged that its lookups ended,
/// so that [`Web::instances_used`] sees all of them.
async fn load_and_wait(web: &Web) -> (String, usize) {
    let mark = web.proc.mark();
    let body = load(web).await;
    web.proc
        .wait_for_line_after(mark, "WAITED", Duration::from_secs(5))
        .await;
    (body, mark)
}

#[tokio::test]
async fn circuit_breaking_at_the_default_timings() {
    let started = Instant::now();
    let cluster = Cluster::start(&[]).await;
    let one = cluster.ratings(1, &[]).await;
    let two = cluster.ratings(2, &[]).await;
    let web = Web::for_cluster(&cluster, &["--balance", "round-robin"]).await;

    // The market may not know both instances at its first page.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&load(&web).await, "(live)") != 4 {
        assert!(Instant::now() < deadline, "every rating becomes live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ^Z instance 1: the page is still complete, through a retry, and the
    // breaker opens when the call to instance 1 times out. The page and the
    // wait for the line run together, so the time the line was seen is not
    // delayed by the end of the page.
    one.proc.freeze();
    let mark = web.proc.mark();
    let open = format!("OPEN breaker on [ratings at {}]", one.url());
    let (body, opened_at) = tokio::join!(load(&web), async {
        web.proc
            .wait_for_line_after(mark, &open, Duration::from_secs(5))
            .await;
        Instant::now()
    });
    assert_eq!(count(&body, "(live)"), 4, "complete while paused: {body}");

    // A paused instance stops heartbeating, so its lease (30 s, renewed every
    // 10 s) runs out 20 to 30 s after the pause: before the retest, which is
    // due 30 s after the breaker opened, itself at least 1 s after the pause.
    let left = format!("instance {} left", one.id);
    web.proc
        .wait_for_line_after(mark, &left, RETEST_DELAY + Duration::from_secs(5))
        .await;
    let retest = format!("RETEST breaker on [ratings at {}]", one.url());
    assert_eq!(
        line_index(&web, mark, &retest),
        None,
        "the lease expired before the retest, so the instance left first"
    );

    // A refresh meanwhile, as a user would: complete, and only from instance
    // 2, which is all the market lists now.
    let (body, page) = load_and_wait(&web).await;
    assert_eq!(count(&body, "(live)"), 4, "{body}");
    let used = web.instances_used(page);
    assert!(
        !used.is_empty() && used.iter().all(|a| *a == two.url()),
        "only instance 2 while instance 1 is gone: {used:?}"
    );

    // The breaker belongs to the address, so it retests on its own schedule
    // even though instance 1 is not registered now.
    let retest_by = opened_at + RETEST_DELAY + Duration::from_secs(10);
    web.proc
        .wait_for_line_after(
            mark,
            &retest,
            retest_by.saturating_duration_since(Instant::now()),
        )
        .await;
    let open_to_retest = opened_at.elapsed();
    eprintln!(
        "FIGURE default_timings open_to_retest_s={:.2}",
        open_to_retest.as_secs_f64()
    );
    assert!(
        open_to_retest.abs_diff(RETEST_DELAY) <= Duration::from_secs(2),
        "the retest comes 30 s after the breaker opened: {open_to_retest:?}"
    );

    // fg: its next heartbeat finds the lease gone and registers it again at
    // once; the market's next call to it is the probe, which closes the
    // breaker. There is no line for "the market will call it now", so pages
    // are loaded until the CLOSE line shows, each followed by a short wait
    // for it.
    let cont_mark = web.proc.mark();
    one.proc.signal(Signal::SIGCONT);
    let resumed = Instant::now();
    let bound = Duration::from_secs(12);
    let joined = format!("instance {} joined", one.id);
    web.proc
        .wait_for_line_after(cont_mark, &joined, bound)
        .await;
    let close = format!("CLOSE breaker on [ratings at {}]", one.url());
    loop {
        load(&web).await;
        let shown = tokio::time::timeout(
            Duration::from_millis(200),
            web.proc.wait_for_line_after(cont_mark, &close, bound),
        )
        .await;
        if shown.is_ok() {
            break;
        }
        assert!(
            resumed.elapsed() < bound,
            "the breaker closes within one heartbeat and a page of SIGCONT"
        );
    }
    let cont_to_close = resumed.elapsed();

    // Calls interleave between both instances again.
    let (_, page) = load_and_wait(&web).await;
    let used = web.instances_used(page);
    let after_cont = resumed.elapsed();
    eprintln!(
        "FIGURE default_timings cont_to_close_s={:.2} cont_to_interleaved_s={:.2}",
        cont_to_close.as_secs_f64(),
        after_cont.as_secs_f64()
    );
    assert!(
        used.contains(&one.url()) && used.contains(&two.url()),
        "interleaved again: {used:?}"
    );
    assert!(
        after_cont < bound,
        "recovered within one heartbeat and a page: {after_cont:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the test stays under a minute: {:?}",
        started.elapsed()
    );
}

/// The instance that crash-loops.
const CRASHING: &str = "ratings-1";
/// Its lease: short, so that the registry reports it gone soon after each
/// kill, and back when it starts again.
const CRASHING_TTL: &str = "1s";

/// Starts `ratings-server` instance 1 at `listen` (always the same address,
/// which `Cluster::ratings` cannot give: it picks a free port each time) with
/// a short lease, and waits until it is registered.
async fn start_crashing(cluster: &Cluster, listen: &str) -> Proc {
    let registry = cluster.registry.url();
    let proc = Proc::spawn(
        "ratings-server",
        [
            "--instance",
            "1",
            "--listen",
            listen,
            "--registry",
            &registry,
            "--token",
            &cluster.token,
            "--ttl",
            CRASHING_TTL,
        ],
    );
    proc.registered(CRASHING).await;
    proc
}

/// Waits until the client lists `instance` (`listed`) or no longer does;
/// returns its entry when listed.
async fn wait_for_listing(
    client: &RatingsClient,
    instance: &str,
    listed: bool,
) -> Option<EndpointSnapshot> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = client
            .endpoints()
            .into_iter()
            .find(|endpoint| endpoint.instance == instance);
        if entry.is_some() == listed {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "the client {} {instance}: {:?}",
            if listed { "lists" } else { "stops listing" },
            client.endpoints()
        );
        // The client says nothing when its list changes; look again soon.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One call of the background caller.
struct Call {
    started: Instant,
    /// The instance that answered, or the error.
    answer: Result<String, String>,
}

/// Calls `get("camera")` every 20 ms until `stop`; returns every call.
async fn keep_calling(client: RatingsClient, stop: Arc<AtomicBool>) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let started = Instant::now();
        let answer = match client.get("camera").await {
            Ok(rating) if rating.tenths == 45 => Ok(rating.served_by),
            Ok(rating) => Err(format!("a wrong rating: {rating:?}")),
            Err(error) => Err(error.to_string()),
        };
        calls.push(Call { started, answer });
    }
    calls
}

#[tokio::test]
async fn a_crash_looping_instance_gets_at_most_one_probe_per_retest_period() {
    let cluster = Cluster::start(&[]).await;
    let _stable = cluster.ratings(2, &[]).await;
    let listen = format!("127.0.0.1:{}", test_support::free_port());
    let address = format!("http://{listen}");
    let mut incarnations = vec![start_crashing(&cluster, &listen).await];

    let mut policy = Policy {
        balance: Balance::RoundRobin,
        ..contract_policy()
    };
    policy.breaker.retest_delay = RETEST_DELAY;
    policy.breaker.max_open = policy.breaker.max_open.max(RETEST_DELAY);
    let client = RatingsClient::discover(cluster.registries(), policy).expect("a valid policy");
    client.synced().await;
    wait_for_listing(&client, CRASHING, true).await;
    wait_for_listing(&client, "ratings-2", true).await;
    // Round robin over two healthy instances: one call each.
    let mut first_two: Vec<String> = Vec::new();
    for _ in 0..2 {
        first_two.push(client.get("camera").await.expect("a rating").served_by);
    }
    first_two.sort();
    assert_eq!(first_two, [CRASHING, "ratings-2"]);

    let stop = Arc::new(AtomicBool::new(false));
    let caller = tokio::spawn(keep_calling(client.clone(), stop.clone()));

    // Five crashes, each followed by a restart at the same address. The first
    // call to the dead instance is refused and opens its breaker for 30 s;
    // each time it comes back within that period, the client must still hold
    // that open breaker for its address, not a fresh closed one.
    let mut first_kill: Option<Instant> = None;
    let mut relisted = Vec::new();
    for _ in 0..5 {
        let current = incarnations.last_mut().expect("an incarnation");
        current.signal(Signal::SIGKILL);
        current.wait_exit(Duration::from_secs(5)).await;
        first_kill.get_or_insert_with(Instant::now);
        wait_for_listing(&client, CRASHING, false).await;
        incarnations.push(start_crashing(&cluster, &listen).await);
        let entry = wait_for_listing(&client, CRASHING, true)
            .await
            .expect("listed");
        assert_eq!(entry.address, address, "back at the same address");
        relisted.push(entry.breaker.state);
        // Calls keep flowing meanwhile: this is the window in which a fresh
        // breaker would let them reach the restarted instance.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let first_kill = first_kill.expect("killed at least once");
    let loop_took = first_kill.elapsed();
    stop.store(true, Ordering::Relaxed);
    let calls = caller.await.expect("the caller ran to the end");

    let errors: Vec<&String> = calls
        .iter()
        .filter_map(|c| c.answer.as_ref().err())
        .collect();
    // Only calls sent after the first incarnation exited: none of them can
    // have been answered by it.
    let after_kill: Vec<&Call> = calls.iter().filter(|c| c.started > first_kill).collect();
    let answered_by_crashing = after_kill
        .iter()
        .filter(|c| c.answer.as_deref() == Ok(CRASHING))
        .count();
    // Every later incarnation started after the first kill: each of its GETs
    // is a call that reached the crash-looping instance.
    let served_by_later_incarnations: usize = incarnations[1..]
        .iter()
        .map(|proc| count(&proc.output(), "GET camera =>"))
        .sum();
    eprintln!(
        "FIGURE crash_loop loop_s={:.1} calls={} after_first_kill={} answered_by_crashing={} \
         gets_in_later_incarnations={} errors={} breaker_when_relisted={:?}",
        loop_took.as_secs_f64(),
        calls.len(),
        after_kill.len(),
        answered_by_crashing,
        served_by_later_incarnations,
        errors.len(),
        relisted
    );
    assert!(
        loop_took < RETEST_DELAY,
        "the crash loop ends before the retest delay, which the bound below assumes: {loop_took:?}"
    );
    assert!(
        errors.is_empty(),
        "every call is answered, through a retry on instance 2 at worst: {errors:?}"
    );
    assert!(
        answered_by_crashing <= 1 && served_by_later_incarnations <= 1,
        "at most one probe reached the crash-looping instance in one retest period: \
         {answered_by_crashing} answers from it, {served_by_later_incarnations} GETs in its later incarnations"
    );
    assert!(
        relisted.iter().all(|state| *state == BreakerState::Open),
        "its address's breaker stayed open across every restart: {relisted:?}"
    );
}
