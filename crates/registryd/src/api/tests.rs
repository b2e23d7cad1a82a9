//! The service's own checks, called as tonic calls them, over a memory store.

use market_proto::registry::v1::registry_server::Registry as _;
use tonic::Code;

use super::*;
use crate::store::{MemoryStore, MemoryStoreConfig};

const ADMIN: &str = "adm_the-admin-token-of-these-tests-0123456789";

fn api() -> RegistryApi<MemoryStore> {
    let store = MemoryStore::open(MemoryStoreConfig::default()).expect("a memory store");
    RegistryApi::new(
        Arc::new(store),
        ADMIN,
        Duration::from_secs(3600),
        CancellationToken::new(),
    )
}

fn request<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

fn create(name: &str, token: &str, consumer_token: &str) -> pb::CreateServiceRequest {
    pb::CreateServiceRequest {
        name: name.into(),
        token: token.into(),
        consumer_token: consumer_token.into(),
    }
}

/// Found by the `registry_requests` fuzz target: a provided token that was
/// already the admin's or another service's was accepted, and its old grant
/// silently replaced.
#[tokio::test]
async fn create_service_refuses_tokens_in_use() {
    let api = api();
    let orders_token = "svc_orders-provisioned-token-0123456789abcdef";
    let created = api
        .create_service(request(ADMIN, create("orders", orders_token, "")))
        .await
        .expect("created");
    let orders_consumer = created.into_inner().consumer_token;

    for (token, consumer, code) in [
        (ADMIN, "", Code::FailedPrecondition),
        ("", ADMIN, Code::FailedPrecondition),
        (orders_token, "", Code::FailedPrecondition),
        ("", orders_consumer.as_str(), Code::FailedPrecondition),
        (orders_token, orders_token, Code::InvalidArgument),
    ] {
        let refused = api
            .create_service(request(ADMIN, create("billing", token, consumer)))
            .await
            .expect_err("a token in use");
        assert_eq!(refused.code(), code, "{token:?}, {consumer:?}: {refused}");
    }

    // The orders token still registers orders' instances.
    let registered = api
        .register(request(
            orders_token,
            pb::RegisterRequest {
                service: "orders".into(),
                address: "127.0.0.1:9001".into(),
                ttl_seconds: 30,
                ..Default::default()
            },
        ))
        .await;
    assert!(registered.is_ok(), "{registered:?}");
}

/// Whether a token is the admin's is answered to the admin alone: anyone else
/// is refused before the tokens are compared.
#[tokio::test]
async fn only_the_admin_learns_a_token_is_the_admins() {
    let api = api();
    let created = api
        .create_service(request(ADMIN, create("orders", "", "")))
        .await
        .expect("created")
        .into_inner();
    let refused = api
        .create_service(request(&created.token, create("billing", ADMIN, "")))
        .await
        .expect_err("not the admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
}

fn consumer(name: &str, services: &[&str], token: &str) -> pb::CreateConsumerRequest {
    pb::CreateConsumerRequest {
        name: name.into(),
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        token: token.into(),
    }
}

fn registration(service: &str, port: u16) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.into(),
        instance_id: format!("{service}-1"),
        address: format!("127.0.0.1:{port}"),
        ttl_seconds: 30,
        ..Default::default()
    }
}

/// `api()` with `services` created; their service tokens, in order.
async fn api_with(services: &[&str]) -> (RegistryApi<MemoryStore>, Vec<pb::CreateServiceResponse>) {
    let api = api();
    let mut created = Vec::new();
    for name in services {
        let response = api
            .create_service(request(ADMIN, create(name, "", "")))
            .await
            .expect("created");
        created.push(response.into_inner());
    }
    (api, created)
}

