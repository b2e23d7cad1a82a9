//! The gRPC face of the registry: authenticates each call, validates its
//! fields into domain types, checks what the caller may do, and hands one
//! well-formed operation to the store.
//!
//! The order is fixed: a call without a valid token is `UNAUTHENTICATED` before
//! anything else is looked at; then malformed fields are `INVALID_ARGUMENT`;
//! then a token that may not do this is `PERMISSION_DENIED`. Nothing reaches the
//! store until all three passed.
//!
//! A token is the admin's, a service's or a service consumer's (a
//! [`Grant`], from `CreateService`), or a named consumer's (a [`Consumer`],
//! from `CreateConsumer`: read only, the services it names only).

use std::{
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use market_proto::registry::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    auth::{self, Consumer, Grant, Principal, TokenHash, TokenKind},
    model::{
        Change, ConsumerName, Instance, InstanceId, InvalidArgument, LeaseId, Metadata,
        Registration, RemovalReason, ServiceInfo, ServiceName, Ttl, consumer_services,
    },
    store::{NewConsumer, NewService, Scope, Store, StoreError, WatchEvent},
};

/// The registry's gRPC service over a store.
#[derive(Debug)]
pub struct RegistryApi<S> {
    store: Arc<S>,
    /// The hash of the admin token; the token itself is not kept.
    admin: TokenHash,
    /// How often an idle watch stream gets a progress message.
    progress_every: Duration,
    /// Cancelled when the server shuts down: open watch streams end, so that
    /// the graceful shutdown does not wait for them forever.
    closing: CancellationToken,
    /// Failed authentications per peer, each counted for one window.
    failed_auth: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

impl<S: Store> RegistryApi<S> {
    /// Serves `store`, accepting `admin_token` as the admin's.
    pub fn new(
        store: Arc<S>,
        admin_token: &str,
        progress_every: Duration,
        closing: CancellationToken,
    ) -> Self {
        Self {
            store,
            admin: TokenHash::of(admin_token),
            progress_every,
            closing,
            failed_auth: moka::sync::Cache::builder()
                .time_to_live(FAILED_AUTH_WINDOW)
                .max_capacity(100_000)
                .build(),
        }
    }

    /// The store this serves.
    #[cfg(feature = "xds")]
    pub(crate) fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Who is calling, from the `authorization: Bearer <token>` metadata.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        self.authenticate_token(peer, bearer_hash(request)).await
    }

    /// Who holds a token (the hash of one, or why none was presented),
    /// counting failures against `peer` like every call's token: a caller
    /// that presents its token elsewhere than in the `authorization`
    /// metadata (an xDS client, in its node's metadata) is authenticated
    /// here too.
    pub(crate) async fn authenticate_token(
        &self,
        peer: Option<IpAddr>,
        token: Result<TokenHash, Status>,
    ) -> Result<Principal, Status> {
        if let Some(peer) = peer
            && self
                .failed_auth
                .get(&peer)
                .is_some_and(|n| n.load(Ordering::Relaxed) >= MAX_FAILED_AUTH)
        {
            return Err(Status::resource_exhausted(format!(
                "too many failed authentications from {peer}: wait up to {}s and use a valid token",
                FAILED_AUTH_WINDOW.as_secs()
            )));
        }
        let result = self.check_token(token).await;
        if let (Err(status), Some(peer)) = (&result, peer)
            && status.code() == tonic::Code::Unauthenticated
        {
            let count = self
                .failed_auth
                .get_with(peer, || Arc::new(AtomicU32::new(0)));
            if count.fetch_add(1, Ordering::Relaxed) + 1 == MAX_FAILED_AUTH {
                tracing::warn!(%peer, "{MAX_FAILED_AUTH} failed authentications from {peer}; refusing it for a while");
            }
        }
        result
    }

    async fn check_token(&self, token: Result<TokenHash, Status>) -> Result<Principal, Status> {
        let hash = token?;
        if hash == self.admin {
            return Ok(Principal::Admin);
        }
        match principal_of(&*self.store, &hash).await? {
            Some(principal) => Ok(principal),
            None => Err(Status::unauthenticated(
                "unknown token: use the admin token, a service or consumer token from CreateService, or a consumer token from CreateConsumer",
            )),
        }
    }
}

