//! How the pool picks a ready instance for an attempt.
//!
//! - **Power of two choices over peak-EWMA** ([`Balance::P2c`]): two ready
//!   instances at random, the one with the lower load wins. The load is
//!   tower's `PeakEwma` cost, the latency estimate times the calls in flight
//!   plus one, which reacts at once to a slow answer and forgets it slowly.
//!   This is the balancer of Finagle (`PeakEwma.scala`, after Mitzenmacher's
//!   "The Power of Two Choices in Randomized Load Balancing") that tower's
//!   `p2c::Balance` and linkerd2-proxy use; it is written out here only
//!   because a retry or hedge must avoid the instances it already tried,
//!   which tower's balancer cannot be told.
//! - **Round robin** ([`Balance::RoundRobin`]): the next ready instance in
//!   address order after the last one picked: the original's policy, kept for
//!   the walkthrough, where calls visibly interleave.
//!
//! Either way the instances the attempt avoids are skipped, and a picked
//! instance's readiness is checked again before it is called (its breaker
//! may have opened since it was last polled); one that is no longer ready
//! goes back to the pending set and the pick is made again.

use std::{ops::Bound, task::Context};

use rand::Rng as _;
use tower::load::Load;

use super::{EndpointKey, State};
use crate::{Attempt, Balance};

/// The pick mode, and round robin's place in the rotation.
pub(super) enum Pick {
    P2c,
    RoundRobin {
        /// The instance picked last.
        last: Option<EndpointKey>,
    },
}

impl Pick {
    pub(super) fn new(balance: Balance) -> Self {
        match balance {
            Balance::P2c => Self::P2c,
            Balance::RoundRobin => Self::RoundRobin { last: None },
        }
    }
}

impl<Req, Resp> State<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// The index in the ready set of an instance that is ready now and not
    /// avoided by `attempt`, if there is one.
    pub(super) fn pick(&mut self, cx: &mut Context<'_>, attempt: &Attempt<Req>) -> Option<usize> {
        loop {
            let index = match self.pick {
                Pick::P2c => self.p2c(attempt)?,
                Pick::RoundRobin { .. } => self.next_in_turn(attempt)?,
            };
            match self.cache.check_ready_index(cx, index) {
                Ok(true) => return Some(index),
                // Moved back to the pending set: pick again among the rest.
                Ok(false) => {}
                Err(failed) => {
                    tracing::warn!(error = %failed, "dropping an instance whose readiness failed");
                }
            }
        }
    }

    /// The less loaded of two ready instances drawn at random.
    fn p2c(&self, attempt: &Attempt<Req>) -> Option<usize> {
        let ready = self.cache.ready_len();
        if attempt.avoid.is_empty() {
            return match ready {
                0 => None,
                1 => Some(0),
                _ => Some(self.less_loaded(two_of(ready))),
            };
        }
        let candidates: Vec<usize> = (0..ready)
            .filter(|&i| {
                self.cache
                    .get_ready_index(i)
                    .is_some_and(|(key, _)| !attempt.avoids(&key.address))
            })
            .collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let (a, b) = two_of(n);
                Some(self.less_loaded((candidates[a], candidates[b])))
            }
        }
    }

    fn less_loaded(&self, (a, b): (usize, usize)) -> usize {
        let load = |i| {
            self.cache
                .get_ready_index(i)
                .map(|(_, instance)| instance.load())
        };
        // An incomparable cost (NaN) keeps the first draw.
        if load(b) < load(a) { b } else { a }
    }

    /// The first ready instance after the last one picked, in address order,
    /// wrapping around.
    fn next_in_turn(&mut self, attempt: &Attempt<Req>) -> Option<usize> {
        let Pick::RoundRobin { last } = &mut self.pick else {
            unreachable!("round robin's rotation under another mode");
        };
        let cache = &self.cache;
        let ready = |(key, _): (&EndpointKey, _)| {
            if attempt.avoids(&key.address) {
                return None;
            }
            let (index, _, _) = cache.get_ready(key)?;
            Some((index, key.clone()))
        };
        let (index, key) = match last.as_ref() {
            Some(last) => self
                .listed
                .range((Bound::Excluded(last), Bound::Unbounded))
                .chain(self.listed.range(..=last))
                .find_map(ready),
            None => self.listed.iter().find_map(ready),
        }?;
        *last = Some(key);
        Some(index)
    }
}

/// Two distinct indices below `n` (at least 2), at random.
fn two_of(n: usize) -> (usize, usize) {
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let b = (a + rng.random_range(1..n)) % n;
    (a, b)
}
