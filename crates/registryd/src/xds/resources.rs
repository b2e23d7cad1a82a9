//! The xDS resources of one service, as proxyless gRPC reads them (gRFC A27,
//! and "xDS Features in gRPC" for the fields it honours): for a target
//! `xds:///NAME`, a Listener `NAME` whose API listener is an
//! HttpConnectionManager with its route inline, a Cluster `NAME` of type EDS
//! over ADS, and the ClusterLoadAssignment `NAME` with the live instances in
//! one weighted locality (gRPC drops localities without a weight).
//!
//! The service's contract policy (`market.policy.v1.client_policy`) goes
//! into them as far as gRPC's xDS can carry it:
//!
//! - `timeout` becomes the route's `max_stream_duration` (gRFC A31). gRPC
//!   makes it the deadline of the whole call, retries included, not of one
//!   attempt: a call without a deadline of its own ends DEADLINE_EXCEEDED
//!   after it, a longer deadline is capped to it, and an attempt that runs
//!   it out is not retried.
//! - `retries` becomes the route's `retry_policy` (gRFC A44): retried on
//!   UNAVAILABLE, after gRPC's randomised exponential backoff from
//!   [`RETRY_BACKOFF_BASE`] up to [`RETRY_BACKOFF_MAX`].
//! - `failure_limit`, `retest_delay` and `max_open` become the Cluster's
//!   `outlier_detection` (gRFC A50), by failure percentage: see
//!   [`outlier_detection`] for how a count of consecutive failures is turned
//!   into a percentage over an interval.
//! - `balance` becomes the Cluster's `load_balancing_policy` (gRFCs A48 and
//!   A52): P2C is least-request (two choices) where the client has it and
//!   round robin where it does not; ROUND_ROBIN is round robin.
//!
//! `deadline` and `hedge_after` have no xDS field gRPC reads (gRPC's xDS
//! retries have no per-try timeout and no hedging, gRFC A44), nor has the
//! retry budget. A field the contract leaves unset is left unset here, so
//! that gRPC's own default applies.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{
                Cluster, LoadBalancingPolicy, OutlierDetection,
                cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
                load_balancing_policy::Policy,
            },
            core::v3::{
                Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
                SocketAddress, TypedExtensionConfig, address, config_source::ConfigSourceSpecifier,
                socket_address::PortSpecifier,
            },
            endpoint::v3::{
                ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
                lb_endpoint::HostIdentifier,
            },
            listener::v3::{ApiListener, Listener},
            route::v3::{
                RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
                retry_policy::RetryBackOff,
                route::Action,
                route_action::{ClusterSpecifier, MaxStreamDuration},
                route_match::PathSpecifier,
            },
        },
        extensions::{
            filters::{
                http::router::v3::Router,
                network::http_connection_manager::v3::{
                    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier,
                    http_filter::ConfigType,
                },
            },
            load_balancing_policies::{
                least_request::v3::LeastRequest, round_robin::v3::RoundRobin,
                wrr_locality::v3::WrrLocality,
            },
        },
    },
    google::protobuf::{Any, UInt32Value},
};
use market_proto::{BalanceMode, ContractPolicy};

use crate::model::{Instance, ServiceName};

/// The type URLs of the resources served, one per xDS type.
pub(crate) const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Clusters (CDS).
pub(crate) const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Endpoints (EDS).
pub(crate) const ENDPOINTS: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The name gRPC knows the router filter by; it must be the last filter.
const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// The status a retry policy retries on, as Envoy's `x-envoy-retry-grpc-on`
/// names it. Only UNAVAILABLE says for sure that the instance, not the
/// request, was at fault and that the request was not acted on; gRPC's own
/// connection failures end attempts UNAVAILABLE too. (Our own client also
/// retries attempts that ran out of their timeout; gRPC cannot, its timeout
/// being the whole call's.)
pub(crate) const RETRY_ON: &str = "unavailable";

