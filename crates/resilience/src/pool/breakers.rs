//! The breakers of a pool, one per address.
//!
//! A breaker belongs to an address, not to a registration: an instance that
//! leaves (its lease expired, or it was stopped and started again) and comes
//! back at the same address meets the breaker it left, open or closed, and an
//! open breaker's retest timer runs while the address is away. This is how
//! the original client kept its breakers (one per URL for the life of the
//! process), and it keeps a crash-looping instance from wiping its breaker
//! with every restart. An address that stays away longer than the breaker's
//! longest open period is forgotten, so that the memory kept is bounded by
//! the addresses that left within that time.

use std::{collections::HashMap, sync::Arc};

use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerPolicy, EndpointLabel};

/// Every breaker of a pool, listed or not, by address.
pub(super) struct Breakers {
    policy: BreakerPolicy,
    by_address: HashMap<Arc<str>, Kept>,
}

/// One address's breaker.
pub(super) struct Kept {
    pub(super) breaker: Arc<Breaker>,
    /// The id of the instance last registered at the address.
    pub(super) instance: Arc<str>,
    /// Since when no listed instance has had the address.
    pub(super) absent_since: Option<Instant>,
}

impl Breakers {
    pub(super) fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            by_address: HashMap::new(),
        }
    }

    /// The breaker of `label`'s address, the one it left behind if it was
    /// here before, or a new closed one.
    pub(super) fn acquire(&mut self, label: &EndpointLabel) -> Arc<Breaker> {
        let kept = self
            .by_address
            .entry(label.address.clone())
            .or_insert_with(|| Kept {
                breaker: Breaker::new(label.clone(), self.policy),
                instance: label.instance.clone(),
                absent_since: None,
            });
        if kept.absent_since.take().is_some() {
            tracing::debug!(address = %label.address, state = %kept.breaker.snapshot().state, "an address came back to its breaker");
        }
        kept.instance = label.instance.clone();
        kept.breaker.clone()
    }

    /// The breaker of a listed address.
    pub(super) fn get(&self, address: &str) -> Option<&Arc<Breaker>> {
        self.by_address.get(address).map(|kept| &kept.breaker)
    }

    /// Keeps the breaker of an address no instance is listed at any more.
    pub(super) fn release(&mut self, address: &str, now: Instant) {
        if let Some(kept) = self.by_address.get_mut(address) {
            kept.absent_since.get_or_insert(now);
        }
    }

    /// Forgets the breakers of addresses away longer than the longest open
    /// period: by then an open breaker would have let its probe go anyway.
    pub(super) fn forget_expired(&mut self, now: Instant) {
        let max_open = self.policy.max_open;
        self.by_address.retain(|address, kept| {
            let keep = kept
                .absent_since
                .is_none_or(|since| now.saturating_duration_since(since) < max_open);
            if !keep {
                tracing::debug!(%address, "forgetting the breaker of an address away for {max_open:?}");
            }
            keep
        });
    }

    /// The breakers of addresses no listed instance has, by address.
    pub(super) fn absent(&self) -> impl Iterator<Item = (&Arc<str>, &Kept)> {
        self.by_address
            .iter()
            .filter(|(_, kept)| kept.absent_since.is_some())
    }

    /// How many breakers are kept, listed or not.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_address.len()
    }
}
