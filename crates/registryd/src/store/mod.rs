//! Where the registry keeps its catalog and its instances.
//!
//! [`Store`] is the seam between the gRPC layer and the storage engine. The
//! gRPC layer authenticates callers and validates input; a store applies one
//! well-formed operation atomically and tells watchers what changed. The
//! embedded [`MemoryStore`] keeps instances in memory and the catalog in a file;
//! a store on a distributed engine implements the same trait.

use std::{collections::BTreeSet, future::Future, time::Duration};

use futures::stream::BoxStream;

use crate::{
    auth::{Consumer, Grant, TokenHash},
    model::{
        ConsumerName, Event, Instance, InstanceId, LeaseId, Registration, Revision, ServiceInfo,
        ServiceName, Ttl,
    },
};

mod catalog_file;
#[cfg(feature = "etcd")]
mod etcd;
mod memory;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdStore, EtcdStoreConfig};
pub use memory::{MemoryStore, MemoryStoreConfig};

/// Why a store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The service is not in the catalog.
    #[error(
        "service '{0}' does not exist; an admin creates it with `registryctl create-service {0}`"
    )]
    NoSuchService(ServiceName),
    /// The service is already in the catalog.
    #[error("service '{0}' already exists; delete it first to get new tokens")]
    ServiceExists(ServiceName),
    /// The named consumer exists already.
    #[error(
        "consumer '{0}' already exists; delete it first (`registryctl delete-consumer {0}`) to give it a new token or other services"
    )]
    ConsumerExists(ConsumerName),
    /// No named consumer has that name.
    #[error(
        "consumer '{0}' does not exist; an admin creates it with `registryctl create-consumer {0} --services NAME[,NAME...]`"
    )]
    NoSuchConsumer(ConsumerName),
    /// A provided token is already some service's, a named consumer's, or
    /// the admin's: a token grants one thing only.
    #[error(
        "a provided token is already in use; provide another, or leave it empty to get a new one"
    )]
    TokenInUse,
    /// The lease is unknown: it expired, was revoked, or never existed.
    #[error("lease {0} is unknown or expired; register the instance again")]
    NoSuchLease(LeaseId),
    /// No live instance has that id.
    #[error("service '{service}' has no live instance '{id}'")]
    NoSuchInstance {
        /// The service named.
        service: ServiceName,
        /// The instance id named.
        id: InstanceId,
    },
    /// Another live instance holds the id.
    #[error(
        "instance id '{id}' of service '{service}' is held by a live instance at {address}; choose another id, or stop that instance"
    )]
    InstanceIdTaken {
        /// The service.
        service: ServiceName,
        /// The id asked for.
        id: InstanceId,
        /// The address of the instance holding it.
        address: String,
    },
    /// The caller's token belongs to another service than the lease's.
    #[error("lease {lease} belongs to service '{owner}', and this token is for service '{caller}'")]
    WrongService {
        /// The lease named.
        lease: LeaseId,
        /// The service that owns the lease.
        owner: ServiceName,
        /// The service of the caller's token.
        caller: ServiceName,
    },
    /// The store could not write durably; nothing was changed.
    #[error("the registry could not save its catalog: {0}")]
    Persist(#[source] std::io::Error),
    /// The storage engine failed or is out of reach.
    #[error("the registry's storage is unavailable: {0}")]
    Unavailable(String),
}

/// Whose leases a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any service's (the admin).
    Any,
    /// Only this service's.
    Service(ServiceName),
}

/// What a watch stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The full set of live instances, read at a revision. It replaces whatever
    /// the watcher knew.
    Snapshot {
        /// The instances, sorted by address.
        instances: Vec<Instance>,
        /// The revision they were read at.
        revision: Revision,
    },
    /// One change of the watched service.
    Change(Event),
    /// No change of the watched service is missing up to this revision.
    Progress(Revision),
}

/// A stream of watch events; it ends with an error when the service is deleted
/// or the store fails.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// A new service with the hashes of its tokens.
#[derive(Debug, Clone)]
pub struct NewService {
    /// The service's name.
    pub name: ServiceName,
    /// The hash of its service token.
    pub token: TokenHash,
    /// The hash of its consumer token.
    pub consumer_token: TokenHash,
}

/// A new named consumer with the hash of its token.
#[derive(Debug, Clone)]
pub struct NewConsumer {
    /// The consumer's name.
    pub name: ConsumerName,
    /// The hash of its token.
    pub token: TokenHash,
    /// The services it may read; each must be in the catalog.
    pub services: BTreeSet<ServiceName>,
}

/// The registry's storage: a catalog of services and their live instances.
///
/// Every method applies atomically: it either does all it says or changes
/// nothing.
pub trait Store: Send + Sync + 'static {
    /// Adds a service to the catalog.
    fn create_service(
        &self,
        service: NewService,
    ) -> impl Future<Output = Result<ServiceInfo, StoreError>> + Send;

    /// Removes a service and every instance of it; returns how many instances
    /// were removed. Its watchers see them removed, then their streams end.
    fn delete_service(
        &self,
        name: &ServiceName,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// The catalog, sorted by name.
    fn list_services(&self) -> impl Future<Output = Result<Vec<ServiceInfo>, StoreError>> + Send;

    /// What a token grants, if it is a service's or consumer's token from
    /// `create_service` (a named consumer's is not: see `lookup_consumer`).
    fn lookup_token(
        &self,
        token: &TokenHash,
    ) -> impl Future<Output = Result<Option<Grant>, StoreError>> + Send;

    /// Adds a named consumer. Every service it names must be in the catalog
    /// (else `NoSuchService`), its name must be free (else `ConsumerExists`)
    /// and its token no other's (else `TokenInUse`).
    fn create_consumer(
        &self,
        consumer: NewConsumer,
    ) -> impl Future<Output = Result<Consumer, StoreError>> + Send;

    /// Removes a named consumer; its token grants nothing from then on.
    fn delete_consumer(
        &self,
        name: &ConsumerName,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The named consumer a token is of, if any. A service's or consumer's
    /// token from `create_service` is not a named consumer's: `lookup_token`
    /// finds those.
    fn lookup_consumer(
        &self,
        token: &TokenHash,
    ) -> impl Future<Output = Result<Option<Consumer>, StoreError>> + Send;

    /// Registers an instance under a new lease.
    fn register(
        &self,
        registration: Registration,
    ) -> impl Future<Output = Result<Instance, StoreError>> + Send;

    /// Renews a lease of a service within `scope`.
    fn heartbeat(
        &self,
        lease: LeaseId,
        scope: &Scope,
    ) -> impl Future<Output = Result<Ttl, StoreError>> + Send;

    /// Removes the instance holding a lease of a service within `scope`.
    fn deregister_lease(
        &self,
        lease: LeaseId,
        scope: &Scope,
    ) -> impl Future<Output = Result<Instance, StoreError>> + Send;

    /// Removes an instance by id.
    fn deregister_instance(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> impl Future<Output = Result<Instance, StoreError>> + Send;

    /// The live instances of a service, sorted by address, and the revision
    /// they were read at.
    fn resolve(
        &self,
        service: &ServiceName,
    ) -> impl Future<Output = Result<(Vec<Instance>, Revision), StoreError>> + Send;

    /// Watches a service: first a snapshot (or, when the store still holds every
    /// change after `since`, those changes and a progress event), then each
    /// change as it happens, and a progress event every `progress_every` when
    /// idle.
    fn watch(
        &self,
        service: &ServiceName,
        since: Revision,
        progress_every: Duration,
    ) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;
}