/// The first retry waits at random up to this long (gRPC's
/// `initialBackoff`); each further one up to twice as long as the one
/// before, at most [`RETRY_BACKOFF_MAX`]. Envoy's defaults: short beside the
/// contracts' timeouts (recommendations: 200 ms), yet enough that a burst of
/// retries does not land on the instances in the same millisecond.
pub(crate) const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// The longest wait before a retry (gRPC's `maxBackoff`).
pub(crate) const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How often gRPC's outlier detection sweeps: counts the calls of the last
/// interval, ejects and returns instances (at most the retest delay, when
/// that is shorter). gRPC's default, 10 s, would let a failing instance take
/// calls for up to 10 s before anything is done; our breakers act at once.
pub(crate) const OUTLIER_INTERVAL: Duration = Duration::from_secs(1);

/// The largest share of the instances outlier detection may eject at once
/// (gRPC ejects one even when that share is less than one instance). Our
/// breakers may all open; here half of them stay in service, because gRPC
/// counts every status but OK as a failure of the instance (NOT_FOUND and
/// INVALID_ARGUMENT included, which our breakers count as answers): a
/// client sending bad requests must not eject every instance.
pub(crate) const MAX_EJECTION_PERCENT: u32 = 50;

/// The contracts' client policies, by registry service name, read from the
/// contracts' `client_policy` options.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policies(HashMap<String, ContractPolicy>);

/// Why the contracts' policies could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutsError {
    /// The contract crate's descriptor set does not decode.
    #[error("the contracts' descriptor set does not decode: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// The policy option is not declared where it is expected.
    #[error("the contracts do not declare market.policy.v1.client_policy")]
    NoPolicyOption,
}

impl Policies {
    /// Every policy the contracts declare: a service of package
    /// `market.NAME.vN` that declares a `client_policy` gives the registry
    /// service `NAME` that policy (`market.ratings.v1.Ratings` gives
    /// `ratings` its 1 s timeout, one retry, ...). These are the same options
    /// `build.rs` turns into the `*_CLIENT_POLICY` constants, read from the
    /// descriptor set the contract crate embeds, so that a new contract
    /// needs no edit here.
    pub(crate) fn from_contracts() -> Result<Self, TimeoutsError> {
        Self::from_descriptor_set(market_proto::FILE_DESCRIPTOR_SET)
    }

    fn from_descriptor_set(bytes: &[u8]) -> Result<Self, TimeoutsError> {
        use prost_reflect::{DescriptorPool, Value};
        let pool = DescriptorPool::decode(bytes)?;
        let extension = pool
            .get_extension_by_name("market.policy.v1.client_policy")
            .ok_or(TimeoutsError::NoPolicyOption)?;
        let mut policies = HashMap::new();
        for service in pool.services() {
            let package = service.parent_file().package_name().to_owned();
            let mut segments = package.split('.');
            let (Some("market"), Some(name), Some(_version), None) = (
                segments.next(),
                segments.next(),
                segments.next(),
                segments.next(),
            ) else {
                continue;
            };
            let options = service.options();
            if !options.has_extension(&extension) {
                continue;
            }
            let Value::Message(declared) = options.get_extension(&extension).into_owned() else {
                continue;
            };
            let policy = contract_policy(&declared);
            policies
                .entry(name.to_owned())
                .and_modify(|p: &mut ContractPolicy| *p = merge(*p, policy))
                .or_insert(policy);
        }
        Ok(Self(policies))
    }

    /// Gives `service` the timeout `timeout` instead of its contract's
    /// (zero: none); the rest of its policy stays the contract's.
    pub(crate) fn set_timeout(&mut self, service: &ServiceName, timeout: Duration) {
        let policy = self
            .0
            .entry(service.to_string())
            .or_insert(ContractPolicy::NONE);
        policy.timeout = (!timeout.is_zero()).then_some(timeout);
    }

    /// The contract's policy of a service; one that says nothing when its
    /// contract declares none.
    pub(crate) fn of(&self, service: &ServiceName) -> ContractPolicy {
        self.0
            .get(service.as_str())
            .copied()
            .unwrap_or(ContractPolicy::NONE)
    }
}

