//! A resilient client stack for gRPC services, from tower layers.
//!
//! A [`Client`] is a tower [`Service`](tower::Service) assembled with
//! `ServiceBuilder` from named layers:
//!
//! ```text
//! Client ▶ Deadline ▶ Retry (budget) ▶ [Hedge] ▶ Pool ▶ per instance:
//!                                                  CircuitBreaker ▶ PeakEwma ▶ [yours] ▶ Timeout ▶ gRPC call
//! ```
//!
//! 1. **discovery** (`discovery`): the registry's watch
//!    ([`registry_client::Watcher`]) applied to the pool as it happens; each
//!    instance gets a lazily connected tonic `Channel` and its own stack;
//! 2. **the pool** ([`Pool`]): the one record of the instances, and the one
//!    place that picks an instance for every attempt, first, retry or hedge:
//!    power of two choices over peak-EWMA load, or a strict round robin in
//!    address order, skipping the instances an [`Attempt`] avoids. Breakers
//!    belong to addresses: an instance that leaves and comes back at the same
//!    address gets its breaker back;
//! 3. per instance, our [`CircuitBreaker`] (built by [`CircuitBreakerLayer`])
//!    over tower's `PeakEwma` load measure over tower's `Timeout` over the
//!    gRPC call;
//! 4. around the pool, each a layer of its own: hedging ([`HedgeLayer`]),
//!    retries on another instance under a retry budget ([`RetryPolicy`] for
//!    tower's `Retry`), and the call's deadline ([`DeadlineLayer`]), sent
//!    along as `grpc-timeout`.
//!
//! The instance that answered comes back with the answer ([`Served`]), the
//! one that failed with the error ([`Failed`]). Users add their own layers
//! around the whole client, as around any tower service, and around each
//! instance with [`Builder::instance_layer`]; [`Client`]'s docs show both.
//!
//! Nothing here knows about any one service: [`Client`] is generic over the
//! request and response types and takes the gRPC method as a function.

pub mod breaker;
mod client;
mod deadline;
mod discovery;
mod endpoint;
mod error;
mod hedge;
mod latency;
mod policy;
mod pool;
mod retry;
pub mod trace;

pub use crate::{
    breaker::{
        BreakerPolicy, BreakerSnapshot, BreakerState, CircuitBreaker, CircuitBreakerLayer,
        EndpointLabel,
    },
    client::{Builder, Client, ResponseFuture},
    deadline::{Deadline, DeadlineLayer},
    discovery::InstanceCall,
    endpoint::{Attempt, EndpointSnapshot, GrpcCall, Served},
    error::{AllServicesDown, BreakerOpen, CallError, DeadlineElapsed, Failed, NoOtherInstance},
    hedge::{Hedge, HedgeLayer},
    latency::LatencyCounts,
    policy::{Balance, Policy, PolicyError},
    pool::{Instance, Pool},
    retry::RetryPolicy,
    trace::{TraceContext, TraceContextLayer},
};
