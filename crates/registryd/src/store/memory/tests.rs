use std::time::Duration;

use futures::StreamExt as _;

use super::*;
use crate::model::{Address, Metadata};

const PROGRESS: Duration = Duration::from_secs(3600);

fn name(s: &str) -> ServiceName {
    s.parse().unwrap()
}

fn new_service(s: &str) -> NewService {
    NewService {
        name: name(s),
        token: TokenHash::of(&format!("svc_{s}")),
        consumer_token: TokenHash::of(&format!("con_{s}")),
    }
}

fn registration(service: &str, id: &str, port: u16, ttl: u32) -> Registration {
    Registration {
        service: name(service),
        id: Some(id.parse().unwrap()),
        address: format!("127.0.0.1:{port}").parse::<Address>().unwrap(),
        metadata: Metadata::default(),
        ttl: Ttl::from_secs(ttl).unwrap(),
    }
}

async fn store_with(services: &[&str]) -> MemoryStore {
    let store = MemoryStore::open(MemoryStoreConfig::default()).unwrap();
    for s in services {
        store.create_service(new_service(s)).await.unwrap();
    }
    store
}

async fn ids(store: &MemoryStore, service: &str) -> Vec<String> {
    let (instances, _) = store.resolve(&name(service)).await.unwrap();
    instances.into_iter().map(|i| i.id.to_string()).collect()
}

async fn next(stream: &mut WatchStream) -> WatchEvent {
    stream
        .next()
        .await
        .expect("stream ended")
        .expect("stream failed")
}

fn added(event: &WatchEvent) -> (&str, Revision) {
    match event {
        WatchEvent::Change(Event {
            revision,
            change: Change::Added(i),
        }) => (i.id.as_str(), *revision),
        other => panic!("expected an addition, got {other:?}"),
    }
}

