//! The wire contract of the market: the gRPC types of its services and of the
//! registry, generated at build time from every `.proto` file under `proto/`.
//!
//! Each package is a module named after it: `market.ratings.v1` is
//! [`market::ratings::v1`], also reachable as [`ratings::v1`]. A service that
//! declares a client policy (the `market.policy.v1.client_policy` option) gets
//! a [`ContractPolicy`] constant beside its generated code, named after the
//! service: `Ratings` declares `ratings::v1::RATINGS_CLIENT_POLICY`, and
//! [`CLIENT_POLICIES`] lists every such constant by its service's full name.
//! Adding a contract is adding its `.proto` file; nothing here changes.
//!
//! Everything that crosses a process boundary is defined here and nowhere else.
//! The daemons and libraries of the workspace convert these types into their own
//! domain types at their gRPC edges.

use std::time::Duration;

// One module per package under `proto/`, written by build.rs:
// `market.ratings.v1` is `market::ratings::v1`.
include!(concat!(env!("OUT_DIR"), "/contracts.rs"));

/// The market's packages, without the `market` prefix: `ratings::v1` is
/// `market.ratings.v1`.
pub use self::market::*;

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

impl ContractPolicy {
    /// A contract that says nothing: every value left to the client.
    pub const NONE: Self = Self {
        timeout: None,
        deadline: None,
        retest_delay: None,
        max_open: None,
        hedge_after: None,
        failure_limit: None,
        retries: None,
        balance: None,
    };
}

/// How a client picks an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceMode {
    /// Power of two choices over peak-EWMA load.
    P2c,
    /// Strict rotation over the instances sorted by address.
    RoundRobin,
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

    #[test]
    fn the_list_of_policies_holds_every_declared_one() {
        assert!(
            CLIENT_POLICIES.contains(&(
                "market.ratings.v1.Ratings",
                ratings::v1::RATINGS_CLIENT_POLICY
            )),
            "{CLIENT_POLICIES:?}"
        );
    }
}
