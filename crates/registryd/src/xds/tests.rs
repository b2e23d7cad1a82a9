//! The xDS resources as gRPC reads them, and the ADS protocol over a memory
//! store, driven as a gRPC client drives it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{Cluster, cluster::ClusterDiscoveryType},
            core::v3::{Node, address, config_source::ConfigSourceSpecifier},
            endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier},
            listener::v3::Listener,
            route::v3::{RouteAction, route::Action, route_action::ClusterSpecifier},
        },
        extensions::{
            filters::network::http_connection_manager::v3::{
                HttpConnectionManager, http_connection_manager::RouteSpecifier,
                http_filter::ConfigType,
            },
            load_balancing_policies::{
                least_request::v3::LeastRequest, wrr_locality::v3::WrrLocality,
            },
        },
        service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    },
    google::{
        protobuf::{Any, Struct, UInt32Value, Value, value::Kind},
        rpc,
    },
};
use futures::{StreamExt as _, stream::BoxStream};
use market_proto::registry::v1::{self as pb, registry_server::Registry as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};

use super::{
    ads::Ads,
    cache::Cache,
    resources::{self, CLUSTER, ENDPOINTS, LISTENER, Policies},
};
use crate::{
    RegistryApi,
    model::ServiceName,
    store::{MemoryStore, MemoryStoreConfig},
};

const ADMIN: &str = "adm_the-admin-token-of-these-tests-0123456789";

fn name(s: &str) -> ServiceName {
    s.parse().unwrap()
}

fn decode<T: prost::Message + Default>(any: &Any) -> T {
    T::decode(any.value.as_slice()).unwrap()
}

#[test]
fn the_type_urls_are_those_of_the_types_packed() {
    assert_eq!(resources::type_urls(), [LISTENER, CLUSTER, ENDPOINTS]);
}

#[test]
fn the_contracts_policies_are_those_of_their_options() {
    let policies = Policies::from_contracts().unwrap();
    assert_eq!(
        policies.of(&name("ratings")),
        market_proto::ratings::v1::RATINGS_CLIENT_POLICY
    );
    // Every other contract's, as build.rs read it: a service registers
    // under its package's second segment (`market.<name>.v1`).
    for (service, declared) in market_proto::CLIENT_POLICIES {
        let segments: Vec<&str> = service.split('.').collect();
        let ["market", registered, _version, _service] = segments[..] else {
            continue;
        };
        assert_eq!(policies.of(&name(registered)), *declared, "{service}");
    }
    let orders = policies.of(&name("orders"));
    assert_eq!(
        (orders.timeout, orders.retries, orders.failure_limit),
        (None, None, None)
    );
}

#[test]
fn a_timeout_set_replaces_the_contracts_and_nothing_else() {
    let mut policies = Policies::from_contracts().unwrap();
    policies.set_timeout(&name("ratings"), Duration::from_secs(5));
    let ratings = policies.of(&name("ratings"));
    assert_eq!(ratings.timeout, Some(Duration::from_secs(5)));
    assert_eq!(ratings.retries, Some(1));
    assert_eq!(ratings.retest_delay, Some(Duration::from_secs(30)));
    policies.set_timeout(&name("ratings"), Duration::ZERO);
    assert_eq!(policies.of(&name("ratings")).timeout, None);
    policies.set_timeout(&name("orders"), Duration::from_secs(3));
    assert_eq!(
        policies.of(&name("orders")).timeout,
        Some(Duration::from_secs(3))
    );
}

/// The one route of a Listener.
fn route_action(any: &Any) -> RouteAction {
    assert_eq!(any.type_url, LISTENER);
    let listener: Listener = decode(any);
    let manager: HttpConnectionManager = decode(
        listener
            .api_listener
            .unwrap()
            .api_listener
            .as_ref()
            .unwrap(),
    );
    let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
        panic!("the route is inline");
    };
    let [host] = routes.virtual_hosts.as_slice() else {
        panic!("one virtual host");
    };
    let [route] = host.routes.as_slice() else {
        panic!("one route");
    };
    let Some(Action::Route(action)) = &route.action else {
        panic!("a route action");
    };
    action.clone()
}

