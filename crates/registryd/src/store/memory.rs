//! The embedded store: instances and leases in memory, the catalog in a file.
//!
//! One mutex guards the whole state; no operation awaits while holding it. Each
//! change is applied, given the next revision, appended to a bounded history and
//! sent to that service's watchers while the lock is held, so a watcher that
//! subscribes and reads a snapshot under the same lock sees every later change
//! exactly once.
//!
//! Revisions start at the wall clock's microseconds when the store opens. A
//! restarted registry therefore never hands out a revision that a watcher saw
//! from the previous run: a watcher resuming from an old revision finds it below
//! the history's start and gets a full snapshot, not a wrong replay.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt as _;
use tokio::{
    sync::{Notify, broadcast},
    time::{Instant, MissedTickBehavior},
};

use super::{
    NewConsumer, NewService, Scope, Store, StoreError, WatchEvent, WatchStream,
    catalog_file::{CatalogPath, StoredConsumer, StoredService},
};
use crate::{
    auth::{Consumer, Grant, TokenHash, TokenKind},
    model::{
        Change, ConsumerName, Event, Instance, InstanceId, LeaseId, Registration, RemovalReason,
        Revision, ServiceInfo, ServiceName, Ttl,
    },
};

/// How a [`MemoryStore`] is set up.
#[derive(Debug, Clone)]
pub struct MemoryStoreConfig {
    /// The folder that holds the catalog file; `None` keeps the catalog in
    /// memory only (for tests).
    pub data_dir: Option<PathBuf>,
    /// How many recent changes are kept for watchers that resume.
    pub history: usize,
    /// How many changes a slow watcher may fall behind before it is re-synced.
    pub watch_buffer: usize,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            history: 4096,
            watch_buffer: 1024,
        }
    }
}

/// The embedded store.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the expiry task when a lease may expire sooner than it planned.
    expiry_changed: Arc<Notify>,
    /// Where the catalog is saved, if anywhere.
    catalog: Option<CatalogPath>,
    /// Held while the catalog changes, so that changes are saved in order.
    catalog_writer: tokio::sync::Mutex<()>,
    watch_buffer: usize,
}

#[derive(Debug)]
struct State {
    /// The revision of the latest change.
    revision: Revision,
    /// Every change at or below this revision has left the history.
    compacted: Revision,
    /// Recent changes of every service, oldest first.
    history: VecDeque<Event>,
    history_cap: usize,
    services: BTreeMap<ServiceName, ServiceEntry>,
    /// Service and consumer tokens by hash, derived from `services`.
    tokens: HashMap<TokenHash, Grant>,
    /// Named consumers, each with its token's hash and what it reads.
    consumers: BTreeMap<ConsumerName, ConsumerEntry>,
    /// Named consumers by their token's hash, derived from `consumers`.
    consumer_tokens: HashMap<TokenHash, ConsumerName>,
    leases: HashMap<LeaseId, LeaseEntry>,
    /// Lease deadlines in order, so the next expiry is the first entry.
    expiries: BTreeSet<(Instant, LeaseId)>,
}

