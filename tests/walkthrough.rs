//! The seed walkthrough, section by section, with real processes: what a user
//! of the original saw in the browser and in the market's console.

use std::time::{Duration, Instant};

use test_support::{Cluster, Signal, Web};

const RATINGS: [&str; 4] = [
    "rating: 2.1/5",
    "rating: 3.5/5",
    "rating: 4.5/5",
    "rating: 2.2/5",
];
const PRICES: [&str; 3] = ["$19.99", "$49.99", "$99.99"];

/// Loads the shop page; returns the body and how long it took.
async fn load(web: &Web) -> (String, Duration) {
    let start = Instant::now();
    let (status, body) = web.get("/").await;
    let elapsed = start.elapsed();
    assert_eq!(status, 200, "{body}");
    (body, elapsed)
}

fn shows_prices(body: &str) {
    for price in PRICES {
        assert!(body.contains(price), "{price} shown");
    }
}

fn count(body: &str, needle: &str) -> usize {
    body.matches(needle).count()
}

#[tokio::test]
async fn run_the_monolith() {
    let web = Web::start(&["--monolith"]).await;
    let (body, _) = load(&web).await;
    assert!(body.contains("Welcome to the Datawire Market!"));
    shows_prices(&body);
    assert_eq!(count(&body, "rating:"), 0, "the monolith has no ratings");
}

#[tokio::test]
async fn the_market_with_no_ratings_instance_still_renders_in_time() {
    let cluster = Cluster::start(&[]).await;
    let web = Web::for_cluster(&cluster, &[]).await;
    let (body, elapsed) = load(&web).await;
    shows_prices(&body);
    assert_eq!(count(&body, "rating:"), 0);
    eprintln!("FIGURE no_instances_page_ms={}", elapsed.as_millis());
    assert!(
        elapsed < Duration::from_secs(2),
        "within the page deadline: {elapsed:?}"
    );
    web.proc
        .wait_for_line("BAD camera: all services are down")
        .await;
}

#[tokio::test]
async fn ratings_appear_then_stay_cached_when_every_instance_stops() {
    let cluster = Cluster::start(&[]).await;
    let mut instances = vec![
        cluster.ratings(1, &[]).await,
        cluster.ratings(2, &[]).await,
        cluster.ratings(3, &[]).await,
    ];
    let web = Web::for_cluster(&cluster, &[]).await;
    let (body, _) = load(&web).await;
    for rating in RATINGS {
        assert!(body.contains(rating), "{rating} shown with three instances");
    }
    assert_eq!(count(&body, "(live)"), 4);
    for id in ["basketball", "briefcase", "camera", "football"] {
        web.proc.wait_for_line(&format!("ASK for {id}")).await;
    }
    web.proc.wait_for_line("GOT camera: 4.5").await;
    web.proc.wait_for_line("WAITED").await;

    // Total service failure: ^C every instance.
    for instance in &mut instances {
        instance.proc.signal(Signal::SIGINT);
        assert!(
            instance
                .proc
                .wait_exit(Duration::from_secs(5))
                .await
                .success()
        );
    }
    let mark = web.proc.mark();
    let (body, _) = load(&web).await;
    for rating in RATINGS {
        assert!(
            body.contains(rating),
            "{rating} still shown, from the cache"
        );
    }
    assert_eq!(count(&body, "(as of "), 4, "each says how old it is");
    web.proc
        .wait_for_line_after(
            mark,
            "BAD camera: all services are down",
            Duration::from_secs(5),
        )
        .await;
    web.proc
        .wait_for_line_after(
            mark,
            "ratings: no live instances! giving up",
            Duration::from_secs(5),
        )
        .await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        slowest = slowest.max(load(&web).await.1);
    }
    eprintln!("FIGURE all_down_slowest_page_ms={}", slowest.as_millis());
    assert!(slowest < Duration::from_millis(50), "{slowest:?}");
}