fn secs(d: Option<envoy_types::pb::google::protobuf::Duration>) -> (i64, i32) {
    let d = d.expect("a duration");
    (d.seconds, d.nanos)
}

fn value(v: Option<UInt32Value>) -> u32 {
    v.expect("a value").value
}

fn contract(service: &str) -> market_proto::ContractPolicy {
    Policies::from_contracts().unwrap().of(&name(service))
}

/// A contract unlike ratings': a short timeout, three failures to open,
/// a short retest, and round robin.
const SHORT: market_proto::ContractPolicy = market_proto::ContractPolicy {
    timeout: Some(Duration::from_millis(200)),
    deadline: Some(Duration::from_millis(300)),
    retest_delay: Some(Duration::from_secs(10)),
    max_open: Some(Duration::from_secs(60)),
    hedge_after: Some(Duration::from_millis(50)),
    failure_limit: Some(3),
    retries: Some(1),
    balance: Some(market_proto::BalanceMode::RoundRobin),
};

#[test]
fn a_listener_routes_every_call_to_its_cluster_within_the_timeout() {
    let mut policy = contract("ratings");
    policy.timeout = Some(Duration::from_millis(1500));
    let any = resources::listener(&name("ratings"), &policy);
    let listener: Listener = decode(&any);
    assert_eq!(listener.name, "ratings");
    let api = listener.api_listener.unwrap().api_listener.unwrap();
    assert_eq!(
        api.type_url,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let manager: HttpConnectionManager = decode(&api);
    let Some(RouteSpecifier::RouteConfig(routes)) = &manager.route_specifier else {
        panic!("the route is inline");
    };
    assert_eq!(routes.virtual_hosts[0].domains, ["*"]);
    let action = route_action(&any);
    assert_eq!(
        action.cluster_specifier,
        Some(ClusterSpecifier::Cluster("ratings".into()))
    );
    let limit = action.max_stream_duration.unwrap();
    for d in [limit.max_stream_duration, limit.grpc_timeout_header_max] {
        assert_eq!(secs(d), (1, 500_000_000));
    }
    let router = manager.http_filters.last().unwrap();
    assert_eq!(router.name, "envoy.filters.http.router");
    let Some(ConfigType::TypedConfig(config)) = &router.config_type else {
        panic!("the router has a typed config");
    };
    assert_eq!(
        config.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    );
}

#[test]
fn the_ratings_route_has_its_timeout_and_one_retry_on_unavailable() {
    let action = route_action(&resources::listener(&name("ratings"), &contract("ratings")));
    let limit = action.max_stream_duration.unwrap();
    assert_eq!(secs(limit.max_stream_duration), (1, 0));
    assert_eq!(secs(limit.grpc_timeout_header_max), (1, 0));
    let retry = action.retry_policy.expect("a retry policy");
    assert_eq!(retry.retry_on, "unavailable");
    assert_eq!(value(retry.num_retries), 1);
    let backoff = retry.retry_back_off.unwrap();
    assert_eq!(secs(backoff.base_interval), (0, 25_000_000));
    assert_eq!(secs(backoff.max_interval), (0, 250_000_000));
    assert_eq!(retry.per_try_timeout, None, "gRPC has no per-try timeout");
}

#[test]
fn a_short_contracts_route_has_its_200_ms_and_one_retry() {
    let action = route_action(&resources::listener(&name("search"), &SHORT));
    let limit = action.max_stream_duration.unwrap();
    assert_eq!(secs(limit.max_stream_duration), (0, 200_000_000));
    assert_eq!(secs(limit.grpc_timeout_header_max), (0, 200_000_000));
    let retry = action.retry_policy.expect("a retry policy");
    assert_eq!(retry.retry_on, "unavailable");
    assert_eq!(value(retry.num_retries), 1);
    assert!(action.hedge_policy.is_none(), "gRPC reads no hedge policy");
}

#[test]
fn a_route_without_a_contract_has_no_timeout_and_no_retries() {
    let orders = Policies::default().of(&name("orders"));
    let action = route_action(&resources::listener(&name("orders"), &orders));
    assert_eq!(action.max_stream_duration, None);
    assert_eq!(action.retry_policy, None);
    let mut none = orders;
    none.retries = Some(0);
    let action = route_action(&resources::listener(&name("orders"), &none));
    assert_eq!(action.retry_policy, None, "gRPC NACKs num_retries 0");
}

#[test]
fn a_cluster_takes_its_endpoints_from_ads() {
    let cluster: Cluster = decode(&resources::cluster(&name("ratings"), &contract("ratings")));
    assert_eq!(cluster.name, "ratings");
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(3)),
        "EDS"
    );
    let source = cluster.eds_cluster_config.unwrap().eds_config.unwrap();
    assert!(matches!(
        source.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(
        cluster.lb_policy, 0,
        "ROUND_ROBIN for clients before gRFC A52"
    );
}

/// The endpoint-picking policies of a Cluster, by type, in order, inside
/// its one `WrrLocality`; and the least-request choice count, if any.
fn picking(cluster: &Cluster) -> (Vec<String>, Option<u32>) {
    let top = cluster
        .load_balancing_policy
        .as_ref()
        .expect("a load_balancing_policy");
    let [policy] = top.policies.as_slice() else {
        panic!("one locality-picking policy: {top:?}");
    };
    let config = policy.typed_extension_config.as_ref().unwrap();
    let any = config.typed_config.as_ref().unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality"
    );
    let wrr: WrrLocality = decode(any);
    let mut types = Vec::new();
    let mut choices = None;
    for policy in wrr.endpoint_picking_policy.unwrap().policies {
        let any = policy.typed_extension_config.unwrap().typed_config.unwrap();
        if any.type_url.ends_with(".LeastRequest") {
            choices = Some(value(decode::<LeastRequest>(&any).choice_count));
        }
        types.push(any.type_url);
    }
    (types, choices)
}