#[derive(Debug)]
struct ServiceEntry {
    created_at_unix: i64,
    token: TokenHash,
    consumer_token: TokenHash,
    instances: BTreeMap<InstanceId, Instance>,
    /// Changes of this service only, so a change wakes only its own watchers.
    watchers: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct ConsumerEntry {
    token: TokenHash,
    services: BTreeSet<ServiceName>,
}

#[derive(Debug)]
struct LeaseEntry {
    service: ServiceName,
    instance: InstanceId,
    expires_at: Instant,
}

// === impl MemoryStore ===

impl MemoryStore {
    /// Opens the store, reading the catalog from the data dir when there is one,
    /// and starts the task that expires leases. Call it inside a Tokio runtime.
    pub fn open(config: MemoryStoreConfig) -> std::io::Result<Self> {
        let catalog = config.data_dir.as_deref().map(CatalogPath::in_dir);
        let (stored, stored_consumers) = match &catalog {
            Some(path) => {
                let file = path.load()?;
                (file.services, file.consumers)
            }
            None => (Vec::new(), Vec::new()),
        };
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        let mut state = State {
            revision: start,
            compacted: start,
            history: VecDeque::new(),
            history_cap: config.history.max(1),
            services: BTreeMap::new(),
            tokens: HashMap::new(),
            consumers: BTreeMap::new(),
            consumer_tokens: HashMap::new(),
            leases: HashMap::new(),
            expiries: BTreeSet::new(),
        };
        for service in stored {
            let invalid = |what: &str| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the catalog's service {:?} has an invalid {what}",
                        service.name
                    ),
                )
            };
            let name: ServiceName = service.name.parse().map_err(|_| invalid("name"))?;
            let token: TokenHash = service
                .token_sha256
                .parse()
                .map_err(|_| invalid("token hash"))?;
            let consumer_token: TokenHash = service
                .consumer_token_sha256
                .parse()
                .map_err(|_| invalid("consumer token hash"))?;
            state.insert_service(
                name,
                service.created_at_unix,
                token,
                consumer_token,
                config.watch_buffer,
            );
        }
        for consumer in stored_consumers {
            let invalid = |what: &str| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the catalog's consumer {:?} has an invalid {what}",
                        consumer.name
                    ),
                )
            };
            let name: ConsumerName = consumer.name.parse().map_err(|_| invalid("name"))?;
            let token: TokenHash = consumer
                .token_sha256
                .parse()
                .map_err(|_| invalid("token hash"))?;
            let services = consumer
                .services
                .iter()
                .map(|s| s.parse::<ServiceName>())
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(|_| invalid("service name"))?;
            state.insert_consumer(name, token, services);
        }

        let expiry_changed = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            expiry_changed: expiry_changed.clone(),
            catalog,
            catalog_writer: tokio::sync::Mutex::new(()),
            watch_buffer: config.watch_buffer.max(1),
        });
        tokio::spawn(expire_leases(Arc::downgrade(&inner), expiry_changed));
        Ok(Self { inner })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as any
        // single assignment can; serving on is better than failing every call.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Saves the catalog as it will be after a change, before the change is
    /// made in memory, so a failed write changes nothing. The write runs on
    /// the blocking pool, without the state lock: registrations, heartbeats and
    /// expiry go on meanwhile. Callers hold `catalog_writer`, so catalog
    /// changes happen one at a time.
    async fn save_catalog(
        &self,
        services: Vec<StoredService>,
        consumers: Vec<StoredConsumer>,
    ) -> Result<(), StoreError> {
        let Some(path) = self.catalog.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || path.save(services, consumers))
            .await
            .map_err(|e| StoreError::Persist(std::io::Error::other(e)))?
            .map_err(StoreError::Persist)
    }
}

/// A service as the catalog file stores it.
fn stored(
    name: &ServiceName,
    entry_created: i64,
    token: TokenHash,
    consumer: TokenHash,
) -> StoredService {
    StoredService {
        name: name.to_string(),
        created_at_unix: entry_created,
        token_sha256: token.to_string(),
        consumer_token_sha256: consumer.to_string(),
    }
}

/// A named consumer as the catalog file stores it.
fn stored_consumer(
    name: &ConsumerName,
    token: TokenHash,
    services: &BTreeSet<ServiceName>,
) -> StoredConsumer {
    StoredConsumer {
        name: name.to_string(),
        token_sha256: token.to_string(),
        services: services.iter().map(ToString::to_string).collect(),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the expiry task notice that the store is gone.
        self.expiry_changed.notify_one();
    }
}

/// Expires leases on time. It sleeps until the earliest deadline, or until a
/// new lease might expire sooner, and ends when the store is dropped.
async fn expire_leases(store: Weak<Inner>, changed: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = store.upgrade() else { return };
            let mut state = inner.lock();
            state.expire(Instant::now());
            state.expiries.first().map(|(at, _)| *at)
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = changed.notified() => {}
                }
            }
            None => changed.notified().await,
        }
    }
}

// === impl State ===

impl State {
    fn insert_service(
        &mut self,
        name: ServiceName,
        created_at_unix: i64,
        token: TokenHash,
        consumer_token: TokenHash,
        watch_buffer: usize,
    ) {
        let (watchers, _) = broadcast::channel(watch_buffer.max(1));
        for (hash, kind) in [
            (token, TokenKind::Service),
            (consumer_token, TokenKind::Consumer),
        ] {
            let grant = Grant {
                service: name.clone(),
                kind,
            };
            self.tokens.insert(hash, grant);
        }
        let entry = ServiceEntry {
            created_at_unix,
            token,
            consumer_token,
            instances: BTreeMap::new(),
            watchers,
        };
        self.services.insert(name, entry);
    }