#[tokio::test]
async fn round_robin_interleaves_calls_between_two_instances() {
    let cluster = Cluster::start(&[]).await;
    let one = cluster.ratings(1, &[]).await;
    let web = Web::for_cluster(&cluster, &["--balance", "round-robin"]).await;
    let mark = web.proc.mark();
    load(&web).await;
    web.proc
        .wait_for_line_after(mark, "WAITED", Duration::from_secs(5))
        .await;
    let used = web.instances_used(mark);
    assert_eq!(used.len(), 4);
    assert!(
        used.iter().all(|a| *a == one.url()),
        "all to the single instance: {used:?}"
    );
    web.proc.wait_for_line("ratings using instance 1: ").await;

    let two = cluster.ratings(2, &[]).await;
    // Wait until the market knows the second instance.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = web.get("/status").await;
        if status.contains(&two.url()) {
            break;
        }
        assert!(Instant::now() < deadline, "the market learns of instance 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mark = web.proc.mark();
    for _ in 0..3 {
        load(&web).await;
    }
    let used = web.instances_used(mark);
    let to_one = used.iter().filter(|a| **a == one.url()).count();
    let to_two = used.iter().filter(|a| **a == two.url()).count();
    eprintln!("FIGURE round_robin_12_lookups one={to_one} two={to_two}");
    assert_eq!((to_one, to_two), (6, 6), "{used:?}");
    assert!(web.proc.output().contains("ratings using instance 2: "));
}

#[tokio::test]
async fn circuit_breaking_around_a_paused_instance() {
    let cluster = Cluster::start(&[]).await;
    let one = cluster.ratings(1, &[]).await;
    let two = cluster.ratings(2, &[]).await;
    let web = Web::for_cluster(
        &cluster,
        &[
            "--balance",
            "round-robin",
            "--retest-delay",
            "2s",
            "--max-open",
            "2s",
        ],
    )
    .await;
    load(&web).await;
    let (body, _) = load(&web).await;
    assert_eq!(count(&body, "(live)"), 4);

    // ^Z instance 1: the next page is still complete, within the timeout.
    one.proc.signal(Signal::SIGSTOP);
    let mark = web.proc.mark();
    let (body, elapsed) = load(&web).await;
    eprintln!("FIGURE paused_page_ms={}", elapsed.as_millis());
    for rating in RATINGS {
        assert!(body.contains(rating), "{rating} shown");
    }
    assert!(elapsed < Duration::from_millis(1200), "{elapsed:?}");
    let open = format!("OPEN breaker on [ratings at {}]", one.url());
    web.proc
        .wait_for_line_after(mark, &open, Duration::from_secs(5))
        .await;

    // Before the retest, pages are fast and never touch instance 1.
    let mark = web.proc.mark();
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (body, elapsed) = load(&web).await;
        assert_eq!(count(&body, "(live)"), 4);
        slowest = slowest.max(elapsed);
    }
    eprintln!("FIGURE pages_while_open_slowest_ms={}", slowest.as_millis());
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
    let used = web.instances_used(mark);
    assert!(used.iter().all(|a| *a == two.url()), "{used:?}");

    // After the retest delay the market is willing to try it again.
    let retest = format!("RETEST breaker on [ratings at {}]", one.url());
    web.proc
        .wait_for_line_after(mark, &retest, Duration::from_secs(5))
        .await;

    // fg: it recovers, and the market says so.
    one.proc.signal(Signal::SIGCONT);
    let close = format!("CLOSE breaker on [ratings at {}]", one.url());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !web.proc.output().contains(&close) {
        assert!(
            Instant::now() < deadline,
            "the breaker closes after SIGCONT"
        );
        load(&web).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mark = web.proc.mark();
    load(&web).await;
    web.proc
        .wait_for_line_after(mark, "WAITED", Duration::from_secs(5))
        .await;
    let used = web.instances_used(mark);
    assert!(
        used.contains(&one.url()) && used.contains(&two.url()),
        "interleaved again: {used:?}"
    );
}
