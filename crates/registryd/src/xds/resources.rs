//! The xDS resources of one service, as proxyless gRPC reads them (gRFC A27,
//! and "xDS Features in gRPC" for the fields it honours): for a target
//! `xds:///NAME`, a Listener `NAME` whose API listener is an
//! HttpConnectionManager with its route inline, a Cluster `NAME` of type EDS
//! over ADS, and the ClusterLoadAssignment `NAME` with the live instances in
//! one weighted locality (gRPC drops localities without a weight).
//!
//! The contract's per-attempt timeout becomes the route's
//! `max_stream_duration` (gRFC A31): a call without a deadline of its own
//! ends DEADLINE_EXCEEDED after it, and a longer deadline is capped to it.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{
                Cluster,
                cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
            },
            core::v3::{
                Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
                SocketAddress, address, config_source::ConfigSourceSpecifier,
                socket_address::PortSpecifier,
            },
            endpoint::v3::{
                ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
                lb_endpoint::HostIdentifier,
            },
            listener::v3::{ApiListener, Listener},
            route::v3::{
                Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
                route::Action,
                route_action::{ClusterSpecifier, MaxStreamDuration},
                route_match::PathSpecifier,
            },
        },
        extensions::filters::{
            http::router::v3::Router,
            network::http_connection_manager::v3::{
                HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier,
                http_filter::ConfigType,
            },
        },
    },
    google::protobuf::{Any, UInt32Value},
};

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

/// The contract timeouts, by registry service name, read from the
/// contracts' `client_policy` options.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeouts(HashMap<String, Duration>);

/// Why the contracts' timeouts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutsError {
    /// The contract crate's descriptor set does not decode.
    #[error("the contracts' descriptor set does not decode: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// The policy option is not declared where it is expected.
    #[error("the contracts do not declare market.policy.v1.client_policy")]
    NoPolicyOption,
}

impl Timeouts {
    /// Every timeout the contracts declare: a service of package
    /// `market.NAME.vN` that declares a `client_policy` with a `timeout` gives
    /// the registry service `NAME` that timeout (`market.ratings.v1.Ratings`
    /// gives `ratings` 1 s). These are the same options `build.rs` turns into
    /// the `*_CLIENT_POLICY` constants, read from the descriptor set the
    /// contract crate embeds, so that a new contract needs no edit here.
    pub(crate) fn from_contracts() -> Result<Self, TimeoutsError> {
        Self::from_descriptor_set(market_proto::FILE_DESCRIPTOR_SET)
    }

    fn from_descriptor_set(bytes: &[u8]) -> Result<Self, TimeoutsError> {
        use prost_reflect::{DescriptorPool, Value};
        let pool = DescriptorPool::decode(bytes)?;
        let extension = pool
            .get_extension_by_name("market.policy.v1.client_policy")
            .ok_or(TimeoutsError::NoPolicyOption)?;
        let mut timeouts = HashMap::new();
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
            let Value::Message(policy) = options.get_extension(&extension).into_owned() else {
                continue;
            };
            let Some(Value::Message(timeout)) = policy
                .has_field_by_name("timeout")
                .then(|| policy.get_field_by_name("timeout"))
                .flatten()
                .map(|v| v.into_owned())
            else {
                continue;
            };
            let seconds = match timeout.get_field_by_name("seconds").map(|v| v.into_owned()) {
                Some(Value::I64(s)) => u64::try_from(s).unwrap_or(0),
                _ => 0,
            };
            let nanos = match timeout.get_field_by_name("nanos").map(|v| v.into_owned()) {
                Some(Value::I32(n)) => u32::try_from(n).unwrap_or(0),
                _ => 0,
            };
            let timeout = Duration::new(seconds, nanos);
            if timeout.is_zero() {
                continue;
            }
            // Two services of one package with a timeout each: the shorter
            // one bounds every call through the one route.
            timeouts
                .entry(name.to_owned())
                .and_modify(|t: &mut Duration| *t = (*t).min(timeout))
                .or_insert(timeout);
        }
        Ok(Self(timeouts))
    }

    /// Gives `service` `timeout` instead (zero: none).
    pub(crate) fn set(&mut self, service: &ServiceName, timeout: Duration) {
        if timeout.is_zero() {
            self.0.remove(service.as_str());
        } else {
            self.0.insert(service.to_string(), timeout);
        }
    }

    /// The contract's timeout of a service, if its contract declares one.
    pub(crate) fn of(&self, service: &ServiceName) -> Option<Duration> {
        self.0.get(service.as_str()).copied()
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
/// routes every call to the cluster `service`, bounded by `timeout`.
pub(crate) fn listener(service: &ServiceName, timeout: Option<Duration>) -> Any {
    let name = service.to_string();
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(name.clone())),
            max_stream_duration: timeout.map(|t| MaxStreamDuration {
                max_stream_duration: Some(duration(t)),
                grpc_timeout_header_max: Some(duration(t)),
                grpc_timeout_header_offset: None,
            }),
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

/// The Cluster of `service`: its endpoints come over the same ADS stream,
/// picked round robin.
pub(crate) fn cluster(service: &ServiceName) -> Any {
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
        ..Default::default()
    })
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