const LEAST_REQUEST: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const ROUND_ROBIN: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";

#[test]
fn the_ratings_cluster_ejects_at_the_first_failure_for_30_s_and_picks_least_request() {
    let cluster: Cluster = decode(&resources::cluster(&name("ratings"), &contract("ratings")));
    assert_eq!(
        picking(&cluster),
        (
            vec![LEAST_REQUEST.to_owned(), ROUND_ROBIN.to_owned()],
            Some(2)
        ),
        "P2C: least-request, else round robin"
    );
    let outliers = cluster.outlier_detection.expect("outlier detection");
    assert_eq!(secs(outliers.interval), (1, 0));
    assert_eq!(secs(outliers.base_ejection_time), (30, 0), "retest_delay");
    assert_eq!(secs(outliers.max_ejection_time), (300, 0), "max_open");
    assert_eq!(value(outliers.max_ejection_percent), 50);
    assert_eq!(value(outliers.enforcing_success_rate), 0);
    assert_eq!(value(outliers.enforcing_failure_percentage), 100);
    assert_eq!(
        value(outliers.failure_percentage_threshold),
        0,
        "failure_limit 1: any failure"
    );
    assert_eq!(value(outliers.failure_percentage_minimum_hosts), 1);
    assert_eq!(value(outliers.failure_percentage_request_volume), 1);
}