/// Whom a token other than the admin's is of: a service's or a service
/// consumer's grant, else a named consumer, else no one.
async fn principal_of<S: Store>(
    store: &S,
    token: &TokenHash,
) -> Result<Option<Principal>, StoreError> {
    if let Some(grant) = store.lookup_token(token).await? {
        return Ok(Some(Principal::Granted(grant)));
    }
    Ok(store.lookup_consumer(token).await?.map(Principal::Consumer))
}

/// The hash of the `authorization: Bearer <token>` metadata's token.
fn bearer_hash<T>(request: &Request<T>) -> Result<TokenHash, Status> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("malformed authorization metadata: expected `Bearer <token>`")
        })?;
    Ok(TokenHash::of(token))
}

/// A stream's token, checked again at most every [`KEEP_ALIVE_RECHECK`]
/// while messages flow: on a `KeepAlive` stream, a service's token deleted
/// (and its name perhaps given to a new service) stops renewing soon, not
/// when the stream ends; on a named consumer's `Watch` stream (which an idle
/// watch's progress messages keep flowing), a deleted consumer stops reading.
pub(crate) struct Recheck<S> {
    store: Arc<S>,
    token: TokenHash,
    /// Whom the token was of when the stream opened; anything else later
    /// ends the stream.
    principal: Principal,
    checked: std::sync::Mutex<tokio::time::Instant>,
}

impl<S: Store> Recheck<S> {
    /// Re-checks `token`, which was `principal`'s when the stream opened.
    pub(crate) fn new(store: Arc<S>, token: TokenHash, principal: Principal) -> Self {
        Self {
            store,
            token,
            principal,
            checked: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Whether the token still grants what it did, looked up at most once
    /// every [`KEEP_ALIVE_RECHECK`].
    pub(crate) async fn still_valid(&self) -> Result<(), Status> {
        let now = tokio::time::Instant::now();
        {
            let mut checked = self.checked.lock().expect("recheck lock");
            if now.duration_since(*checked) < KEEP_ALIVE_RECHECK {
                return Ok(());
            }
            *checked = now;
        }
        // Only the kind of token it was is looked up: one read per re-check.
        let lookup = async {
            Ok::<_, StoreError>(match &self.principal {
                Principal::Consumer(_) => {
                    (self.store.lookup_consumer(&self.token).await?).map(Principal::Consumer)
                }
                Principal::Admin | Principal::Granted(_) => {
                    (self.store.lookup_token(&self.token).await?).map(Principal::Granted)
                }
            })
        };
        let found = tokio::time::timeout(KEEP_ALIVE_STORE_LIMIT, lookup)
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "the store did not re-check this stream's token within {} s: open a new stream",
                    KEEP_ALIVE_STORE_LIMIT.as_secs()
                ))
            })??;
        match found {
            Some(principal) if principal == self.principal => Ok(()),
            _ => Err(Status::unauthenticated(
                "this stream's token was deleted: open a new stream with a valid token",
            )),
        }
    }
}

/// A `KeepAlive` renewal's answer when it failed: the status in the stream.
fn refused(lease: LeaseId, status: &Status) -> pb::KeepAliveResponse {
    pb::KeepAliveResponse {
        lease_id: lease.0,
        ttl_seconds: 0,
        code: status.code() as i32,
        error: status.message().to_owned(),
    }
}

/// Failed authentications one peer may make within `FAILED_AUTH_WINDOW`
/// before every call from it is refused until the window ends. Tokens cannot
/// be guessed; this bounds the work a guesser makes the registry do.
const MAX_FAILED_AUTH: u32 = 20;

/// The window over which failed authentications are counted, from the first.
const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(60);

/// A token the caller provided (checked), or a new one.
fn provided_or_new(
    given: String,
    field: &'static str,
    kind: TokenKind,
) -> Result<String, InvalidArgument> {
    if given.is_empty() {
        return Ok(auth::generate(kind));
    }
    let ok = (32..=256).contains(&given.len()) && given.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(given)
    } else {
        Err(InvalidArgument::Token(field))
    }
}

