//! The registry on etcd: the same [`Store`] semantics mapped onto etcd's own,
//! not reimplemented beside them.
//!
//! - One etcd lease per registration (its TTL is the instance's TTL):
//!   `Heartbeat` is a lease keep-alive, `Deregister` a lease revoke, and expiry
//!   is etcd's lease expiry.
//! - The registry's revision *is* etcd's revision: `Resolve` is one prefix read
//!   (which reports the revision it was read at), and `Watch` is an etcd watch
//!   from `since + 1`. A compacted revision becomes a full snapshot. Progress
//!   comes from etcd's progress notifications, requested when the watch is idle.
//! - Any number of registryd replicas can share one etcd cluster (and, with
//!   distinct prefixes, several registries can too): every answer comes from
//!   etcd, so a client may register on one replica and heartbeat on another.
//!
//! Keys, under the prefix `P`:
//!
//! ```text
//! P/services/{service}        the catalog entry (JSON), for ListServices
//! P/tokens/{sha256}           what a token grants (JSON): a service's or its consumer's
//!                             grant, or a named consumer's name and services
//! P/consumers/{name}          a named consumer (JSON): its token's hash
//! P/svc/{service}/alive       present while the service exists; its deletion ends watches
//! P/svc/{service}/i/{id}      a live instance (JSON), attached to its lease
//! P/svc/{service}/r/{id}      why an instance is being removed, attached to the same lease
//! P/svc/{service}/f/{random}  a watch's fence: when its event arrives, the watch is current
//! P/leases/{lease}            which instance a lease keeps, attached to that lease
//! ```
//!
//! A removal marker is written in the same transaction that deletes an
//! instance on `Deregister` (or just before, on `DeleteService`), so a watcher
//! can tell a deregistration from an expiry, which leaves no marker.
//!
//! Every token, a named consumer's included, is one key under `P/tokens/`, so
//! that "a token grants one thing" is one `version == 0` comparison in the
//! transaction that creates it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{NewConsumer, NewService, Scope, Store, StoreError, WatchEvent, WatchStream};
use crate::{
    auth::{Consumer, Grant, TokenHash, TokenKind},
    model::{
        Address, Change, ConsumerName, Event, Instance, InstanceId, LeaseId, Metadata,
        Registration, RemovalReason, Revision, ServiceInfo, ServiceName, Ttl,
    },
};

/// How a [`EtcdStore`] reaches etcd.
#[derive(Debug, Clone)]
pub struct EtcdStoreConfig {
    /// etcd's client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The prefix of every key, so that several registries can share a cluster.
    pub prefix: String,
}

/// The store on etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: Arc<str>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn corrupt(what: &str, key: &[u8]) -> StoreError {
    StoreError::Unavailable(format!(
        "etcd holds a malformed {what} at {}",
        String::from_utf8_lossy(key)
    ))
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredService {
    created_at_unix: i64,
    token_sha256: String,
    consumer_token_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredGrant {
    service: String,
    consumer: bool,
}

/// A named consumer's token: whose it is and what it reads. The services
/// are kept here, beside the token, so that a call is authenticated with one
/// read.
#[derive(Debug, Serialize, Deserialize)]
struct StoredConsumerToken {
    named_consumer: String,
    services: Vec<String>,
}

/// What a key under `P/tokens/` holds. The two shapes have no field in
/// common, so each record reads as exactly one of them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredToken {
    Grant(StoredGrant),
    Consumer(StoredConsumerToken),
}

/// A named consumer's catalog entry, by name: which token is its own.
#[derive(Debug, Serialize, Deserialize)]
struct StoredConsumer {
    token_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredInstance {
    address: String,
    metadata: std::collections::BTreeMap<String, String>,
    ttl_seconds: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredLease {
    service: String,
    instance: String,
}

/// What a removal marker says.
const DEREGISTERED: &str = "deregistered";

// === impl EtcdStore ===

impl EtcdStore {
    /// Connects to etcd.
    pub async fn connect(config: EtcdStoreConfig) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        let prefix = config.prefix.trim_end_matches('/').to_owned();
        Ok(Self {
            client,
            prefix: prefix.into(),
        })
    }

    fn service_key(&self, service: &ServiceName) -> String {
        format!("{}/services/{service}", self.prefix)
    }

    fn services_prefix(&self) -> String {
        format!("{}/services/", self.prefix)
    }

    fn token_key(&self, token: &TokenHash) -> String {
        format!("{}/tokens/{token}", self.prefix)
    }

    fn consumer_key(&self, name: &ConsumerName) -> String {
        format!("{}/consumers/{name}", self.prefix)
    }

    /// What a token's key holds, if it exists.
    async fn stored_token(&self, token: &TokenHash) -> Result<Option<StoredToken>, StoreError> {
        let found = self
            .client
            .kv_client()
            .get(self.token_key(token), None)
            .await
            .map_err(unavailable)?;
        let Some(record) = found.kvs().first() else {
            return Ok(None);
        };
        serde_json::from_slice(record.value())
            .map(Some)
            .map_err(|_| corrupt("token", record.key()))
    }

    fn svc_prefix(&self, service: &ServiceName) -> String {
        format!("{}/svc/{service}/", self.prefix)
    }

    fn alive_key(&self, service: &ServiceName) -> String {
        format!("{}/svc/{service}/alive", self.prefix)
    }

    fn instance_key(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}/svc/{service}/i/{id}", self.prefix)
    }

