//! Call latencies counted in fixed buckets: cheap to record under the
//! breaker's lock, small to copy into a snapshot, and subtractable, so an
//! owner can take the counts of any interval from two snapshots.

use std::time::Duration;

/// How many buckets: the first is up to [`FIRST_BOUND_US`], each next one
/// [`GROWTH`] times wider, the last open-ended (about a minute and beyond).
const BUCKETS: usize = 64;

/// The first bucket's upper bound, in microseconds.
const FIRST_BOUND_US: f64 = 50.0;

/// How much wider each bucket is than the one before.
const GROWTH: f64 = 1.25;

/// Latencies counted in buckets whose bounds grow by a quarter each: a
/// quantile read from them is within 25 % of the true one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LatencyCounts {
    counts: [u64; BUCKETS],
}

impl Default for LatencyCounts {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
        }
    }
}

impl std::fmt::Debug for LatencyCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyCounts")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .finish()
    }
}

/// The upper bound of bucket `i`.
fn bound(i: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BOUND_US * GROWTH.powi(i as i32) / 1e6)
}

impl LatencyCounts {
    /// Counts one call that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let us = latency.as_secs_f64() * 1e6;
        let i = if us <= FIRST_BOUND_US {
            0
        } else {
            ((us / FIRST_BOUND_US).ln() / GROWTH.ln()).ceil() as usize
        };
        self.counts[i.min(BUCKETS - 1)] += 1;
    }

    /// How many calls were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency under which a share `q` (0 to 1) of the calls ended: the
    /// upper bound of the bucket that holds it; `None` with no calls.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bound(i));
            }
        }
        Some(bound(BUCKETS - 1))
    }

    /// The calls counted here and not in `earlier` (counts taken before
    /// these, of the same source).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut counts = [0; BUCKETS];
        for (i, count) in counts.iter_mut().enumerate() {
            *count = self.counts[i].saturating_sub(earlier.counts[i]);
        }
        Self { counts }
    }

    /// Adds `other`'s calls to these.
    pub fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_quarter_of_the_latencies() {
        let mut counts = LatencyCounts::default();
        for ms in 1..=100 {
            counts.record(Duration::from_millis(ms));
        }
        let p50 = counts.quantile(0.5).unwrap().as_secs_f64() * 1000.0;
        let p99 = counts.quantile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((50.0..=62.5).contains(&p50), "{p50}");
        assert!((99.0..=124.0).contains(&p99), "{p99}");
        assert_eq!(counts.count(), 100);
        assert_eq!(LatencyCounts::default().quantile(0.5), None);
    }

    #[test]
    fn an_interval_is_the_difference_of_two_counts() {
        let mut counts = LatencyCounts::default();
        counts.record(Duration::from_millis(1));
        let earlier = counts;
        counts.record(Duration::from_secs(1));
        counts.record(Duration::from_secs(100));
        let interval = counts.since(&earlier);
        assert_eq!(interval.count(), 2);
        let p50 = interval.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_secs(1) && p50 < Duration::from_millis(1250));
        // Beyond the last bound: counted in the last bucket.
        assert!(interval.quantile(1.0).unwrap() >= Duration::from_secs(40));
        let mut sum = earlier;
        sum.add(&interval);
        assert_eq!(sum, counts);
    }
}