    fn insert_consumer(
        &mut self,
        name: ConsumerName,
        token: TokenHash,
        services: BTreeSet<ServiceName>,
    ) {
        self.consumer_tokens.insert(token, name.clone());
        self.consumers
            .insert(name, ConsumerEntry { token, services });
    }

    /// Whether a token already grants something: a service's, a service
    /// consumer's or a named consumer's.
    fn token_in_use(&self, token: &TokenHash) -> bool {
        self.tokens.contains_key(token) || self.consumer_tokens.contains_key(token)
    }

    /// The services as the catalog file stores them, sorted by name.
    fn stored_services(&self) -> Vec<StoredService> {
        self.services
            .iter()
            .map(|(name, e)| stored(name, e.created_at_unix, e.token, e.consumer_token))
            .collect()
    }

    /// The named consumers as the catalog file stores them, sorted by name.
    fn stored_consumers(&self) -> Vec<StoredConsumer> {
        self.consumers
            .iter()
            .map(|(name, e)| stored_consumer(name, e.token, &e.services))
            .collect()
    }

    fn service(&self, name: &ServiceName) -> Result<&ServiceEntry, StoreError> {
        self.services
            .get(name)
            .ok_or_else(|| StoreError::NoSuchService(name.clone()))
    }

    /// Records a change: the next revision, the history, the service's
    /// instances, and its watchers.
    fn apply(&mut self, change: Change) -> Revision {
        self.revision += 1;
        let event = Event {
            revision: self.revision,
            change,
        };
        let instance = event.change.instance();
        if let Some(entry) = self.services.get_mut(&instance.service) {
            match &event.change {
                Change::Added(instance) => {
                    entry
                        .instances
                        .insert(instance.id.clone(), instance.clone());
                }
                Change::Removed(instance, _) => {
                    entry.instances.remove(&instance.id);
                }
            }
            // No receiver is not an error: nobody is watching.
            let _ = entry.watchers.send(event.clone());
        }
        if self.history.len() == self.history_cap
            && let Some(oldest) = self.history.pop_front()
        {
            self.compacted = oldest.revision;
        }
        self.history.push_back(event);
        self.revision
    }

    fn remove_instance(
        &mut self,
        service: &ServiceName,
        id: &InstanceId,
        reason: RemovalReason,
    ) -> Option<Instance> {
        let instance = self.services.get(service)?.instances.get(id)?.clone();
        if let Some(lease) = self.leases.remove(&instance.lease) {
            self.expiries.remove(&(lease.expires_at, instance.lease));
        }
        self.apply(Change::Removed(instance.clone(), reason));
        Some(instance)
    }