    fn marker_key(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}/svc/{service}/r/{id}", self.prefix)
    }

    fn lease_key(&self, lease: LeaseId) -> String {
        format!("{}/leases/{lease}", self.prefix)
    }

    /// Reads one instance key into an instance.
    fn instance_of(&self, service: &ServiceName, kv: &KeyValue) -> Result<Instance, StoreError> {
        let key = kv
            .key_str()
            .map_err(|_| corrupt("instance key", kv.key()))?;
        let id = key
            .rsplit('/')
            .next()
            .and_then(|id| id.parse::<InstanceId>().ok())
            .ok_or_else(|| corrupt("instance key", kv.key()))?;
        let stored: StoredInstance =
            serde_json::from_slice(kv.value()).map_err(|_| corrupt("instance", kv.key()))?;
        Ok(Instance {
            service: service.clone(),
            id,
            address: stored
                .address
                .parse::<Address>()
                .map_err(|_| corrupt("instance address", kv.key()))?,
            metadata: Metadata::new(stored.metadata)
                .map_err(|_| corrupt("instance metadata", kv.key()))?,
            lease: LeaseId(u64::try_from(kv.lease()).unwrap_or_default()),
            ttl: Ttl::from_secs(stored.ttl_seconds)
                .map_err(|_| corrupt("instance TTL", kv.key()))?,
            revision: u64::try_from(kv.mod_revision()).unwrap_or_default(),
        })
    }

    /// The instance a lease keeps, if the lease is live.
    async fn leased(
        &self,
        lease: LeaseId,
    ) -> Result<Option<(ServiceName, InstanceId)>, StoreError> {
        let mut kv = self.client.kv_client();
        let response = kv
            .get(self.lease_key(lease), None)
            .await
            .map_err(unavailable)?;
        let Some(found) = response.kvs().first() else {
            return Ok(None);
        };
        let stored: StoredLease =
            serde_json::from_slice(found.value()).map_err(|_| corrupt("lease", found.key()))?;
        let service = stored
            .service
            .parse()
            .map_err(|_| corrupt("lease service", found.key()))?;
        let instance = stored
            .instance
            .parse()
            .map_err(|_| corrupt("lease instance", found.key()))?;
        Ok(Some((service, instance)))
    }

    /// Checks that a lease exists and is within `scope`.
    async fn scoped(
        &self,
        lease: LeaseId,
        scope: &Scope,
    ) -> Result<(ServiceName, InstanceId), StoreError> {
        let (service, instance) = self
            .leased(lease)
            .await?
            .ok_or(StoreError::NoSuchLease(lease))?;
        match scope {
            Scope::Service(caller) if *caller != service => Err(StoreError::WrongService {
                lease,
                owner: service,
                caller: caller.clone(),
            }),
            _ => Ok((service, instance)),
        }
    }

    /// Writes a fence key under the service's prefix, on a short lease so it
    /// cleans itself up, and returns its key.
    async fn fence(&self, service: &ServiceName) -> Result<String, StoreError> {
        let lease = self
            .client
            .lease_client()
            .grant(5, None)
            .await
            .map_err(unavailable)?
            .id();
        let key = format!(
            "{}/svc/{service}/f/{:016x}",
            self.prefix,
            rand::random::<u64>()
        );
        self.client
            .kv_client()
            .put(key.clone(), "", Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(unavailable)?;
        Ok(key)
    }

    /// Removes an instance: the marker and the deletion in one transaction,
    /// then the lease (which takes the marker and the lease key with it).
    async fn remove(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        expected_lease: Option<LeaseId>,
        reason: &str,
    ) -> Result<Instance, StoreError> {
        let gone = || StoreError::NoSuchInstance {
            service: service.clone(),
            id: id.clone(),
        };
        let mut kv = self.client.kv_client();
        let key = self.instance_key(service, id);
        // Twice at most: a re-registration of the same id may race the first read.
        for _ in 0..2 {
            let response = kv.get(key.clone(), None).await.map_err(unavailable)?;
            let Some(found) = response.kvs().first() else {
                return Err(gone());
            };
            let instance = self.instance_of(service, found)?;
            let lease = found.lease();
            if expected_lease.is_some_and(|expected| i64::try_from(expected.0) != Ok(lease)) {
                // The id is held under another, newer lease: not this caller's.
                return Err(gone());
            }
            let lease_id = LeaseId(u64::try_from(lease).unwrap_or_default());
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    found.mod_revision(),
                )])
                .and_then([
                    TxnOp::put(
                        self.marker_key(service, id),
                        reason,
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::delete(key.clone(), None),
                    TxnOp::delete(self.lease_key(lease_id), None),
                ]);
            let done = kv.txn(txn).await.map_err(unavailable)?;
            if done.succeeded() {
                if let Err(error) = self.client.lease_client().revoke(lease).await {
                    // The keys are gone already; the lease itself expires with its TTL.
                    tracing::debug!(%error, "could not revoke lease {lease_id}");
                }
                return Ok(instance);
            }
        }
        Err(gone())
    }
}