/// Two services of one package each with a policy: the calls of both go
/// through the one route and cluster, so the shorter timeout and deadline
/// bound them; every other value is the first service's, unless only the
/// second one sets it.
fn merge(first: ContractPolicy, second: ContractPolicy) -> ContractPolicy {
    let shorter = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    ContractPolicy {
        timeout: shorter(first.timeout, second.timeout),
        deadline: shorter(first.deadline, second.deadline),
        retest_delay: first.retest_delay.or(second.retest_delay),
        max_open: first.max_open.or(second.max_open),
        hedge_after: first.hedge_after.or(second.hedge_after),
        failure_limit: first.failure_limit.or(second.failure_limit),
        retries: first.retries.or(second.retries),
        balance: first.balance.or(second.balance),
    }
}

/// A `market.policy.v1.ClientPolicy` option, as the contract crate's type.
/// A field left unset and BALANCE_UNSPECIFIED are `None`, as `build.rs`
/// reads them; so is a zero duration, which xDS would read as "no limit"
/// (a timeout) or reject (a backoff).
fn contract_policy(declared: &prost_reflect::DynamicMessage) -> ContractPolicy {
    use prost_reflect::Value;
    let field = |name: &str| {
        declared
            .has_field_by_name(name)
            .then(|| declared.get_field_by_name(name))
            .flatten()
            .map(std::borrow::Cow::into_owned)
    };
    let duration = |name: &str| {
        let Some(Value::Message(d)) = field(name) else {
            return None;
        };
        let seconds = match d.get_field_by_name("seconds").map(|v| v.into_owned()) {
            Some(Value::I64(s)) => u64::try_from(s).unwrap_or(0),
            _ => 0,
        };
        let nanos = match d.get_field_by_name("nanos").map(|v| v.into_owned()) {
            Some(Value::I32(n)) => u32::try_from(n).unwrap_or(0),
            _ => 0,
        };
        Some(Duration::new(seconds, nanos)).filter(|d| !d.is_zero())
    };
    let count = |name: &str| match field(name) {
        Some(Value::U32(n)) => Some(n),
        _ => None,
    };
    let balance = match field("balance") {
        Some(Value::EnumNumber(1)) => Some(BalanceMode::P2c),
        Some(Value::EnumNumber(2)) => Some(BalanceMode::RoundRobin),
        _ => None,
    };
    ContractPolicy {
        timeout: duration("timeout"),
        deadline: duration("deadline"),
        retest_delay: duration("retest_delay"),
        max_open: duration("max_open"),
        hedge_after: duration("hedge_after"),
        failure_limit: count("failure_limit"),
        retries: count("retries"),
        balance,
    }
}

/// One service's resources, each encoded once and shared by every stream
/// that sends it (a stream tells what it sent by the `Arc`, not the bytes).
#[derive(Debug, Clone)]
pub(crate) struct ServiceResources {
    /// The Listener (LDS), with the route inline.
    pub(crate) listener: Arc<Any>,
    /// The Cluster (CDS).
    pub(crate) cluster: Arc<Any>,
    /// The ClusterLoadAssignment (EDS): the live instances.
    pub(crate) endpoints: Arc<Any>,
}

impl ServiceResources {
    /// The resource of a type URL, if it is one of the three served.
    pub(crate) fn of_type(&self, type_url: &str) -> Option<&Arc<Any>> {
        match type_url {
            LISTENER => Some(&self.listener),
            CLUSTER => Some(&self.cluster),
            ENDPOINTS => Some(&self.endpoints),
            _ => None,
        }
    }
}

fn pack<T: prost::Message + prost::Name>(message: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: message.encode_to_vec(),
    }
}

fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The Listener of `service`: an API listener whose HttpConnectionManager
/// routes every call to the cluster `service`, with `policy`'s timeout and
/// retries.
pub(crate) fn listener(service: &ServiceName, policy: &ContractPolicy) -> Any {
    let name = service.to_string();
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(name.clone())),
            max_stream_duration: policy.timeout.map(|t| MaxStreamDuration {
                max_stream_duration: Some(duration(t)),
                grpc_timeout_header_max: Some(duration(t)),
                grpc_timeout_header_offset: None,
            }),
            retry_policy: retry_policy(policy),
            ..Default::default()
        })),
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: name.clone(),
            virtual_hosts: vec![VirtualHost {
                name: name.clone(),
                domains: vec!["*".to_owned()],
                routes: vec![route],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.to_owned(),
            config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    pack(&Listener {
        name,
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&manager)),
        }),
        ..Default::default()
    })
}