#[test]
fn a_short_contracts_cluster_ejects_after_two_thirds_failed_and_picks_round_robin() {
    let cluster: Cluster = decode(&resources::cluster(&name("search"), &SHORT));
    assert_eq!(picking(&cluster), (vec![ROUND_ROBIN.to_owned()], None));
    let outliers = cluster.outlier_detection.expect("outlier detection");
    assert_eq!(secs(outliers.interval), (1, 0));
    assert_eq!(secs(outliers.base_ejection_time), (10, 0), "retest_delay");
    assert_eq!(secs(outliers.max_ejection_time), (60, 0), "max_open");
    assert_eq!(value(outliers.max_ejection_percent), 50);
    assert_eq!(value(outliers.enforcing_success_rate), 0);
    assert_eq!(value(outliers.enforcing_failure_percentage), 100);
    assert_eq!(
        value(outliers.failure_percentage_threshold),
        66,
        "failure_limit 3"
    );
    assert_eq!(value(outliers.failure_percentage_minimum_hosts), 1);
    assert_eq!(value(outliers.failure_percentage_request_volume), 3);
}

#[test]
fn a_cluster_without_a_breaker_has_no_outlier_detection() {
    let orders = Policies::default().of(&name("orders"));
    let cluster: Cluster = decode(&resources::cluster(&name("orders"), &orders));
    assert_eq!(cluster.outlier_detection, None);
    assert_eq!(
        picking(&cluster),
        (
            vec![LEAST_REQUEST.to_owned(), ROUND_ROBIN.to_owned()],
            Some(2)
        ),
        "the contracts' default balance is P2C"
    );
}

#[test]
fn the_failure_threshold_leaves_room_for_fewer_than_limit_failures_in_a_row() {
    let thresholds: Vec<u32> = [0, 1, 2, 3, 4, 10, 1000]
        .into_iter()
        .map(resources::failure_threshold)
        .collect();
    assert_eq!(thresholds, [0, 0, 50, 66, 75, 90, 99]);
}

#[test]
fn a_short_retest_delay_shortens_the_sweep() {
    let mut policy = contract("ratings");
    policy.retest_delay = Some(Duration::from_millis(400));
    let outliers = resources::outlier_detection(&policy).unwrap();
    assert_eq!(secs(outliers.interval), (0, 400_000_000));
}

// === the protocol, over a memory store ===

struct Fixture {
    api: Arc<RegistryApi<MemoryStore>>,
    ads: Ads<MemoryStore>,
    /// The `ratings` service token.
    ratings: String,
    /// The `reviews` consumer token.
    reviews_consumer: String,
}

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {ADMIN}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

async fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::open(MemoryStoreConfig::default()).unwrap());
    let api = Arc::new(RegistryApi::new(
        store.clone(),
        ADMIN,
        Duration::from_secs(3600),
        CancellationToken::new(),
    ));
    let mut tokens = HashMap::new();
    for service in ["ratings", "reviews"] {
        let created = api
            .create_service(admin(pb::CreateServiceRequest {
                name: service.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        tokens.insert(service, created);
    }
    let cache = Cache::new(
        store,
        Policies::from_contracts().unwrap(),
        Duration::from_secs(3600),
    );
    Fixture {
        ads: Ads::new(api.clone(), cache, CancellationToken::new()),
        api,
        ratings: tokens["ratings"].token.clone(),
        reviews_consumer: tokens["reviews"].consumer_token.clone(),
    }
}

impl Fixture {
    async fn register(&self, id: &str, port: u16) {
        let mut request = Request::new(pb::RegisterRequest {
            service: "ratings".into(),
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            metadata: HashMap::new(),
            ttl_seconds: 30,
        });
        let value = format!("Bearer {}", self.ratings).parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        self.api.register(request).await.unwrap();
    }

    async fn deregister(&self, id: &str) {
        self.api
            .deregister(admin(pb::DeregisterRequest {
                service: "ratings".into(),
                instance_id: id.into(),
                lease_id: 0,
            }))
            .await
            .unwrap();
    }

    /// Opens a stream with `token` in the node's metadata (none: no
    /// metadata), asking first for `names` of `type_url`.
    async fn open(
        &self,
        token: Option<&str>,
        type_url: &str,
        names: &[&str],
    ) -> Result<Client, Status> {
        let metadata = token.map(|token| Struct {
            fields: [(
                super::TOKEN_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(token.to_owned())),
                },
            )]
            .into(),
        });
        let mut first = request(type_url, names, "", "");
        first.node = Some(Node {
            id: "test-node".into(),
            metadata,
            ..Default::default()
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let responses = self
            .ads
            .open(
                None,
                first,
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            )
            .await?;
        Ok(Client { tx, responses })
    }
}

fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

struct Client {
    tx: mpsc::UnboundedSender<Result<DiscoveryRequest, Status>>,
    responses: BoxStream<'static, Result<DiscoveryResponse, Status>>,
}

impl Client {
    fn send(&self, request: DiscoveryRequest) {
        self.tx.send(Ok(request)).unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.responses.next())
            .await
            .expect("a response in time")
            .expect("the stream goes on")
            .expect("no error")
    }

    /// Asserts that nothing comes within 100 ms.
    async fn nothing(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(100), self.responses.next()).await;
        assert!(got.is_err(), "expected nothing, got {got:?}");
    }

    /// Acknowledges `response`, naming `names`.
    fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(request(
            &response.type_url,
            names,
            &response.version_info,
            &response.nonce,
        ));
    }
}

