//! The Aggregated Discovery Service, state of the world
//! (`StreamAggregatedResources`), as gRPC's xDS clients speak it: the xDS
//! protocol's "ACK/NACK and resource type instance version" rules, with the
//! resources of gRFC A27.
//!
//! Per type URL a stream keeps the names the client subscribed to, the
//! version and nonce it last sent, and which encoding of each resource the
//! client has. A request whose nonce is not the last one sent for its type
//! is stale and ignored; an ACK (the last nonce, no `error_detail`) changes
//! nothing; a NACK (`error_detail` set) is logged, and the client keeps its
//! last good version until the resource changes again. A Listener or a
//! Cluster that does not exist, or that the stream's token may not read, is
//! left out of the type's response (in the state of the world, leaving a
//! resource out is how absence is told), so that a client waiting for it
//! fails its calls instead of waiting; the two cases look alike.
//!
//! The stream's token is the node's `metadata.REGISTRY_TOKEN` in its first
//! request, checked as every registry call's token is; a stream without a
//! valid one ends UNAUTHENTICATED and learns nothing.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use envoy_types::pb::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_server::AggregatedDiscoveryService,
    },
    google::protobuf::{Any, value::Kind},
};
use futures::{Stream, StreamExt as _, stream::BoxStream};
use tokio::sync::mpsc;
use tokio_stream::{StreamMap, wrappers::WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    cache::{Cache, Published},
    resources::{CLUSTER, ENDPOINTS, LISTENER},
};
use crate::{
    api::{Recheck, RegistryApi, require_reader},
    auth::{Principal, TokenHash},
    model::ServiceName,
    store::Store,
};

/// The node metadata key that carries the stream's token.
pub const TOKEN_KEY: &str = "REGISTRY_TOKEN";

/// The most resource names one stream may subscribe to, per type.
const MAX_NAMES: usize = 1024;

/// The types served, in the order a client asks for them.
const TYPES: [&str; 3] = [LISTENER, CLUSTER, ENDPOINTS];

/// The ADS service over a registry.
pub(crate) struct Ads<S> {
    api: Arc<RegistryApi<S>>,
    cache: Arc<Cache<S>>,
    /// Cancelled when the server shuts down: open streams end.
    closing: CancellationToken,
}

impl<S: Store> Ads<S> {
    pub(crate) fn new(
        api: Arc<RegistryApi<S>>,
        cache: Arc<Cache<S>>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            api,
            cache,
            closing,
        }
    }

    /// Opens a stream whose first request is `first`, from `peer`: checks
    /// its token, then answers `first` and every request after it.
    pub(crate) async fn open(
        &self,
        peer: Option<IpAddr>,
        first: DiscoveryRequest,
        rest: impl Stream<Item = Result<DiscoveryRequest, Status>> + Send + Unpin + 'static,
    ) -> Result<BoxStream<'static, Result<DiscoveryResponse, Status>>, Status> {
        let token = node_token(&first).map(TokenHash::of);
        let hash = token.as_ref().ok().copied();
        let principal = self.api.authenticate_token(peer, token).await?;
        let node = first
            .node
            .as_ref()
            .map(|n| n.id.clone())
            .unwrap_or_default();
        tracing::info!(node = %node, who = %who(&principal), "xDS stream of node {node:?} opened");
        let recheck = match (&principal, hash) {
            // The admin token cannot be deleted.
            (Principal::Admin, _) | (_, None) => None,
            (_, Some(hash)) => Some(Recheck::new(
                self.api.store().clone(),
                hash,
                principal.clone(),
            )),
        };
        let session = Session {
            principal,
            recheck,
            node,
            cache: self.cache.clone(),
            types: TYPES.map(TypeState::new),
            readable: HashMap::new(),
            services: HashMap::new(),
            watches: StreamMap::new(),
            nonce: 0,
        };
        let (tx, rx) = mpsc::channel(8);
        let requests = futures::stream::once(futures::future::ready(Ok(first))).chain(rest);
        tokio::spawn(session.run(requests, tx, self.closing.clone()));
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}

/// The token in a request's node metadata.
fn node_token(request: &DiscoveryRequest) -> Result<&str, Status> {
    let how = "put the token in the bootstrap's node.metadata.REGISTRY_TOKEN (`registryctl xds-bootstrap SERVICE --token TOKEN` writes such a bootstrap)";
    let node = request.node.as_ref().ok_or_else(|| {
        Status::unauthenticated(format!(
            "the stream's first DiscoveryRequest has no node: {how}"
        ))
    })?;
    let value = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(TOKEN_KEY))
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "node {:?} has no {TOKEN_KEY} in its metadata: {how}",
                node.id
            ))
        })?;
    match &value.kind {
        Some(Kind::StringValue(token)) if !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(Status::unauthenticated(format!(
            "node {:?} has a {TOKEN_KEY} that is not a non-empty string: {how}",
            node.id
        ))),
    }
}