fn require_admin(principal: &Principal, call: &str) -> Result<(), Status> {
    match principal {
        Principal::Admin => Ok(()),
        Principal::Granted(grant) => Err(Status::permission_denied(format!(
            "{call} needs the admin token; this is a {} token of service '{}'",
            kind_name(grant.kind),
            grant.service
        ))),
        Principal::Consumer(consumer) => Err(Status::permission_denied(format!(
            "{call} needs the admin token; this is the token of consumer '{}', which may only read {}",
            consumer.name,
            consumer.services_list()
        ))),
    }
}

/// Checks that the caller may change instances of `service`.
fn require_writer(principal: &Principal, service: &ServiceName) -> Result<(), Status> {
    match principal {
        Principal::Admin => Ok(()),
        Principal::Granted(Grant {
            service: own,
            kind: TokenKind::Service,
        }) if own == service => Ok(()),
        Principal::Granted(grant) => Err(denied(
            grant,
            service,
            "register, renew or remove instances of",
        )),
        Principal::Consumer(consumer) => Err(read_only(consumer)),
    }
}

/// Checks that the caller may read `service`.
pub(crate) fn require_reader(principal: &Principal, service: &ServiceName) -> Result<(), Status> {
    match principal {
        Principal::Admin => Ok(()),
        Principal::Granted(grant) if grant.service == *service => Ok(()),
        Principal::Granted(grant) => Err(denied(grant, service, "read")),
        Principal::Consumer(consumer) if consumer.services.contains(service) => Ok(()),
        Principal::Consumer(consumer) => Err(Status::permission_denied(format!(
            "consumer '{}' may not read service '{service}'; it may read only {}",
            consumer.name,
            consumer.services_list()
        ))),
    }
}

/// Whose leases the caller may touch.
fn lease_scope(principal: &Principal) -> Result<Scope, Status> {
    match principal {
        Principal::Admin => Ok(Scope::Any),
        Principal::Granted(Grant {
            service,
            kind: TokenKind::Service,
        }) => Ok(Scope::Service(service.clone())),
        Principal::Granted(grant) => Err(Status::permission_denied(format!(
            "a consumer token of service '{}' may only read (Resolve, Watch)",
            grant.service
        ))),
        Principal::Consumer(consumer) => Err(read_only(consumer)),
    }
}

/// Why a named consumer may not register, renew or remove instances.
fn read_only(consumer: &Consumer) -> Status {
    Status::permission_denied(format!(
        "consumer '{}' may only read (Resolve, Watch) {}; registering, renewing and removing instances need the service's token",
        consumer.name,
        consumer.services_list()
    ))
}

fn denied(grant: &Grant, service: &ServiceName, what: &str) -> Status {
    let detail = if grant.service == *service {
        " (a consumer token may only read)".to_owned()
    } else {
        String::new()
    };
    Status::permission_denied(format!(
        "this {} token of service '{}' may not {what} service '{service}'{detail}",
        kind_name(grant.kind),
        grant.service
    ))
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Admin => "admin",
        TokenKind::Service => "service",
        TokenKind::Consumer => "consumer",
    }
}

/// Whether answers to this caller may carry lease ids: not to a reader.
fn shows_leases(principal: &Principal) -> bool {
    !matches!(
        principal,
        Principal::Granted(Grant {
            kind: TokenKind::Consumer,
            ..
        }) | Principal::Consumer(_)
    )
}

// === conversions ===

impl From<InvalidArgument> for Status {
    fn from(e: InvalidArgument) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NoSuchService(_)
            | StoreError::NoSuchConsumer(_)
            | StoreError::NoSuchLease(_)
            | StoreError::NoSuchInstance { .. } => Status::not_found(message),
            StoreError::ServiceExists(_)
            | StoreError::ConsumerExists(_)
            | StoreError::InstanceIdTaken { .. } => Status::already_exists(message),
            StoreError::WrongService { .. } => Status::permission_denied(message),
            // Not `ALREADY_EXISTS`: that says the service exists, and
            // `registryctl create-service --if-missing` takes it as success.
            StoreError::TokenInUse => Status::failed_precondition(message),
            StoreError::Persist(_) => {
                tracing::error!(error = %message, "catalog write failed");
                Status::internal("the registry could not save its catalog; nothing was changed")
            }
            StoreError::Unavailable(_) => Status::unavailable(message),
        }
    }
}

