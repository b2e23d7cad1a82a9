//! The registry's gRPC requests, from arbitrary input, against a model.
//!
//! Each input is a sequence of calls to a real `RegistryApi` over a real
//! `MemoryStore`, made the way tonic makes them (the `Registry` trait, with
//! `authorization` metadata), on a runtime whose clock only moves when the
//! input says so. A call's request is either built from structured fields
//! (names, addresses, tokens and leases picked from what the run has seen, or
//! arbitrary text) or decoded with prost from arbitrary bytes.
//!
//! A model of the registry, written from the contract's documentation and not
//! from the code, predicts each call's status code: `UNAUTHENTICATED` first,
//! then `INVALID_ARGUMENT` for a field outside the documented limits, then
//! `PERMISSION_DENIED`, then what the catalog and the live instances say.
//! Accepted calls are checked further: what the registry answers and stores
//! satisfies the documented limits (name and id charsets and lengths, the
//! normalized `http(s)://host:port` address, the TTL range, the metadata
//! bounds), normalized values normalize to themselves, and every read agrees
//! with the model, including after leases expire.

#![no_main]

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use arbitrary::Arbitrary;
use futures::{FutureExt as _, StreamExt as _};
use libfuzzer_sys::fuzz_target;
use market_proto::registry::v1::{self as pb, registry_server::Registry as _};
use prost::Message as _;
use registryd::{MemoryStore, MemoryStoreConfig, RegistryApi, model::Address};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, metadata::MetadataValue};

/// The admin token of every run.
const ADMIN: &str = "adm_fuzz-admin-token-0123456789abcdef0123456789";

/// At most this many calls per input, so that one input stays fast.
const MAX_CALLS: usize = 48;

// === the input ===

/// Who calls.
#[derive(Debug, Arbitrary)]
enum Caller {
    Admin,
    /// A service token the run was given, by index (deleted services' too).
    Service(u8),
    /// A consumer token the run was given, by index.
    Consumer(u8),
    /// `Bearer <text>`.
    Bearer(String),
    /// The whole `authorization` value.
    Header(String),
    /// No `authorization` metadata at all.
    Anonymous,
}

/// A service name.
#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Text(String),
}

const NAMES: &[&str] = &["ratings", "web", "a", "r2-d2", "Ratings", "-x", ""];

/// An instance id.
#[derive(Debug, Arbitrary)]
enum Id {
    Empty,
    Known(u8),
    /// One of the ids the registry made up in this run.
    Issued(u8),
    Text(String),
}

const IDS: &[&str] = &["i-1", "i.2", "ratings_8001", "bad id"];

/// An address.
#[derive(Debug, Arbitrary)]
enum Addr {
    Known(u8),
    Parts {
        scheme: Option<bool>,
        host: String,
        port: String,
        slash: bool,
    },
    Text(String),
}

const ADDRESSES: &[&str] = &[
    "127.0.0.1:8001",
    "http://127.0.0.1:8001/",
    "https://[::1]:443",
    "ratings.example:9000",
    "http://127.0.0.1:8001/x",
];

/// A provided token (`CreateService`).
#[derive(Debug, Arbitrary)]
enum TokenField {
    /// Let the registry make one up.
    Empty,
    Known(u8),
    /// A token the run was given (of any kind).
    Issued(u8),
    Text(String),
}

const TOKENS: &[&str] = &[
    "svc_fuzz-provided-token-00000000000000000000",
    "con_fuzz-provided-token-11111111111111111111",
    "provided-token-with-exactly-32-ch",
    ADMIN,
];

/// A TTL in seconds.
#[derive(Debug, Arbitrary)]
enum TtlField {
    InRange(u16),
    Raw(u32),
}

/// A metadata value.
#[derive(Debug, Arbitrary)]
enum Value {
    Text(String),
    /// This many bytes, to reach the size bounds.
    Long(u16),
}

/// A lease id.
#[derive(Debug, Arbitrary)]
enum Lease {
    Zero,
    /// One the registry handed out in this run (maybe expired or removed).
    Issued(u8),
    Raw(u64),
}

