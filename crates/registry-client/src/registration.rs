//! Keeps one instance registered for as long as it runs.

use std::{collections::HashMap, time::Duration};

use market_proto::registry::v1 as pb;
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};

use crate::connect::{Registries, is_unavailable};

/// How long one call to the registry may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What to register.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The service to join, e.g. `ratings`.
    pub service: String,
    /// The instance's id within the service; empty lets the registry choose.
    pub instance_id: String,
    /// Where consumers reach the instance, e.g. `http://127.0.0.1:8001`.
    pub address: String,
    /// Labels for consumers.
    pub metadata: HashMap<String, String>,
    /// How long the registry keeps the instance without a heartbeat (whole
    /// seconds, 1 to 300). Heartbeats go out every third of it.
    pub ttl: Duration,
}

/// A running registration: a task that registers the instance, heartbeats,
/// and registers again whenever the lease was lost.
#[derive(Debug)]
pub struct Registration {
    /// The lease in force, `None` while (re)registering.
    lease: watch::Receiver<Option<u64>>,
    /// Tells the task to stop; it answers with the lease it held.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Option<u64>>,
    registries: Registries,
    service: String,
}

impl Registration {
    /// Starts registering in the background. Call it inside a Tokio runtime.
    pub fn spawn(registries: Registries, config: RegistrationConfig) -> Self {
        let (lease_tx, lease) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        let service = config.service.clone();
        let task = tokio::spawn(keep_registered(
            registries.clone(),
            config,
            lease_tx,
            stopped,
        ));
        Self {
            lease,
            stop: Some(stop),
            task,
            registries,
            service,
        }
    }

    /// The lease in force, if the instance is registered now.
    pub fn lease(&self) -> Option<u64> {
        *self.lease.borrow()
    }

    /// The lease in force as it changes, `None` while (re)registering: to
    /// wait for the registration apart from this handle.
    pub fn watch_lease(&self) -> watch::Receiver<Option<u64>> {
        self.lease.clone()
    }

    /// Waits until the instance is registered, and returns its lease.
    pub async fn registered(&mut self) -> Option<u64> {
        self.lease
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|lease| *lease)
    }

    /// Stops heartbeating and removes the instance from the registry at once,
    /// so consumers stop calling it before it stops serving.
    pub async fn deregister(mut self) -> Result<(), tonic::Status> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let lease = (&mut self.task).await.ok().flatten();
        let Some(lease) = lease else {
            return Ok(());
        };
        let request = pb::DeregisterRequest {
            lease_id: lease,
            ..Default::default()
        };
        let (mut client, address) = self.registries.client();
        let address = address.to_owned();
        let result =
            match tokio::time::timeout(CALL_TIMEOUT, client.deregister(request.clone())).await {
                Ok(result) => result,
                Err(_) => Err(tonic::Status::deadline_exceeded(
                    "the registry did not answer in time",
                )),
            };
        match result {
            Ok(_) => {
                tracing::info!(service = %self.service, lease = %format_args!("{lease:x}"), "deregistered");
                Ok(())
            }
            // Already gone: the registry expired or forgot the lease.
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) if is_unavailable(&status) => {
                // One more try on the next replica, if there is one.
                self.registries.failed(&address);
                let (mut client, _) = self.registries.client();
                match tokio::time::timeout(CALL_TIMEOUT, client.deregister(request)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(()),
                    Ok(Err(status)) => Err(status),
                    Err(_) => Err(status),
                }
            }
            Err(status) => Err(status),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Without an explicit deregister the lease simply expires.
        self.task.abort();
    }
}

async fn keep_registered(
    registries: Registries,
    config: RegistrationConfig,
    lease_tx: watch::Sender<Option<u64>>,
    mut stopped: oneshot::Receiver<()>,
) -> Option<u64> {
    let ttl_seconds = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
    let interval = (config.ttl / 3).max(Duration::from_millis(100));
    let retry_cap = interval.min(Duration::from_secs(5));
    let mut retry = crate::Backoff::new(Duration::from_millis(100), retry_cap);
    let mut lease: Option<u64> = None;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = &mut stopped => return lease,
            () = tokio::time::sleep(wait) => {}
        }
        let (mut client, registry) = registries.client();
        let registry = registry.to_owned();
        let outcome = match lease {
            None => {
                let request = pb::RegisterRequest {
                    service: config.service.clone(),
                    instance_id: config.instance_id.clone(),
                    address: config.address.clone(),
                    metadata: config.metadata.clone(),
                    ttl_seconds,
                };
                call(client.register(request)).await.map(|response| {
                    let response = response.into_inner();
                    let id = response.instance.map(|i| i.instance_id).unwrap_or_default();
                    tracing::info!(
                        service = %config.service,
                        instance = %id,
                        address = %config.address,
                        %registry,
                        lease = %format_args!("{:x}", response.lease_id),
                        "registered {id} at {} with {registry}", config.address
                    );
                    lease = Some(response.lease_id);
                    lease_tx.send_replace(lease);
                })
            }
            Some(current) => call(client.heartbeat(pb::HeartbeatRequest { lease_id: current }))
                .await
                .map(|_| ()),
        };
        wait = match outcome {
            Ok(()) => {
                retry = crate::Backoff::new(Duration::from_millis(100), retry_cap);
                interval
            }
            Err(status) if lease.is_some() && status.code() == tonic::Code::NotFound => {
                tracing::warn!(
                    service = %config.service,
                    address = %config.address,
                    "lease lost ({}); registering again", status.message()
                );
                lease = None;
                lease_tx.send_replace(None);
                Duration::ZERO
            }
            Err(status) => {
                let delay = retry.next_delay();
                if is_unavailable(&status) {
                    registries.failed(&registry);
                    tracing::warn!(
                        service = %config.service,
                        %registry,
                        "registry unreachable ({}); retrying in {delay:?}", status.message()
                    );
                } else {
                    // A refusal (bad token, unknown service, bad address) will
                    // not fix itself soon, but an operator may fix it: retry slowly.
                    tracing::error!(
                        service = %config.service,
                        %registry,
                        code = ?status.code(),
                        "registry refused the instance: {}; retrying in {delay:?}", status.message()
                    );
                }
                delay
            }
        };
    }
}

/// One call with a time limit.
async fn call<T>(
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(
                "the registry did not answer in time",
            ))
        })
}