// === impl Store for EtcdStore ===

impl EtcdStore {
    async fn create_service_once(
        &self,
        service: NewService,
        retried: bool,
    ) -> Result<ServiceInfo, StoreError> {
        if service.token == service.consumer_token {
            return Err(StoreError::TokenInUse);
        }
        let created_at_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let record = serde_json::to_vec(&StoredService {
            created_at_unix,
            token_sha256: service.token.to_string(),
            consumer_token_sha256: service.consumer_token.to_string(),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let grant = |consumer| {
            serde_json::to_vec(&StoredGrant {
                service: service.name.to_string(),
                consumer,
            })
            .unwrap_or_default()
        };
        let key = self.service_key(&service.name);
        // A token grants one thing: the tokens must not be another's already.
        let txn = Txn::new()
            .when([
                Compare::version(key.clone(), CompareOp::Equal, 0),
                Compare::version(self.token_key(&service.token), CompareOp::Equal, 0),
                Compare::version(self.token_key(&service.consumer_token), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key, record, None),
                TxnOp::put(self.alive_key(&service.name), "", None),
                TxnOp::put(self.token_key(&service.token), grant(false), None),
                TxnOp::put(self.token_key(&service.consumer_token), grant(true), None),
            ]);
        let done = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(unavailable)?;
        if !done.succeeded() {
            // Either the service exists, or a token is another's. A retry of a
            // creation whose answer was lost finds the service with its own
            // token: that is a success, not a conflict.
            let existing = self
                .client
                .kv_client()
                .get(self.service_key(&service.name), None)
                .await
                .map_err(unavailable)?;
            let Some(kv) = existing.kvs().first() else {
                return Err(StoreError::TokenInUse);
            };
            let ours = serde_json::from_slice::<StoredService>(kv.value())
                .ok()
                .filter(|stored| retried && stored.token_sha256 == service.token.to_string());
            return match ours {
                Some(stored) => Ok(ServiceInfo {
                    name: service.name,
                    created_at_unix: stored.created_at_unix,
                    live_instances: 0,
                }),
                None => Err(StoreError::ServiceExists(service.name)),
            };
        }
        Ok(ServiceInfo {
            name: service.name,
            created_at_unix,
            live_instances: 0,
        })
    }

    async fn delete_service_once(&self, name: &ServiceName) -> Result<u32, StoreError> {
        let mut kv = self.client.kv_client();
        let found = kv
            .get(self.service_key(name), None)
            .await
            .map_err(unavailable)?;
        let Some(record) = found.kvs().first() else {
            return Err(StoreError::NoSuchService(name.clone()));
        };
        let stored: StoredService =
            serde_json::from_slice(record.value()).map_err(|_| corrupt("service", record.key()))?;
        // One transaction: the service, its tokens and every instance. A
        // watcher sees the service's marker deleted at the same revision as
        // its instances, which is how it knows why they went.
        let txn = Txn::new().and_then([
            TxnOp::delete(
                self.svc_prefix(name),
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            ),
            TxnOp::delete(self.service_key(name), None),
            TxnOp::delete(
                format!("{}/tokens/{}", self.prefix, stored.token_sha256),
                None,
            ),
            TxnOp::delete(
                format!("{}/tokens/{}", self.prefix, stored.consumer_token_sha256),
                None,
            ),
        ]);
        let done = kv.txn(txn).await.map_err(unavailable)?;
        let instances_prefix = format!("{}/svc/{name}/i/", self.prefix);
        let leases: Vec<i64> = done
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                etcd_client::TxnOpResponse::Delete(deleted) => Some(deleted),
                _ => None,
            })
            .flat_map(|deleted| {
                deleted
                    .prev_kvs()
                    .iter()
                    .filter(|kv| kv.key().starts_with(instances_prefix.as_bytes()))
                    .map(KeyValue::lease)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut lease_client = self.client.lease_client();
        for lease in &leases {
            // Takes the lease's index key with it.
            if let Err(error) = lease_client.revoke(*lease).await {
                tracing::debug!(%error, "could not revoke lease {lease:x}; it expires with its TTL");
            }
        }
        Ok(u32::try_from(leases.len()).unwrap_or(u32::MAX))
    }

    async fn list_services_once(&self) -> Result<Vec<ServiceInfo>, StoreError> {
        let mut kv = self.client.kv_client();
        let found = kv
            .get(
                self.services_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(unavailable)?;
        let mut services = Vec::new();
        for record in found.kvs() {
            let name = record
                .key_str()
                .ok()
                .and_then(|k| k.rsplit('/').next())
                .and_then(|n| n.parse::<ServiceName>().ok())
                .ok_or_else(|| corrupt("service key", record.key()))?;
            let stored: StoredService = serde_json::from_slice(record.value())
                .map_err(|_| corrupt("service", record.key()))?;
            let live = kv
                .get(
                    format!("{}/svc/{name}/i/", self.prefix),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(unavailable)?
                .count();
            services.push(ServiceInfo {
                name,
                created_at_unix: stored.created_at_unix,
                live_instances: u32::try_from(live).unwrap_or(u32::MAX),
            });
        }
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(services)
    }

    async fn lookup_token_once(&self, token: &TokenHash) -> Result<Option<Grant>, StoreError> {
        let Some(StoredToken::Grant(stored)) = self.stored_token(token).await? else {
            // Unknown, or a named consumer's: `lookup_consumer` reads those.
            return Ok(None);
        };
        Ok(Some(Grant {
            service: stored
                .service
                .parse()
                .map_err(|_| corrupt("token service", self.token_key(token).as_bytes()))?,
            kind: if stored.consumer {
                TokenKind::Consumer
            } else {
                TokenKind::Service
            },
        }))
    }

    async fn lookup_consumer_once(
        &self,
        token: &TokenHash,
    ) -> Result<Option<Consumer>, StoreError> {
        let Some(StoredToken::Consumer(stored)) = self.stored_token(token).await? else {
            return Ok(None);
        };
        let bad = || corrupt("consumer token", self.token_key(token).as_bytes());
        let name = stored.named_consumer.parse().map_err(|_| bad())?;
        let services = stored
            .services
            .iter()
            .map(|s| s.parse::<ServiceName>())
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|_| bad())?;
        Ok(Some(Consumer { name, services }))
    }

    async fn create_consumer_once(
        &self,
        consumer: NewConsumer,
        retried: bool,
    ) -> Result<Consumer, StoreError> {
        let record = serde_json::to_vec(&StoredConsumer {
            token_sha256: consumer.token.to_string(),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let token = serde_json::to_vec(&StoredToken::Consumer(StoredConsumerToken {
            named_consumer: consumer.name.to_string(),
            services: consumer.services.iter().map(ToString::to_string).collect(),
        }))
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let key = self.consumer_key(&consumer.name);
        let token_key = self.token_key(&consumer.token);
        // One transaction: the name is free, the token is no other's, and
        // every service named is in the catalog (at most 64 comparisons,
        // within etcd's default of 128 per transaction).
        let mut when = vec![
            Compare::version(key.clone(), CompareOp::Equal, 0),
            Compare::version(token_key.clone(), CompareOp::Equal, 0),
        ];
        when.extend(
            consumer
                .services
                .iter()
                .map(|s| Compare::version(self.service_key(s), CompareOp::Greater, 0)),
        );
        let txn = Txn::new().when(when).and_then([
            TxnOp::put(key, record, None),
            TxnOp::put(token_key, token, None),
        ]);
        let mut kv = self.client.kv_client();
        let done = kv.txn(txn).await.map_err(unavailable)?;
        if !done.succeeded() {
            // Say which condition failed, in the memory store's order. A
            // retry of a creation whose answer was lost finds the consumer
            // with its own token: that is a success, not a conflict.
            let existing = kv
                .get(self.consumer_key(&consumer.name), None)
                .await
                .map_err(unavailable)?;
            if let Some(found) = existing.kvs().first() {
                let ours = retried
                    && serde_json::from_slice::<StoredConsumer>(found.value())
                        .is_ok_and(|stored| stored.token_sha256 == consumer.token.to_string());
                return if ours {
                    Ok(Consumer {
                        name: consumer.name,
                        services: consumer.services,
                    })
                } else {
                    Err(StoreError::ConsumerExists(consumer.name))
                };
            }
            let listed = kv
                .get(
                    self.services_prefix(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .map_err(unavailable)?;
            let catalog: BTreeSet<&[u8]> = listed.kvs().iter().map(KeyValue::key).collect();
            if let Some(missing) = consumer
                .services
                .iter()
                .find(|s| !catalog.contains(self.service_key(s).as_bytes()))
            {
                return Err(StoreError::NoSuchService(missing.clone()));
            }
            return Err(StoreError::TokenInUse);
        }
        Ok(Consumer {
            name: consumer.name,
            services: consumer.services,
        })
    }

    async fn delete_consumer_once(&self, name: &ConsumerName) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.consumer_key(name);
        // Twice at most: the consumer may be deleted and created again
        // between the read and the transaction.
        for _ in 0..2 {
            let found = kv.get(key.clone(), None).await.map_err(unavailable)?;
            let Some(record) = found.kvs().first() else {
                return Err(StoreError::NoSuchConsumer(name.clone()));
            };
            let stored: StoredConsumer = serde_json::from_slice(record.value())
                .map_err(|_| corrupt("consumer", record.key()))?;
            // The name and its token go together, or neither does.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    record.mod_revision(),
                )])
                .and_then([
                    TxnOp::delete(key.clone(), None),
                    TxnOp::delete(
                        format!("{}/tokens/{}", self.prefix, stored.token_sha256),
                        None,
                    ),
                ]);
            if kv.txn(txn).await.map_err(unavailable)?.succeeded() {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "consumer '{name}' changed while it was being deleted; delete it again"
        )))
    }

    async fn register_once(&self, registration: Registration) -> Result<Instance, StoreError> {
        let mut kv = self.client.kv_client();
        let service = registration.service.clone();
        let id = match &registration.id {
            Some(id) => id.clone(),
            None => InstanceId::random(&service),
        };
        let key = self.instance_key(&service, &id);
        let found = kv.get(key.clone(), None).await.map_err(unavailable)?;
        let (guard, replaced) = match found.kvs().first() {
            Some(existing) => {
                let current = self.instance_of(&service, existing)?;
                if current.address != registration.address {
                    return Err(StoreError::InstanceIdTaken {
                        service,
                        id,
                        address: current.address.to_string(),
                    });
                }
                // The same instance registering again: its new lease takes over.
                (
                    Compare::mod_revision(key.clone(), CompareOp::Equal, existing.mod_revision()),
                    Some(existing.lease()),
                )
            }
            None => (Compare::version(key.clone(), CompareOp::Equal, 0), None),
        };
        let lease = self
            .client
            .lease_client()
            .grant(i64::from(registration.ttl.as_secs()), None)
            .await
            .map_err(unavailable)?
            .id();
        let record = serde_json::to_vec(&StoredInstance {
            address: registration.address.to_string(),
            metadata: registration
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ttl_seconds: registration.ttl.as_secs(),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let lease_id = LeaseId(u64::try_from(lease).unwrap_or_default());
        let leased = serde_json::to_vec(&StoredLease {
            service: service.to_string(),
            instance: id.to_string(),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let txn = Txn::new()
            .when([
                Compare::version(self.alive_key(&service), CompareOp::Greater, 0),
                guard,
            ])
            .and_then([
                TxnOp::put(key, record, Some(PutOptions::new().with_lease(lease))),
                TxnOp::put(
                    self.lease_key(lease_id),
                    leased,
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ]);
        // On a transport error the lease is left alone: the transaction may
        // have committed. If it did not, the unused lease expires with its TTL.
        let done = kv.txn(txn).await.map_err(unavailable)?;
        if !done.succeeded() {
            let _ = self.client.lease_client().revoke(lease).await;
            let exists = kv
                .get(self.alive_key(&service), None)
                .await
                .map_err(unavailable)?
                .count()
                > 0;
            return Err(if exists {
                StoreError::Unavailable(format!(
                    "instance {id} changed while it registered; register again"
                ))
            } else {
                StoreError::NoSuchService(service)
            });
        }
        if let Some(old) = replaced {
            let _ = self.client.lease_client().revoke(old).await;
        }
        Ok(Instance {
            service,
            id,
            address: registration.address,
            metadata: registration.metadata,
            lease: lease_id,
            ttl: registration.ttl,
            revision: done
                .header()
                .map_or(0, |h| u64::try_from(h.revision()).unwrap_or_default()),
        })
    }

    async fn heartbeat_once(&self, lease: LeaseId, scope: &Scope) -> Result<Ttl, StoreError> {
        let (service, id) = self.scoped(lease, scope).await?;
        let etcd_lease = i64::try_from(lease.0).map_err(|_| StoreError::NoSuchLease(lease))?;
        // The lease must still be the one holding the instance: a lease whose
        // instance is gone must not be kept alive, or it would never register again.
        let found = self
            .client
            .kv_client()
            .get(self.instance_key(&service, &id), None)
            .await
            .map_err(unavailable)?;
        let Some(held) = found.kvs().first().filter(|kv| kv.lease() == etcd_lease) else {
            return Err(StoreError::NoSuchLease(lease));
        };
        let ttl = self.instance_of(&service, held)?.ttl;
        // One renewal: etcd-client's keep_alive sends it and reads the answer.
        match self.client.lease_client().keep_alive(etcd_lease).await {
            Ok(_) => Ok(ttl),
            Err(etcd_client::Error::LeaseKeepAliveError(why)) => {
                tracing::debug!(service = %service, instance = %id, %why, "lease {lease} had expired");
                Err(StoreError::NoSuchLease(lease))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn deregister_lease_once(
        &self,
        lease: LeaseId,
        scope: &Scope,
    ) -> Result<Instance, StoreError> {
        let (service, id) = self.scoped(lease, scope).await?;
        self.remove(&service, &id, Some(lease), DEREGISTERED)
            .await
            .map_err(|e| match e {
                StoreError::NoSuchInstance { .. } => StoreError::NoSuchLease(lease),
                other => other,
            })
    }

    async fn deregister_instance_once(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Instance, StoreError> {
        let alive = self
            .client
            .kv_client()
            .get(self.alive_key(service), None)
            .await
            .map_err(unavailable)?;
        if alive.count() == 0 {
            return Err(StoreError::NoSuchService(service.clone()));
        }
        self.remove(service, id, None, DEREGISTERED).await
    }

    async fn resolve_once(
        &self,
        service: &ServiceName,
    ) -> Result<(Vec<Instance>, Revision), StoreError> {
        // One range read: the service's marker and its instances, at one revision.
        let found = self
            .client
            .kv_client()
            .get(
                self.svc_prefix(service),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(unavailable)?;
        let revision = found
            .header()
            .map_or(0, |h| u64::try_from(h.revision()).unwrap_or_default());
        let alive = self.alive_key(service);
        let instances_prefix = format!("{}/svc/{service}/i/", self.prefix);
        let mut exists = false;
        let mut instances = Vec::new();
        for kv in found.kvs() {
            if kv.key() == alive.as_bytes() {
                exists = true;
            } else if kv.key().starts_with(instances_prefix.as_bytes()) {
                instances.push(self.instance_of(service, kv)?);
            }
        }
        if !exists {
            return Err(StoreError::NoSuchService(service.clone()));
        }
        instances.sort_by(|a, b| (&a.address, &a.id).cmp(&(&b.address, &b.id)));
        Ok((instances, revision))
    }
}

/// Runs an operation again when etcd was out of reach (a member down, a
/// leader election): up to four tries, 25, 50 and 100 ms apart (each try is
/// bounded by the client's 5 s request timeout). Writes are guarded by
/// transaction conditions, so a retry of one that did commit cannot apply
/// twice; creating a service recognises its own earlier success.
async fn retry<T, F, Fut>(mut operation: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(25);
    for _ in 0..3 {
        match operation().await {
            Err(StoreError::Unavailable(why)) => {
                tracing::debug!(%why, "etcd unavailable; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            done => return done,
        }
    }
    operation().await
}

impl Store for EtcdStore {
    async fn create_service(&self, service: NewService) -> Result<ServiceInfo, StoreError> {
        // Only a retry may find its own earlier, unanswered success.
        let tries = std::sync::atomic::AtomicU32::new(0);
        retry(|| {
            let earlier = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.create_service_once(service.clone(), earlier > 0)
        })
        .await
    }

    async fn delete_service(&self, name: &ServiceName) -> Result<u32, StoreError> {
        retry(|| self.delete_service_once(name)).await
    }

    async fn list_services(&self) -> Result<Vec<ServiceInfo>, StoreError> {
        retry(|| self.list_services_once()).await
    }

    async fn lookup_token(&self, token: &TokenHash) -> Result<Option<Grant>, StoreError> {
        retry(|| self.lookup_token_once(token)).await
    }

    async fn create_consumer(&self, consumer: NewConsumer) -> Result<Consumer, StoreError> {
        // Only a retry may find its own earlier, unanswered success.
        let tries = std::sync::atomic::AtomicU32::new(0);
        retry(|| {
            let earlier = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.create_consumer_once(consumer.clone(), earlier > 0)
        })
        .await
    }

    async fn delete_consumer(&self, name: &ConsumerName) -> Result<(), StoreError> {
        retry(|| self.delete_consumer_once(name)).await
    }

    async fn lookup_consumer(&self, token: &TokenHash) -> Result<Option<Consumer>, StoreError> {
        retry(|| self.lookup_consumer_once(token)).await
    }

    async fn register(&self, registration: Registration) -> Result<Instance, StoreError> {
        retry(|| self.register_once(registration.clone())).await
    }

    async fn heartbeat(&self, lease: LeaseId, scope: &Scope) -> Result<Ttl, StoreError> {
        retry(|| self.heartbeat_once(lease, scope)).await
    }

    async fn deregister_lease(
        &self,
        lease: LeaseId,
        scope: &Scope,
    ) -> Result<Instance, StoreError> {
        retry(|| self.deregister_lease_once(lease, scope)).await
    }

    async fn deregister_instance(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Instance, StoreError> {
        retry(|| self.deregister_instance_once(service, id)).await
    }

    async fn resolve(
        &self,
        service: &ServiceName,
    ) -> Result<(Vec<Instance>, Revision), StoreError> {
        retry(|| self.resolve_once(service)).await
    }

    async fn watch(
        &self,
        service: &ServiceName,
        since: Revision,
        progress_every: Duration,
    ) -> Result<WatchStream, StoreError> {
        let (tx, rx) = mpsc::channel(64);
        let pump = EtcdPump {
            store: self.clone(),
            service: service.clone(),
            tx,
            reasons: HashMap::new(),
            last: 0,
            failures: 0,
        };
        // The first read answers NOT_FOUND for a service that does not exist.
        let start = pump.start(since).await?;
        tokio::spawn(pump.run(start, progress_every));
        Ok(ReceiverStream::new(rx).boxed())
    }
}

/// Where a watch starts: a snapshot to send first, and the revision to watch from.
struct Start {
    snapshot: Option<WatchEvent>,
    from: i64,
}

/// Turns one etcd watch into one registry watch stream.
struct EtcdPump {
    store: EtcdStore,
    service: ServiceName,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
    /// Why instances are being removed, from markers seen before the deletion.
    reasons: HashMap<String, RemovalReason>,
    /// The latest revision sent to the watcher, to resume after a break.
    last: i64,
    /// Breaks of the etcd watch in a row, reset once a watch is current again.
    failures: u32,
}

impl EtcdPump {
    /// A snapshot when `since` is 0 or ahead of etcd; otherwise resume after it.
    async fn start(&self, since: Revision) -> Result<Start, StoreError> {
        let (instances, revision) = self.store.resolve(&self.service).await?;
        if since == 0 || since > revision {
            return Ok(Start {
                snapshot: Some(WatchEvent::Snapshot {
                    instances,
                    revision,
                }),
                from: i64::try_from(revision).unwrap_or(i64::MAX) + 1,
            });
        }
        Ok(Start {
            snapshot: None,
            from: i64::try_from(since).unwrap_or(i64::MAX) + 1,
        })
    }

    async fn run(mut self, mut start: Start, progress_every: Duration) {
        loop {
            match self.follow(start, progress_every).await {
                // etcd compacted the revision we asked for: start over with a snapshot.
                Ok(Some(_compacted)) => match self.start(0).await {
                    Ok(fresh) => start = fresh,
                    Err(e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                },
                Ok(None) => return,
                // The etcd member behind the watch went away: resume from the
                // last revision sent, on whichever member answers.
                Err(StoreError::Unavailable(why)) if self.failures < 10 => {
                    self.failures += 1;
                    let delay = Duration::from_millis(50 << self.failures.min(4));
                    tracing::warn!(service = %self.service, %why, "etcd watch broke; resuming in {delay:?}");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.tx.closed() => return,
                    }
                    start = Start {
                        snapshot: None,
                        from: self.last + 1,
                    };
                }
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    /// Follows one etcd watch. `Ok(Some(revision))` when etcd compacted past
    /// where it was asked to start; `Ok(None)` when the watcher went away or
    /// the service was deleted.
    async fn follow(
        &mut self,
        start: Start,
        progress_every: Duration,
    ) -> Result<Option<i64>, StoreError> {
        // Where to resume if this watch breaks before sending anything.
        self.last = self.last.max(start.from - 1);
        if let Some(snapshot) = start.snapshot
            && self.tx.send(Ok(snapshot)).await.is_err()
        {
            return Ok(None);
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start.from)
            .with_prev_key()
            .with_progress_notify();
        let mut watch = self
            .store
            .client
            .watch_client()
            .watch(self.store.svc_prefix(&self.service), Some(options))
            .await
            .map_err(unavailable)?;
        // A fence: a key written under the watched prefix now. Its event comes
        // after every change the watch replays, so when it arrives the watcher
        // is current. (etcd 3.4.23 may answer a progress request before the
        // replayed events, so progress requests wait until then.)
        let fence = self.store.fence(&self.service).await?;
        let mut current = false;
        let mut progress = tokio::time::interval(progress_every);
        progress.tick().await;
        let alive = self.store.alive_key(&self.service);
        let instances = format!("{}/svc/{}/i/", self.store.prefix, self.service);
        let markers = format!("{}/svc/{}/r/", self.store.prefix, self.service);
        let fences = format!("{}/svc/{}/f/", self.store.prefix, self.service);
        loop {
            let response = tokio::select! {
                () = self.tx.closed() => return Ok(None),
                _ = progress.tick(), if current => {
                    watch.request_progress().await.map_err(unavailable)?;
                    continue;
                }
                response = watch.message() => response.map_err(unavailable)?,
            };
            let Some(response) = response else {
                return Err(StoreError::Unavailable("etcd ended the watch".into()));
            };
            if response.compact_revision() > 0 {
                return Ok(Some(response.compact_revision()));
            }
            if response.canceled() {
                return Err(StoreError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    response.cancel_reason()
                )));
            }
            let revision = response.header().map_or(self.last, |h| h.revision());
            if response.events().is_empty() {
                if current && !response.created() && revision > self.last {
                    self.last = revision;
                    if self
                        .tx
                        .send(Ok(WatchEvent::Progress(
                            u64::try_from(revision).unwrap_or_default(),
                        )))
                        .await
                        .is_err()
                    {
                        return Ok(None);
                    }
                }
                continue;
            }
            let mut deleted = false;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = kv.key();
                if key == alive.as_bytes() && event.event_type() == EventType::Delete {
                    // The instances deleted with it follow in this response.
                    deleted = true;
                    continue;
                }
                if key.starts_with(fences.as_bytes()) {
                    if !current && key == fence.as_bytes() && event.event_type() == EventType::Put {
                        current = true;
                        self.failures = 0;
                        self.last = kv.mod_revision().max(self.last);
                        let at = u64::try_from(kv.mod_revision()).unwrap_or_default();
                        if self.tx.send(Ok(WatchEvent::Progress(at))).await.is_err() {
                            return Ok(None);
                        }
                    }
                    continue;
                }
                let name =
                    |prefix: &str| String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                if key.starts_with(markers.as_bytes()) {
                    if event.event_type() == EventType::Put {
                        self.reasons
                            .insert(name(&markers), RemovalReason::Deregistered);
                    }
                    continue;
                }
                if !key.starts_with(instances.as_bytes()) {
                    continue;
                }
                let change = match event.event_type() {
                    EventType::Put => Change::Added(self.store.instance_of(&self.service, kv)?),
                    EventType::Delete => {
                        // Without the previous value (etcd could not read it,
                        // near a compaction), start over from a snapshot.
                        let Some(previous) = event.prev_kv() else {
                            return Ok(Some(kv.mod_revision()));
                        };
                        let reason = match self.reasons.remove(&name(&instances)) {
                            Some(reason) => reason,
                            None if deleted => RemovalReason::ServiceDeleted,
                            None => RemovalReason::Expired,
                        };
                        Change::Removed(self.store.instance_of(&self.service, previous)?, reason)
                    }
                };
                self.last = kv.mod_revision().max(self.last);
                let event = Event {
                    revision: u64::try_from(kv.mod_revision()).unwrap_or_default(),
                    change,
                };
                if self.tx.send(Ok(WatchEvent::Change(event))).await.is_err() {
                    return Ok(None);
                }
            }
            if deleted {
                let _ = self
                    .tx
                    .send(Err(StoreError::NoSuchService(self.service.clone())))
                    .await;
                return Ok(None);
            }
        }
    }
}