fn resolve(service: &str) -> pb::ResolveRequest {
    pb::ResolveRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn a_named_consumer_reads_its_services_and_nothing_else() {
    let (api, services) = api_with(&["ratings", "recommendations", "reviews"]).await;
    let ratings_token = services[0].token.clone();
    let lease = api
        .register(request(&ratings_token, registration("ratings", 9001)))
        .await
        .expect("registered")
        .into_inner()
        .lease_id;

    let created = api
        .create_consumer(request(
            ADMIN,
            consumer("market-web", &["recommendations", "ratings", "ratings"], ""),
        ))
        .await
        .expect("created")
        .into_inner();
    assert_eq!(created.name, "market-web");
    assert_eq!(
        created.services,
        ["ratings", "recommendations"],
        "sorted, once each"
    );
    assert!(created.token.starts_with("con_"), "{}", created.token);
    let token = created.token.as_str();

    // It reads both, without lease ids.
    let resolved = api
        .resolve(request(token, resolve("ratings")))
        .await
        .expect("resolve ratings")
        .into_inner();
    assert_eq!(resolved.instances.len(), 1);
    assert_eq!(resolved.instances[0].lease_id, 0, "a reader sees no lease");
    api.resolve(request(token, resolve("recommendations")))
        .await
        .expect("resolve recommendations");
    let mut watch = api
        .watch(request(
            token,
            pb::WatchRequest {
                service: "ratings".into(),
                since_revision: 0,
            },
        ))
        .await
        .expect("watch ratings")
        .into_inner();
    match watch.next().await {
        Some(Ok(pb::WatchResponse {
            event: Some(pb::watch_response::Event::Snapshot(snapshot)),
        })) => assert_eq!(snapshot.instances[0].lease_id, 0),
        other => panic!("expected a snapshot, got {other:?}"),
    }

    // Not a third service.
    let refused = api
        .resolve(request(token, resolve("reviews")))
        .await
        .expect_err("not its service");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(
        refused
            .message()
            .contains("consumer 'market-web' may not read service 'reviews'; it may read only ratings, recommendations"),
        "{refused}"
    );
    let refused = api
        .watch(request(
            token,
            pb::WatchRequest {
                service: "reviews".into(),
                since_revision: 0,
            },
        ))
        .await
        .err()
        .expect("not its service");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");

    // Never a write, not even to its own services.
    let writes = [
        api.register(request(token, registration("ratings", 9002)))
            .await
            .map(|_| ()),
        api.heartbeat(request(token, pb::HeartbeatRequest { lease_id: lease }))
            .await
            .map(|_| ()),
        api.deregister(request(
            token,
            pb::DeregisterRequest {
                lease_id: lease,
                ..Default::default()
            },
        ))
        .await
        .map(|_| ()),
        api.deregister(request(
            token,
            pb::DeregisterRequest {
                lease_id: 0,
                service: "ratings".into(),
                instance_id: "ratings-1".into(),
            },
        ))
        .await
        .map(|_| ()),
    ];
    for refused in writes {
        let refused = refused.expect_err("a reader may not write");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        assert!(
            refused
                .message()
                .contains("consumer 'market-web' may only read (Resolve, Watch)"),
            "{refused}"
        );
    }

    // Never the admin.
    for refused in [
        api.create_service(request(token, create("evil", "", "")))
            .await
            .map(|_| ()),
        api.create_consumer(request(token, consumer("evil", &["ratings"], "")))
            .await
            .map(|_| ()),
        api.list_services(request(token, pb::ListServicesRequest {}))
            .await
            .map(|_| ()),
    ] {
        let refused = refused.expect_err("not the admin");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
        assert!(
            refused.message().contains("needs the admin token")
                && refused.message().contains("consumer 'market-web'"),
            "{refused}"
        );
    }

    // The instance is still there: nothing above changed anything.
    let resolved = api
        .resolve(request(ADMIN, resolve("ratings")))
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.instances.len(), 1);
}

/// As for `CreateService`: fields are checked before the caller's rights,
/// and a token in use is refused, to the admin alone.
#[tokio::test]
async fn create_consumer_checks_fields_then_rights_then_tokens() {
    let (api, services) = api_with(&["ratings"]).await;
    let service_token = services[0].token.clone();
    let service_consumer = services[0].consumer_token.clone();

    let invalid = [
        (
            consumer("Market_Web", &["ratings"], ""),
            "invalid consumer name \"Market_Web\"",
        ),
        (consumer("market-web", &[], ""), "no services given"),
        (
            consumer("market-web", &["Ratings"], ""),
            "invalid service name \"Ratings\"",
        ),
        (
            consumer("market-web", &["ratings"], "short"),
            "invalid token",
        ),
    ];
    for (req, says) in invalid.iter().cloned() {
        // Refused for the field even to a caller that may not create.
        let refused = api
            .create_consumer(request(&service_token, req))
            .await
            .expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains(says), "{says}: {refused}");
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let refused = api
        .create_consumer(request(
            ADMIN,
            pb::CreateConsumerRequest {
                name: "market-web".into(),
                services: too_many,
                token: String::new(),
            },
        ))
        .await
        .expect_err("too many");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("at most 64"), "{refused}");

    let refused = api
        .create_consumer(request(
            &service_token,
            consumer("market-web", &["ratings"], ADMIN),
        ))
        .await
        .expect_err("not the admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");

    let other = "con_another-provisioned-consumer-token-0123456789";
    api.create_consumer(request(ADMIN, consumer("checkout", &["ratings"], other)))
        .await
        .expect("created with a provided token");
    for token in [ADMIN, &service_token, &service_consumer, other] {
        let refused = api
            .create_consumer(request(ADMIN, consumer("market-web", &["ratings"], token)))
            .await
            .expect_err("a token in use");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
        assert!(refused.message().contains("already in use"), "{refused}");
    }
    // Nor may a service take a named consumer's token.
    let refused = api
        .create_service(request(ADMIN, create("billing", other, "")))
        .await
        .expect_err("a token in use");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");

    let refused = api
        .create_consumer(request(
            ADMIN,
            consumer("market-web", &["ratings", "nope"], ""),
        ))
        .await
        .expect_err("an unknown service");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");
    assert!(
        refused.message().contains("service 'nope' does not exist"),
        "{refused}"
    );

    let refused = api
        .create_consumer(request(ADMIN, consumer("checkout", &["ratings"], "")))
        .await
        .expect_err("a name in use");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused}");
    assert!(
        refused
            .message()
            .contains("consumer 'checkout' already exists"),
        "{refused}"
    );

    // None of the refusals above took the name.
    api.create_consumer(request(ADMIN, consumer("market-web", &["ratings"], "")))
        .await
        .expect("the name is free");
}

