//! The wire contract of the market: the gRPC types of the ratings service and of
//! the registry, generated at build time from the files under `proto/`.
//!
//! Everything that crosses a process boundary is defined here and nowhere else.
//! The daemons and libraries of the workspace convert these types into their own
//! domain types at their gRPC edges.

use std::time::Duration;

/// `market.ratings.v1`: the ratings service.
pub mod ratings {
    /// Version 1 of the ratings contract.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        tonic::include_proto!("market.ratings.v1");
        include!(concat!(env!("OUT_DIR"), "/market.ratings.v1.policy.rs"));
    }
}

/// `market.policy.v1`: how a contract declares the way clients should call it.
pub mod policy {
    /// Version 1 of the policy contract.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        tonic::include_proto!("market.policy.v1");
    }
}

/// A client policy as a service's contract declares it (the
/// `market.policy.v1.client_policy` option), read at build time. `None` means
/// the contract leaves that value to the client's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContractPolicy {
    /// Bounds one attempt.
    pub timeout: Option<Duration>,
    /// Bounds the whole call with its retries and hedges.
    pub deadline: Option<Duration>,
    /// How long a breaker stays open before it lets one probe through.
    pub retest_delay: Option<Duration>,
    /// The longest an open period may grow to.
    pub max_open: Option<Duration>,
    /// When set, an attempt unanswered after this long is raced by another.
    pub hedge_after: Option<Duration>,
    /// Consecutive failures that open a breaker.
    pub failure_limit: Option<u32>,
    /// How many times a failed attempt is tried again elsewhere.
    pub retries: Option<u32>,
    /// How to pick an instance.
    pub balance: Option<BalanceMode>,
}

/// How a client picks an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceMode {
    /// Power of two choices over peak-EWMA load.
    P2c,
    /// Strict rotation over the instances sorted by address.
    RoundRobin,
}

/// `market.registry.v1`: the registry of services and their instances.
pub mod registry {
    /// Version 1 of the registry contract.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        tonic::include_proto!("market.registry.v1");
    }
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("market_descriptor");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratings_contract_declares_the_original_policy() {
        let policy = ratings::v1::RATINGS_CLIENT_POLICY;
        assert_eq!(policy.timeout, Some(Duration::from_secs(1)));
        assert_eq!(policy.deadline, Some(Duration::from_secs(2)));
        assert_eq!(policy.failure_limit, Some(1));
        assert_eq!(policy.retest_delay, Some(Duration::from_secs(30)));
        assert_eq!(policy.max_open, Some(Duration::from_secs(300)));
        assert_eq!(policy.retries, Some(1));
        assert_eq!(policy.balance, Some(BalanceMode::P2c));
        assert_eq!(policy.hedge_after, None);
    }
}