fn ports(response: &DiscoveryResponse) -> Vec<u32> {
    assert_eq!(response.type_url, ENDPOINTS);
    let [any] = response.resources.as_slice() else {
        panic!("one ClusterLoadAssignment: {response:?}");
    };
    let assignment: ClusterLoadAssignment = decode(any);
    assert_eq!(assignment.cluster_name, "ratings");
    let mut ports = Vec::new();
    for locality in &assignment.endpoints {
        assert_eq!(locality.load_balancing_weight.unwrap().value, 1);
        for endpoint in &locality.lb_endpoints {
            assert_eq!(endpoint.health_status, 1, "HEALTHY");
            let Some(HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
                panic!("an endpoint");
            };
            let Some(address::Address::SocketAddress(socket)) =
                e.address.as_ref().unwrap().address.as_ref()
            else {
                panic!("a socket address");
            };
            assert_eq!(socket.address, "127.0.0.1");
            let Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    port,
                ),
            ) = socket.port_specifier
            else {
                panic!("a port");
            };
            ports.push(port);
        }
    }
    ports
}

#[tokio::test]
async fn a_client_gets_each_type_then_each_change_and_acks_change_nothing() {
    let f = fixture().await;
    f.register("ratings-1", 8001).await;
    f.register("ratings-2", 8002).await;
    let mut client = f
        .open(Some(&f.ratings), LISTENER, &["ratings"])
        .await
        .unwrap();

    let lds = client.next().await;
    assert_eq!(
        (lds.type_url.as_str(), lds.version_info.as_str()),
        (LISTENER, "1")
    );
    let listener: Listener = decode(&lds.resources[0]);
    assert_eq!(listener.name, "ratings");
    client.ack(&lds, &["ratings"]);
    client.send(request(CLUSTER, &["ratings"], "", ""));
    let cds = client.next().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(decode::<Cluster>(&cds.resources[0]).name, "ratings");
    client.ack(&cds, &["ratings"]);
    client.send(request(ENDPOINTS, &["ratings"], "", ""));
    let eds = client.next().await;
    assert_eq!(ports(&eds), [8001, 8002]);
    client.ack(&eds, &["ratings"]);
    client.nothing().await;

    // A change sends the endpoints again, and only them.
    f.register("ratings-3", 8003).await;
    let changed = client.next().await;
    assert_eq!(ports(&changed), [8001, 8002, 8003]);
    assert_ne!(changed.nonce, eds.nonce);
    assert_ne!(changed.version_info, eds.version_info);
    client.ack(&changed, &["ratings"]);
    f.deregister("ratings-1").await;
    let changed = client.next().await;
    assert_eq!(ports(&changed), [8002, 8003]);

    // A NACK is logged and changes nothing; nor does a stale nonce.
    let mut nack = request(ENDPOINTS, &["ratings"], "2", &changed.nonce);
    nack.error_detail = Some(rpc::Status {
        code: 3,
        message: "bad endpoints".into(),
        details: Vec::new(),
    });
    client.send(nack);
    client.send(request(ENDPOINTS, &["ratings", "reviews"], "1", &eds.nonce));
    client.nothing().await;
    f.register("ratings-4", 8004).await;
    assert_eq!(ports(&client.next().await), [8002, 8003, 8004]);
}