    /// Removes every instance whose lease ran out by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, lease)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(entry) = self.leases.remove(&lease) {
                let instance = self
                    .services
                    .get(&entry.service)
                    .and_then(|s| s.instances.get(&entry.instance))
                    .cloned();
                if let Some(instance) = instance {
                    tracing::info!(
                        service = %instance.service,
                        instance = %instance.id,
                        address = %instance.address,
                        "lease expired: removed {} at {}", instance.id, instance.address
                    );
                    self.apply(Change::Removed(instance, RemovalReason::Expired));
                }
            }
        }
    }

    fn check_scope(&self, lease: LeaseId, scope: &Scope) -> Result<&LeaseEntry, StoreError> {
        let entry = self
            .leases
            .get(&lease)
            .ok_or(StoreError::NoSuchLease(lease))?;
        match scope {
            Scope::Any => Ok(entry),
            Scope::Service(caller) if *caller == entry.service => Ok(entry),
            Scope::Service(caller) => Err(StoreError::WrongService {
                lease,
                owner: entry.service.clone(),
                caller: caller.clone(),
            }),
        }
    }

    fn snapshot(&self, service: &ServiceName) -> Result<Vec<Instance>, StoreError> {
        let mut instances: Vec<Instance> =
            self.service(service)?.instances.values().cloned().collect();
        instances.sort_by(|a, b| (&a.address, &a.id).cmp(&(&b.address, &b.id)));
        Ok(instances)
    }

    /// What a watcher that last saw `since` needs to become current: the
    /// changes it missed when the history still holds them all, else a snapshot.
    fn catch_up(
        &self,
        service: &ServiceName,
        since: Revision,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        if since != 0 && since >= self.compacted && since <= self.revision {
            let mut events: Vec<WatchEvent> = self
                .history
                .iter()
                .filter(|e| e.revision > since && e.change.instance().service == *service)
                .cloned()
                .map(WatchEvent::Change)
                .collect();
            events.push(WatchEvent::Progress(self.revision));
            Ok(events)
        } else {
            Ok(vec![WatchEvent::Snapshot {
                instances: self.snapshot(service)?,
                revision: self.revision,
            }])
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// === impl Store for MemoryStore ===

impl Store for MemoryStore {
    async fn create_service(&self, service: NewService) -> Result<ServiceInfo, StoreError> {
        let _writer = self.inner.catalog_writer.lock().await;
        let created_at_unix = unix_now();
        let catalog = {
            let state = self.inner.lock();
            if state.services.contains_key(&service.name) {
                return Err(StoreError::ServiceExists(service.name));
            }
            // A token grants one thing: another's token given again would
            // silently take that grant over.
            if service.token == service.consumer_token
                || state.token_in_use(&service.token)
                || state.token_in_use(&service.consumer_token)
            {
                return Err(StoreError::TokenInUse);
            }
            let mut catalog = state.stored_services();
            catalog.push(stored(
                &service.name,
                created_at_unix,
                service.token,
                service.consumer_token,
            ));
            catalog.sort_by(|a, b| a.name.cmp(&b.name));
            (catalog, state.stored_consumers())
        };
        self.inner.save_catalog(catalog.0, catalog.1).await?;
        self.inner.lock().insert_service(
            service.name.clone(),
            created_at_unix,
            service.token,
            service.consumer_token,
            self.inner.watch_buffer,
        );
        Ok(ServiceInfo {
            name: service.name,
            created_at_unix,
            live_instances: 0,
        })
    }

    async fn delete_service(&self, name: &ServiceName) -> Result<u32, StoreError> {
        let _writer = self.inner.catalog_writer.lock().await;
        let catalog = {
            let state = self.inner.lock();
            state.service(name)?;
            let services = state
                .services
                .iter()
                .filter(|(n, _)| *n != name)
                .map(|(n, e)| stored(n, e.created_at_unix, e.token, e.consumer_token))
                .collect();
            // Named consumers keep the name: a service created again under
            // it is theirs to read.
            (services, state.stored_consumers())
        };
        self.inner.save_catalog(catalog.0, catalog.1).await?;
        let mut state = self.inner.lock();
        let ids: Vec<InstanceId> = state.service(name)?.instances.keys().cloned().collect();
        for id in &ids {
            state.remove_instance(name, id, RemovalReason::ServiceDeleted);
        }
        // Dropping the entry drops its sender, which ends its watchers' streams
        // once they have read the removals above.
        if let Some(entry) = state.services.remove(name) {
            state.tokens.remove(&entry.token);
            state.tokens.remove(&entry.consumer_token);
        }
        Ok(u32::try_from(ids.len()).unwrap_or(u32::MAX))
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>, StoreError> {
        let state = self.inner.lock();
        Ok(state
            .services
            .iter()
            .map(|(name, entry)| ServiceInfo {
                name: name.clone(),
                created_at_unix: entry.created_at_unix,
                live_instances: u32::try_from(entry.instances.len()).unwrap_or(u32::MAX),
            })
            .collect())
    }

    async fn lookup_token(&self, token: &TokenHash) -> Result<Option<Grant>, StoreError> {
        Ok(self.inner.lock().tokens.get(token).cloned())
    }

    async fn create_consumer(&self, consumer: NewConsumer) -> Result<Consumer, StoreError> {
        let _writer = self.inner.catalog_writer.lock().await;
        let (services, consumers) = {
            let state = self.inner.lock();
            if state.consumers.contains_key(&consumer.name) {
                return Err(StoreError::ConsumerExists(consumer.name));
            }
            if let Some(missing) = consumer
                .services
                .iter()
                .find(|s| !state.services.contains_key(*s))
            {
                return Err(StoreError::NoSuchService(missing.clone()));
            }
            // A token grants one thing, as for services.
            if state.token_in_use(&consumer.token) {
                return Err(StoreError::TokenInUse);
            }
            let mut consumers = state.stored_consumers();
            consumers.push(stored_consumer(
                &consumer.name,
                consumer.token,
                &consumer.services,
            ));
            consumers.sort_by(|a, b| a.name.cmp(&b.name));
            (state.stored_services(), consumers)
        };
        // Catalog changes hold `catalog_writer`, so what was checked above
        // still holds once the file is written.
        self.inner.save_catalog(services, consumers).await?;
        self.inner.lock().insert_consumer(
            consumer.name.clone(),
            consumer.token,
            consumer.services.clone(),
        );
        Ok(Consumer {
            name: consumer.name,
            services: consumer.services,
        })
    }

    async fn delete_consumer(&self, name: &ConsumerName) -> Result<(), StoreError> {
        let _writer = self.inner.catalog_writer.lock().await;
        let (services, consumers) = {
            let state = self.inner.lock();
            if !state.consumers.contains_key(name) {
                return Err(StoreError::NoSuchConsumer(name.clone()));
            }
            let consumers = state
                .consumers
                .iter()
                .filter(|(n, _)| *n != name)
                .map(|(n, e)| stored_consumer(n, e.token, &e.services))
                .collect();
            (state.stored_services(), consumers)
        };
        self.inner.save_catalog(services, consumers).await?;
        let mut state = self.inner.lock();
        if let Some(entry) = state.consumers.remove(name) {
            state.consumer_tokens.remove(&entry.token);
        }
        Ok(())
    }

    async fn lookup_consumer(&self, token: &TokenHash) -> Result<Option<Consumer>, StoreError> {
        let state = self.inner.lock();
        Ok(state.consumer_tokens.get(token).and_then(|name| {
            state.consumers.get(name).map(|entry| Consumer {
                name: name.clone(),
                services: entry.services.clone(),
            })
        }))
    }

    async fn register(&self, registration: Registration) -> Result<Instance, StoreError> {
        let mut state = self.inner.lock();
        let (id, replaced) = {
            let entry = state.service(&registration.service)?;
            let id = match registration.id {
                Some(id) => id,
                None => loop {
                    let id = InstanceId::random(&registration.service);
                    if !entry.instances.contains_key(&id) {
                        break id;
                    }
                },
            };
            let replaced = match entry.instances.get(&id) {
                Some(existing) if existing.address != registration.address => {
                    return Err(StoreError::InstanceIdTaken {
                        service: registration.service,
                        id,
                        address: existing.address.to_string(),
                    });
                }
                Some(existing) => Some(existing.lease),
                None => None,
            };
            (id, replaced)
        };
        // The same instance registering again (it restarted, or lost its lease
        // while paused): its old lease ends and the new one takes over.
        if let Some(old) = replaced
            && let Some(lease) = state.leases.remove(&old)
        {
            state.expiries.remove(&(lease.expires_at, old));
        }
        let lease = loop {
            let lease = LeaseId(rand::random::<u64>());
            if lease.0 != 0 && !state.leases.contains_key(&lease) {
                break lease;
            }
        };
        let instance = Instance {
            service: registration.service.clone(),
            id: id.clone(),
            address: registration.address,
            metadata: registration.metadata,
            lease,
            ttl: registration.ttl,
            revision: state.revision + 1,
        };
        let expires_at = Instant::now() + registration.ttl.duration();
        state.leases.insert(
            lease,
            LeaseEntry {
                service: registration.service,
                instance: id,
                expires_at,
            },
        );
        state.expiries.insert((expires_at, lease));
        state.apply(Change::Added(instance.clone()));
        drop(state);
        self.inner.expiry_changed.notify_one();
        Ok(instance)
    }

    async fn heartbeat(&self, lease: LeaseId, scope: &Scope) -> Result<Ttl, StoreError> {
        let mut state = self.inner.lock();
        let entry = state.check_scope(lease, scope)?;
        let (service, id, old) = (
            entry.service.clone(),
            entry.instance.clone(),
            entry.expires_at,
        );
        let ttl = state.service(&service)?.instances.get(&id).map(|i| i.ttl);
        let Some(ttl) = ttl else {
            return Err(StoreError::NoSuchLease(lease));
        };
        let expires_at = Instant::now() + ttl.duration();
        state.expiries.remove(&(old, lease));
        state.expiries.insert((expires_at, lease));
        if let Some(entry) = state.leases.get_mut(&lease) {
            entry.expires_at = expires_at;
        }
        Ok(ttl)
    }

    async fn deregister_lease(
        &self,
        lease: LeaseId,
        scope: &Scope,
    ) -> Result<Instance, StoreError> {
        let mut state = self.inner.lock();
        let entry = state.check_scope(lease, scope)?;
        let (service, id) = (entry.service.clone(), entry.instance.clone());
        state
            .remove_instance(&service, &id, RemovalReason::Deregistered)
            .ok_or(StoreError::NoSuchLease(lease))
    }

    async fn deregister_instance(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Instance, StoreError> {
        let mut state = self.inner.lock();
        state.service(service)?;
        state
            .remove_instance(service, id, RemovalReason::Deregistered)
            .ok_or_else(|| StoreError::NoSuchInstance {
                service: service.clone(),
                id: id.clone(),
            })
    }

    async fn resolve(
        &self,
        service: &ServiceName,
    ) -> Result<(Vec<Instance>, Revision), StoreError> {
        let state = self.inner.lock();
        Ok((state.snapshot(service)?, state.revision))
    }

    async fn watch(
        &self,
        service: &ServiceName,
        since: Revision,
        progress_every: Duration,
    ) -> Result<WatchStream, StoreError> {
        let (changes, start) = {
            let state = self.inner.lock();
            let changes = state.service(service)?.watchers.subscribe();
            (changes, state.catch_up(service, since)?)
        };
        let mut progress =
            tokio::time::interval_at(Instant::now() + progress_every, progress_every);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watch = Watch {
            store: Arc::downgrade(&self.inner),
            service: service.clone(),
            changes,
            last: since,
            queue: start.into(),
            progress,
            ended: false,
        };
        Ok(futures::stream::unfold(watch, Watch::next).boxed())
    }
}

/// One watcher's events, read from its service's channel when its stream is
/// polled (no task of its own between the channel and the stream): re-synced
/// when it fell behind, with progress reported when idle. A watcher that
/// reads slowly lags behind the channel and is re-synced, so it never holds
/// the other watchers back.
struct Watch {
    store: Weak<Inner>,
    service: ServiceName,
    changes: broadcast::Receiver<Event>,
    /// The latest revision the watcher is known to be current at.
    last: Revision,
    /// Events due to the watcher, in order.
    queue: VecDeque<WatchEvent>,
    progress: tokio::time::Interval,
    /// The service is gone: nothing follows the queue.
    ended: bool,
}

impl Watch {
    /// The next event, and the watch to go on with; `None` when the store or
    /// the service is gone and everything was told.
    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                // A snapshot replaces what the watcher knew, including a
                // `since` from another registry or an earlier run that may be
                // ahead of this store's revisions.
                self.last = match &event {
                    WatchEvent::Snapshot { revision, .. } => *revision,
                    WatchEvent::Progress(revision) => self.last.max(*revision),
                    WatchEvent::Change(e) => self.last.max(e.revision),
                };
                return Some((Ok(event), self));
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                received = self.changes.recv() => match received {
                    Ok(event) => {
                        if event.revision > self.last {
                            self.queue.push_back(WatchEvent::Change(event));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => match self.resync() {
                        Some(missed) => self.queue.extend(missed),
                        // The service went while the watcher caught up.
                        None => {
                            self.ended = true;
                            let gone = StoreError::NoSuchService(self.service.clone());
                            return Some((Err(gone), self));
                        }
                    },
                    Err(broadcast::error::RecvError::Closed) => {
                        self.ended = true;
                        let gone = StoreError::NoSuchService(self.service.clone());
                        return Some((Err(gone), self));
                    }
                },
                _ = self.progress.tick() => {
                    if let Some(revision) = self.idle_revision()? {
                        self.queue.push_back(WatchEvent::Progress(revision));
                    }
                }
            }
        }
    }

    /// A fresh subscription and what was missed since `last`, read under one
    /// lock. `None` when the store or the service is gone.
    fn resync(&mut self) -> Option<Vec<WatchEvent>> {
        let store = self.store.upgrade()?;
        let state = store.lock();
        self.changes = state.services.get(&self.service)?.watchers.subscribe();
        state.catch_up(&self.service, self.last).ok()
    }

    /// The store's revision when this watcher has read every change sent to
    /// it, or `Some(None)` when changes are still queued; `None` when the store
    /// is gone. Changes are sent under the lock, so an empty queue seen under
    /// the lock means nothing up to the current revision is missing.
    fn idle_revision(&self) -> Option<Option<Revision>> {
        let store = self.store.upgrade()?;
        let state = store.lock();
        Some(self.changes.is_empty().then_some(state.revision))
    }
}

#[cfg(test)]
mod tests;
