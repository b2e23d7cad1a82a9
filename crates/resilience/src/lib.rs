//! A resilient client stack for gRPC services, from tower layers.
//!
//! A call goes through:
//!
//! 1. **discovery**: the registry's watch ([`registry_client::Watcher`]) turned
//!    into tower's `Discover` stream of endpoints, each a lazily connected
//!    tonic `Channel`;
//! 2. **balance**: tower's `p2c::Balance` over `PeakEwma` load, or a strict
//!    round robin over the instances sorted by address;
//! 3. per endpoint, our [`CircuitBreaker`] over `PeakEwma` over tower's
//!    `Timeout` over the gRPC call;
//!
//! and around them the [`Client`] fails fast when no instance can take the
//! call, retries a failed attempt once on another instance under a retry
//! budget, optionally hedges a slow attempt, and bounds the whole call by a
//! deadline that it sends along as `grpc-timeout`.
//!
//! Nothing here knows about any one service: [`Client`] is generic over the
//! request and response types and takes the gRPC method as a function.

pub mod breaker;
mod client;
mod endpoint;
mod error;
mod policy;
mod round_robin;

pub use crate::{
    breaker::{
        BreakerPolicy, BreakerSnapshot, BreakerState, CircuitBreaker, CircuitBreakerLayer,
        EndpointLabel,
    },
    client::Client,
    endpoint::{EndpointSnapshot, Served},
    error::{AllServicesDown, BreakerOpen, CallError},
    policy::{Balance, Policy, PolicyError},
};
