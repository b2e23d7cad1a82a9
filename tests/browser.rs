//! A person's visit, in a real headless Chromium: the demo comes up with
//! ratings, two items go into the cart, the total is right, checkout empties
//! it. And an operator's: after an instance was paused and resumed, the
//! status page draws its breaker's open band and the page's latency spike.
//! Screenshots of both are saved under `target/browser/`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; the README's test command
//! installs them when missing.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator, wd::Capabilities};
use test_support::{Cluster, Proc, Signal, Web};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A free loopback port for chromedriver, which cannot be given port 0.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// Where the test binary's target folder is, for the screenshot.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("target/<profile>/deps/<test>")
}

/// Clicks a form's button and waits until the browser has replaced the page
/// with the server's answer. A click returns as soon as it is dispatched, so
/// reading the page right after it can still read the old one.
async fn submit(browser: &Client, button: &str) {
    let old_page = browser.find(Locator::Css("html")).await.expect("a page");
    browser
        .find(Locator::Css(button))
        .await
        .unwrap_or_else(|error| panic!("{button}: {error}"))
        .click()
        .await
        .expect("click");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Mid-navigation, chromedriver may answer with another error than a
        // stale element (it cannot tell the loading status, say): that is
        // asked again, until the old page is gone or the deadline passes.
        let last = match old_page.tag_name().await {
            Err(error) if error.is_stale_element_reference() => break,
            Err(error) => Some(error),
            Ok(_) => None,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new page within 10 s of clicking {button} (last error: {last:?})"
        );
        // WebDriver has no navigation event to wait on; the old page is polled.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("footer"))
        .await
        .expect("the next page");
}

/// A headless Chromium session, and the chromedriver it runs under (stopped
/// on drop).
async fn chromium() -> (Client, Proc, tempfile::TempDir) {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install Debian's chromium and chromium-driver (tests/run.sh does)"
        );
    }
    let port = free_port();
    let driver = Proc::spawn(CHROMEDRIVER, [format!("--port={port}")]);
    driver.wait_for_line("started successfully").await;

    let profile = tempfile::tempdir().expect("a profile dir");
    let mut capabilities = Capabilities::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (browser, driver, profile)
}

/// Saves a screenshot of what `browser` shows as `target/browser/NAME`.
async fn screenshot(browser: &Client, name: &str) {
    let screenshot = browser.screenshot().await.expect("a screenshot");
    let dir = target_dir().join("browser");
    std::fs::create_dir_all(&dir).expect("target/browser");
    let path = dir.join(name);
    std::fs::write(&path, &screenshot).expect("save the screenshot");
    eprintln!(
        "FIGURE screenshot={} bytes={}",
        path.display(),
        screenshot.len()
    );
}

#[tokio::test]
async fn a_visitor_fills_the_cart_and_checks_out_in_chromium() {
    // The one-command demo, on free ports.
    let demo = Proc::spawn("market", ["--any-ports"]);
    let url = demo.listening("market").await;
    let (browser, driver, _profile) = chromium().await;

    browser.goto(&url).await.expect("the shop loads");
    assert_eq!(browser.title().await.expect("a title"), "Datawire Market");
    let ratings = browser
        .find_all(Locator::Css(".rating"))
        .await
        .expect("ratings");
    assert_eq!(ratings.len(), 4, "every item shows its rating");
    let camera = browser
        .find(Locator::Css("#item-camera .rating"))
        .await
        .expect("camera's rating");
    assert!(
        camera
            .text()
            .await
            .expect("text")
            .starts_with("rating: 4.5/5")
    );

    for item in ["camera", "basketball"] {
        submit(&browser, &format!("button[name=addCart][value={item}]")).await;
        let message = browser
            .find(Locator::Css(".message"))
            .await
            .expect("a message");
        assert_eq!(
            message.text().await.expect("text"),
            "Item added successfully!"
        );
    }
    let total = browser.find(Locator::Css(".total")).await.expect("a total");
    assert_eq!(total.text().await.expect("text"), "Total: $119.98");
    // Every panel of the shop is on the page beside the cart, shown, with
    // its heading: an element whose id is its service's name. What each
    // shows is tested with its service.
    for panel in market_web::panels::PANELS {
        let element = browser
            .find(Locator::Css(&format!("#{}", panel.service)))
            .await
            .unwrap_or_else(|error| panic!("the {} panel: {error}", panel.service));
        assert!(
            element.is_displayed().await.expect("displayed"),
            "{}",
            panel.service
        );
        let heading = element
            .find(Locator::Css("h2"))
            .await
            .unwrap_or_else(|error| panic!("the {} panel's heading: {error}", panel.service))
            .text()
            .await
            .expect("text");
        assert!(!heading.is_empty(), "{}", panel.service);
    }

    screenshot(&browser, "market.png").await;

    submit(&browser, "button[name=checkout]").await;
    let message = browser
        .find(Locator::Css(".message"))
        .await
        .expect("a message");
    assert_eq!(
        message.text().await.expect("text"),
        "Successfully checked out your items!"
    );
    let empty = browser
        .find(Locator::Css(".empty"))
        .await
        .expect("an empty cart");
    assert_eq!(
        empty.text().await.expect("text"),
        "Your cart is currently empty."
    );

    browser.close().await.expect("close the browser");
    drop(driver);
    // The demo stops in order on SIGINT, as on Ctrl-C.
    let mut demo = demo;
    demo.signal(test_support::Signal::SIGINT);
    assert!(demo.wait_exit(Duration::from_secs(20)).await.success());
    demo.wait_for_line("Stopped.").await;
}

