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
//! - [`xds_bootstrap`] writes the bootstrap of a gRPC client in any language
//!   that reads a service through the registry's xDS server.

mod bootstrap;
mod connect;
mod registration;
mod watch;

pub use crate::{
    bootstrap::{BootstrapError, xds_bootstrap},
    connect::{BearerToken, ConfigError, Registries, RegistryClient, connect},
    registration::{Registration, RegistrationConfig},
    watch::{Instance, WatchConfig, WatchUpdate, Watcher},
};

/// The pause between retries: exponential from `min`, with jitter, never
/// longer than `max`.
#[derive(Debug)]
struct Backoff {
    delays: backon::ExponentialBackoff,
    max: std::time::Duration,
}

impl Backoff {
    fn new(min: std::time::Duration, max: std::time::Duration) -> Self {
        use backon::BackoffBuilder as _;
        // backon's jitter adds up to 100 % to each delay, so the base delay is
        // capped at half of `max` for the sum to stay within `max`.
        let delays = backon::ExponentialBuilder::new()
            .with_min_delay(min.min(max / 2))
            .with_max_delay(max / 2)
            .with_jitter()
            .without_max_times()
            .build();
        Self { delays, max }
    }

    fn next_delay(&mut self) -> std::time::Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }
}
