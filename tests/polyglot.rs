//! A service in another language: `tests/python/ratings_server.py`, a ratings
//! instance written with Python's stock `grpcio` and no generated code,
//! registers with the registry, serves the shop, heartbeats (registering
//! again when its lease is lost), and deregisters on SIGTERM before it
//! stops, as `registry.proto` tells such a service to.
//!
//! Needs Python 3 with `grpcio` as `python3` on the PATH (tests/run.sh
//! installs it when it is missing).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use market_proto::{
    ratings::v1::{GetRatingRequest, ratings_client::RatingsClient},
    registry::v1::{self as pb, watch_response::Event},
};
use serde_json::Value as Json;
use test_support::{Cluster, Proc, Signal, StoreKind, Web};
use tonic::Code;

/// The id the Python instance registers and answers as.
const INSTANCE: &str = "ratings-py-1";

/// The rating the shop shows for each item.
const RATINGS: [(&str, &str); 4] = [
    ("basketball", "rating: 2.1/5"),
    ("briefcase", "rating: 3.5/5"),
    ("camera", "rating: 4.5/5"),
    ("football", "rating: 2.2/5"),
];

/// How long the shop may take to show every rating live once it started.
const PAGE_DEADLINE: Duration = Duration::from_secs(15);

/// The interpreter that `python3` on the PATH runs, by absolute path (the
/// supervisor starts system tools by path), checked to have `grpcio`.
fn python() -> PathBuf {
    const INSTALL: &str = "install Python 3, then `python3 -m pip install grpcio` \
                           (tests/run.sh installs it when it is missing)";
    let output = std::process::Command::new("python3")
        .args(["-c", "import grpc, sys; print(sys.executable)"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}; {INSTALL}"));
    assert!(
        output.status.success(),
        "python3 cannot import grpc ({}): {}; {INSTALL}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(
        String::from_utf8(output.stdout)
            .expect("a UTF-8 path")
            .trim(),
    )
}

/// `tests/python/ratings_server.py` registered with `cluster` as
/// [`INSTANCE`] under a lease of `ttl` seconds; returns it once it says it
/// is registered, with the address it announced.
async fn start_python_instance(cluster: &Cluster, ttl: &str) -> (Proc, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/ratings_server.py"
    );
    let registry = cluster.registry.addr.to_string();
    let python = python();
    let proc = Proc::spawn(
        python.to_str().expect("a UTF-8 path"),
        [
            script,
            "--registry",
            &registry,
            "--token",
            &cluster.token,
            "--instance-id",
            INSTANCE,
            "--ttl",
            ttl,
        ],
    );
    let address = proc.listening(INSTANCE).await;
    proc.registered(INSTANCE).await;
    (proc, address)
}

/// The next message of a watch that is not progress, if the stream goes on.
async fn next_event(watch: &mut tonic::Streaming<pb::WatchResponse>) -> Option<Event> {
    loop {
        let message = watch.message().await.expect("the watch goes on")?;
        match message.event.expect("an event") {
            Event::Progress(_) => continue,
            event => return Some(event),
        }
    }
}

async fn resolve(cluster: &Cluster) -> Vec<pb::Instance> {
    cluster
        .registry
        .client(&cluster.token)
        .resolve(pb::ResolveRequest {
            service: "ratings".into(),
        })
        .await
        .expect("resolve ratings")
        .into_inner()
        .instances
}

/// The part of the shop page that shows `thing`.
fn item_on_page<'a>(body: &'a str, thing: &str) -> &'a str {
    let start = body
        .find(&format!("id=\"item-{thing}\""))
        .unwrap_or_else(|| panic!("{thing} is on the page: {body}"));
    let item = &body[start..];
    &item[..item.find("</article>").unwrap_or(item.len())]
}