/// A watch's `since_revision`.
#[derive(Debug, Arbitrary)]
enum Since {
    Zero,
    /// Relative to the latest revision a read returned.
    Latest(i8),
    Raw(u64),
}

/// Which request type raw bytes are decoded as.
#[derive(Debug, Arbitrary)]
enum Method {
    CreateService,
    DeleteService,
    ListServices,
    Register,
    Heartbeat,
    Deregister,
    Resolve,
    Watch,
}

#[derive(Debug, Arbitrary)]
enum Op {
    CreateService {
        caller: Caller,
        name: Name,
        token: TokenField,
        consumer_token: TokenField,
    },
    DeleteService {
        caller: Caller,
        name: Name,
    },
    ListServices {
        caller: Caller,
    },
    Register {
        caller: Caller,
        service: Name,
        id: Id,
        address: Addr,
        metadata: Vec<(Name, Value)>,
        ttl: TtlField,
    },
    Heartbeat {
        caller: Caller,
        lease: Lease,
    },
    Deregister {
        caller: Caller,
        lease: Lease,
        service: Name,
        id: Id,
    },
    Resolve {
        caller: Caller,
        service: Name,
    },
    Watch {
        caller: Caller,
        service: Name,
        since: Since,
    },
    /// A request decoded from bytes as they would arrive on the wire.
    Wire {
        caller: Caller,
        method: Method,
        bytes: Vec<u8>,
    },
    /// Lets time pass, so that leases expire.
    Sleep {
        seconds: u16,
    },
}

fuzz_target!(|ops: Vec<Op>| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut run = Run::new();
        for op in ops.into_iter().take(MAX_CALLS) {
            run.op(op).await;
        }
    });
});

// === the model ===

/// What a token grants, in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Admin,
    Service(String),
    Consumer(String),
}

#[derive(Debug, Clone)]
struct ModelInstance {
    address: String,
    lease: u64,
    ttl: u32,
    metadata: BTreeMap<String, String>,
    /// When its lease runs out, unless renewed.
    deadline: Instant,
}

#[derive(Debug, Default)]
struct ModelService {
    instances: BTreeMap<String, ModelInstance>,
}

/// Every request type, so that structured and decoded requests take the same
/// path.
enum Call {
    CreateService(pb::CreateServiceRequest),
    DeleteService(pb::DeleteServiceRequest),
    ListServices(pb::ListServicesRequest),
    Register(pb::RegisterRequest),
    Heartbeat(pb::HeartbeatRequest),
    Deregister(pb::DeregisterRequest),
    Resolve(pb::ResolveRequest),
    Watch(pb::WatchRequest),
}

/// What the model expects of a call.
type Expected = Result<(), Code>;

struct Run {
    api: RegistryApi<MemoryStore>,
    services: BTreeMap<String, ModelService>,
    /// Live tokens and what they grant.
    tokens: HashMap<String, Who>,
    /// Every service and consumer token handed out, for callers to pick from.
    issued_service: Vec<String>,
    issued_consumer: Vec<String>,
    /// Every lease handed out.
    leases: Vec<u64>,
    /// Every instance id the registry made up.
    ids: Vec<String>,
    /// The latest revision a read returned.
    revision: u64,
}

impl Run {
    fn new() -> Self {
        let store = MemoryStore::open(MemoryStoreConfig::default()).expect("an in-memory store");
        let api = RegistryApi::new(
            Arc::new(store),
            ADMIN,
            // No progress events: the clock only moves when an input sleeps.
            Duration::from_secs(365 * 24 * 3600),
            CancellationToken::new(),
        );
        Self {
            api,
            services: BTreeMap::new(),
            tokens: HashMap::new(),
            issued_service: Vec::new(),
            issued_consumer: Vec::new(),
            leases: Vec::new(),
            ids: Vec::new(),
            revision: 0,
        }
    }

