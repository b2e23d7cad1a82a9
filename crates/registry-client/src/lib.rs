//! A client library for the registry, for any service and any consumer.
//!
//! - [`Registration`] registers an instance and keeps it registered: it
//!   heartbeats at a third of the TTL, registers again when its lease was lost
//!   (the registry restarted, or the process was paused past its TTL), rides
//!   out registry outages with jittered backoff, and deregisters on request.
//! - [`Watcher`] follows a service's instances: it resolves, watches, and on
//!   any break reconnects and resumes from the last revision it saw. An outage
//!   of the registry alone never removes an instance from its view.
//! - [`Registries`] is the set of registry addresses both use, failing over
//!   between them, and [`connect`] gives a plain authenticated gRPC client.

mod connect;
mod registration;
mod watch;

pub use crate::{
    connect::{BearerToken, ConfigError, Registries, RegistryClient, connect},
    registration::{Registration, RegistrationConfig},
    watch::{Instance, WatchConfig, WatchUpdate, Watcher},
};

/// The backoff between retries: jittered, doubling from `min` up to `max`.
fn backoff(min: std::time::Duration, max: std::time::Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max.max(min))
        .with_jitter()
        .without_max_times()
        .build()
}