fn removed(event: &WatchEvent) -> (&str, RemovalReason) {
    match event {
        WatchEvent::Change(Event {
            change: Change::Removed(i, reason),
            ..
        }) => (i.id.as_str(), *reason),
        other => panic!("expected a removal, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn register_resolve_and_watch() {
    let store = store_with(&["ratings"]).await;
    let mut watch = store.watch(&name("ratings"), 0, PROGRESS).await.unwrap();
    let WatchEvent::Snapshot {
        instances,
        revision,
    } = next(&mut watch).await
    else {
        panic!("a new watcher starts with a snapshot")
    };
    assert!(instances.is_empty());

    let b = store
        .register(registration("ratings", "b", 8002, 30))
        .await
        .unwrap();
    store
        .register(registration("ratings", "a", 8001, 30))
        .await
        .unwrap();
    assert_eq!(added(&next(&mut watch).await), ("b", revision + 1));
    assert_eq!(added(&next(&mut watch).await), ("a", revision + 2));
    assert_eq!(b.revision, revision + 1);
    // Sorted by address, not by registration order.
    assert_eq!(ids(&store, "ratings").await, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn leases_expire_after_their_ttl_unless_renewed() {
    let store = store_with(&["ratings"]).await;
    let mut watch = store.watch(&name("ratings"), 0, PROGRESS).await.unwrap();
    next(&mut watch).await;
    let kept = store
        .register(registration("ratings", "kept", 8001, 2))
        .await
        .unwrap();
    store
        .register(registration("ratings", "dropped", 8002, 2))
        .await
        .unwrap();
    next(&mut watch).await;
    next(&mut watch).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    store.heartbeat(kept.lease, &Scope::Any).await.unwrap();
    let start = Instant::now();
    assert_eq!(
        removed(&next(&mut watch).await),
        ("dropped", RemovalReason::Expired)
    );
    // Expired on time: 2 s after registration, which was 1.5 s ago.
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(ids(&store, "ratings").await, ["kept"]);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(ids(&store, "ratings").await.is_empty());
    let err = store.heartbeat(kept.lease, &Scope::Any).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchLease(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_lease_of_another_service_is_left_alone() {
    let store = store_with(&["ratings", "orders"]).await;
    let lease = store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap()
        .lease;
    let orders = Scope::Service(name("orders"));
    let err = store.heartbeat(lease, &orders).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongService { .. }), "{err}");
    let err = store.deregister_lease(lease, &orders).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongService { .. }), "{err}");
    assert_eq!(ids(&store, "ratings").await, ["r1"]);
    store
        .deregister_lease(lease, &Scope::Service(name("ratings")))
        .await
        .unwrap();
    assert!(ids(&store, "ratings").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn registering_again_replaces_the_same_instance_only() {
    let store = store_with(&["ratings"]).await;
    let first = store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    let second = store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    assert_ne!(first.lease, second.lease);
    assert!(matches!(
        store.heartbeat(first.lease, &Scope::Any).await,
        Err(StoreError::NoSuchLease(_))
    ));
    assert_eq!(ids(&store, "ratings").await, ["r1"]);

    let err = store
        .register(registration("ratings", "r1", 9999, 30))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InstanceIdTaken { .. }), "{err}");
    let (instances, _) = store.resolve(&name("ratings")).await.unwrap();
    assert_eq!(instances[0].address.as_str(), "http://127.0.0.1:8001");
}

#[tokio::test(start_paused = true)]
async fn a_watcher_resumes_with_exactly_what_it_missed() {
    let store = store_with(&["ratings", "orders"]).await;
    let r1 = store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    let seen = r1.revision;

    store
        .register(registration("ratings", "r2", 8002, 30))
        .await
        .unwrap();
    store
        .register(registration("orders", "o1", 9001, 30))
        .await
        .unwrap();
    store.deregister_lease(r1.lease, &Scope::Any).await.unwrap();

    let mut watch = store.watch(&name("ratings"), seen, PROGRESS).await.unwrap();
    assert_eq!(added(&next(&mut watch).await).0, "r2");
    assert_eq!(
        removed(&next(&mut watch).await),
        ("r1", RemovalReason::Deregistered)
    );
    let WatchEvent::Progress(at) = next(&mut watch).await else {
        panic!("a replay ends with progress")
    };
    assert_eq!(at, seen + 3);

    // A revision from before the history (or another run) gets a snapshot.
    let mut watch = store.watch(&name("ratings"), 1, PROGRESS).await.unwrap();
    let WatchEvent::Snapshot { instances, .. } = next(&mut watch).await else {
        panic!("an unknown revision gets a snapshot")
    };
    assert_eq!(instances.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_short_history_falls_back_to_a_snapshot() {
    let store = MemoryStore::open(MemoryStoreConfig {
        history: 2,
        ..MemoryStoreConfig::default()
    })
    .unwrap();
    store.create_service(new_service("ratings")).await.unwrap();
    let first = store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    for port in 8002..8005 {
        store
            .register(registration("ratings", &format!("r{port}"), port, 30))
            .await
            .unwrap();
    }
    let mut watch = store
        .watch(&name("ratings"), first.revision, PROGRESS)
        .await
        .unwrap();
    let WatchEvent::Snapshot { instances, .. } = next(&mut watch).await else {
        panic!("the history no longer covers the revision")
    };
    assert_eq!(instances.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_idle_watcher_gets_progress() {
    let store = store_with(&["ratings"]).await;
    let mut watch = store
        .watch(&name("ratings"), 0, Duration::from_secs(5))
        .await
        .unwrap();
    let WatchEvent::Snapshot { revision, .. } = next(&mut watch).await else {
        panic!()
    };
    store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    assert_eq!(added(&next(&mut watch).await).1, revision + 1);
    let start = Instant::now();
    assert_eq!(next(&mut watch).await, WatchEvent::Progress(revision + 1));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_change_wakes_only_its_own_service() {
    let store = store_with(&["ratings", "orders"]).await;
    let mut orders = store.watch(&name("orders"), 0, PROGRESS).await.unwrap();
    next(&mut orders).await;
    store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    let o1 = store
        .register(registration("orders", "o1", 9001, 30))
        .await
        .unwrap();
    // The first thing the orders watcher sees is its own change.
    assert_eq!(added(&next(&mut orders).await), ("o1", o1.revision));
}

#[tokio::test(start_paused = true)]
async fn a_slow_watcher_is_resynced_without_gaps() {
    let store = MemoryStore::open(MemoryStoreConfig {
        watch_buffer: 2,
        ..MemoryStoreConfig::default()
    })
    .unwrap();
    store.create_service(new_service("ratings")).await.unwrap();
    let mut watch = store.watch(&name("ratings"), 0, PROGRESS).await.unwrap();
    next(&mut watch).await;
    // More changes than the watcher's buffer, with nobody reading.
    for port in 8001..8101 {
        store
            .register(registration("ratings", &format!("r{port}"), port, 30))
            .await
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 100 {
        match next(&mut watch).await {
            WatchEvent::Change(e) => {
                seen.insert(e.change.instance().id.to_string());
            }
            WatchEvent::Snapshot { instances, .. } => {
                seen.extend(instances.into_iter().map(|i| i.id.to_string()));
            }
            WatchEvent::Progress(_) => {}
        }
    }
    assert_eq!(seen.len(), 100);
}

#[tokio::test(start_paused = true)]
async fn deleting_a_service_removes_its_instances_and_ends_its_watchers() {
    let store = store_with(&["ratings"]).await;
    store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    let mut watch = store.watch(&name("ratings"), 0, PROGRESS).await.unwrap();
    next(&mut watch).await;
    assert_eq!(store.delete_service(&name("ratings")).await.unwrap(), 1);
    assert_eq!(
        removed(&next(&mut watch).await),
        ("r1", RemovalReason::ServiceDeleted)
    );
    assert!(matches!(
        watch.next().await,
        Some(Err(StoreError::NoSuchService(_)))
    ));
    assert!(
        store
            .lookup_token(&TokenHash::of("svc_ratings"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.resolve(&name("ratings")).await,
        Err(StoreError::NoSuchService(_))
    ));
}

#[tokio::test]
async fn the_catalog_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = MemoryStoreConfig {
        data_dir: Some(dir.path().to_owned()),
        ..MemoryStoreConfig::default()
    };
    let store = MemoryStore::open(config.clone()).unwrap();
    store.create_service(new_service("ratings")).await.unwrap();
    store.create_service(new_service("orders")).await.unwrap();
    store.delete_service(&name("orders")).await.unwrap();
    store
        .register(registration("ratings", "r1", 8001, 30))
        .await
        .unwrap();
    drop(store);

    let store = MemoryStore::open(config).unwrap();
    let services = store.list_services().await.unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].name.as_str(), "ratings");
    // Instances are not persisted: they register again.
    assert_eq!(services[0].live_instances, 0);
    let grant = store
        .lookup_token(&TokenHash::of("svc_ratings"))
        .await
        .unwrap();
    assert_eq!(grant.map(|g| g.kind), Some(TokenKind::Service));
}

#[tokio::test]
async fn a_failed_catalog_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::open(MemoryStoreConfig {
        data_dir: Some(dir.path().join("gone")),
        ..MemoryStoreConfig::default()
    })
    .unwrap();
    let err = store
        .create_service(new_service("ratings"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Persist(_)), "{err}");
    assert!(store.list_services().await.unwrap().is_empty());
    assert!(
        store
            .lookup_token(&TokenHash::of("svc_ratings"))
            .await
            .unwrap()
            .is_none()
    );
}

mod model {
    //! The store against a reference model: random registrations, heartbeats,
    //! deregistrations and clock advances. After every step `Resolve` matches
    //! the model, and a watcher's view, built from its events alone, always
    //! converges to `Resolve`.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Register { id: u8, port: u16 },
        Heartbeat(u8),
        Deregister(u8),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u16..2).prop_map(|(id, port)| Op::Register { id, port }),
            (0u8..4).prop_map(Op::Heartbeat),
            (0u8..4).prop_map(Op::Deregister),
            (0u64..3000).prop_map(Op::Advance),
        ]
    }

    /// What the model holds of a live instance.
    #[derive(Debug, Clone)]
    struct Live {
        port: u16,
        lease: LeaseId,
        /// Milliseconds since the start.
        expires_at: u64,
    }

    const TTL_MS: u64 = 2000;

    fn apply(view: &mut BTreeMap<String, String>, event: WatchEvent) {
        match event {
            WatchEvent::Snapshot { instances, .. } => {
                *view = instances
                    .into_iter()
                    .map(|i| (i.id.to_string(), i.address.to_string()))
                    .collect();
            }
            WatchEvent::Change(Event {
                change: Change::Added(i),
                ..
            }) => {
                view.insert(i.id.to_string(), i.address.to_string());
            }
            WatchEvent::Change(Event {
                change: Change::Removed(i, _),
                ..
            }) => {
                view.remove(i.id.as_str());
            }
            WatchEvent::Progress(_) => {}
        }
    }

    /// Lets the expiry task and the watch pump run.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn the_store_matches_the_model_and_watchers_converge(ops in prop::collection::vec(op(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async move {
                let store = store_with(&["ratings"]).await;
                let mut watch = store.watch(&name("ratings"), 0, PROGRESS).await.unwrap();
                let mut view = BTreeMap::new();
                let mut model: BTreeMap<u8, Live> = BTreeMap::new();
                let mut now = 0u64;
                for op in ops {
                    match op {
                        Op::Register { id, port } => {
                            let result = store.register(registration("ratings", &format!("i{id}"), 9000 + port, 2)).await;
                            match model.get(&id) {
                                Some(live) if live.port != port => {
                                    let taken = matches!(result, Err(StoreError::InstanceIdTaken { .. }));
                                    prop_assert!(taken, "the id is held at another address");
                                }
                                _ => {
                                    let instance = result.unwrap();
                                    model.insert(id, Live { port, lease: instance.lease, expires_at: now + TTL_MS });
                                }
                            }
                        }
                        Op::Heartbeat(id) => {
                            if let Some(live) = model.get_mut(&id) {
                                store.heartbeat(live.lease, &Scope::Any).await.unwrap();
                                live.expires_at = now + TTL_MS;
                            }
                        }
                        Op::Deregister(id) => {
                            if let Some(live) = model.remove(&id) {
                                store.deregister_lease(live.lease, &Scope::Any).await.unwrap();
                            }
                        }
                        Op::Advance(ms) => {
                            tokio::time::advance(Duration::from_millis(ms)).await;
                            now += ms;
                            model.retain(|_, live| live.expires_at > now);
                        }
                    }
                    settle().await;
                    let (instances, _) = store.resolve(&name("ratings")).await.unwrap();
                    let resolved: BTreeMap<String, String> =
                        instances.into_iter().map(|i| (i.id.to_string(), i.address.to_string())).collect();
                    let expected: BTreeMap<String, String> = model
                        .iter()
                        .map(|(id, live)| (format!("i{id}"), format!("http://127.0.0.1:{}", 9000 + live.port)))
                        .collect();
                    prop_assert_eq!(&resolved, &expected, "at {} ms", now);
                    while let Some(Some(event)) = futures::FutureExt::now_or_never(watch.next()) {
                        apply(&mut view, event.unwrap());
                    }
                    prop_assert_eq!(&view, &resolved, "the watcher converged at {} ms", now);
                }
                Ok(())
            })?;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_in_use_is_refused_and_keeps_its_grant() {
    let store = store_with(&["orders"]).await;
    // Another service's service or consumer token, or one token for both.
    for (token, consumer) in [
        ("svc_orders", "con_billing"),
        ("svc_billing", "con_orders"),
        ("svc_billing", "svc_billing"),
    ] {
        let refused = store
            .create_service(NewService {
                name: name("billing"),
                token: TokenHash::of(token),
                consumer_token: TokenHash::of(consumer),
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::TokenInUse)),
            "{token}, {consumer}: {refused:?}"
        );
    }
    for (token, kind) in [
        ("svc_orders", TokenKind::Service),
        ("con_orders", TokenKind::Consumer),
    ] {
        let grant = store.lookup_token(&TokenHash::of(token)).await.unwrap();
        assert_eq!(
            grant,
            Some(Grant {
                service: name("orders"),
                kind
            })
        );
    }
    assert_eq!(store.list_services().await.unwrap().len(), 1);
}

