//! A second service beside ratings: the shop's "You may also like" panel
//! comes from the recommendations service, through its own contract's
//! policy, and the two fail apart: ratings failing never hides the panel,
//! and the panel failing never touches the ratings.
//!
//! These start the workspace's binaries (`cargo build --workspace --bins`
//! first, as the README's test command does).

use std::time::{Duration, Instant};

use test_support::{Cluster, Instance, Signal, Web};

/// A shop in front of `ratings-1` and `recommendations-1..=count`, reading
/// both services with one consumer token.
struct Shop {
    cluster: Cluster,
    ratings: Vec<test_support::Ratings>,
    recommenders: Vec<Instance>,
    web: Web,
}

async fn shop(recommenders: u16) -> Shop {
    let cluster = Cluster::start(&[]).await;
    let ratings = vec![cluster.ratings(1, &[]).await];
    let token = cluster.registry.create_service("recommendations").await;
    let mut started = Vec::new();
    for n in 1..=recommenders {
        started.push(
            Instance::start(
                "recommendations-server",
                "recommendations",
                &cluster.registry.url(),
                &token,
                n,
                &[],
            )
            .await,
        );
    }
    let consumer = cluster
        .registry
        .create_consumer("market-web", &["ratings", "recommendations"])
        .await;
    let url = cluster.registry.url();
    let web = Web::start(&["--registry", &url, "--token", &consumer]).await;
    Shop {
        cluster,
        ratings,
        recommenders: started,
        web,
    }
}

/// One page: how long it took, and its HTML.
async fn page(web: &Web) -> (Duration, String) {
    let started = Instant::now();
    let (status, body) = web.get("/").await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    (took, body)
}

/// The four catalog items' ratings, as the page shows them.
const RATINGS: [&str; 4] = ["2.1/5", "3.5/5", "4.5/5", "2.2/5"];

fn shows_every_rating(body: &str) -> bool {
    RATINGS.iter().all(|rating| body.contains(rating))
}

