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
            route::v3::{route::Action, route_action::ClusterSpecifier},
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter::ConfigType,
        },
        service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    },
    google::{
        protobuf::{Any, Struct, Value, value::Kind},
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
    resources::{self, CLUSTER, ENDPOINTS, LISTENER, Timeouts},
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
fn the_contracts_timeouts_are_those_of_their_policies() {
    let timeouts = Timeouts::from_contracts().unwrap();
    let ratings = market_proto::ratings::v1::RATINGS_CLIENT_POLICY.timeout;
    assert_eq!(ratings, Some(Duration::from_secs(1)));
    assert_eq!(timeouts.of(&name("ratings")), ratings);
    assert_eq!(
        timeouts.of(&name("recommendations")),
        market_proto::recommendations::v1::RECOMMENDER_CLIENT_POLICY.timeout
    );
    assert_eq!(timeouts.of(&name("orders")), None);
}

#[test]
fn a_listener_routes_every_call_to_its_cluster_within_the_timeout() {
    let any = resources::listener(&name("ratings"), Some(Duration::from_millis(1500)));
    assert_eq!(any.type_url, LISTENER);
    let listener: Listener = decode(&any);
    assert_eq!(listener.name, "ratings");
    let api = listener.api_listener.unwrap().api_listener.unwrap();
    assert_eq!(
        api.type_url,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let manager: HttpConnectionManager = decode(&api);
    let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
        panic!("the route is inline");
    };
    let [host] = routes.virtual_hosts.as_slice() else {
        panic!("one virtual host");
    };
    assert_eq!(host.domains, ["*"]);
    let [route] = host.routes.as_slice() else {
        panic!("one route");
    };
    let Some(Action::Route(action)) = &route.action else {
        panic!("a route action");
    };
    assert_eq!(
        action.cluster_specifier,
        Some(ClusterSpecifier::Cluster("ratings".into()))
    );
    let limit = action.max_stream_duration.unwrap();
    for d in [limit.max_stream_duration, limit.grpc_timeout_header_max] {
        let d = d.unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
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

    let listener: Listener = decode(&resources::listener(&name("orders"), None));
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
    let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
        panic!("a route action");
    };
    assert_eq!(
        action.max_stream_duration, None,
        "no timeout without a contract"
    );
}

#[test]
fn a_cluster_takes_its_endpoints_from_ads_round_robin() {
    let cluster: Cluster = decode(&resources::cluster(&name("ratings")));
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
    assert_eq!(cluster.lb_policy, 0, "ROUND_ROBIN");
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
        Timeouts::from_contracts().unwrap(),
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
    let cache = Cache::new(store, Timeouts::default(), Duration::from_secs(3600));
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