fn new_consumer(s: &str, services: &[&str]) -> NewConsumer {
    NewConsumer {
        name: s.parse().unwrap(),
        token: TokenHash::of(&format!("con_named_{s}")),
        services: services.iter().map(|s| name(s)).collect(),
    }
}

#[tokio::test]
async fn a_named_consumer_is_found_by_its_token_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = MemoryStoreConfig {
        data_dir: Some(dir.path().to_owned()),
        ..MemoryStoreConfig::default()
    };
    let store = MemoryStore::open(config.clone()).unwrap();
    for s in ["ratings", "recommendations", "reviews"] {
        store.create_service(new_service(s)).await.unwrap();
    }
    let created = store
        .create_consumer(new_consumer("market-web", &["ratings", "recommendations"]))
        .await
        .unwrap();
    let token = TokenHash::of("con_named_market-web");
    assert_eq!(
        store.lookup_consumer(&token).await.unwrap(),
        Some(created.clone())
    );
    // A named consumer's token is no service's grant, and a service's
    // tokens are no named consumer's.
    assert_eq!(store.lookup_token(&token).await.unwrap(), None);
    assert_eq!(
        store
            .lookup_consumer(&TokenHash::of("con_ratings"))
            .await
            .unwrap(),
        None
    );
    store
        .create_consumer(new_consumer("checkout", &["reviews"]))
        .await
        .unwrap();
    store
        .delete_consumer(&"checkout".parse().unwrap())
        .await
        .unwrap();
    drop(store);

    let store = MemoryStore::open(config.clone()).unwrap();
    assert_eq!(store.lookup_consumer(&token).await.unwrap(), Some(created));
    assert_eq!(
        store
            .lookup_consumer(&TokenHash::of("con_named_checkout"))
            .await
            .unwrap(),
        None,
        "a deleted consumer stays deleted"
    );
    // Services kept their tokens beside it.
    assert!(
        store
            .lookup_token(&TokenHash::of("svc_ratings"))
            .await
            .unwrap()
            .is_some()
    );
    let market_web = "market-web".parse().unwrap();
    store.delete_consumer(&market_web).await.unwrap();
    assert!(matches!(
        store.delete_consumer(&market_web).await,
        Err(StoreError::NoSuchConsumer(_))
    ));
    drop(store);
    let store = MemoryStore::open(config).unwrap();
    assert_eq!(store.lookup_consumer(&token).await.unwrap(), None);
}