fn shows_panel(body: &str) -> bool {
    body.contains(r#"id="recommendations""#)
}

/// Loads pages until `done` holds for one, at most `within`.
async fn until(web: &Web, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (_, body) = page(web).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "not within {within:?}:\n{body}");
        // The shop learns of instances through its watch; a page a little
        // later sees what it learnt.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_page_shows_the_ratings_and_what_else_was_bought() {
    let shop = shop(2).await;
    let body = until(&shop.web, Duration::from_secs(5), |body| {
        shows_every_rating(body) && shows_panel(body)
    })
    .await;
    assert!(body.contains("You may also like"), "{body}");
    // With the cart empty, the panel is for the page's four items: what
    // their buyers also bought, none of the four.
    for also in ["ball pump", "tripod", "memory card"] {
        assert!(body.contains(also), "{also} is recommended:\n{body}");
    }
    assert!(
        body.contains("recommended by recommendations-"),
        "the panel says which instance answered:\n{body}"
    );
    let (_, metrics) = shop.web.get("/metrics").await;
    for service in ["ratings", "recommendations"] {
        assert!(
            metrics.contains(&format!(
                r#"market_calls_total{{service="{service}",outcome="ok"}}"#
            )),
            "calls to {service} are counted by service:\n{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                r#"market_instance_calls_total{{service="{service}""#
            )),
            "instances of {service} are labelled by service:\n{metrics}"
        );
    }
    let (_, status) = shop.web.get("/status").await;
    assert!(status.contains(r#"id="service-ratings""#), "{status}");
    assert!(
        status.contains(r#"id="service-recommendations""#),
        "{status}"
    );
    assert!(status.contains("recommendations-2"), "{status}");
}

#[tokio::test]
async fn the_panel_follows_the_cart() {
    let shop = shop(1).await;
    until(&shop.web, Duration::from_secs(5), shows_panel).await;
    let mut visitor = shop.web.visitor();
    for item in ["camera", "basketball"] {
        assert_eq!(visitor.submit("addCart", item).await, 303, "{item} added");
    }
    let (status, body) = visitor.page().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Total: $119.98"), "{body}");
    // What buyers of a camera and a basketball also bought: a tripod, and
    // the football, which the shop sells and so links to. For the page's
    // four items, the football is never recommended: it is one of them.
    assert!(body.contains("<li>tripod</li>"), "{body}");
    assert!(
        body.contains(r##"<a href="#item-football">"##),
        "for the cart:\n{body}"
    );
}

#[tokio::test]
async fn every_recommender_killed_the_panel_is_left_out_and_the_ratings_stay_live() {
    let mut shop = shop(2).await;
    until(&shop.web, Duration::from_secs(5), |body| {
        shows_every_rating(body) && shows_panel(body)
    })
    .await;
    let mut healthy = Duration::ZERO;
    for _ in 0..10 {
        healthy = healthy.max(page(&shop.web).await.0);
    }

    for recommender in &mut shop.recommenders {
        recommender.proc.signal(Signal::SIGKILL);
        recommender.proc.wait_exit(Duration::from_secs(5)).await;
    }
    // The registry lists them until their leases expire; the shop keeps
    // calling, is refused, and leaves the panel out.
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let (took, body) = page(&shop.web).await;
        slowest = slowest.max(took);
        assert!(
            !shows_panel(&body),
            "no panel without a recommender:\n{body}"
        );
        assert!(shows_every_rating(&body), "the ratings stay:\n{body}");
        assert!(
            !body.contains("as of"),
            "the ratings are live, not from the cache:\n{body}"
        );
    }
    eprintln!("FIGURE healthy page max {healthy:?}; without recommenders max {slowest:?}");
    // The page does not wait for a service that is gone: refused calls fail
    // at once, and no page nears the recommendations deadline (300 ms).
    assert!(
        slowest < Duration::from_millis(150).max(healthy * 3),
        "pages without recommenders took up to {slowest:?} (healthy: {healthy:?})"
    );
}

#[tokio::test]
async fn every_ratings_instance_killed_the_panel_stays_and_the_ratings_come_from_the_cache() {
    let mut shop = shop(1).await;
    until(&shop.web, Duration::from_secs(5), |body| {
        shows_every_rating(body) && shows_panel(body)
    })
    .await;
    for ratings in &mut shop.ratings {
        ratings.proc.signal(Signal::SIGKILL);
        ratings.proc.wait_exit(Duration::from_secs(5)).await;
    }
    for _ in 0..10 {
        let (_, body) = page(&shop.web).await;
        assert!(shows_panel(&body), "the panel stays:\n{body}");
        assert!(shows_every_rating(&body), "ratings from the cache:\n{body}");
        assert!(body.contains("as of"), "marked as cached:\n{body}");
    }
    drop(shop.cluster);
}

#[tokio::test]
async fn a_paused_recommender_is_hedged_around_and_its_breaker_opens() {
    let shop = shop(2).await;
    // Both recommenders known and answering.
    until(&shop.web, Duration::from_secs(5), shows_panel).await;
    let (_, status) = shop.web.get("/status").await;
    assert!(
        status.contains("recommendations-1") && status.contains("recommendations-2"),
        "{status}"
    );

    let paused = &shop.recommenders[0];
    paused.proc.freeze();
    let open = format!(
        r#"market_breaker_state{{service="recommendations",instance="{}""#,
        paused.id
    );
    // Until its breaker opens, an attempt sent to the paused instance is
    // raced after 50 ms by one on the other: every page keeps its panel.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before_open = Vec::new();
    loop {
        let (took, body) = page(&shop.web).await;
        assert!(shows_panel(&body), "hedged, the panel stays:\n{body}");
        before_open.push(took);
        let (_, metrics) = shop.web.get("/metrics").await;
        let is_open = metrics
            .lines()
            .any(|line| line.starts_with(&open) && line.ends_with(" 2"));
        if is_open {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paused instance's breaker did not open:\n{metrics}"
        );
    }
    let mut after_open = Vec::new();
    for _ in 0..20 {
        let (took, body) = page(&shop.web).await;
        assert!(shows_panel(&body), "{body}");
        assert!(
            body.contains("recommended by recommendations-2"),
            "the live instance answers:\n{body}"
        );
        after_open.push(took);
    }
    let max = |pages: &[Duration]| pages.iter().copied().max().unwrap_or_default();
    eprintln!(
        "FIGURE paused recommender: {} pages before its breaker opened, max {:?}; 20 after, max {:?}",
        before_open.len(),
        max(&before_open),
        max(&after_open)
    );
    assert!(
        max(&before_open) < Duration::from_millis(150),
        "pages while the paused instance was still asked, each raced after 50 ms: {before_open:?}"
    );
    assert!(
        max(&after_open) < Duration::from_millis(150),
        "pages once the breaker is open: {after_open:?}"
    );
    paused.proc.signal(Signal::SIGCONT);
}