#[tokio::test]
async fn the_cache_publishes_one_encoding_to_every_subscriber() {
    let f = fixture().await;
    f.register("ratings-1", 8001).await;
    let store = f.api.store().clone();
    let cache = Cache::new(store, Policies::default(), Duration::from_secs(3600));
    let mut a = cache.subscribe(&name("ratings"));
    let b = cache.subscribe(&name("ratings"));
    let present = a
        .wait_for(|p| matches!(p, super::cache::Published::Present(_)))
        .await
        .unwrap()
        .clone();
    let (super::cache::Published::Present(x), super::cache::Published::Present(y)) =
        (present, b.borrow().clone())
    else {
        panic!("both see the service");
    };
    assert!(Arc::ptr_eq(&x.endpoints, &y.endpoints));
    assert!(Arc::ptr_eq(&x.listener, &y.listener));
}

#[tokio::test]
async fn a_missing_listener_is_answered_absent_and_found_once_created() {
    let f = fixture().await;
    let mut client = f.open(Some(ADMIN), LISTENER, &["orders"]).await.unwrap();
    // Asking for a missing one alone gets an answer: none.
    let lds = client.next().await;
    assert!(lds.resources.is_empty(), "{lds:?}");
    client.ack(&lds, &["orders"]);

    // Subscribing to another one answers with every listener that exists.
    client.send(request(
        LISTENER,
        &["orders", "ratings"],
        &lds.version_info,
        &lds.nonce,
    ));
    let lds = client.next().await;
    let names: Vec<String> = lds
        .resources
        .iter()
        .map(|r| decode::<Listener>(r).name)
        .collect();
    assert_eq!(names, ["ratings"], "orders is left out: it does not exist");
    client.ack(&lds, &["orders", "ratings"]);
    client.nothing().await;

    f.api
        .create_service(admin(pb::CreateServiceRequest {
            name: "orders".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let lds = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .unwrap();
    let names: Vec<String> = lds
        .resources
        .iter()
        .map(|r| decode::<Listener>(r).name)
        .collect();
    assert_eq!(names, ["orders", "ratings"]);
}

#[tokio::test]
async fn a_stream_without_a_valid_token_learns_nothing() {
    let f = fixture().await;
    f.register("ratings-1", 8001).await;
    for (token, says) in [
        (None, "has no REGISTRY_TOKEN"),
        (Some("con_not-a-token"), "unknown token"),
    ] {
        let Err(status) = f.open(token, LISTENER, &["ratings"]).await else {
            panic!("{token:?} was accepted");
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
}

#[tokio::test]
async fn a_token_of_another_service_learns_nothing_of_ratings() {
    let f = fixture().await;
    f.register("ratings-1", 8001).await;
    let mut client = f
        .open(Some(&f.reviews_consumer), LISTENER, &["ratings", "nosuch"])
        .await
        .unwrap();
    let lds = client.next().await;
    assert!(lds.resources.is_empty(), "{lds:?}");
    client.ack(&lds, &["ratings", "nosuch"]);
    client.send(request(CLUSTER, &["ratings"], "", ""));
    let cds = client.next().await;
    assert!(cds.resources.is_empty(), "{cds:?}");
    client.send(request(ENDPOINTS, &["ratings"], "", ""));
    client.nothing().await;
    f.register("ratings-2", 8002).await;
    client.nothing().await;
}