    async fn op(&mut self, op: Op) {
        let (caller, call) = match op {
            Op::Sleep { seconds } => {
                tokio::time::advance(Duration::from_secs(u64::from(seconds % 400))).await;
                // Lets the store's expiry task run.
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                self.expire();
                return;
            }
            Op::CreateService {
                caller,
                name,
                token,
                consumer_token,
            } => (
                caller,
                Call::CreateService(pb::CreateServiceRequest {
                    name: name.pick(),
                    token: self.token_field(token),
                    consumer_token: self.token_field(consumer_token),
                }),
            ),
            Op::DeleteService { caller, name } => (
                caller,
                Call::DeleteService(pb::DeleteServiceRequest { name: name.pick() }),
            ),
            Op::ListServices { caller } => (caller, Call::ListServices(pb::ListServicesRequest {})),
            Op::Register {
                caller,
                service,
                id,
                address,
                metadata,
                ttl,
            } => (
                caller,
                Call::Register(pb::RegisterRequest {
                    service: service.pick(),
                    instance_id: self.id(id),
                    address: address.pick(),
                    metadata: metadata
                        .into_iter()
                        .map(|(key, value)| (key.pick_key(), value.pick()))
                        .collect(),
                    ttl_seconds: match ttl {
                        TtlField::InRange(n) => u32::from(n % 302),
                        TtlField::Raw(n) => n,
                    },
                }),
            ),
            Op::Heartbeat { caller, lease } => (
                caller,
                Call::Heartbeat(pb::HeartbeatRequest {
                    lease_id: self.lease(lease),
                }),
            ),
            Op::Deregister {
                caller,
                lease,
                service,
                id,
            } => (
                caller,
                Call::Deregister(pb::DeregisterRequest {
                    lease_id: self.lease(lease),
                    service: service.pick(),
                    instance_id: self.id(id),
                }),
            ),
            Op::Resolve { caller, service } => (
                caller,
                Call::Resolve(pb::ResolveRequest {
                    service: service.pick(),
                }),
            ),
            Op::Watch {
                caller,
                service,
                since,
            } => (
                caller,
                Call::Watch(pb::WatchRequest {
                    service: service.pick(),
                    since_revision: match since {
                        Since::Zero => 0,
                        Since::Latest(delta) => self.revision.saturating_add_signed(delta.into()),
                        Since::Raw(n) => n,
                    },
                }),
            ),
            Op::Wire {
                caller,
                method,
                bytes,
            } => {
                let bytes = bytes.as_slice();
                let call = match method {
                    Method::CreateService => {
                        pb::CreateServiceRequest::decode(bytes).map(Call::CreateService)
                    }
                    Method::DeleteService => {
                        pb::DeleteServiceRequest::decode(bytes).map(Call::DeleteService)
                    }
                    Method::ListServices => {
                        pb::ListServicesRequest::decode(bytes).map(Call::ListServices)
                    }
                    Method::Register => pb::RegisterRequest::decode(bytes).map(Call::Register),
                    Method::Heartbeat => pb::HeartbeatRequest::decode(bytes).map(Call::Heartbeat),
                    Method::Deregister => {
                        pb::DeregisterRequest::decode(bytes).map(Call::Deregister)
                    }
                    Method::Resolve => pb::ResolveRequest::decode(bytes).map(Call::Resolve),
                    Method::Watch => pb::WatchRequest::decode(bytes).map(Call::Watch),
                };
                // Bytes that are no such message never reach the service:
                // tonic refuses them while decoding.
                let Ok(call) = call else { return };
                (caller, call)
            }
        };
        let Some(header) = self.authorization(caller) else {
            return;
        };
        self.call(header, call).await;
    }

    // --- picking values ---

    fn token_field(&self, field: TokenField) -> String {
        match field {
            TokenField::Empty => String::new(),
            TokenField::Known(i) => TOKENS[usize::from(i) % TOKENS.len()].to_owned(),
            TokenField::Issued(i) => {
                let all: Vec<&String> = self
                    .issued_service
                    .iter()
                    .chain(&self.issued_consumer)
                    .collect();
                pick(&all, i).map_or_else(String::new, |t| (*t).clone())
            }
            TokenField::Text(text) => text,
        }
    }

    fn id(&self, id: Id) -> String {
        match id {
            Id::Empty => String::new(),
            Id::Known(i) => IDS[usize::from(i) % IDS.len()].to_owned(),
            Id::Issued(i) => pick(&self.ids, i).cloned().unwrap_or_default(),
            Id::Text(text) => text,
        }
    }