/// The contract's retries as gRPC reads a route's retry policy (gRFC A44):
/// `num_retries` retries on [`RETRY_ON`], with backoff. None when the
/// contract allows none or leaves it to the client (gRPC then does not
/// retry; it NACKs `num_retries` 0). gRPC makes at most 5 attempts, so
/// more than 4 retries count as 4; and where our client retries on an
/// instance the call has not tried, gRPC's retry is a new pick, which
/// round robin sends to the next instance and least-request may send to
/// the same one.
fn retry_policy(policy: &ContractPolicy) -> Option<RetryPolicy> {
    let retries = policy.retries.filter(|&n| n > 0)?;
    Some(RetryPolicy {
        retry_on: RETRY_ON.to_owned(),
        num_retries: Some(UInt32Value { value: retries }),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration(RETRY_BACKOFF_BASE)),
            max_interval: Some(duration(RETRY_BACKOFF_MAX)),
        }),
        ..Default::default()
    })
}

/// The Cluster of `service`: its endpoints come over the same ADS stream,
/// picked as `policy` balances, and ejected by outlier detection as its
/// breakers would open.
///
/// `lb_policy` stays ROUND_ROBIN for the clients that predate
/// `load_balancing_policy` (gRFC A52: a client that reads the latter
/// ignores the former). `load_balancing_policy` is what gRPC makes of
/// ROUND_ROBIN itself, `WrrLocality` over the endpoint-picking policies,
/// whose list a client reads in order, using the first it supports: for
/// P2C, least-request with two choices (gRFC A48: grpc-go, grpc-java),
/// then round robin (gRPC's C-core, under Python, C++ and Ruby, has no
/// least-request).
pub(crate) fn cluster(service: &ServiceName, policy: &ContractPolicy) -> Any {
    pack(&Cluster {
        name: service.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into())),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3.into(),
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        lb_policy: LbPolicy::RoundRobin.into(),
        load_balancing_policy: Some(load_balancing_policy(policy.balance)),
        outlier_detection: outlier_detection(policy),
        ..Default::default()
    })
}

/// `WrrLocality` over the endpoint-picking policies `balance` asks for,
/// best first.
fn load_balancing_policy(balance: Option<BalanceMode>) -> LoadBalancingPolicy {
    let mut picking = Vec::new();
    // The contracts' default is P2C, as in our client.
    if balance != Some(BalanceMode::RoundRobin) {
        picking.push(extension(
            "least_request",
            &LeastRequest {
                choice_count: Some(UInt32Value { value: 2 }),
                ..Default::default()
            },
        ));
    }
    picking.push(extension("round_robin", &RoundRobin::default()));
    LoadBalancingPolicy {
        policies: vec![extension(
            "wrr_locality",
            &WrrLocality {
                endpoint_picking_policy: Some(LoadBalancingPolicy { policies: picking }),
            },
        )],
    }
}

fn extension<T: prost::Message + prost::Name>(name: &str, config: &T) -> Policy {
    Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_owned(),
            typed_config: Some(pack(config)),
        }),
    }
}