/// Who a principal is, for the log.
fn who(principal: &Principal) -> String {
    match principal {
        Principal::Admin => "the admin".to_owned(),
        Principal::Granted(grant) => format!("a token of service {}", grant.service),
        Principal::Consumer(consumer) => format!("consumer {}", consumer.name),
    }
}

/// What the client has of one type, and what it asked for.
#[derive(Debug)]
struct TypeState {
    type_url: &'static str,
    /// The names subscribed to, as the client gave them.
    names: BTreeSet<String>,
    /// The version of the last response sent (0: none yet).
    version: u64,
    /// The nonce of the last response sent.
    nonce: String,
    /// What the client was last sent of each name: a resource (by its
    /// shared encoding), or, for Listeners and Clusters, its absence.
    sent: HashMap<String, Option<Arc<Any>>>,
}

impl TypeState {
    fn new(type_url: &'static str) -> Self {
        Self {
            type_url,
            names: BTreeSet::new(),
            version: 0,
            nonce: String::new(),
            sent: HashMap::new(),
        }
    }

    /// Whether a response that leaves a resource out tells the client it
    /// does not exist: so for Listeners and Clusters, not for endpoints.
    fn omission_is_absence(&self) -> bool {
        self.type_url != ENDPOINTS
    }

    fn short_name(&self) -> &'static str {
        match self.type_url {
            LISTENER => "Listener",
            CLUSTER => "Cluster",
            _ => "ClusterLoadAssignment",
        }
    }
}

/// What one resource of a type is for the client right now.
enum Desired {
    /// Not known yet.
    Pending,
    /// Absent, or not readable with the stream's token.
    Absent,
    /// This encoding.
    Present(Arc<Any>),
}

/// One ADS stream.
struct Session<S> {
    principal: Principal,
    /// Re-checks a deletable token before each response.
    recheck: Option<Recheck<S>>,
    /// The client's node id, for the log.
    node: String,
    cache: Arc<Cache<S>>,
    types: [TypeState; 3],
    /// Each name asked for, of any type: the service it names, when the
    /// stream may read it.
    readable: HashMap<String, Option<ServiceName>>,
    /// What is known of each service read.
    services: HashMap<ServiceName, Published>,
    /// The services read, each as it changes.
    watches: StreamMap<ServiceName, WatchStream<Published>>,
    /// The last nonce handed out, over all types.
    nonce: u64,
}

impl<S: Store> Session<S> {
    async fn run(
        mut self,
        mut requests: impl Stream<Item = Result<DiscoveryRequest, Status>> + Send + Unpin,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        closing: CancellationToken,
    ) {
        loop {
            let dirty: Vec<usize> = tokio::select! {
                () = closing.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable(
                        "the registry is shutting down: reconnect to another replica, or once it is back",
                    ))).await;
                    return;
                }
                () = tx.closed() => return,
                request = requests.next() => match request {
                    Some(Ok(request)) => match self.on_request(request) {
                        Ok(dirty) => dirty.into_iter().collect(),
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    // The client ended the stream, or went away.
                    Some(Err(_)) | None => return,
                },
                Some((service, published)) = self.watches.next(), if !self.watches.is_empty() => {
                    self.services.insert(service, published);
                    (0..TYPES.len()).collect()
                }
            };
            for index in dirty {
                let Some(response) = self.response(index) else {
                    continue;
                };
                if let Some(recheck) = &self.recheck
                    && let Err(status) = recheck.still_valid().await
                {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
        // Leaving drops the stream's watches; a service no stream reads any
        // more is no longer watched.
    }

    /// Takes a request in; returns the type whose response may have to be
    /// sent again.
    fn on_request(&mut self, request: DiscoveryRequest) -> Result<Option<usize>, Status> {
        let Some(index) = TYPES.iter().position(|t| *t == request.type_url) else {
            tracing::debug!(node = %self.node, type_url = %request.type_url, "xDS: no resources of type {} are served", request.type_url);
            return Ok(None);
        };
        let node = self.node.clone();
        let state = &mut self.types[index];
        let kind = state.short_name();
        if !request.response_nonce.is_empty() && request.response_nonce != state.nonce {
            tracing::debug!(node = %node, kind, nonce = %request.response_nonce, "xDS: ignoring a {kind} request with a stale nonce");
            return Ok(None);
        }
        if request.resource_names.len() > MAX_NAMES {
            return Err(Status::resource_exhausted(format!(
                "a stream may subscribe to at most {MAX_NAMES} resources of a type; this request names {} {kind}s",
                request.resource_names.len()
            )));
        }
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                node = %node,
                kind,
                rejected = state.version,
                kept = %request.version_info,
                code = error.code,
                error = %error.message,
                "xDS client {node:?} rejected {kind} version {}; it keeps version {:?}: {}",
                state.version,
                request.version_info,
                error.message
            );
        } else if !request.response_nonce.is_empty() {
            tracing::debug!(node = %node, kind, version = %request.version_info, "xDS: {kind} version {} acknowledged", request.version_info);
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        // A request without a nonce is the first of its type: the client
        // has nothing of it (whatever version it names, from an earlier
        // stream), so everything is sent.
        let fresh = request.response_nonce.is_empty();
        if fresh {
            state.sent.clear();
        }
        if names == state.names && !fresh {
            return Ok(None);
        }
        state.names = names;
        self.subscribe();
        Ok(Some(index))
    }

