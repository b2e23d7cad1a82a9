//! Follows a service's instances through the registry's watch stream.
//!
//! The watcher keeps its own copy of the instance set and reports changes to
//! it. When the stream breaks it reconnects (jittered backoff, trying the next
//! replica) and asks to resume from the last revision it saw; the registry
//! answers with exactly the changes missed, or with a fresh snapshot.
//!
//! A fresh snapshot after a break may lack instances that are alive: a
//! restarted registry only learns of them when they register again, within
//! one heartbeat interval. So an instance missing from such a snapshot is not
//! removed at once: it is removed when it has not come back within its TTL.
//! An explicit `Removed` change, by contrast, is applied at once. Hence an
//! outage of the registry alone never takes an instance out of the set.

use std::{
    collections::HashMap,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use market_proto::registry::v1::{self as pb, watch_response::Event};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use crate::connect::{Registries, is_unavailable};

/// A live instance, as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its id within the service.
    pub id: String,
    /// Where to reach it: `http://host:port` or `https://host:port`.
    pub address: String,
    /// Its labels.
    pub metadata: HashMap<String, String>,
    /// Its lease's time to live.
    pub ttl: Duration,
}

impl From<pb::Instance> for Instance {
    fn from(i: pb::Instance) -> Self {
        Self {
            id: i.instance_id,
            address: i.address,
            metadata: i.metadata,
            ttl: Duration::from_secs(u64::from(i.ttl_seconds)),
        }
    }
}

/// A change to the watcher's view of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchUpdate {
    /// An instance is live, or changed (same id, new details).
    Upsert(Instance),
    /// An instance is gone.
    Remove(Instance),
    /// The view is current up to this registry revision.
    Synced(u64),
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The service's name.
    pub service: String,
    /// The longest pause between reconnection attempts.
    pub max_backoff: Duration,
}

impl WatchConfig {
    /// Watches `service` with the default backoff.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A stream of [`WatchUpdate`]s that never ends while the watcher lives; the
/// background task stops when the watcher is dropped.
#[derive(Debug)]
pub struct Watcher {
    updates: mpsc::Receiver<WatchUpdate>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts watching in the background. Call it inside a Tokio runtime.
    pub fn spawn(registries: Registries, config: WatchConfig) -> Self {
        let (tx, updates) = mpsc::channel(256);
        let task = tokio::spawn(Follow::new(registries, config, tx).run());
        Self { updates, task }
    }
}

impl Stream for Watcher {
    type Item = WatchUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchUpdate>> {
        self.updates.poll_recv(cx)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watcher's state, owned by its task.
struct Follow {
    registries: Registries,
    config: WatchConfig,
    tx: mpsc::Sender<WatchUpdate>,
    /// The instances in the view, by id.
    known: HashMap<String, Instance>,
    /// Instances missing from a snapshot after a break, with when they will be
    /// removed unless they come back.
    doubtful: HashMap<String, Instant>,
    /// The last revision seen; 0 before the first snapshot.
    revision: u64,
}

/// Why the task should stop.
struct Closed;

impl Follow {
    fn new(registries: Registries, config: WatchConfig, tx: mpsc::Sender<WatchUpdate>) -> Self {
        Self {
            registries,
            config,
            tx,
            known: HashMap::new(),
            doubtful: HashMap::new(),
            revision: 0,
        }
    }

    async fn run(mut self) {
        let mut retry = crate::Backoff::new(Duration::from_millis(50), self.config.max_backoff);
        loop {
            let (mut client, registry) = self.registries.client();
            let registry = registry.to_owned();
            let request = pb::WatchRequest {
                service: self.config.service.clone(),
                since_revision: self.revision,
            };
            let opened = tokio::select! {
                opened = client.watch(request) => opened,
                closed = self.expire_doubtful_forever() => { let Closed = closed; return; }
            };
            let failure = match opened {
                Ok(stream) => match self.follow(stream.into_inner(), &mut retry).await {
                    Ok(failure) => failure,
                    Err(Closed) => return,
                },
                Err(status) => status,
            };
            let delay = retry.next_delay();
            if is_unavailable(&failure) {
                self.registries.failed(&registry);
                tracing::warn!(
                    service = %self.config.service,
                    %registry,
                    "watch interrupted ({}); reconnecting in {delay:?}", failure.message()
                );
            } else {
                tracing::error!(
                    service = %self.config.service,
                    %registry,
                    code = ?failure.code(),
                    "registry refused the watch: {}; retrying in {delay:?}", failure.message()
                );
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                closed = self.expire_doubtful_forever() => { let Closed = closed; return; }
            }
        }
    }

    /// Reads one stream until it breaks, and says why it broke.
    async fn follow(
        &mut self,
        mut stream: tonic::Streaming<pb::WatchResponse>,
        retry: &mut crate::Backoff,
    ) -> Result<tonic::Status, Closed> {
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                closed = self.expire_doubtful_forever() => return Err(closed),
            };
            let event = match message {
                Some(Ok(pb::WatchResponse { event: Some(event) })) => event,
                Some(Ok(pb::WatchResponse { event: None })) => continue,
                Some(Err(status)) => return Ok(status),
                None => return Ok(tonic::Status::unavailable("the registry ended the watch")),
            };
            // A message arrived: the connection works, so the next break starts
            // its backoff afresh.
            *retry = crate::Backoff::new(Duration::from_millis(50), self.config.max_backoff);
            match event {
                Event::Snapshot(snapshot) => self.apply_snapshot(snapshot).await?,
                Event::Change(change) => self.apply_change(change).await?,
                Event::Progress(progress) => {
                    self.revision = self.revision.max(progress.revision);
                    self.send(WatchUpdate::Synced(self.revision)).await?;
                }
            }
        }
    }