/// Loads the shop page until every rating is live, and returns it.
async fn page_with_every_rating_live(web: &Web) -> String {
    let deadline = Instant::now() + PAGE_DEADLINE;
    loop {
        let (status, body) = web.get("/").await;
        assert_eq!(status, 200, "{body}");
        if body.matches("(live)").count() == RATINGS.len() {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not every rating is live after {PAGE_DEADLINE:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_python_instance_registers_serves_the_shop_and_deregisters_on_sigterm() {
    let cluster = Cluster::start_with(StoreKind::Memory, &[]).await;
    let (mut python, address) = start_python_instance(&cluster, "30").await;

    let listed = resolve(&cluster).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].instance_id, INSTANCE);
    assert_eq!(listed[0].address, address, "registered where it listens");
    assert_eq!(listed[0].ttl_seconds, 30);

    // The contract, called directly: the rating, and the errors it names.
    let mut ratings = RatingsClient::connect(address.clone())
        .await
        .expect("connect to the Python instance");
    let get = |thing_id: &str| GetRatingRequest {
        thing_id: thing_id.into(),
    };
    let camera = ratings
        .get(get("camera"))
        .await
        .expect("a rating")
        .into_inner();
    assert_eq!(
        (
            camera.thing_id.as_str(),
            camera.rating,
            camera.served_by.as_str()
        ),
        ("camera", 45, INSTANCE)
    );
    for (thing_id, code) in [("", Code::InvalidArgument), ("piano", Code::NotFound)] {
        let status = ratings.get(get(thing_id)).await.expect_err("refused");
        assert_eq!(status.code(), code, "{thing_id:?}: {status:?}");
    }

    // The shop finds it through the registry and shows what it answers.
    let web = Web::for_cluster(&cluster, &[]).await;
    let body = page_with_every_rating_live(&web).await;
    for (thing, rating) in RATINGS {
        let item = item_on_page(&body, thing);
        assert!(
            item.contains(rating) && item.contains("(live)"),
            "{thing}: {rating} shown live: {item}"
        );
    }
    // The market logs each answer with who served it: `GOT camera: 4.5 ...
    // served_by=ratings-py-1` (on stderr, read apart from the page's answer).
    let served_by = format!("served_by={INSTANCE}");
    for (thing, _) in RATINGS {
        let got = web.proc.wait_for_line(&format!("GOT {thing}: ")).await;
        assert!(got.contains(&served_by), "answered by {INSTANCE}: {got}");
    }
    let output = web.proc.output();
    let others: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("GOT ") && !line.contains(&served_by))
        .collect();
    assert!(others.is_empty(), "answers from elsewhere: {others:#?}");
    let (status, things) = web.get("/api/things").await;
    assert_eq!(status, 200, "{things}");
    let things: Json = serde_json::from_str(&things).expect("JSON");
    for thing in things.as_array().expect("a list of things") {
        assert_eq!(thing["rating"]["served_by"], INSTANCE, "{thing}");
        assert_eq!(thing["rating"]["live"], true, "{thing}");
    }

    // SIGTERM: it deregisters before it exits, so the registry no longer
    // lists it at once rather than after its 30 s lease.
    python.signal(Signal::SIGTERM);
    let status = python.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "the Python instance exited with {status}");
    let listed = resolve(&cluster).await;
    assert!(
        listed.iter().all(|i| i.instance_id != INSTANCE),
        "{INSTANCE} is still listed after it exited: {listed:?}"
    );
    python
        .wait_for_line(&format!("deregistered {INSTANCE}"))
        .await;
}

#[tokio::test]
async fn the_python_instance_heartbeats_and_registers_again_when_its_lease_is_lost() {
    const TTL: Duration = Duration::from_secs(2);
    let cluster = Cluster::start_with(StoreKind::Memory, &[]).await;
    let (mut python, _) = start_python_instance(&cluster, "2").await;
    let mut watch = cluster
        .registry
        .client(&cluster.token)
        .watch(pb::WatchRequest {
            service: "ratings".into(),
            since_revision: 0,
        })
        .await
        .expect("watch ratings")
        .into_inner();
    let Some(Event::Snapshot(snapshot)) = next_event(&mut watch).await else {
        panic!("a watch starts with a snapshot");
    };
    let ids: Vec<&str> = snapshot
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(ids, [INSTANCE]);
    let first_lease = snapshot.instances[0].lease_id;

    // Heartbeats every third of the TTL keep it listed: for two TTLs, the
    // registry reports no change at all.
    let changed = tokio::time::timeout(2 * TTL, next_event(&mut watch)).await;
    assert!(changed.is_err(), "a change within two TTLs: {changed:?}");

    // A lease the registry lost (a memory-store registry restarted, or an
    // operator removed the instance) is answered NOT_FOUND at the next
    // heartbeat, and the instance registers again.
    let mark = python.mark();
    cluster
        .registry
        .client(&cluster.token)
        .deregister(pb::DeregisterRequest {
            lease_id: 0,
            service: "ratings".into(),
            instance_id: INSTANCE.into(),
        })
        .await
        .expect("remove the instance");
    python
        .wait_for_line_after(mark, "registering again", 2 * TTL)
        .await;
    python
        .wait_for_line_after(mark, &format!("registered {INSTANCE} at"), 2 * TTL)
        .await;
    let listed = resolve(&cluster).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].instance_id, INSTANCE);
    assert_ne!(listed[0].lease_id, first_lease, "a new lease");

    python.signal(Signal::SIGINT);
    let status = python.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "the Python instance exited with {status}");
    assert!(resolve(&cluster).await.is_empty(), "deregistered on SIGINT");
}