/// The breaker state of `instance` now, from `/api/status`.
async fn breaker_state(web: &Web, instance: &str) -> String {
    let (status, body) = web.get("/api/status").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["services"][0]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|row| row["instance"] == instance)
        .map(|row| row["state"].as_str().expect("a state").to_owned())
        .unwrap_or_else(|| panic!("no {instance} in {json}"))
}

/// Loads pages until `instance`'s breaker is `state`, for at most 15 s.
async fn pages_until(web: &Web, instance: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = web.get("/").await;
        assert_eq!(status, 200, "{body}");
        if breaker_state(web, instance).await == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{instance}'s breaker is not {state} after 15 s of pages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_status_page_draws_a_paused_instance_open_and_the_page_spike() {
    let cluster = Cluster::start(&[]).await;
    let one = cluster.ratings(1, &[]).await;
    let _two = cluster.ratings(2, &[]).await;
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
    pages_until(&web, &one.id, "closed").await;

    // The walkthrough's pause: the next page waits for the timeout, the
    // breaker opens; resumed, the probe closes it again.
    one.proc.signal(Signal::SIGSTOP);
    pages_until(&web, &one.id, "open").await;
    one.proc.signal(Signal::SIGCONT);
    pages_until(&web, &one.id, "closed").await;

    let (browser, _driver, _profile) = chromium().await;
    browser
        .goto(&format!("http://{}/status", web.addr))
        .await
        .expect("the status page loads");
    let figure = browser
        .find(Locator::Css("#history-ratings-1"))
        .await
        .expect("instance 1's chart");
    let caption = figure.text().await.expect("text");
    assert!(caption.contains(&one.id), "{caption}");
    // Its band has an open bucket; instance 2's has none.
    figure
        .find(Locator::Css("rect.band[data-state=open]"))
        .await
        .expect("an open band on instance 1's chart");
    let other = browser
        .find(Locator::Css("#history-ratings-2"))
        .await
        .expect("instance 2's chart");
    assert!(
        other
            .find_all(Locator::Css("rect.band[data-state=open]"))
            .await
            .expect("bands")
            .is_empty(),
        "instance 2 never opened"
    );
    // The page's spike: a p99 of about the 1 s timeout.
    let (_, body) = web.get("/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let worst = json["history"]["page"]
        .as_array()
        .expect("page buckets")
        .iter()
        .filter_map(|bucket| bucket["p99_ms"].as_f64())
        .fold(0.0, f64::max);
    eprintln!("FIGURE worst page p99 in the window: {worst} ms");
    assert!(worst >= 900.0, "no spike in {}", json["history"]["page"]);
    browser
        .find(Locator::Css("#page-history circle[data-series=p99]"))
        .await
        .expect("the page's p99 drawn");
    // Tall enough for every chart.
    browser
        .set_window_size(1280, 1500)
        .await
        .expect("a taller window");
    screenshot(&browser, "status.png").await;
    browser.close().await.expect("close the browser");
}