    async fn apply_snapshot(&mut self, snapshot: pb::Snapshot) -> Result<(), Closed> {
        let first = self.revision == 0;
        let mut fresh: HashMap<String, Instance> = snapshot
            .instances
            .into_iter()
            .map(|i| {
                let i = Instance::from(i);
                (i.id.clone(), i)
            })
            .collect();
        let now = Instant::now();
        let missing: Vec<String> = self
            .known
            .keys()
            .filter(|id| !fresh.contains_key(*id))
            .cloned()
            .collect();
        for id in missing {
            if let Some(instance) = self.known.get(&id) {
                let grace = instance.ttl.max(Duration::from_secs(1));
                self.doubtful.entry(id).or_insert(now + grace);
            }
        }
        for (id, instance) in fresh.drain() {
            self.doubtful.remove(&id);
            if self.known.get(&id) != Some(&instance) {
                self.known.insert(id, instance.clone());
                self.send(WatchUpdate::Upsert(instance)).await?;
            }
        }
        if !first && !self.doubtful.is_empty() {
            tracing::info!(
                service = %self.config.service,
                missing = self.doubtful.len(),
                "the registry's snapshot lacks {} known instance(s); keeping them for one TTL in case they register again",
                self.doubtful.len()
            );
        }
        self.revision = snapshot.revision;
        self.send(WatchUpdate::Synced(self.revision)).await
    }

    async fn apply_change(&mut self, change: pb::Change) -> Result<(), Closed> {
        let Some(instance) = change.instance.map(Instance::from) else {
            return Ok(());
        };
        self.revision = self.revision.max(change.revision);
        self.doubtful.remove(&instance.id);
        match pb::ChangeKind::try_from(change.kind) {
            Ok(pb::ChangeKind::Added) => {
                self.known.insert(instance.id.clone(), instance.clone());
                self.send(WatchUpdate::Upsert(instance)).await
            }
            Ok(pb::ChangeKind::Removed) => {
                if let Some(known) = self.known.remove(&instance.id) {
                    self.send(WatchUpdate::Remove(known)).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Removes doubtful instances whose grace ran out, for as long as it is
    /// polled; it returns only when the watcher was dropped.
    async fn expire_doubtful_forever(&mut self) -> Closed {
        loop {
            let Some(next) = self.doubtful.values().min().copied() else {
                self.tx.closed().await;
                return Closed;
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.tx.closed() => return Closed,
            }
            let now = Instant::now();
            while let Some(id) = self
                .doubtful
                .iter()
                .find(|(_, at)| **at <= now)
                .map(|(id, _)| id.clone())
            {
                // Room first: if this future is dropped while it waits (it
                // runs inside `select!`), nothing has changed yet.
                let Ok(permit) = self.tx.reserve().await else {
                    return Closed;
                };
                self.doubtful.remove(&id);
                if let Some(instance) = self.known.remove(&id) {
                    tracing::info!(
                        service = %self.config.service,
                        instance = %instance.id,
                        "instance {} did not come back; removing it", instance.id
                    );
                    permit.send(WatchUpdate::Remove(instance));
                }
            }
        }
    }

    async fn send(&self, update: WatchUpdate) -> Result<(), Closed> {
        self.tx.send(update).await.map_err(|_| Closed)
    }
}
