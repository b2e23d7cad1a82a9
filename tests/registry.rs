//! The registry and the ratings service as a user runs them: real processes,
//! real gRPC over loopback, `registryctl` for the admin steps. Every test runs
//! twice, on the embedded store and on a real etcd server, except the one that
//! only asks for the daemons' services through Python's reflection client.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use market_proto::{
    ratings::v1::{GetRatingRequest, ratings_client::RatingsClient},
    registry::v1::{self as pb, watch_response::Event},
};
use test_support::{Cluster, Signal, StoreKind};
use tonic::Code;

async fn setup(store: StoreKind, extra: &[&str]) -> Cluster {
    Cluster::start_with(store, extra).await
}

async fn resolve(s: &Cluster) -> pb::ResolveResponse {
    s.registry
        .client(&s.token)
        .resolve(pb::ResolveRequest {
            service: "ratings".into(),
        })
        .await
        .expect("resolve")
        .into_inner()
}

async fn instance_ids(s: &Cluster) -> Vec<String> {
    resolve(s)
        .await
        .instances
        .into_iter()
        .map(|i| i.instance_id)
        .collect()
}

async fn open_watch(s: &Cluster, since: u64) -> tonic::Streaming<pb::WatchResponse> {
    s.registry
        .client(&s.token)
        .watch(pb::WatchRequest {
            service: "ratings".into(),
            since_revision: since,
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The next message of a watch that is not progress.
async fn next_event(stream: &mut tonic::Streaming<pb::WatchResponse>, within: Duration) -> Event {
    loop {
        let message = tokio::time::timeout(within, stream.next())
            .await
            .expect("a watch event in time")
            .expect("the stream goes on")
            .expect("no error");
        match message.event.expect("an event") {
            Event::Progress(_) => continue,
            event => return event,
        }
    }
}

fn change(event: Event) -> (pb::ChangeKind, String, pb::RemovalReason, u64) {
    let Event::Change(change) = event else {
        panic!("expected a change, got {event:?}")
    };
    let (kind, reason) = (change.kind(), change.reason());
    let instance = change.instance.expect("an instance");
    (kind, instance.instance_id, reason, change.revision)
}

fn snapshot_ids(event: Event) -> (Vec<String>, u64) {
    let Event::Snapshot(snapshot) = event else {
        panic!("expected a snapshot, got {event:?}")
    };
    (
        snapshot
            .instances
            .into_iter()
            .map(|i| i.instance_id)
            .collect(),
        snapshot.revision,
    )
}

async fn two_instances_register_resolve_and_serve(store: StoreKind) {
    let s = setup(store, &[]).await;
    let one = s.ratings(1, &[]).await;
    let two = s.ratings(2, &[]).await;

    let resolved = resolve(&s).await;
    let listed: HashMap<String, String> = resolved
        .instances
        .iter()
        .map(|i| (i.instance_id.clone(), i.address.clone()))
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed["ratings-1"], one.url());
    assert_eq!(listed["ratings-2"], two.url());

    for instance in &resolved.instances {
        let mut client = RatingsClient::connect(instance.address.clone())
            .await
            .expect("connect");
        let rating = client
            .get(GetRatingRequest {
                thing_id: "camera".into(),
            })
            .await
            .expect("get camera")
            .into_inner();
        assert_eq!(rating.rating, 45);
        assert_eq!(rating.served_by, instance.instance_id);
    }
    one.proc.wait_for_line("GET camera => 45").await;
    two.proc.wait_for_line("GET camera => 45").await;

    // registryctl lists the same instances.
    let listed = s.registry.ctl(&["instances", "ratings", "--json"]).await;
    assert!(
        listed.contains("\"instance_id\":\"ratings-1\"")
            && listed.contains("\"instance_id\":\"ratings-2\""),
        "{listed}"
    );
}

async fn sigint_removes_an_instance_at_once_and_sigkill_within_its_ttl(store: StoreKind) {
    let s = setup(store, &[]).await;
    let mut one = s.ratings(1, &["--ttl", "2s"]).await;
    let two = s.ratings(2, &["--ttl", "2s"]).await;
    let mut watch = open_watch(&s, 0).await;
    let (mut ids, _) = snapshot_ids(next_event(&mut watch, Duration::from_secs(5)).await);
    ids.sort();
    assert_eq!(ids, ["ratings-1", "ratings-2"]);

    let start = Instant::now();
    one.proc.signal(Signal::SIGINT);
    let (kind, id, reason, _) = change(next_event(&mut watch, Duration::from_secs(5)).await);
    let elapsed = start.elapsed();
    assert_eq!(
        (kind, id.as_str(), reason),
        (
            pb::ChangeKind::Removed,
            "ratings-1",
            pb::RemovalReason::Deregistered
        )
    );
    eprintln!("FIGURE sigint_to_removed_ms={}", elapsed.as_millis());
    assert!(
        elapsed < Duration::from_millis(200),
        "removed {elapsed:?} after SIGINT"
    );
    assert!(one.proc.wait_exit(Duration::from_secs(5)).await.success());

    let start = Instant::now();
    two.proc.signal(Signal::SIGKILL);
    let (kind, id, reason, _) = change(next_event(&mut watch, Duration::from_secs(5)).await);
    let elapsed = start.elapsed();
    assert_eq!(
        (kind, id.as_str(), reason),
        (
            pb::ChangeKind::Removed,
            "ratings-2",
            pb::RemovalReason::Expired
        )
    );
    eprintln!(
        "FIGURE sigkill_to_removed_ms={} ttl_ms=2000",
        elapsed.as_millis()
    );
    assert!(
        elapsed <= Duration::from_secs(3),
        "removed {elapsed:?} after SIGKILL, TTL 2 s"
    );
    assert!(instance_ids(&s).await.is_empty());
}

async fn a_restarted_registry_keeps_its_catalog_and_instances_return(store: StoreKind) {
    let mut s = setup(store, &[]).await;
    // TTL 3 s: heartbeats every second.
    let _one = s.ratings(1, &["--ttl", "3s"]).await;
    let _two = s.ratings(2, &["--ttl", "3s"]).await;
    s.stop_registry().await;
    s.start_registry().await;
    let restarted = Instant::now();
    // The catalog and the old token survived.
    let services = s.registry.ctl(&["services", "--json"]).await;
    assert!(services.contains("\"name\":\"ratings\""), "{services}");
    let mut watch = open_watch(&s, 0).await;
    let (mut ids, _) = snapshot_ids(next_event(&mut watch, Duration::from_secs(5)).await);
    while ids.len() < 2 {
        let (kind, id, _, _) = change(next_event(&mut watch, Duration::from_secs(5)).await);
        assert_eq!(kind, pb::ChangeKind::Added);
        ids.push(id);
    }
    let elapsed = restarted.elapsed();
    ids.sort();
    assert_eq!(ids, ["ratings-1", "ratings-2"]);
    eprintln!(
        "FIGURE restart_to_both_listed_ms={} heartbeat_interval_ms=1000",
        elapsed.as_millis()
    );
    assert!(
        elapsed <= Duration::from_millis(1000 + 250),
        "listed again {elapsed:?} after the restart"
    );
}

async fn a_paused_instance_whose_lease_expired_returns_after_sigcont(store: StoreKind) {
    let s = setup(store, &[]).await;
    // TTL 2 s: heartbeats every 667 ms.
    let one = s.ratings(1, &["--ttl", "2s"]).await;
    let mut watch = open_watch(&s, 0).await;
    snapshot_ids(next_event(&mut watch, Duration::from_secs(5)).await);

    one.proc.freeze();
    let (kind, _, reason, _) = change(next_event(&mut watch, Duration::from_secs(5)).await);
    assert_eq!(
        (kind, reason),
        (pb::ChangeKind::Removed, pb::RemovalReason::Expired)
    );

    let start = Instant::now();
    one.proc.signal(Signal::SIGCONT);
    let (kind, id, _, _) = change(next_event(&mut watch, Duration::from_secs(5)).await);
    let elapsed = start.elapsed();
    assert_eq!((kind, id.as_str()), (pb::ChangeKind::Added, "ratings-1"));
    eprintln!(
        "FIGURE sigcont_to_listed_ms={} heartbeat_interval_ms=667",
        elapsed.as_millis()
    );
    assert!(
        elapsed <= Duration::from_millis(667),
        "listed again {elapsed:?} after SIGCONT"
    );
}

/// Registers a made-up instance directly over gRPC.
async fn register(
    client: &mut registry_client::RegistryClient,
    service: &str,
    id: &str,
    port: u16,
) -> u64 {
    client
        .register(pb::RegisterRequest {
            service: service.into(),
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            metadata: HashMap::new(),
            ttl_seconds: 60,
        })
        .await
        .expect("register")
        .into_inner()
        .lease_id
}

async fn a_resumed_watch_gets_exactly_what_it_missed_or_a_snapshot(store: StoreKind) {
    let s = setup(store, &["--history", "16"]).await;
    let orders_token = s.registry.create_service("orders").await;
    let mut ratings = s.registry.client(&s.token);
    let mut orders = s.registry.client(&orders_token);
    let lease_a = register(&mut ratings, "ratings", "a", 9001).await;

    let mut watch = open_watch(&s, 0).await;
    let (ids, seen) = snapshot_ids(next_event(&mut watch, Duration::from_secs(5)).await);
    assert_eq!(ids, ["a"]);
    drop(watch);

    // Missed while away: three changes of ratings, one of another service.
    register(&mut ratings, "ratings", "b", 9002).await;
    register(&mut orders, "orders", "o", 9100).await;
    ratings
        .deregister(pb::DeregisterRequest {
            lease_id: lease_a,
            ..Default::default()
        })
        .await
        .expect("deregister");
    register(&mut ratings, "ratings", "c", 9003).await;

    let mut watch = open_watch(&s, seen).await;
    let mut missed = Vec::new();
    let mut last = seen;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        match message.event.expect("an event") {
            Event::Change(change) => {
                assert!(change.revision > last, "revisions only grow, no duplicates");
                last = change.revision;
                missed.push((
                    change.kind(),
                    change.instance.expect("instance").instance_id,
                ));
            }
            Event::Progress(progress) => {
                assert!(progress.revision >= last);
                break;
            }
            Event::Snapshot(_) => panic!("the history covers the gap: no snapshot expected"),
        }
    }
    use pb::ChangeKind::{Added, Removed};
    assert_eq!(
        missed,
        [
            (Added, "b".to_owned()),
            (Removed, "a".to_owned()),
            (Added, "c".to_owned())
        ]
    );
    drop(watch);

    // More changes than the history holds (on etcd: history compacted away):
    // the watcher gets a snapshot.
    for i in 0..20 {
        register(&mut orders, "orders", &format!("o{i}"), 9200 + i).await;
    }
    if let Some(etcd) = &s.etcd {
        etcd.compact(resolve(&s).await.revision).await;
    }
    let mut watch = open_watch(&s, last).await;
    let (mut ids, _) = snapshot_ids(next_event(&mut watch, Duration::from_secs(5)).await);
    ids.sort();
    assert_eq!(ids, ["b", "c"]);
}

/// One row of the bad-input table: what was sent, and what must come back.
struct Case {
    what: &'static str,
    code: Code,
    says: &'static str,
    result: Result<(), tonic::Status>,
}

fn case<T>(
    what: &'static str,
    code: Code,
    says: &'static str,
    result: Result<T, tonic::Status>,
) -> Case {
    Case {
        what,
        code,
        says,
        result: result.map(|_| ()),
    }
}

/// Creates `service` with `registryctl` and returns its consumer token.
async fn create_with_consumer_token(s: &Cluster, service: &str) -> String {
    let created = s.registry.ctl(&["create-service", service, "--json"]).await;
    created
        .split("\"consumer_token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a consumer token in the JSON")
        .to_owned()
}

fn registration(service: &str, id: &str, address: &str, ttl: u32) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.into(),
        instance_id: id.into(),
        address: address.into(),
        metadata: HashMap::new(),
        ttl_seconds: ttl,
    }
}

