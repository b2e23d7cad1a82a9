//! Named consumers as an operator makes them: `registryctl create-consumer`
//! gives one read-only token for several services, on the embedded store and
//! on a real etcd server, and it outlives a registry restart but not its
//! deletion. A service's own consumer token goes on as before.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt as _;
use market_proto::registry::v1::{self as pb, watch_response::Event};
use test_support::{Cluster, StoreKind};
use tonic::Code;

fn resolve(service: &str) -> pb::ResolveRequest {
    pb::ResolveRequest {
        service: service.into(),
    }
}

fn registration(service: &str, port: u16) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.into(),
        instance_id: format!("{service}-1"),
        address: format!("127.0.0.1:{port}"),
        metadata: HashMap::new(),
        ttl_seconds: 30,
    }
}

fn consumer(name: &str, services: &[&str], token: &str) -> pb::CreateConsumerRequest {
    pb::CreateConsumerRequest {
        name: name.into(),
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        token: token.into(),
    }
}

/// Asserts a refusal's code and that its message says `says`.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: Code,
    says: &str,
) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.message().contains(says),
        "{what}: the message should say {says:?}: {status:?}"
    );
}

/// The first message of a watch, which must be a snapshot.
async fn first_snapshot(stream: &mut tonic::Streaming<pb::WatchResponse>) -> pb::Snapshot {
    let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a watch message in time")
        .expect("the stream goes on")
        .expect("no error");
    match message.event {
        Some(Event::Snapshot(snapshot)) => snapshot,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// Creates `service` with `registryctl` and returns its service token and
/// its own consumer token.
async fn create_service_with_consumer_token(cluster: &Cluster, service: &str) -> (String, String) {
    let created = cluster
        .registry
        .ctl(&["create-service", service, "--json"])
        .await;
    let value: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    let token = |field: &str| {
        value[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {created}"))
            .to_owned()
    };
    (token("token"), token("consumer_token"))
}

async fn a_named_consumer_reads_exactly_its_services(store: StoreKind) {
    // Idle watches hear from the registry every second, so that one of a
    // deleted consumer ends soon.
    let mut cluster = Cluster::start_with(store, &["--progress-interval", "1s"]).await;
    let (recommendations_token, recommendations_consumer) =
        create_service_with_consumer_token(&cluster, "recommendations").await;
    cluster.registry.create_service("reviews").await;
    let mut ratings = cluster.registry.client(&cluster.token);
    let ratings_lease = ratings
        .register(registration("ratings", 9001))
        .await
        .expect("register ratings")
        .into_inner()
        .lease_id;
    cluster
        .registry
        .client(&recommendations_token)
        .register(registration("recommendations", 9002))
        .await
        .expect("register recommendations");

    let token = cluster
        .registry
        .create_consumer("market-web", &["ratings", "recommendations"])
        .await;
    assert!(
        token.starts_with("con_") && !token.contains(char::is_whitespace),
        "create-consumer prints the token alone: {token:?}"
    );
    cluster
        .registry
        .proc
        .wait_for_line("created consumer market-web for services ratings,recommendations")
        .await;

    // It reads both services, without their leases.
    let mut reader = cluster.registry.client(&token);
    for (service, address) in [
        ("ratings", "http://127.0.0.1:9001"),
        ("recommendations", "http://127.0.0.1:9002"),
    ] {
        let resolved = reader
            .resolve(resolve(service))
            .await
            .unwrap_or_else(|e| panic!("resolve {service}: {e:?}"))
            .into_inner();
        assert_eq!(resolved.instances.len(), 1, "{service}: {resolved:?}");
        assert_eq!(resolved.instances[0].address, address);
        assert_eq!(resolved.instances[0].lease_id, 0, "a reader sees no lease");
        let mut watch = reader
            .watch(pb::WatchRequest {
                service: service.into(),
                since_revision: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("watch {service}: {e:?}"))
            .into_inner();
        let snapshot = first_snapshot(&mut watch).await;
        assert_eq!(snapshot.instances.len(), 1, "{service}: {snapshot:?}");
        assert_eq!(snapshot.instances[0].lease_id, 0);
    }

    // Not a third service, and never a write.
    assert_refused(
        "resolve a third service",
        reader.resolve(resolve("reviews")).await,
        Code::PermissionDenied,
        "consumer 'market-web' may not read service 'reviews'; it may read only ratings, recommendations",
    );
    assert_refused(
        "watch a third service",
        reader
            .watch(pb::WatchRequest {
                service: "reviews".into(),
                since_revision: 0,
            })
            .await,
        Code::PermissionDenied,
        "consumer 'market-web' may not read service 'reviews'",
    );
    let read_only = "consumer 'market-web' may only read (Resolve, Watch)";
    assert_refused(
        "register",
        reader.register(registration("ratings", 9003)).await,
        Code::PermissionDenied,
        read_only,
    );
    assert_refused(
        "heartbeat",
        reader
            .heartbeat(pb::HeartbeatRequest {
                lease_id: ratings_lease,
            })
            .await,
        Code::PermissionDenied,
        read_only,
    );
    assert_refused(
        "keep-alive",
        reader
            .keep_alive(futures::stream::iter([pb::KeepAliveRequest {
                lease_id: ratings_lease,
            }]))
            .await,
        Code::PermissionDenied,
        read_only,
    );
    assert_refused(
        "deregister",
        reader
            .deregister(pb::DeregisterRequest {
                lease_id: 0,
                service: "ratings".into(),
                instance_id: "ratings-1".into(),
            })
            .await,
        Code::PermissionDenied,
        read_only,
    );
    assert_refused(
        "create a service",
        reader
            .create_service(pb::CreateServiceRequest {
                name: "evil".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "needs the admin token",
    );

    // A service's own consumer token goes on as before: its service only.
    let mut own = cluster.registry.client(&recommendations_consumer);
    own.resolve(resolve("recommendations"))
        .await
        .expect("a service's consumer token reads its service");
    assert_refused(
        "a service's consumer token reading another service",
        own.resolve(resolve("ratings")).await,
        Code::PermissionDenied,
        "consumer token of service 'recommendations' may not read service 'ratings'",
    );

    // A service deleted is gone for it as for anyone; created again under
    // its name, it is readable again.
    cluster.registry.ctl(&["delete-service", "reviews"]).await;
    cluster
        .registry
        .ctl(&["delete-service", "recommendations"])
        .await;
    assert_refused(
        "resolve a deleted service",
        reader.resolve(resolve("recommendations")).await,
        Code::NotFound,
        "service 'recommendations' does not exist",
    );
    cluster.registry.create_service("recommendations").await;
    let resolved = reader
        .resolve(resolve("recommendations"))
        .await
        .expect("a service created again is readable")
        .into_inner();
    assert!(resolved.instances.is_empty(), "{resolved:?}");
    cluster.registry.create_service("reviews").await;
    assert_refused(
        "resolve a third service created again",
        reader.resolve(resolve("reviews")).await,
        Code::PermissionDenied,
        "may not read service 'reviews'",
    );

    // The token outlives a restart of the registry.
    cluster.stop_registry().await;
    cluster.start_registry().await;
    let mut reader = cluster.registry.client(&token);
    reader
        .resolve(resolve("ratings"))
        .await
        .expect("the token works after a restart");
    assert_refused(
        "resolve a third service after a restart",
        reader.resolve(resolve("reviews")).await,
        Code::PermissionDenied,
        "it may read only ratings, recommendations",
    );

    // Deleted, it is unknown at once, and its open watch ends.
    let mut watch = reader
        .watch(pb::WatchRequest {
            service: "ratings".into(),
            since_revision: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    first_snapshot(&mut watch).await;
    let deleted = cluster
        .registry
        .ctl(&["delete-consumer", "market-web"])
        .await;
    assert!(deleted.contains("deleted consumer market-web"), "{deleted}");
    assert_refused(
        "resolve with a deleted consumer's token",
        reader.resolve(resolve("ratings")).await,
        Code::Unauthenticated,
        "unknown token",
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(_progress)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the watch ends within a few progress intervals");
    let ended = ended
        .expect("an error, not the end of the stream")
        .expect_err("an error");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("token was deleted"), "{ended:?}");
}

async fn bad_consumers_get_a_precise_status_and_change_nothing(store: StoreKind) {
    let cluster = Cluster::start_with(store, &[]).await;
    let (_, ratings_consumer) = create_service_with_consumer_token(&cluster, "reviews").await;
    let mut admin = cluster.registry.client(&cluster.registry.admin_token);
    let taken = cluster
        .registry
        .create_consumer("checkout", &["ratings"])
        .await;

    assert_refused(
        "no services",
        admin.create_consumer(consumer("market-web", &[], "")).await,
        Code::InvalidArgument,
        "no services given: a consumer reads 1 to 64 services",
    );
    assert_refused(
        "an unknown service",
        admin
            .create_consumer(consumer("market-web", &["ratings", "nope"], ""))
            .await,
        Code::NotFound,
        "service 'nope' does not exist",
    );
    assert_refused(
        "a malformed name",
        admin
            .create_consumer(consumer("Market_Web", &["ratings"], ""))
            .await,
        Code::InvalidArgument,
        "invalid consumer name \"Market_Web\": use 1 to 63 lowercase letters",
    );
    assert_refused(
        "a malformed service name",
        admin
            .create_consumer(consumer("market-web", &["Ratings"], ""))
            .await,
        Code::InvalidArgument,
        "invalid service name \"Ratings\"",
    );
    assert_refused(
        "a name in use",
        admin
            .create_consumer(consumer("checkout", &["reviews"], ""))
            .await,
        Code::AlreadyExists,
        "consumer 'checkout' already exists",
    );
    for (what, token) in [
        ("the admin token", cluster.registry.admin_token.as_str()),
        ("a service token", cluster.token.as_str()),
        ("a service's consumer token", ratings_consumer.as_str()),
        ("another named consumer's token", taken.as_str()),
    ] {
        assert_refused(
            what,
            admin
                .create_consumer(consumer("market-web", &["ratings"], token))
                .await,
            Code::FailedPrecondition,
            "a provided token is already in use",
        );
    }
    assert_refused(
        "a service given a named consumer's token",
        admin
            .create_service(pb::CreateServiceRequest {
                name: "billing".into(),
                token: taken.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "a provided token is already in use",
    );
    assert_refused(
        "deleting an unknown consumer",
        admin
            .delete_consumer(pb::DeleteConsumerRequest {
                name: "market-web".into(),
            })
            .await,
        Code::NotFound,
        "consumer 'market-web' does not exist",
    );
    assert_refused(
        "a consumer creating a consumer",
        cluster
            .registry
            .client(&taken)
            .create_consumer(consumer("market-web", &["ratings"], ""))
            .await,
        Code::PermissionDenied,
        "CreateConsumer needs the admin token",
    );

    // Nothing refused above was created: the name is still free, and the
    // taken token still reads what it read.
    let created = admin
        .create_consumer(consumer(
            "market-web",
            &["reviews", "ratings", "reviews"],
            "",
        ))
        .await
        .expect("the name is free")
        .into_inner();
    assert_eq!(
        created.services,
        ["ratings", "reviews"],
        "sorted, once each"
    );
    cluster
        .registry
        .client(&taken)
        .resolve(resolve("ratings"))
        .await
        .expect("the other consumer still reads");
}

#[tokio::test]
async fn a_named_consumer_reads_exactly_its_services_on_memory() {
    a_named_consumer_reads_exactly_its_services(StoreKind::Memory).await;
}

#[tokio::test]
async fn a_named_consumer_reads_exactly_its_services_on_etcd() {
    a_named_consumer_reads_exactly_its_services(StoreKind::Etcd).await;
}

#[tokio::test]
async fn bad_consumers_get_a_precise_status_and_change_nothing_on_memory() {
    bad_consumers_get_a_precise_status_and_change_nothing(StoreKind::Memory).await;
}

#[tokio::test]
async fn bad_consumers_get_a_precise_status_and_change_nothing_on_etcd() {
    bad_consumers_get_a_precise_status_and_change_nothing(StoreKind::Etcd).await;
}

/// A deployment provisions the shop's token itself and runs its setup job
/// again on every start: `--token-env` and `--if-missing`, as the compose
/// file and the Kubernetes job do.
#[tokio::test]
async fn a_provisioned_consumer_is_created_once_by_a_setup_job_run_twice() {
    let cluster = Cluster::start(&[]).await;
    cluster.registry.create_service("recommendations").await;
    let token = "con_provisioned-by-the-deployment-0123456789";
    let run = || {
        tokio::process::Command::new(test_support::bin("registryctl"))
            .args(["--registry", &cluster.registry.url()])
            .args(["--admin-token", &cluster.registry.admin_token])
            .args(["create-consumer", "market-web"])
            .args(["--services", "ratings,recommendations"])
            .args(["--token-env", "WEB_TOKEN", "--if-missing"])
            .env("WEB_TOKEN", token)
            .output()
    };
    let first = run().await.expect("run registryctl");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), token);
    let again = run().await.expect("run registryctl");
    assert!(
        again.status.success(),
        "--if-missing: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let listed = cluster
        .registry
        .client(token)
        .resolve(resolve("recommendations"))
        .await;
    assert!(listed.is_ok(), "the provisioned token reads: {listed:?}");
}