    fn lease(&self, lease: Lease) -> u64 {
        match lease {
            Lease::Zero => 0,
            Lease::Issued(i) => pick(&self.leases, i).copied().unwrap_or(1),
            Lease::Raw(n) => n,
        }
    }

    /// The `authorization` metadata value, or `None` for a value that
    /// metadata cannot carry (no client could send it).
    fn authorization(&self, caller: Caller) -> Option<Option<String>> {
        let value = match caller {
            Caller::Admin => format!("Bearer {ADMIN}"),
            Caller::Service(i) => format!(
                "Bearer {}",
                pick(&self.issued_service, i).map_or("svc_none", String::as_str)
            ),
            Caller::Consumer(i) => format!(
                "Bearer {}",
                pick(&self.issued_consumer, i).map_or("con_none", String::as_str)
            ),
            Caller::Bearer(token) => format!("Bearer {token}"),
            Caller::Header(value) => value,
            Caller::Anonymous => return Some(None),
        };
        MetadataValue::try_from(value.as_str()).ok()?;
        Some(Some(value))
    }

    // --- the model's predictions ---

    /// Whom the model takes the caller for.
    fn who(&self, header: Option<&str>) -> Option<Who> {
        let token = header?.strip_prefix("Bearer ")?.trim();
        if token == ADMIN {
            return Some(Who::Admin);
        }
        self.tokens.get(token).cloned()
    }

    fn may_write(who: &Who, service: &str) -> bool {
        match who {
            Who::Admin => true,
            Who::Service(own) => own == service,
            Who::Consumer(_) => false,
        }
    }

    fn may_read(who: &Who, service: &str) -> bool {
        match who {
            Who::Admin => true,
            Who::Service(own) | Who::Consumer(own) => own == service,
        }
    }

    /// Finds the live instance holding `lease`.
    fn holder(&self, lease: u64) -> Option<(String, String)> {
        self.services.iter().find_map(|(service, s)| {
            s.instances
                .iter()
                .find(|(_, i)| i.lease == lease)
                .map(|(id, _)| (service.clone(), id.clone()))
        })
    }

    /// Removes, in the model, every instance whose lease ran out.
    fn expire(&mut self) {
        let now = Instant::now();
        for service in self.services.values_mut() {
            service.instances.retain(|_, i| i.deadline > now);
        }
    }

    // --- one call ---