#[tokio::test]
async fn a_named_consumer_needs_known_services_a_free_name_and_its_own_token() {
    let store = store_with(&["ratings", "reviews"]).await;
    store
        .create_consumer(new_consumer("market-web", &["ratings"]))
        .await
        .unwrap();

    let refused = store
        .create_consumer(new_consumer("checkout", &["ratings", "nope"]))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::NoSuchService(s)) if s.as_str() == "nope"),
        "{refused:?}"
    );
    let refused = store
        .create_consumer(new_consumer("market-web", &["reviews"]))
        .await;
    assert!(
        matches!(refused, Err(StoreError::ConsumerExists(_))),
        "{refused:?}"
    );
    for token in ["svc_ratings", "con_reviews", "con_named_market-web"] {
        let refused = store
            .create_consumer(NewConsumer {
                token: TokenHash::of(token),
                ..new_consumer("checkout", &["reviews"])
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::TokenInUse)),
            "{token}: {refused:?}"
        );
    }
    // A service may not take a named consumer's token either.
    let refused = store
        .create_service(NewService {
            consumer_token: TokenHash::of("con_named_market-web"),
            ..new_service("billing")
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::TokenInUse)),
        "{refused:?}"
    );

    // Nothing refused above was kept.
    assert!(
        store
            .lookup_consumer(&TokenHash::of("con_named_checkout"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.list_services().await.unwrap().len(), 2);
    store
        .create_consumer(new_consumer("checkout", &["reviews"]))
        .await
        .expect("the name and the token are free");
}

#[tokio::test]
async fn a_consumer_keeps_a_deleted_service_for_when_it_comes_back() {
    let store = store_with(&["ratings", "reviews"]).await;
    let created = store
        .create_consumer(new_consumer("market-web", &["ratings", "reviews"]))
        .await
        .unwrap();
    store.delete_service(&name("ratings")).await.unwrap();
    let token = TokenHash::of("con_named_market-web");
    assert_eq!(
        store.lookup_consumer(&token).await.unwrap(),
        Some(created),
        "the consumer still names the service"
    );
    store.create_service(new_service("ratings")).await.unwrap();
    assert!(store.resolve(&name("ratings")).await.is_ok());
}
