//! How a client calls a service: one documented set of knobs.

use std::time::Duration;

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
