//! How a client calls a service: one documented set of knobs.

use std::time::Duration;

use market_proto::{BalanceMode, ContractPolicy};

use crate::BreakerPolicy;

/// How a client picks an instance for a first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// tower's power of two choices over peak-EWMA load: two ready instances
    /// at random, the less loaded one wins. Routes away from slow instances.
    #[default]
    P2c,
    /// Strict rotation over the instances sorted by address, skipping those
    /// not ready (the original's policy, for the walkthrough).
    RoundRobin,
}

/// Everything a [`crate::Client`] needs to know about how to call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Bounds one attempt: the wait for a ready instance, and the call. An
    /// attempt that times out is a failure for its instance's breaker.
    pub timeout: Duration,
    /// Bounds the whole call with its retries and hedges; sent to the server
    /// as `grpc-timeout`.
    pub deadline: Duration,
    /// When the per-instance breakers open and retest.
    pub breaker: BreakerPolicy,
    /// How first attempts pick an instance.
    pub balance: Balance,
    /// How many times a failed attempt is tried again, each time on an
    /// instance not tried yet (0 switches retries off).
    pub retries: u32,
    /// When set, an attempt still unanswered after this long is raced by a
    /// second one on another instance; the first answer wins.
    pub hedge_after: Option<Duration>,
    /// The share of calls that may be retried or hedged, over a 10 s window,
    /// so that retries cannot multiply the load in an outage (tower's
    /// `TpsBudget`; 0.2 is 20 %).
    pub retry_budget: f32,
}

impl Default for Policy {
    /// The original contract's: 1 s timeout, breaker at the first failure,
    /// retest after 30 s; plus a 2 s deadline, one retry within a 20 % budget,
    /// open periods growing to 5 minutes, and no hedging.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(2),
            breaker: BreakerPolicy::default(),
            balance: Balance::P2c,
            retries: 1,
            hedge_after: None,
            retry_budget: 0.2,
        }
    }
}

/// A policy value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The timeout is zero.
    #[error("timeout must be more than 0s")]
    ZeroTimeout,
    /// The deadline is shorter than one attempt.
    #[error("deadline ({deadline:?}) must be at least the timeout ({timeout:?})")]
    DeadlineBelowTimeout {
        /// The deadline given.
        deadline: Duration,
        /// The timeout given.
        timeout: Duration,
    },
    /// The breaker would never open.
    #[error("failure limit must be at least 1")]
    ZeroFailureLimit,
    /// The cap is below the first open period.
    #[error("max open ({max_open:?}) must be at least the retest delay ({retest_delay:?})")]
    CapBelowRetestDelay {
        /// The cap given.
        max_open: Duration,
        /// The retest delay given.
        retest_delay: Duration,
    },
    /// A duration is too long to be meant.
    #[error("{name} must be at most {max:?}, not {value:?}")]
    TooLong {
        /// Which value.
        name: &'static str,
        /// The value given.
        value: Duration,
        /// The most accepted.
        max: Duration,
    },
    /// The budget is not a fraction.
    #[error("the retry budget must be between 0 and 1, not {0}")]
    Budget(String),
}

impl Policy {
    /// The policy a service's contract declares, completed with
    /// [`Policy::default`]'s values where the contract says nothing; the
    /// deadline then defaults to twice the contract's timeout.
    ///
    /// `build.rs` turns each service's `market.policy.v1.client_policy`
    /// option into a [`ContractPolicy`] constant named after the service, so
    /// a client of `Ratings` starts from
    /// `Policy::from_contract(&RATINGS_CLIENT_POLICY)`. The result is checked
    /// when a [`crate::Client`] is built with it ([`Policy::validate`]).
    pub fn from_contract(contract: &ContractPolicy) -> Self {
        let defaults = Self::default();
        let timeout = contract.timeout.unwrap_or(defaults.timeout);
        Self {
            timeout,
            deadline: contract.deadline.unwrap_or(timeout * 2),
            breaker: BreakerPolicy {
                failure_limit: contract
                    .failure_limit
                    .unwrap_or(defaults.breaker.failure_limit),
                retest_delay: contract
                    .retest_delay
                    .unwrap_or(defaults.breaker.retest_delay),
                max_open: contract.max_open.unwrap_or(defaults.breaker.max_open),
                jitter: defaults.breaker.jitter,
            },
            balance: match contract.balance {
                Some(BalanceMode::RoundRobin) => Balance::RoundRobin,
                Some(BalanceMode::P2c) => Balance::P2c,
                None => defaults.balance,
            },
            retries: contract.retries.unwrap_or(defaults.retries),
            hedge_after: contract.hedge_after.or(defaults.hedge_after),
            retry_budget: defaults.retry_budget,
        }
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), PolicyError> {
        // Far beyond any sensible value, and far below what would overflow a
        // clock reading.
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let durations = [
            ("timeout", self.timeout),
            ("deadline", self.deadline),
            ("retest delay", self.breaker.retest_delay),
            ("max open", self.breaker.max_open),
            ("hedge after", self.hedge_after.unwrap_or_default()),
        ];
        for (name, value) in durations {
            if value > DAY {
                return Err(PolicyError::TooLong {
                    name,
                    value,
                    max: DAY,
                });
            }
        }
        if self.timeout.is_zero() {
            return Err(PolicyError::ZeroTimeout);
        }
        if self.deadline < self.timeout {
            return Err(PolicyError::DeadlineBelowTimeout {
                deadline: self.deadline,
                timeout: self.timeout,
            });
        }
        if self.breaker.failure_limit == 0 {
            return Err(PolicyError::ZeroFailureLimit);
        }
        if self.breaker.max_open < self.breaker.retest_delay {
            return Err(PolicyError::CapBelowRetestDelay {
                max_open: self.breaker.max_open,
                retest_delay: self.breaker.retest_delay,
            });
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            return Err(PolicyError::Budget(self.retry_budget.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contract_overrides_only_what_it_declares() {
        let contract = ContractPolicy {
            timeout: Some(Duration::from_millis(200)),
            deadline: None,
            retest_delay: Some(Duration::from_secs(10)),
            max_open: None,
            hedge_after: Some(Duration::from_millis(50)),
            failure_limit: Some(3),
            retries: None,
            balance: Some(BalanceMode::RoundRobin),
        };
        let policy = Policy::from_contract(&contract);
        let defaults = Policy::default();
        assert_eq!(policy.timeout, Duration::from_millis(200));
        assert_eq!(
            policy.deadline,
            Duration::from_millis(400),
            "twice the timeout"
        );
        assert_eq!(policy.breaker.failure_limit, 3);
        assert_eq!(policy.breaker.retest_delay, Duration::from_secs(10));
        assert_eq!(policy.breaker.max_open, defaults.breaker.max_open);
        assert_eq!(policy.hedge_after, Some(Duration::from_millis(50)));
        assert_eq!(policy.retries, defaults.retries);
        assert_eq!(policy.balance, Balance::RoundRobin);
        policy.validate().unwrap();
    }

    #[test]
    fn an_empty_contract_is_the_default_policy() {
        assert_eq!(
            Policy::from_contract(&ContractPolicy::NONE),
            Policy::default()
        );
    }
}