fn instance_to_pb(instance: Instance, with_lease: bool) -> pb::Instance {
    pb::Instance {
        service: instance.service.to_string(),
        instance_id: instance.id.to_string(),
        address: instance.address.to_string(),
        metadata: instance
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        lease_id: if with_lease { instance.lease.0 } else { 0 },
        ttl_seconds: instance.ttl.as_secs(),
        revision: instance.revision,
    }
}

fn service_to_pb(info: ServiceInfo) -> pb::Service {
    pb::Service {
        name: info.name.to_string(),
        created_at_unix: info.created_at_unix,
        live_instances: info.live_instances,
    }
}

fn watch_event_to_pb(event: WatchEvent, with_lease: bool) -> pb::WatchResponse {
    use pb::watch_response::Event as E;
    let event = match event {
        WatchEvent::Snapshot {
            instances,
            revision,
        } => E::Snapshot(pb::Snapshot {
            instances: instances
                .into_iter()
                .map(|i| instance_to_pb(i, with_lease))
                .collect(),
            revision,
        }),
        WatchEvent::Change(event) => {
            let (kind, instance, reason) = match event.change {
                Change::Added(instance) => (
                    pb::ChangeKind::Added,
                    instance,
                    pb::RemovalReason::Unspecified,
                ),
                Change::Removed(instance, reason) => {
                    let reason = match reason {
                        RemovalReason::Deregistered => pb::RemovalReason::Deregistered,
                        RemovalReason::Expired => pb::RemovalReason::Expired,
                        RemovalReason::ServiceDeleted => pb::RemovalReason::ServiceDeleted,
                    };
                    (pb::ChangeKind::Removed, instance, reason)
                }
            };
            E::Change(pb::Change {
                kind: kind.into(),
                instance: Some(instance_to_pb(instance, with_lease)),
                revision: event.revision,
                reason: reason.into(),
            })
        }
        WatchEvent::Progress(revision) => E::Progress(pb::Progress { revision }),
    };
    pb::WatchResponse { event: Some(event) }
}

// === impl Registry for RegistryApi ===

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;
type KeepAliveResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;

/// How many renewals of one `KeepAlive` stream the store works on at once.
const KEEP_ALIVE_IN_FLIGHT: usize = 64;

/// How long a `KeepAlive` stream goes on renewing without its token checked
/// again.
const KEEP_ALIVE_RECHECK: Duration = Duration::from_secs(1);

/// How long one `KeepAlive` renewal, or the token re-check before it, may
/// take in the store. Renewals are answered in order, so one the store hangs
/// on (etcd out of reach) would hold back the answers to all that follow;
/// past this it is answered UNAVAILABLE instead.
const KEEP_ALIVE_STORE_LIMIT: Duration = Duration::from_secs(5);

#[tonic::async_trait]
impl<S: Store> pb::registry_server::Registry for RegistryApi<S> {
    async fn create_service(
        &self,
        request: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::CreateServiceResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let name: ServiceName = req.name.parse()?;
        let token = provided_or_new(req.token, "token", TokenKind::Service)?;
        let consumer_token =
            provided_or_new(req.consumer_token, "consumer_token", TokenKind::Consumer)?;
        if token == consumer_token {
            return Err(InvalidArgument::SameTokens.into());
        }
        require_admin(&principal, "CreateService")?;
        let (token_hash, consumer_hash) = (TokenHash::of(&token), TokenHash::of(&consumer_token));
        // Only now, for the admin alone: the admin token is never a service's.
        if token_hash == self.admin || consumer_hash == self.admin {
            return Err(StoreError::TokenInUse.into());
        }
        let info = self
            .store
            .create_service(NewService {
                name,
                token: token_hash,
                consumer_token: consumer_hash,
            })
            .await?;
        tracing::info!(service = %info.name, "created service {}", info.name);
        Ok(Response::new(pb::CreateServiceResponse {
            service: Some(service_to_pb(info)),
            token,
            consumer_token,
        }))
    }