    async fn call(&mut self, header: Option<String>, call: Call) {
        let who = self.who(header.as_deref());
        macro_rules! request {
            ($message:expr) => {{
                let mut request = Request::new($message);
                if let Some(header) = &header {
                    request.metadata_mut().insert(
                        "authorization",
                        MetadataValue::try_from(header.as_str()).expect("checked"),
                    );
                }
                request
            }};
        }
        match call {
            Call::CreateService(req) => {
                let expected = who.as_ref().map_or(Err(Code::Unauthenticated), |who| {
                    self.expect_create(who, &req)
                });
                let result = self.api.create_service(request!(req.clone())).await;
                let Some(response) = outcome("CreateService", &req, expected, result) else {
                    return;
                };
                let service = response.service.expect("a service");
                assert_eq!(service.name, req.name);
                assert_eq!(service.live_instances, 0);
                for (given, got) in [
                    (&req.token, &response.token),
                    (&req.consumer_token, &response.consumer_token),
                ] {
                    if given.is_empty() {
                        assert!(
                            token_ok(got),
                            "a generated token breaks the limits: {got:?}"
                        );
                    } else {
                        assert_eq!(given, got, "the provided token was not kept");
                    }
                }
                self.tokens
                    .insert(response.token.clone(), Who::Service(req.name.clone()));
                self.tokens.insert(
                    response.consumer_token.clone(),
                    Who::Consumer(req.name.clone()),
                );
                self.issued_service.push(response.token);
                self.issued_consumer.push(response.consumer_token);
                self.services.insert(req.name, ModelService::default());
            }
            Call::DeleteService(req) => {
                let expected = who.as_ref().map_or(Err(Code::Unauthenticated), |who| {
                    if !service_name_ok(&req.name) {
                        Err(Code::InvalidArgument)
                    } else if *who != Who::Admin {
                        Err(Code::PermissionDenied)
                    } else if !self.services.contains_key(&req.name) {
                        Err(Code::NotFound)
                    } else {
                        Ok(())
                    }
                });
                let result = self.api.delete_service(request!(req.clone())).await;
                let Some(response) = outcome("DeleteService", &req, expected, result) else {
                    return;
                };
                let removed = self.services.remove(&req.name).expect("expected");
                assert_eq!(response.removed_instances as usize, removed.instances.len());
                self.tokens.retain(|_, who| match who {
                    Who::Service(s) | Who::Consumer(s) => *s != req.name,
                    Who::Admin => true,
                });
            }
            Call::ListServices(req) => {
                let expected = match &who {
                    None => Err(Code::Unauthenticated),
                    Some(Who::Admin) => Ok(()),
                    Some(_) => Err(Code::PermissionDenied),
                };
                let result = self.api.list_services(request!(req)).await;
                let Some(response) = outcome("ListServices", &req, expected, result) else {
                    return;
                };
                let listed: Vec<(String, usize)> = response
                    .services
                    .into_iter()
                    .map(|s| (s.name, s.live_instances as usize))
                    .collect();
                let model: Vec<(String, usize)> = self
                    .services
                    .iter()
                    .map(|(name, s)| (name.clone(), s.instances.len()))
                    .collect();
                assert_eq!(listed, model, "ListServices disagrees with the model");
            }
            Call::Register(req) => {
                // The address is checked whoever calls, so that every input
                // exercises the normalization.
                let address = normalized(&req.address);
                let expected = who.as_ref().map_or(Err(Code::Unauthenticated), |who| {
                    self.expect_register(who, &req, address.as_ref())
                });
                let result = self.api.register(request!(req.clone())).await;
                let Some(response) = outcome("Register", &req, expected, result) else {
                    return;
                };
                let instance = response.instance.expect("an instance");
                check_instance(&instance);
                assert_eq!(instance.service, req.service);
                assert_eq!(
                    Some(&instance.address),
                    address.as_ref(),
                    "the stored address is not the normalized one"
                );
                if !req.instance_id.is_empty() {
                    assert_eq!(instance.instance_id, req.instance_id);
                }
                assert_eq!(instance.ttl_seconds, req.ttl_seconds);
                assert_eq!(response.ttl_seconds, req.ttl_seconds);
                assert_eq!(instance.lease_id, response.lease_id);
                assert_ne!(response.lease_id, 0, "lease 0 means none");
                assert_eq!(
                    instance.metadata.iter().collect::<BTreeMap<_, _>>(),
                    req.metadata.iter().collect::<BTreeMap<_, _>>()
                );
                let service = self.services.get_mut(&req.service).expect("expected");
                if req.instance_id.is_empty() {
                    assert!(
                        !service.instances.contains_key(&instance.instance_id),
                        "a made-up id took a live instance's"
                    );
                    self.ids.push(instance.instance_id.clone());
                }
                service.instances.insert(
                    instance.instance_id,
                    ModelInstance {
                        address: instance.address,
                        lease: response.lease_id,
                        ttl: response.ttl_seconds,
                        metadata: instance.metadata.into_iter().collect(),
                        deadline: Instant::now()
                            + Duration::from_secs(u64::from(response.ttl_seconds)),
                    },
                );
                self.leases.push(response.lease_id);
            }
            Call::Heartbeat(req) => {
                let holder = self.holder(req.lease_id);
                let expected = who.as_ref().map_or(Err(Code::Unauthenticated), |who| {
                    expect_lease(who, holder.as_ref())
                });
                let result = self.api.heartbeat(request!(req)).await;
                let Some(response) = outcome("Heartbeat", &req, expected, result) else {
                    return;
                };
                let (service, id) = holder.expect("expected");
                let instance = self
                    .services
                    .get_mut(&service)
                    .and_then(|s| s.instances.get_mut(&id))
                    .expect("expected");
                assert_eq!(response.ttl_seconds, instance.ttl);
                instance.deadline = Instant::now() + Duration::from_secs(u64::from(instance.ttl));
            }
            Call::Deregister(req) => {
                let (expected, target) = match &who {
                    None => (Err(Code::Unauthenticated), None),
                    Some(who) if req.lease_id != 0 => {
                        let holder = self.holder(req.lease_id);
                        (expect_lease(who, holder.as_ref()), holder)
                    }
                    Some(who) if !req.service.is_empty() || !req.instance_id.is_empty() => {
                        let target = (req.service.clone(), req.instance_id.clone());
                        let expected = if !service_name_ok(&req.service)
                            || !instance_id_ok(&req.instance_id)
                        {
                            Err(Code::InvalidArgument)
                        } else if !Self::may_write(who, &req.service) {
                            Err(Code::PermissionDenied)
                        } else if !self
                            .services
                            .get(&req.service)
                            .is_some_and(|s| s.instances.contains_key(&req.instance_id))
                        {
                            Err(Code::NotFound)
                        } else {
                            Ok(())
                        };
                        (expected, Some(target))
                    }
                    Some(_) => (Err(Code::InvalidArgument), None),
                };
                let result = self.api.deregister(request!(req.clone())).await;
                let Some(response) = outcome("Deregister", &req, expected, result) else {
                    return;
                };
                let (service, id) = target.expect("expected");
                let removed = self
                    .services
                    .get_mut(&service)
                    .and_then(|s| s.instances.remove(&id))
                    .expect("expected");
                let instance = response.instance.expect("an instance");
                check_instance(&instance);
                assert_eq!((instance.service, instance.instance_id), (service, id));
                assert_eq!(instance.address, removed.address);
                assert_eq!(instance.lease_id, removed.lease);
            }
            Call::Resolve(req) => {
                let expected = self.expect_read(who.as_ref(), &req.service);
                let result = self.api.resolve(request!(req.clone())).await;
                let Some(response) = outcome("Resolve", &req, expected, result) else {
                    return;
                };
                assert!(response.revision >= self.revision, "revisions went back");
                self.revision = response.revision;
                let consumer = matches!(who, Some(Who::Consumer(_)));
                self.check_instances(&req.service, &response.instances, consumer);
            }
            Call::Watch(req) => {
                let expected = self.expect_read(who.as_ref(), &req.service);
                let result = self.api.watch(request!(req.clone())).await;
                let Some(mut stream) = outcome("Watch", &req, expected, result) else {
                    return;
                };
                // The store's pump task sends the first events.
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                let first = stream
                    .next()
                    .now_or_never()
                    .expect("a watch starts at once")
                    .expect("a first event")
                    .expect("not an error");
                let consumer = matches!(who, Some(Who::Consumer(_)));
                match first.event.expect("an event") {
                    pb::watch_response::Event::Snapshot(snapshot) => {
                        self.check_instances(&req.service, &snapshot.instances, consumer);
                    }
                    pb::watch_response::Event::Change(_)
                    | pb::watch_response::Event::Progress(_) => {
                        assert!(
                            req.since_revision != 0,
                            "a watch from revision 0 starts with a snapshot"
                        );
                    }
                }
            }
        }
    }