    /// Watches every readable service some type names, and no other.
    fn subscribe(&mut self) {
        let named: BTreeSet<String> = self
            .types
            .iter()
            .flat_map(|t| t.names.iter().cloned())
            .collect();
        self.readable.retain(|name, _| named.contains(name));
        for name in &named {
            if self.readable.contains_key(name) {
                continue;
            }
            let service = match name.parse::<ServiceName>() {
                Ok(service) => match require_reader(&self.principal, &service) {
                    Ok(()) => Some(service),
                    Err(status) => {
                        tracing::info!(node = %self.node, service = %name, "xDS: answering {name:?} as absent to node {:?}: {}", self.node, status.message());
                        None
                    }
                },
                Err(error) => {
                    tracing::info!(node = %self.node, name = %name, "xDS: answering {name:?} as absent to node {:?}: {error}", self.node);
                    None
                }
            };
            self.readable.insert(name.clone(), service);
        }
        let wanted: BTreeSet<&ServiceName> = self.readable.values().flatten().collect();
        let stale: Vec<ServiceName> = self
            .watches
            .keys()
            .filter(|s| !wanted.contains(s))
            .cloned()
            .collect();
        for service in stale {
            self.watches.remove(&service);
            self.services.remove(&service);
        }
        for service in wanted {
            if !self.watches.contains_key(service) {
                let receiver = self.cache.subscribe(service);
                self.watches
                    .insert(service.clone(), WatchStream::new(receiver));
            }
        }
    }

    /// What the client should have of `name` of type `type_url`.
    fn desired(&self, type_url: &str, name: &str) -> Desired {
        let Some(Some(service)) = self.readable.get(name) else {
            return Desired::Absent;
        };
        match self.services.get(service) {
            None | Some(Published::Unknown) => Desired::Pending,
            Some(Published::Absent) => Desired::Absent,
            Some(Published::Present(resources)) => match resources.of_type(type_url) {
                Some(resource) => Desired::Present(resource.clone()),
                None => Desired::Absent,
            },
        }
    }

    /// The response of type `index`, when the client's resources of that
    /// type are not what they should be and every one is known.
    fn response(&mut self, index: usize) -> Option<DiscoveryResponse> {
        let state = &self.types[index];
        let absence_told = state.omission_is_absence();
        let mut changed = false;
        let mut resources: Vec<Arc<Any>> = Vec::new();
        let mut sent: HashMap<String, Option<Arc<Any>>> = HashMap::new();
        for name in &state.names {
            match self.desired(state.type_url, name) {
                Desired::Pending => match state.sent.get(name) {
                    // Still what it was: sent again as it was.
                    Some(previous) => {
                        resources.extend(previous.iter().cloned());
                        sent.insert(name.clone(), previous.clone());
                    }
                    // Left out, it would be told absent: wait for it.
                    None if absence_told => return None,
                    None => {}
                },
                Desired::Absent if absence_told => {
                    changed |= !matches!(state.sent.get(name), Some(None));
                    sent.insert(name.clone(), None);
                }
                Desired::Absent => {}
                Desired::Present(resource) => {
                    changed |= !matches!(
                        state.sent.get(name),
                        Some(Some(previous)) if Arc::ptr_eq(previous, &resource)
                    );
                    resources.push(resource.clone());
                    sent.insert(name.clone(), Some(resource));
                }
            }
        }
        let state = &mut self.types[index];
        state.sent = sent;
        if !changed {
            return None;
        }
        self.nonce += 1;
        state.version += 1;
        state.nonce = self.nonce.to_string();
        tracing::debug!(node = %self.node, kind = state.short_name(), version = state.version, resources = resources.len(), "xDS: sending {} version {}", state.short_name(), state.version);
        Some(DiscoveryResponse {
            version_info: state.version.to_string(),
            resources: resources.iter().map(|r| Any::clone(r)).collect(),
            type_url: state.type_url.to_owned(),
            nonce: state.nonce.clone(),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl<S: Store> AggregatedDiscoveryService for Ads<S> {
    type StreamAggregatedResourcesStream = BoxStream<'static, Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let mut requests = request.into_inner();
        let first = requests.message().await?.ok_or_else(|| {
            Status::invalid_argument("the stream ended before its first DiscoveryRequest")
        })?;
        Ok(Response::new(self.open(peer, first, requests).await?))
    }

    type DeltaAggregatedResourcesStream =
        BoxStream<'static, Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "registryd serves the state-of-the-world ADS only (StreamAggregatedResources), as gRPC's xDS clients use it",
        ))
    }
}