    async fn delete_service(
        &self,
        request: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let name: ServiceName = request.get_ref().name.parse()?;
        require_admin(&principal, "DeleteService")?;
        let removed_instances = self.store.delete_service(&name).await?;
        tracing::info!(service = %name, removed_instances, "deleted service {name}");
        Ok(Response::new(pb::DeleteServiceResponse {
            removed_instances,
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        require_admin(&principal, "ListServices")?;
        let services = self.store.list_services().await?;
        Ok(Response::new(pb::ListServicesResponse {
            services: services.into_iter().map(service_to_pb).collect(),
        }))
    }

    async fn create_consumer(
        &self,
        request: Request<pb::CreateConsumerRequest>,
    ) -> Result<Response<pb::CreateConsumerResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let name: ConsumerName = req.name.parse()?;
        let services = consumer_services(&req.services)?;
        let token = provided_or_new(req.token, "token", TokenKind::Consumer)?;
        require_admin(&principal, "CreateConsumer")?;
        let token_hash = TokenHash::of(&token);
        // Only now, for the admin alone: the admin token is never a consumer's.
        if token_hash == self.admin {
            return Err(StoreError::TokenInUse.into());
        }
        let consumer = self
            .store
            .create_consumer(NewConsumer {
                name,
                token: token_hash,
                services,
            })
            .await?;
        let services: Vec<String> = consumer.services.iter().map(ToString::to_string).collect();
        tracing::info!(
            consumer = %consumer.name,
            services = %services.join(","),
            "created consumer {} for services {}", consumer.name, services.join(",")
        );
        Ok(Response::new(pb::CreateConsumerResponse {
            name: consumer.name.to_string(),
            services,
            token,
        }))
    }

    async fn delete_consumer(
        &self,
        request: Request<pb::DeleteConsumerRequest>,
    ) -> Result<Response<pb::DeleteConsumerResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let name: ConsumerName = request.get_ref().name.parse()?;
        require_admin(&principal, "DeleteConsumer")?;
        self.store.delete_consumer(&name).await?;
        tracing::info!(consumer = %name, "deleted consumer {name}");
        Ok(Response::new(pb::DeleteConsumerResponse {}))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let service: ServiceName = req.service.parse()?;
        let id = match req.instance_id.as_str() {
            "" => None,
            id => Some(id.parse::<InstanceId>()?),
        };
        let registration = Registration {
            id,
            address: req.address.parse()?,
            ttl: Ttl::from_secs(req.ttl_seconds)?,
            metadata: Metadata::new(req.metadata)?,
            service,
        };
        require_writer(&principal, &registration.service)?;
        let instance = self.store.register(registration).await?;
        tracing::info!(
            service = %instance.service,
            instance = %instance.id,
            address = %instance.address,
            lease = %instance.lease,
            "registered {} at {}", instance.id, instance.address
        );
        Ok(Response::new(pb::RegisterResponse {
            lease_id: instance.lease.0,
            ttl_seconds: instance.ttl.as_secs(),
            instance: Some(instance_to_pb(instance, true)),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let lease = LeaseId(request.get_ref().lease_id);
        let scope = lease_scope(&principal)?;
        let ttl = self.store.heartbeat(lease, &scope).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            ttl_seconds: ttl.as_secs(),
        }))
    }

    type KeepAliveStream = KeepAliveResponseStream;

    async fn keep_alive(
        &self,
        request: Request<tonic::Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let principal = self.authenticate(&request).await?;
        let scope = lease_scope(&principal)?;
        let recheck = match &principal {
            // The admin token cannot be deleted.
            Principal::Admin => None,
            // Refused by `lease_scope` above; a reader renews nothing.
            Principal::Consumer(consumer) => return Err(read_only(consumer)),
            Principal::Granted(_) => Some(Arc::new(Recheck::new(
                self.store.clone(),
                bearer_hash(&request)?,
                principal.clone(),
            ))),
        };
        let store = self.store.clone();
        let closing = self.closing.clone();
        let renewals = request
            .into_inner()
            .then(move |request| {
                let recheck = recheck.clone();
                async move {
                    if let Some(recheck) = recheck {
                        recheck.still_valid().await?;
                    }
                    request
                }
            })
            .map(move |request| {
                let (store, scope) = (store.clone(), scope.clone());
                async move {
                    let lease = LeaseId(request?.lease_id);
                    let renewed =
                        tokio::time::timeout(KEEP_ALIVE_STORE_LIMIT, store.heartbeat(lease, &scope))
                            .await;
                    Ok(match renewed {
                        Ok(Ok(ttl)) => pb::KeepAliveResponse {
                            lease_id: lease.0,
                            ttl_seconds: ttl.as_secs(),
                            ..Default::default()
                        },
                        Ok(Err(error)) => refused(lease, &Status::from(error)),
                        Err(_) => refused(
                            lease,
                            &Status::unavailable(format!(
                                "the store did not renew lease {lease} within {} s: renew it again",
                                KEEP_ALIVE_STORE_LIMIT.as_secs()
                            )),
                        ),
                    })
                }
            })
            // Renewals of one stream overlap (a store on etcd answers each
            // after a round trip) and are answered in the order asked.
            .buffered(KEEP_ALIVE_IN_FLIGHT)
            .take_until(closing.clone().cancelled_owned())
            .map(Some)
            // Ended by the shutdown, not by the client: say so.
            .chain(futures::stream::once(async move {
                closing.is_cancelled().then(|| {
                    Err(Status::unavailable(
                        "the registry is shutting down: renew on another replica, or once it is back",
                    ))
                })
            }))
            .filter_map(futures::future::ready);
        Ok(Response::new(Box::pin(renewals)))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let req = request.into_inner();
        let instance = if req.lease_id != 0 {
            let scope = lease_scope(&principal)?;
            self.store
                .deregister_lease(LeaseId(req.lease_id), &scope)
                .await?
        } else if !req.service.is_empty() || !req.instance_id.is_empty() {
            let service: ServiceName = req.service.parse()?;
            let id: InstanceId = req.instance_id.parse()?;
            require_writer(&principal, &service)?;
            self.store.deregister_instance(&service, &id).await?
        } else {
            return Err(InvalidArgument::DeregisterTarget.into());
        };
        tracing::info!(
            service = %instance.service,
            instance = %instance.id,
            address = %instance.address,
            "deregistered {} at {}", instance.id, instance.address
        );
        Ok(Response::new(pb::DeregisterResponse {
            instance: Some(instance_to_pb(instance, shows_leases(&principal))),
        }))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let principal = self.authenticate(&request).await?;
        let service: ServiceName = request.get_ref().service.parse()?;
        require_reader(&principal, &service)?;
        let (instances, revision) = self.store.resolve(&service).await?;
        let with_lease = shows_leases(&principal);
        Ok(Response::new(pb::ResolveResponse {
            instances: instances
                .into_iter()
                .map(|i| instance_to_pb(i, with_lease))
                .collect(),
            revision,
        }))
    }

    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let principal = self.authenticate(&request).await?;
        // A named consumer can be deleted while its services live on: its
        // watches end then too (a service's tokens go only with the service,
        // whose deletion ends its watches anyway).
        let recheck = match &principal {
            Principal::Consumer(_) => Some(Arc::new(Recheck::new(
                self.store.clone(),
                bearer_hash(&request)?,
                principal.clone(),
            ))),
            Principal::Admin | Principal::Granted(_) => None,
        };
        let req = request.into_inner();
        let service: ServiceName = req.service.parse()?;
        require_reader(&principal, &service)?;
        let with_lease = shows_leases(&principal);
        let events = self
            .store
            .watch(&service, req.since_revision, self.progress_every)
            .await?;
        let stream = events
            .then(move |event| {
                let recheck = recheck.clone();
                async move {
                    if let Some(recheck) = recheck {
                        recheck.still_valid().await?;
                    }
                    match event {
                        Ok(event) => Ok(watch_event_to_pb(event, with_lease)),
                        Err(e) => Err(Status::from(e)),
                    }
                }
            })
            .take_until(self.closing.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests;