    fn expect_create(&self, who: &Who, req: &pb::CreateServiceRequest) -> Expected {
        let provided_ok = |t: &str| t.is_empty() || token_ok(t);
        if !service_name_ok(&req.name)
            || !provided_ok(&req.token)
            || !provided_ok(&req.consumer_token)
        {
            return Err(Code::InvalidArgument);
        }
        if !req.token.is_empty() && req.token == req.consumer_token {
            // One token cannot be both the service's and its consumers'.
            return Err(Code::InvalidArgument);
        }
        if *who != Who::Admin {
            return Err(Code::PermissionDenied);
        }
        // A token grants one thing: the admin's or another service's token
        // is refused.
        if req.token == ADMIN || req.consumer_token == ADMIN {
            return Err(Code::FailedPrecondition);
        }
        if self.services.contains_key(&req.name) {
            return Err(Code::AlreadyExists);
        }
        if self.tokens.contains_key(&req.token) || self.tokens.contains_key(&req.consumer_token) {
            return Err(Code::FailedPrecondition);
        }
        Ok(())
    }

    fn expect_register(
        &self,
        who: &Who,
        req: &pb::RegisterRequest,
        address: Option<&String>,
    ) -> Expected {
        if !service_name_ok(&req.service)
            || !(req.instance_id.is_empty() || instance_id_ok(&req.instance_id))
            || address.is_none()
            || !(1..=300).contains(&req.ttl_seconds)
            || !metadata_ok(&req.metadata)
        {
            return Err(Code::InvalidArgument);
        }
        if !Self::may_write(who, &req.service) {
            return Err(Code::PermissionDenied);
        }
        let Some(service) = self.services.get(&req.service) else {
            return Err(Code::NotFound);
        };
        match service.instances.get(&req.instance_id) {
            Some(existing) if Some(&existing.address) != address => Err(Code::AlreadyExists),
            _ => Ok(()),
        }
    }

