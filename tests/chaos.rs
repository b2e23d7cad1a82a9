//! The 60-second chaos soak: `market chaos` runs the demo's topology under
//! random pauses, kills, restarts, slow and flaky instances and registry
//! restarts, loading pages all along, and the shop must keep its promises.
//! The long form is in the README.

use std::time::Duration;

use test_support::Proc;

#[tokio::test]
async fn the_shop_keeps_its_promises_through_a_minute_of_faults() {
    let out = tempfile::tempdir().expect("a temp dir");
    let json = out.path().join("chaos.json");
    let mut soak = Proc::spawn(
        "market",
        [
            "chaos",
            "--duration",
            "60s",
            "--rate",
            "20",
            // A fixed schedule, so that a failure can be replayed with the
            // same seed; `market chaos` alone draws a new one each run.
            "--seed",
            "20261129",
            "--json",
            json.to_str().expect("utf-8 path"),
        ],
    );
    let status = soak.wait_exit(Duration::from_secs(180)).await;
    let summary: serde_json::Value = match std::fs::read(&json) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("a JSON summary"),
        Err(error) => panic!("no summary ({error}); the soak printed:\n{}", soak.output()),
    };
    eprintln!(
        "FIGURE chaos summary: {}",
        serde_json::to_string(&summary).expect("JSON")
    );
    assert!(
        status.success(),
        "the soak failed: {}\n{}",
        summary["violations"],
        soak.output()
    );
    assert_eq!(summary["violations"], serde_json::json!([]));

    // The run did what it says: every page due was loaded and answered, and
    // faults of every kind struck.
    let pages = summary["pages"].as_u64().expect("pages");
    assert_eq!(
        pages,
        65 * 20,
        "5 s warm-up and 60 s of faults at 20 pages/s"
    );
    assert_eq!(summary["statuses"], serde_json::json!({ "200": pages }));
    let faults = summary["faults"].as_object().expect("faults");
    let struck: u64 = faults.values().filter_map(serde_json::Value::as_u64).sum();
    assert!(struck >= 10, "only {struck} faults in a minute: {faults:?}");
    assert!(faults.len() >= 4, "few kinds of faults: {faults:?}");
    assert_eq!(summary["missing_after_first_rating"], 0);
    assert_eq!(summary["panics"], 0);
}