/// The contract's breaker as gRPC's outlier detection (gRFC A50), when the
/// contract sets a `failure_limit`.
///
/// gRPC has no consecutive-failures ejection (it ignores `consecutive_5xx`),
/// only success-rate and failure-percentage ejection, judged once an
/// [`OUTLIER_INTERVAL`] over the calls of the last interval. With a failure
/// limit of N, an instance is ejected when, in one interval, it took at
/// least N calls and more than `100 × (N − 1) / N` % of them failed
/// (rounded down): (N − 1)/N is the largest share of failures that can be
/// spread over calls with no N in a row (two failures, a success, two
/// failures... for N = 3), so above it N in a row are all but certain.
/// For N = 1 that is exact: any failure ejects, as any failure opens the
/// breaker; for larger N, N failures in a row among many successes eject
/// nothing, where our breaker would open. One instance with enough calls
/// suffices (`failure_percentage_minimum_hosts` 1: gRPC's default, 5, would
/// never eject among fewer instances), and ejection is always enforced.
///
/// An ejected instance comes back after `retest_delay` × the number of its
/// ejections (a count that drops by one at each sweep it is not ejected),
/// at most `max_open`: gRPC lets every call through then, not one probe,
/// and the period grows linearly, where our breaker doubles it.
pub(crate) fn outlier_detection(policy: &ContractPolicy) -> Option<OutlierDetection> {
    let limit = policy.failure_limit.filter(|&n| n > 0)?;
    let interval = policy
        .retest_delay
        .map_or(OUTLIER_INTERVAL, |d| d.min(OUTLIER_INTERVAL));
    let percent = |value| Some(UInt32Value { value });
    Some(OutlierDetection {
        interval: Some(duration(interval)),
        base_ejection_time: policy.retest_delay.map(duration),
        max_ejection_time: policy.max_open.map(duration),
        max_ejection_percent: percent(MAX_EJECTION_PERCENT),
        enforcing_success_rate: percent(0),
        failure_percentage_threshold: percent(failure_threshold(limit)),
        enforcing_failure_percentage: percent(100),
        failure_percentage_minimum_hosts: Some(UInt32Value { value: 1 }),
        failure_percentage_request_volume: Some(UInt32Value { value: limit }),
        ..Default::default()
    })
}

/// The failure percentage above which an instance with a failure limit of
/// `limit` is ejected: `100 × (limit − 1) / limit`, rounded down.
pub(crate) fn failure_threshold(limit: u32) -> u32 {
    let limit = u64::from(limit.max(1));
    u32::try_from(100 * (limit - 1) / limit).unwrap_or(99)
}

/// Where gRPC can dial an instance: its address's IP literal and port.
/// A host name cannot go into EDS (gRPC takes IP addresses only).
pub(crate) fn socket_address(instance: &Instance) -> Option<(IpAddr, u16)> {
    let address = instance.address.as_str();
    let authority = address.split_once("://").map_or(address, |(_, rest)| rest);
    let (host, port) = authority.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host.parse().ok()?, port.parse().ok()?))
}

/// The ClusterLoadAssignment of `service`: the instances with an IP address,
/// healthy, in one locality of weight 1 (none when there is no instance).
pub(crate) fn endpoints<'a>(
    service: &ServiceName,
    instances: impl IntoIterator<Item = &'a Instance>,
) -> Any {
    let lb_endpoints: Vec<LbEndpoint> = instances
        .into_iter()
        .filter_map(|instance| {
            let Some((ip, port)) = socket_address(instance) else {
                tracing::warn!(
                    service = %instance.service,
                    instance = %instance.id,
                    address = %instance.address,
                    "instance {} is left out of xDS: its address {} has no IP address, which gRPC needs",
                    instance.id,
                    instance.address
                );
                return None;
            };
            Some(LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip.to_string(),
                            port_specifier: Some(PortSpecifier::PortValue(port.into())),
                            ..Default::default()
                        })),
                    }),
                    hostname: instance.id.to_string(),
                    ..Default::default()
                })),
                health_status: HealthStatus::Healthy.into(),
                ..Default::default()
            })
        })
        .collect();
    let localities = if lb_endpoints.is_empty() {
        Vec::new()
    } else {
        vec![LocalityLbEndpoints {
            locality: Some(Locality::default()),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }]
    };
    pack(&ClusterLoadAssignment {
        cluster_name: service.to_string(),
        endpoints: localities,
        ..Default::default()
    })
}

/// Checks at compile time that the type URLs above are the types packed.
#[cfg(test)]
pub(crate) fn type_urls() -> [String; 3] {
    use prost::Name as _;
    [
        Listener::type_url(),
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
    ]
}