    fn expect_read(&self, who: Option<&Who>, service: &str) -> Expected {
        let who = who.ok_or(Code::Unauthenticated)?;
        if !service_name_ok(service) {
            Err(Code::InvalidArgument)
        } else if !Self::may_read(who, service) {
            Err(Code::PermissionDenied)
        } else if !self.services.contains_key(service) {
            Err(Code::NotFound)
        } else {
            Ok(())
        }
    }

    /// Checks a read's instances against the model: the same ones, sorted by
    /// address, with lease ids hidden from consumers.
    fn check_instances(&self, service: &str, instances: &[pb::Instance], consumer: bool) {
        for instance in instances {
            check_instance(instance);
            assert_eq!(instance.service, service);
            if consumer {
                assert_eq!(instance.lease_id, 0, "a consumer saw a lease");
            }
        }
        let got: Vec<(&str, &str)> = instances
            .iter()
            .map(|i| (i.address.as_str(), i.instance_id.as_str()))
            .collect();
        let mut want: Vec<(&str, &str)> = self.services[service]
            .instances
            .iter()
            .map(|(id, i)| (i.address.as_str(), id.as_str()))
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "the live instances disagree with the model");
        for instance in instances {
            let model = &self.services[service].instances[&instance.instance_id];
            assert_eq!(instance.ttl_seconds, model.ttl);
            if !consumer {
                assert_eq!(instance.lease_id, model.lease);
            }
            assert_eq!(
                instance.metadata.iter().collect::<BTreeMap<_, _>>(),
                model.metadata.iter().collect::<BTreeMap<_, _>>()
            );
        }
    }
}

/// What the model expects of a call naming a lease.
fn expect_lease(who: &Who, holder: Option<&(String, String)>) -> Expected {
    if matches!(who, Who::Consumer(_)) {
        return Err(Code::PermissionDenied);
    }
    let (service, _) = holder.ok_or(Code::NotFound)?;
    if Run::may_write(who, service) {
        Ok(())
    } else {
        Err(Code::PermissionDenied)
    }
}

/// Compares a call's outcome with the model's expectation; the response when
/// the call succeeded.
fn outcome<T, R: std::fmt::Debug>(
    call: &str,
    request: &R,
    expected: Expected,
    result: Result<tonic::Response<T>, Status>,
) -> Option<T> {
    match (expected, result) {
        (Ok(()), Ok(response)) => Some(response.into_inner()),
        (Err(code), Err(status)) if status.code() == code => {
            assert!(
                !status.message().is_empty(),
                "{call}: a refusal must say why"
            );
            None
        }
        (expected, Ok(_)) => panic!("{call} {request:?}: expected {expected:?}, got OK"),
        (expected, Err(status)) => {
            panic!("{call} {request:?}: expected {expected:?}, got {status:?}")
        }
    }
}

fn pick<T>(items: &[T], index: u8) -> Option<&T> {
    (!items.is_empty()).then(|| &items[usize::from(index) % items.len()])
}

impl Name {
    fn pick(self) -> String {
        match self {
            Name::Known(i) => NAMES[usize::from(i) % NAMES.len()].to_owned(),
            Name::Text(text) => text,
        }
    }

