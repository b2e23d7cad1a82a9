//! One watch of the registry per service that some xDS stream reads, and
//! the service's resources as of its last change, encoded once.
//!
//! A service's task watches it in the store (`Store::watch`, on any store),
//! keeps its live instances, and after each change publishes the resources
//! in a `tokio::sync::watch` channel that every stream reading the service
//! subscribes to: a change costs one encoding, however many clients read
//! it, and a slow client only ever sees the latest. The task ends when the
//! last stream lets go of the service.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use tokio::sync::watch;

use super::resources::{self, Policies, ServiceResources};
use crate::{
    model::{Change, Instance, InstanceId, ServiceName},
    store::{Store, StoreError, WatchEvent},
};

/// What the registry knows of a service, as xDS shows it.
#[derive(Debug, Clone)]
pub(crate) enum Published {
    /// Not read yet: a stream waits before it answers for the service.
    Unknown,
    /// Not in the catalog.
    Absent,
    /// In the catalog, with these resources.
    Present(Arc<ServiceResources>),
}

/// How often a service that is not in the catalog is looked for again, so
/// that a client waiting for it finds it soon after it is created.
const ABSENT_RECHECK: Duration = Duration::from_secs(2);

/// The longest wait before watching again after the store failed.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The services being watched for xDS streams.
pub(crate) struct Cache<S> {
    store: Arc<S>,
    /// The contract policies the listeners and clusters carry.
    policies: Policies,
    /// How often the store tells an idle watch it is current.
    progress_every: Duration,
    /// Each watched service's channel. A task removes its own entry, under
    /// this lock, once no stream is subscribed; subscribing takes the same
    /// lock, so no stream subscribes to a task that is ending.
    services: Mutex<HashMap<ServiceName, Arc<watch::Sender<Published>>>>,
}

impl<S> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Cache<S> {
    pub(crate) fn new(store: Arc<S>, policies: Policies, progress_every: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            policies,
            progress_every,
            services: Mutex::new(HashMap::new()),
        })
    }

    /// The resources of `service`, now and after each change, watched from
    /// now on if no stream watched it yet.
    pub(crate) fn subscribe(self: &Arc<Self>, service: &ServiceName) -> watch::Receiver<Published> {
        let mut services = self.services.lock().expect("xds cache lock");
        if let Some(sender) = services.get(service) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Published::Unknown);
        let sender = Arc::new(sender);
        services.insert(service.clone(), sender.clone());
        drop(services);
        tokio::spawn(self.clone().watch_service(service.clone(), sender));
        receiver
    }

    /// Whether the task of `service` may end: no stream is subscribed, and
    /// none can subscribe any more.
    fn release(&self, service: &ServiceName, sender: &watch::Sender<Published>) -> bool {
        let mut services = self.services.lock().expect("xds cache lock");
        if sender.receiver_count() > 0 {
            return false;
        }
        services.remove(service);
        true
    }

    /// Watches `service` for as long as a stream reads it, publishing its
    /// resources after every change.
    async fn watch_service(
        self: Arc<Self>,
        service: ServiceName,
        sender: Arc<watch::Sender<Published>>,
    ) {
        tracing::debug!(%service, "xDS: watching service {service}");
        // The listener and the cluster depend on the name and its contract
        // alone: encoded once, and the same `Arc` as long as the task runs,
        // so that a stream sends them again only when they change.
        let policy = self.policies.of(&service);
        let mut state = Following {
            listener: Arc::new(resources::listener(&service, &policy)),
            cluster: Arc::new(resources::cluster(&service, &policy)),
            last: None,
        };
        let mut retry = Duration::ZERO;
        loop {
            let ended = tokio::select! {
                () = sender.closed() => None,
                ended = self.follow(&service, &sender, &mut state) => Some(ended),
            };
            let wait = match ended {
                Some(FollowEnd::Absent) => ABSENT_RECHECK,
                Some(FollowEnd::Ended) => {
                    retry = Duration::ZERO;
                    retry
                }
                Some(FollowEnd::Failed) => {
                    retry = (retry * 2).clamp(Duration::from_millis(100), MAX_RETRY);
                    retry
                }
                None => Duration::ZERO,
            };
            if ended.is_some() {
                tokio::select! {
                    () = sender.closed() => {}
                    () = tokio::time::sleep(wait) => continue,
                }
            }
            if self.release(&service, &sender) {
                tracing::debug!(%service, "xDS: no stream reads service {service} any more");
                return;
            }
        }
    }

    /// Follows one watch of the store until it ends.
    async fn follow(
        &self,
        service: &ServiceName,
        sender: &watch::Sender<Published>,
        state: &mut Following,
    ) -> FollowEnd {
        let mut events = match self.store.watch(service, 0, self.progress_every).await {
            Ok(events) => events,
            Err(StoreError::NoSuchService(_)) => {
                state.last = None;
                sender.send_replace(Published::Absent);
                return FollowEnd::Absent;
            }
            Err(error) => {
                tracing::warn!(%service, %error, "xDS: cannot watch service {service}: {error}");
                return FollowEnd::Failed;
            }
        };
        let mut instances: BTreeMap<InstanceId, Instance> = BTreeMap::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Snapshot { instances: all, .. }) => {
                    instances = all.into_iter().map(|i| (i.id.clone(), i)).collect();
                }
                Ok(WatchEvent::Change(event)) => match event.change {
                    Change::Added(instance) => {
                        instances.insert(instance.id.clone(), instance);
                    }
                    Change::Removed(instance, _) => {
                        instances.remove(&instance.id);
                    }
                },
                Ok(WatchEvent::Progress(_)) => continue,
                // Deleted while watched: its removals came first.
                Err(StoreError::NoSuchService(_)) => break,
                Err(error) => {
                    tracing::warn!(%service, %error, "xDS: the watch of service {service} failed: {error}");
                    return FollowEnd::Failed;
                }
            }
            let mut sorted: Vec<&Instance> = instances.values().collect();
            sorted.sort_by(|a, b| a.address.cmp(&b.address));
            let endpoints = resources::endpoints(service, sorted);
            // A change xDS does not show (an upsert of the same address, a
            // watch started again) is not sent again.
            if state
                .last
                .as_ref()
                .is_some_and(|r| *r.endpoints == endpoints)
            {
                continue;
            }
            let current = Arc::new(ServiceResources {
                listener: state.listener.clone(),
                cluster: state.cluster.clone(),
                endpoints: Arc::new(endpoints),
            });
            state.last = Some(current.clone());
            sender.send_replace(Published::Present(current));
        }
        // The watch ends when the service is deleted: look again at once
        // (it is absent then, unless it was created again).
        FollowEnd::Ended
    }
}

/// What a service's task keeps between watches of the store.
struct Following {
    listener: Arc<envoy_types::pb::google::protobuf::Any>,
    cluster: Arc<envoy_types::pb::google::protobuf::Any>,
    /// What was published last while the service was present.
    last: Option<Arc<ServiceResources>>,
}

/// Why a watch of the store ended.
enum FollowEnd {
    /// The service is not in the catalog.
    Absent,
    /// The service was deleted while watched.
    Ended,
    /// The store failed.
    Failed,
}