#[tokio::test]
async fn a_deleted_consumer_is_unknown_and_its_name_free() {
    let (api, _) = api_with(&["ratings"]).await;
    let token = api
        .create_consumer(request(ADMIN, consumer("market-web", &["ratings"], "")))
        .await
        .expect("created")
        .into_inner()
        .token;
    let delete = |name: &str| request(ADMIN, pb::DeleteConsumerRequest { name: name.into() });
    let refused = api
        .delete_consumer(request(
            &token,
            pb::DeleteConsumerRequest {
                name: "market-web".into(),
            },
        ))
        .await
        .expect_err("not the admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    api.delete_consumer(delete("market-web"))
        .await
        .expect("deleted");

    let refused = api
        .resolve(request(&token, resolve("ratings")))
        .await
        .expect_err("deleted");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let refused = api
        .delete_consumer(delete("market-web"))
        .await
        .expect_err("gone");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");
    assert!(
        refused
            .message()
            .contains("consumer 'market-web' does not exist"),
        "{refused}"
    );
    let refused = api
        .delete_consumer(delete("Bad"))
        .await
        .expect_err("malformed");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    api.create_consumer(request(ADMIN, consumer("market-web", &["ratings"], "")))
        .await
        .expect("the name is free again");
}

#[tokio::test]
async fn a_service_deleted_and_created_again_is_readable_again() {
    let (api, _) = api_with(&["ratings", "reviews"]).await;
    let token = api
        .create_consumer(request(
            ADMIN,
            consumer("market-web", &["ratings", "reviews"], ""),
        ))
        .await
        .expect("created")
        .into_inner()
        .token;
    api.delete_service(request(
        ADMIN,
        pb::DeleteServiceRequest {
            name: "ratings".into(),
        },
    ))
    .await
    .expect("deleted");
    let refused = api
        .resolve(request(&token, resolve("ratings")))
        .await
        .expect_err("gone");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");
    api.resolve(request(&token, resolve("reviews")))
        .await
        .expect("the other service is still readable");
    let refused = api
        .create_consumer(request(ADMIN, consumer("checkout", &["ratings"], "")))
        .await
        .expect_err("a consumer of a service that is gone");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");

    api.create_service(request(ADMIN, create("ratings", "", "")))
        .await
        .expect("created again");
    api.resolve(request(&token, resolve("ratings")))
        .await
        .expect("readable again");
}

/// A named consumer's token can go while its services stay: its open
/// watches end then, as a deleted service's token ends its `KeepAlive`.
#[tokio::test(start_paused = true)]
async fn deleting_a_consumer_ends_its_watches() {
    let store = MemoryStore::open(MemoryStoreConfig::default()).expect("a memory store");
    let api = RegistryApi::new(
        Arc::new(store),
        ADMIN,
        Duration::from_millis(200),
        CancellationToken::new(),
    );
    api.create_service(request(ADMIN, create("ratings", "", "")))
        .await
        .expect("created");
    let token = api
        .create_consumer(request(ADMIN, consumer("market-web", &["ratings"], "")))
        .await
        .expect("created")
        .into_inner()
        .token;
    let mut watch = api
        .watch(request(
            &token,
            pb::WatchRequest {
                service: "ratings".into(),
                since_revision: 0,
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    watch.next().await.expect("a snapshot").expect("no error");
    api.delete_consumer(request(
        ADMIN,
        pb::DeleteConsumerRequest {
            name: "market-web".into(),
        },
    ))
    .await
    .expect("deleted");
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match watch.next().await {
                Some(Ok(_progress)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the watch ends within the re-check interval");
    let ended = ended.expect("an error, not the end").expect_err("an error");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended}");
    assert!(ended.message().contains("token was deleted"), "{ended}");
}