    fn pick_key(self) -> String {
        match self {
            Name::Known(i) => ["zone", "version", "a.b_c-d", "Zone"][usize::from(i) % 4].to_owned(),
            Name::Text(text) => text,
        }
    }
}

impl Addr {
    fn pick(self) -> String {
        match self {
            Addr::Known(i) => ADDRESSES[usize::from(i) % ADDRESSES.len()].to_owned(),
            Addr::Parts {
                scheme,
                host,
                port,
                slash,
            } => {
                let scheme = match scheme {
                    None => "",
                    Some(false) => "http://",
                    Some(true) => "https://",
                };
                let slash = if slash { "/" } else { "" };
                format!("{scheme}{host}:{port}{slash}")
            }
            Addr::Text(text) => text,
        }
    }
}

impl Value {
    fn pick(self) -> String {
        match self {
            Value::Text(text) => text,
            Value::Long(n) => "v".repeat(usize::from(n % 300)),
        }
    }
}

// === the documented limits, written from the contract ===

/// `[a-z0-9-]{1,63}`, not starting or ending with `-`.
fn service_name_ok(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `[A-Za-z0-9._-]{1,128}`.
fn instance_id_ok(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// 32 to 256 printable ASCII characters without spaces.
fn token_ok(token: &str) -> bool {
    (32..=256).contains(&token.len()) && token.chars().all(|c| c.is_ascii_graphic())
}

/// At most 16 entries, keys `[a-z0-9._-]{1,63}`, values at most 256 bytes,
/// 4 KiB in all.
fn metadata_ok(metadata: &HashMap<String, String>) -> bool {
    metadata.len() <= 16
        && metadata.iter().all(|(k, v)| {
            (1..=63).contains(&k.len())
                && k.chars()
                    .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
                && v.len() <= 256
        })
        && metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            <= 4096
}

/// The registry's normalization of an address, checked: `None` when it
/// refuses the address; when it accepts, the result must be
/// `http(s)://host:port` with a port of 1 to 65535 in plain digits, parse as
/// a URI with that host and port, and normalize to itself.
fn normalized(address: &str) -> Option<String> {
    let accepted = address.parse::<Address>().ok()?.as_str().to_owned();
    let rest = accepted
        .strip_prefix("http://")
        .or_else(|| accepted.strip_prefix("https://"))
        .unwrap_or_else(|| panic!("{address:?} became {accepted:?}, without http(s)://"));
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{address:?} became {accepted:?}, without a port"));
    assert!(
        !host.is_empty() && !host.contains(['/', '?', '#', '@']),
        "{address:?} became {accepted:?}, whose host is not a host"
    );
    if let Some(literal) = host.strip_prefix('[') {
        assert!(
            literal
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
            "{address:?} became {accepted:?}, whose host is no IPv6 address"
        );
    }
    assert!(
        (1..=5).contains(&port.len())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0),
        "{address:?} became {accepted:?}, whose port is not 1 to 65535 in digits"
    );
    let uri: axum::http::Uri = accepted
        .parse()
        .unwrap_or_else(|e| panic!("{address:?} became {accepted:?}, not a URI: {e}"));
    assert_eq!(uri.port_u16(), port.parse().ok(), "{accepted:?}");
    assert_eq!(uri.path(), "/", "{accepted:?}");
    assert_eq!(
        accepted.parse::<Address>().map(|a| a.as_str().to_owned()),
        Ok(accepted.clone()),
        "normalizing {accepted:?} again changed it"
    );
    Some(accepted)
}

/// What any instance the registry answers with must satisfy.
fn check_instance(instance: &pb::Instance) {
    assert!(service_name_ok(&instance.service), "{instance:?}");
    assert!(instance_id_ok(&instance.instance_id), "{instance:?}");
    assert_eq!(
        normalized(&instance.address).as_deref(),
        Some(instance.address.as_str()),
        "{instance:?}"
    );
    assert!((1..=300).contains(&instance.ttl_seconds), "{instance:?}");
    assert!(metadata_ok(&instance.metadata), "{instance:?}");
}
