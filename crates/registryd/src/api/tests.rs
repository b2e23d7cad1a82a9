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