async fn bad_input_gets_a_precise_status_and_changes_nothing(store: StoreKind) {
    let s = setup(store, &[]).await;
    let orders_token = s.registry.create_service("orders").await;
    let consumer_token = create_with_consumer_token(&s, "billing").await;
    let mut admin = s.registry.client(&s.registry.admin_token);
    let mut ratings = s.registry.client(&s.token);
    let mut orders = s.registry.client(&orders_token);
    let mut consumer = s.registry.client(&consumer_token);
    let mut stranger = s.registry.client("svc_0000");
    let mut anonymous = pb::registry_client::RegistryClient::connect(s.registry.url())
        .await
        .expect("connect");
    let lease = register(&mut ratings, "ratings", "r1", 9001).await;

    let services_before = admin
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner();
    let resolve = pb::ResolveRequest {
        service: "ratings".into(),
    };
    let instances_before = admin
        .resolve(resolve.clone())
        .await
        .expect("resolve")
        .into_inner()
        .instances;

    let many: HashMap<String, String> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let long: HashMap<String, String> = [("k".to_owned(), "v".repeat(300))].into();
    let cases = vec![
        case(
            "no token",
            Code::Unauthenticated,
            "missing `authorization: Bearer <token>`",
            anonymous
                .register(registration("ratings", "x", "127.0.0.1:1", 30))
                .await,
        ),
        case(
            "unknown token",
            Code::Unauthenticated,
            "unknown token",
            stranger
                .register(registration("ratings", "x", "127.0.0.1:1", 30))
                .await,
        ),
        case(
            "another service's token",
            Code::PermissionDenied,
            "token of service 'orders' may not register",
            orders
                .register(registration("ratings", "x", "127.0.0.1:1", 30))
                .await,
        ),
        case(
            "a consumer token registering",
            Code::PermissionDenied,
            "consumer token may only read",
            consumer
                .register(registration("billing", "x", "127.0.0.1:1", 30))
                .await,
        ),
        case(
            "a service token creating a service",
            Code::PermissionDenied,
            "needs the admin token",
            ratings
                .create_service(pb::CreateServiceRequest {
                    name: "evil".into(),
                    ..Default::default()
                })
                .await,
        ),
        case(
            "a bad service name",
            Code::InvalidArgument,
            "invalid service name \"Bad_Name\"",
            admin
                .create_service(pb::CreateServiceRequest {
                    name: "Bad_Name".into(),
                    ..Default::default()
                })
                .await,
        ),
        case(
            "a provided token that is too short",
            Code::InvalidArgument,
            "invalid token: use 32 to 256 printable ASCII characters",
            admin
                .create_service(pb::CreateServiceRequest {
                    name: "short".into(),
                    token: "svc_short".into(),
                    ..Default::default()
                })
                .await,
        ),
        case(
            "an existing service",
            Code::AlreadyExists,
            "service 'ratings' already exists",
            admin
                .create_service(pb::CreateServiceRequest {
                    name: "ratings".into(),
                    ..Default::default()
                })
                .await,
        ),
        case(
            "a bad service name to register",
            Code::InvalidArgument,
            "invalid service name",
            ratings
                .register(registration("-ratings", "x", "127.0.0.1:1", 30))
                .await,
        ),
        case(
            "an address without a port",
            Code::InvalidArgument,
            "the port is missing",
            ratings
                .register(registration("ratings", "x", "localhost", 30))
                .await,
        ),
        case(
            "an address of another scheme",
            Code::InvalidArgument,
            "neither http nor https",
            ratings
                .register(registration("ratings", "x", "ftp://127.0.0.1:21", 30))
                .await,
        ),
        case(
            "an address with a path",
            Code::InvalidArgument,
            "has a path",
            ratings
                .register(registration("ratings", "x", "http://127.0.0.1:1/x", 30))
                .await,
        ),
        case(
            "TTL 0",
            Code::InvalidArgument,
            "invalid ttl_seconds 0: use 1 to 300",
            ratings
                .register(registration("ratings", "x", "127.0.0.1:1", 0))
                .await,
        ),
        case(
            "TTL 301 s",
            Code::InvalidArgument,
            "invalid ttl_seconds 301: use 1 to 300",
            ratings
                .register(registration("ratings", "x", "127.0.0.1:1", 301))
                .await,
        ),
        case(
            "too many metadata entries",
            Code::InvalidArgument,
            "17 entries, at most 16",
            ratings
                .register(pb::RegisterRequest {
                    metadata: many,
                    ..registration("ratings", "x", "127.0.0.1:1", 30)
                })
                .await,
        ),
        case(
            "an oversized metadata value",
            Code::InvalidArgument,
            "300 bytes, at most 256",
            ratings
                .register(pb::RegisterRequest {
                    metadata: long,
                    ..registration("ratings", "x", "127.0.0.1:1", 30)
                })
                .await,
        ),
        case(
            "a request over 64 KiB",
            Code::OutOfRange,
            "too large",
            ratings
                .register(pb::RegisterRequest {
                    metadata: [("k".to_owned(), "v".repeat(100_000))].into(),
                    ..registration("ratings", "x", "127.0.0.1:1", 30)
                })
                .await,
        ),
        case(
            "a bad instance id",
            Code::InvalidArgument,
            "invalid instance id",
            ratings
                .register(registration("ratings", "a b", "127.0.0.1:1", 30))
                .await,
        ),
        case(
            "an instance id held at another address",
            Code::AlreadyExists,
            "held by a live instance",
            ratings
                .register(registration("ratings", "r1", "127.0.0.1:2", 30))
                .await,
        ),
        case(
            "a service that does not exist",
            Code::NotFound,
            "service 'nope' does not exist",
            admin
                .register(registration("nope", "x", "127.0.0.1:1", 30))
                .await,
        ),
        case(
            "heartbeat on an unknown lease",
            Code::NotFound,
            "lease 1 is unknown or expired",
            ratings
                .heartbeat(pb::HeartbeatRequest { lease_id: 1 })
                .await,
        ),
        case(
            "heartbeat on another service's lease",
            Code::PermissionDenied,
            "belongs to service 'ratings'",
            orders
                .heartbeat(pb::HeartbeatRequest { lease_id: lease })
                .await,
        ),
        case(
            "deregister another service's lease",
            Code::PermissionDenied,
            "belongs to service 'ratings'",
            orders
                .deregister(pb::DeregisterRequest {
                    lease_id: lease,
                    ..Default::default()
                })
                .await,
        ),
        case(
            "deregister another service's instance",
            Code::PermissionDenied,
            "may not register, renew or remove",
            orders
                .deregister(pb::DeregisterRequest {
                    service: "ratings".into(),
                    instance_id: "r1".into(),
                    lease_id: 0,
                })
                .await,
        ),
        case(
            "deregister naming nothing",
            Code::InvalidArgument,
            "give lease_id, or service and instance_id",
            ratings.deregister(pb::DeregisterRequest::default()).await,
        ),
        case(
            "reading another service",
            Code::PermissionDenied,
            "may not read service 'ratings'",
            orders.resolve(resolve.clone()).await,
        ),
        case(
            "resolving an unknown service",
            Code::NotFound,
            "service 'nope' does not exist",
            admin
                .resolve(pb::ResolveRequest {
                    service: "nope".into(),
                })
                .await,
        ),
        case(
            "watching without a token",
            Code::Unauthenticated,
            "missing",
            anonymous
                .watch(pb::WatchRequest {
                    service: "ratings".into(),
                    since_revision: 0,
                })
                .await,
        ),
        case(
            "deleting with a service token",
            Code::PermissionDenied,
            "needs the admin token",
            ratings
                .delete_service(pb::DeleteServiceRequest {
                    name: "ratings".into(),
                })
                .await,
        ),
    ];

    let mut failures = Vec::new();
    for case in cases {
        match case.result {
            Ok(()) => failures.push(format!("{}: accepted", case.what)),
            Err(status) if status.code() != case.code || !status.message().contains(case.says) => {
                failures.push(format!(
                    "{}: got {:?} {:?}, want {:?} saying {:?}",
                    case.what,
                    status.code(),
                    status.message(),
                    case.code,
                    case.says
                ));
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let services_after = admin
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(services_after, services_before, "the catalog is unchanged");
    let instances_after = admin
        .resolve(resolve)
        .await
        .expect("resolve")
        .into_inner()
        .instances;
    assert_eq!(
        instances_after, instances_before,
        "the instances are unchanged"
    );
    // The consumer token reads, and sees no leases.
    let seen = consumer
        .resolve(pb::ResolveRequest {
            service: "billing".into(),
        })
        .await;
    assert!(seen.is_ok(), "{seen:?}");
}

async fn health_and_reflection_answer_on_both_daemons(store: StoreKind) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let s = setup(store, &[]).await;
    let ratings = s.ratings(1, &[]).await;
    for (url, service) in [
        (s.registry.url(), "market.registry.v1.Registry"),
        (ratings.url(), "market.ratings.v1.Ratings"),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("a valid url")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel.clone());
        for name in ["", service] {
            let status = health
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status();
            assert_eq!(status, ServingStatus::Serving, "{url} {name:?}");
        }

        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.next().await.expect("an answer").expect("ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer {response:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert_lists_every_service(&names, service, &format!("{url}, tonic's v1 client"));
    }
}

/// Python's stock reflection client, `grpcio-reflection`, which speaks only
/// v1alpha, lists every service of both daemons. The store plays no part in
/// reflection, so this runs once, on the embedded store.
#[tokio::test]
async fn python_v1alpha_reflection_client_lists_the_services_of_both_daemons() {
    let s = setup(StoreKind::Memory, &[]).await;
    let ratings = s.ratings(1, &[]).await;
    for (addr, service) in [
        (s.registry.addr, "market.registry.v1.Registry"),
        (ratings.addr, "market.ratings.v1.Ratings"),
    ] {
        let names = python_list_services(addr).await;
        assert_lists_every_service(&names, service, &format!("{addr}, Python's v1alpha client"));
    }
}

/// Checks that a daemon's reflection lists its own `service`, health, and
/// both versions of reflection.
fn assert_lists_every_service(names: &[String], service: &str, seen_by: &str) {
    for expected in [
        service,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{seen_by}: {expected} is not listed in {names:?}"
        );
    }
}

/// The services that `tests/python/list_services.py` lists: what Python's
/// stock v1alpha reflection client finds on the server at `addr`.
async fn python_list_services(addr: std::net::SocketAddr) -> Vec<String> {
    const INSTALL: &str = "install Python 3, then `python3 -m pip install grpcio grpcio-reflection` \
                           (tests/run.sh installs them when they are missing)";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/list_services.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .arg(addr.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("list_services.py ends within a minute")
        .unwrap_or_else(|e| panic!("cannot run python3: {e}; {INSTALL}"));
    assert!(
        output.status.success(),
        "list_services.py {addr} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn provisioned_tokens_work_and_create_service_can_be_idempotent(store: StoreKind) {
    let s = setup(store, &[]).await;
    let token = "svc_provisioned-by-the-deployment-0123456789";
    let run = |args: &'static [&'static str]| {
        let admin = s.registry.admin_token.clone();
        let url = s.registry.url();
        async move {
            tokio::process::Command::new(test_support::bin("registryctl"))
                .args(["--registry", url.as_str(), "--admin-token", admin.as_str()])
                .args(args)
                .env("ORDERS_TOKEN", token)
                .output()
                .await
                .expect("run registryctl")
        }
    };
    let args: &[&str] = &[
        "create-service",
        "orders",
        "--token-env",
        "ORDERS_TOKEN",
        "--if-missing",
    ];
    let first = run(args).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), token);
    let again = run(args).await;
    assert!(
        again.status.success(),
        "--if-missing: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    // A token grants one thing: another service cannot be given this one.
    let reused = run(&["create-service", "billing", "--token-env", "ORDERS_TOKEN"]).await;
    assert!(!reused.status.success(), "a token in use was given again");
    assert!(
        String::from_utf8_lossy(&reused.stderr).contains("already in use"),
        "{}",
        String::from_utf8_lossy(&reused.stderr)
    );
    register(&mut s.registry.client(token), "orders", "o1", 9001).await;
}

async fn deleting_a_service_tells_its_watchers_then_ends_them(store: StoreKind) {
    let s = setup(store, &[]).await;
    let mut ratings = s.registry.client(&s.token);
    register(&mut ratings, "ratings", "a", 9001).await;
    register(&mut ratings, "ratings", "b", 9002).await;
    let mut watch = open_watch(&s, 0).await;
    let (ids, _) = snapshot_ids(next_event(&mut watch, Duration::from_secs(5)).await);
    assert_eq!(ids.len(), 2);

    let out = s.registry.ctl(&["delete-service", "ratings"]).await;
    assert!(out.contains("2 live instance(s)"), "{out}");
    let mut removed = Vec::new();
    for _ in 0..2 {
        let (kind, id, reason, _) = change(next_event(&mut watch, Duration::from_secs(5)).await);
        assert_eq!(
            (kind, reason),
            (pb::ChangeKind::Removed, pb::RemovalReason::ServiceDeleted)
        );
        removed.push(id);
    }
    removed.sort();
    assert_eq!(removed, ["a", "b"]);
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the stream ends");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::NotFound, "{status}"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    let gone = s
        .registry
        .client(&s.token)
        .resolve(pb::ResolveRequest {
            service: "ratings".into(),
        })
        .await;
    assert_eq!(
        gone.expect_err("the token went with the service").code(),
        Code::Unauthenticated
    );
}

async fn failed_authentication_is_rate_limited_per_peer(store: StoreKind) {
    let s = setup(store, &[]).await;
    let resolve = pb::ResolveRequest {
        service: "ratings".into(),
    };
    let mut guesser = s.registry.client("svc_guess");
    for i in 0..20 {
        let status = guesser
            .resolve(resolve.clone())
            .await
            .expect_err("a wrong token");
        assert_eq!(status.code(), Code::Unauthenticated, "attempt {i}");
    }
    // Past the limit, the peer is refused whatever token it sends, for a while.
    let status = guesser.resolve(resolve.clone()).await.expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(
        status
            .message()
            .contains("too many failed authentications from 127.0.0.1"),
        "{status}"
    );
    let status = s
        .registry
        .client(&s.token)
        .resolve(resolve)
        .await
        .expect_err("refused too");
    assert_eq!(status.code(), Code::ResourceExhausted);
    s.registry
        .proc
        .wait_for_line("20 failed authentications from 127.0.0.1")
        .await;
}

/// One renewal on a `KeepAlive` stream: sends it and reads its answer.
async fn keep_alive_once(
    requests: &futures::channel::mpsc::UnboundedSender<pb::KeepAliveRequest>,
    answers: &mut tonic::Streaming<pb::KeepAliveResponse>,
    lease_id: u64,
) -> pb::KeepAliveResponse {
    requests
        .unbounded_send(pb::KeepAliveRequest { lease_id })
        .expect("the stream is open");
    tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("an answer in time")
        .expect("the stream goes on")
        .expect("an answer, not an error")
}

/// Leases renewed only through one `KeepAlive` stream outlive their TTL
/// while one left alone expires; a lease that cannot be renewed is answered
/// in the stream, which stays open; a token that may not renew is refused
/// when the stream opens.
async fn keep_alive_renews_leases_over_one_stream(store: StoreKind) {
    let s = setup(store, &[]).await;
    let orders_token = s.registry.create_service("orders").await;
    let mut ratings = s.registry.client(&s.token);
    let mut leases = Vec::new();
    for (id, port) in [("r1", 9101), ("r2", 9102), ("r3", 9103)] {
        let registered = ratings
            .register(registration("ratings", id, &format!("127.0.0.1:{port}"), 2))
            .await
            .expect("register")
            .into_inner();
        leases.push(registered.lease_id);
    }
    let orders_lease = s
        .registry
        .client(&orders_token)
        .register(registration("orders", "o1", "127.0.0.1:9201", 30))
        .await
        .expect("register")
        .into_inner()
        .lease_id;

    let (requests, outgoing) = futures::channel::mpsc::unbounded();
    let mut answers = ratings
        .keep_alive(outgoing)
        .await
        .expect("a KeepAlive stream")
        .into_inner();

    let unknown = keep_alive_once(&requests, &mut answers, 1).await;
    assert_eq!(
        (unknown.lease_id, unknown.ttl_seconds, unknown.code),
        (1, 0, Code::NotFound as i32)
    );
    assert!(
        unknown.error.contains("lease 1 is unknown or expired"),
        "{}",
        unknown.error
    );
    let foreign = keep_alive_once(&requests, &mut answers, orders_lease).await;
    assert_eq!(
        (foreign.ttl_seconds, foreign.code),
        (0, Code::PermissionDenied as i32)
    );
    assert!(
        foreign.error.contains("belongs to service 'orders'"),
        "{}",
        foreign.error
    );

    // r1 and r2 renewed every 500 ms over the stream, r3 never.
    let started = Instant::now();
    loop {
        for &lease in &leases[..2] {
            let renewed = keep_alive_once(&requests, &mut answers, lease).await;
            assert_eq!(
                (renewed.lease_id, renewed.ttl_seconds, renewed.code),
                (lease, 2, 0),
                "{}",
                renewed.error
            );
        }
        let ids = instance_ids(&s).await;
        if !ids.contains(&"r3".to_owned()) && started.elapsed() > Duration::from_millis(2500) {
            assert_eq!(ids, ["r1", "r2"], "{:?} after {:?}", ids, started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "r3 still listed after {:?}: {ids:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A deleted token stops renewing within a second, even once its
    // service's name belongs to a new service.
    s.registry.ctl(&["delete-service", "ratings"]).await;
    let new_token = s.registry.create_service("ratings").await;
    let new_lease = s
        .registry
        .client(&new_token)
        .register(registration("ratings", "r9", "127.0.0.1:9109", 30))
        .await
        .expect("register under the new token")
        .into_inner()
        .lease_id;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    requests
        .unbounded_send(pb::KeepAliveRequest {
            lease_id: new_lease,
        })
        .expect("the stream is open");
    let ended = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("an answer in time")
        .expect("an error, not the end of the stream")
        .expect_err("the old token may not renew the new service's lease");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("token was deleted"), "{ended:?}");

    let consumer_token = create_with_consumer_token(&s, "billing").await;
    let refused = s
        .registry
        .client(&consumer_token)
        .keep_alive(futures::stream::iter([pb::KeepAliveRequest {
            lease_id: 1,
        }]))
        .await
        .expect_err("a consumer token may not renew");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = s
        .registry
        .client("svc_0000")
        .keep_alive(futures::stream::iter([pb::KeepAliveRequest {
            lease_id: 1,
        }]))
        .await
        .expect_err("an unknown token may not renew");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

/// A paused (SIGSTOP) instance holds its HTTP/2 connection to the registry
/// and never acknowledges the registry's GOAWAY: the registry still stops
/// within its drain time instead of waiting for the instance to run again.
async fn a_paused_client_cannot_keep_the_registry_from_stopping(store: StoreKind) {
    let mut cluster = setup(store, &[]).await;
    let ratings = cluster.ratings(1, &["--ttl", "30s"]).await;
    ratings.proc.signal(Signal::SIGSTOP);
    let started = Instant::now();
    cluster.stop_registry().await;
    let took = started.elapsed();
    eprintln!("FIGURE registryd ({store:?}) stopped {took:?} after SIGTERM with a paused client");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    ratings.proc.signal(Signal::SIGCONT);
}

test_support::on_both_stores!(
    two_instances_register_resolve_and_serve,
    sigint_removes_an_instance_at_once_and_sigkill_within_its_ttl,
    a_restarted_registry_keeps_its_catalog_and_instances_return,
    a_paused_instance_whose_lease_expired_returns_after_sigcont,
    a_resumed_watch_gets_exactly_what_it_missed_or_a_snapshot,
    bad_input_gets_a_precise_status_and_changes_nothing,
    health_and_reflection_answer_on_both_daemons,
    provisioned_tokens_work_and_create_service_can_be_idempotent,
    deleting_a_service_tells_its_watchers_then_ends_them,
    failed_authentication_is_rate_limited_per_peer,
    a_paused_client_cannot_keep_the_registry_from_stopping,
    keep_alive_renews_leases_over_one_stream,
);
