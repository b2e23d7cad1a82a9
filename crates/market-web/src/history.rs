//! The last five minutes, for `/status` and `/api/status`: per instance,
//! its calls, failures, latency and breaker state; for the page, its latency,
//! cache hits and fallbacks. Everything lives in rings of [`BUCKETS`]
//! buckets of [`BUCKET`] each, so memory does not grow with time.
//!
//! The instances' figures come from their breakers' snapshots, sampled at
//! most once a second while pages are served or the status is read: each
//! sample adds what changed since the last one to the current bucket, and
//! the breaker's state to its band (the worst state seen in the bucket).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use resilience::{BreakerState, EndpointSnapshot, LatencyCounts};
use serde::Serialize;
use tokio::time::Instant;

/// One bucket's span.
pub const BUCKET: Duration = Duration::from_secs(10);

/// How many buckets are kept: five minutes.
pub const BUCKETS: usize = 30;

/// How often the breakers are sampled, at most.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The most instances followed at once; one more replaces the one seen
/// least recently.
const MAX_TRACKED: usize = 256;

/// A ring of buckets numbered from the history's start.
#[derive(Debug)]
struct Ring<T> {
    /// The number of `slots[0]`.
    first: u64,
    slots: VecDeque<T>,
}

impl<T: Default + Clone> Ring<T> {
    fn new(now: u64) -> Self {
        Self {
            first: now,
            slots: VecDeque::from([T::default()]),
        }
    }

    /// Bucket `n`, the newest: older ones beyond [`BUCKETS`] are dropped.
    fn at(&mut self, n: u64) -> &mut T {
        let newest = self.first + self.slots.len() as u64 - 1;
        for _ in newest..n {
            self.slots.push_back(T::default());
        }
        while self.slots.len() > BUCKETS {
            self.slots.pop_front();
            self.first += 1;
        }
        self.slots.back_mut().expect("a ring is never empty")
    }

    /// The last [`BUCKETS`] buckets up to `now`, oldest first, empty ones
    /// where nothing was recorded.
    fn window(&self, now: u64) -> Vec<T> {
        // Bucket numbers from `now - BUCKETS + 1`, before the start too
        // (empty), so that the window always has BUCKETS buckets.
        (0..BUCKETS as u64)
            .map(|k| (now + k + 1).checked_sub(BUCKETS as u64))
            .map(|n| {
                n.and_then(|n| n.checked_sub(self.first))
                    .and_then(|i| self.slots.get(i as usize))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default)]
struct InstanceBucket {
    calls: u64,
    failures: u64,
    latencies: LatencyCounts,
    /// The worst state seen; `None` when not sampled in this bucket.
    state: Option<BreakerState>,
}

#[derive(Debug, Clone, Default)]
struct PageBucket {
    latencies: LatencyCounts,
    cache_hits: u64,
    fallbacks: u64,
}

/// One instance followed: where its counts were at the last sample.
#[derive(Debug)]
struct Track {
    instance: String,
    calls: u64,
    failures: u64,
    latencies: LatencyCounts,
    last_seen: u64,
    ring: Ring<InstanceBucket>,
}

#[derive(Debug)]
struct Inner {
    page: Ring<PageBucket>,
    /// By service and address.
    instances: BTreeMap<(&'static str, String), Track>,
    sampled_at: Option<Instant>,
}

/// The last five minutes of the shop and of every instance it called.
#[derive(Debug)]
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

fn worst(a: Option<BreakerState>, b: BreakerState) -> BreakerState {
    let rank = |s: BreakerState| match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    };
    match a {
        Some(a) if rank(a) >= rank(b) => a,
        _ => b,
    }
}

fn ms(latency: Option<Duration>) -> Option<f64> {
    latency.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

impl History {
    /// An empty history, starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                page: Ring::new(0),
                instances: BTreeMap::new(),
                sampled_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The number of the bucket `now` falls in.
    fn bucket(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / BUCKET.as_secs()
    }

    /// Records a page served in `latency`.
    pub fn page(&self, latency: Duration) {
        let now = self.bucket(Instant::now());
        self.lock().page.at(now).latencies.record(latency);
    }

    /// Records a rating served from the cache without asking.
    pub fn cache_hit(&self) {
        let now = self.bucket(Instant::now());
        self.lock().page.at(now).cache_hits += 1;
    }

    /// Records a rating served from the cache because asking failed.
    pub fn fallback(&self) {
        let now = self.bucket(Instant::now());
        self.lock().page.at(now).fallbacks += 1;
    }

    /// Whether a sample is due (at most one a second); marks it taken.
    pub fn sample_due(&self) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let due = inner
            .sampled_at
            .is_none_or(|at| now.duration_since(at) >= SAMPLE_EVERY);
        if due {
            inner.sampled_at = Some(now);
        }
        due
    }

    /// Adds what changed at `service`'s instances since the last sample.
    pub fn sample(&self, service: &'static str, endpoints: &[EndpointSnapshot]) {
        let now = self.bucket(Instant::now());
        let mut inner = self.lock();
        for endpoint in endpoints {
            let breaker = &endpoint.breaker;
            let key = (service, endpoint.address.clone());
            if !inner.instances.contains_key(&key) && inner.instances.len() >= MAX_TRACKED {
                let oldest = inner
                    .instances
                    .iter()
                    .min_by_key(|(_, track)| track.last_seen)
                    .map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    inner.instances.remove(&oldest);
                }
            }
            let track = inner.instances.entry(key).or_insert_with(|| Track {
                instance: endpoint.instance.clone(),
                calls: breaker.calls,
                failures: breaker.failures,
                latencies: breaker.latencies,
                last_seen: now,
                ring: Ring::new(now),
            });
            let bucket = track.ring.at(now);
            bucket.calls += breaker.calls.saturating_sub(track.calls);
            bucket.failures += breaker.failures.saturating_sub(track.failures);
            bucket
                .latencies
                .add(&breaker.latencies.since(&track.latencies));
            bucket.state = Some(worst(bucket.state, breaker.state));
            track.instance.clone_from(&endpoint.instance);
            track.calls = breaker.calls;
            track.failures = breaker.failures;
            track.latencies = breaker.latencies;
            track.last_seen = now;
        }
        // An instance unseen for the whole window has nothing left to show.
        inner
            .instances
            .retain(|_, track| now - track.last_seen < BUCKETS as u64);
    }

    /// The last five minutes, oldest bucket first.
    pub fn view(&self) -> HistoryView {
        let now = self.bucket(Instant::now());
        let inner = self.lock();
        let ago = |i: usize| (BUCKETS - 1 - i) as u64 * BUCKET.as_secs();
        let page = inner
            .page
            .window(now)
            .into_iter()
            .enumerate()
            .map(|(i, b)| PagePoint {
                ago_s: ago(i),
                pages: b.latencies.count(),
                p50_ms: ms(b.latencies.quantile(0.5)),
                p99_ms: ms(b.latencies.quantile(0.99)),
                cache_hits: b.cache_hits,
                fallbacks: b.fallbacks,
            })
            .collect();
        let instances = inner
            .instances
            .iter()
            .map(|((service, address), track)| InstanceHistory {
                service,
                instance: track.instance.clone(),
                address: address.clone(),
                points: track
                    .ring
                    .window(now)
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| InstancePoint {
                        ago_s: ago(i),
                        calls: b.calls,
                        failures: b.failures,
                        p50_ms: ms(b.latencies.quantile(0.5)),
                        p99_ms: ms(b.latencies.quantile(0.99)),
                        breaker: b.state.map(BreakerState::as_str),
                    })
                    .collect(),
            })
            .collect();
        HistoryView {
            bucket_seconds: BUCKET.as_secs(),
            page,
            instances,
        }
    }
}

/// The history as `/api/status` gives it and `/status` draws it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    /// Each bucket's span.
    pub bucket_seconds: u64,
    /// The page, oldest bucket first.
    pub page: Vec<PagePoint>,
    /// Every instance called in the window, by service and address.
    pub instances: Vec<InstanceHistory>,
}

/// The page in one bucket.
#[derive(Debug, Clone, Serialize)]
pub struct PagePoint {
    /// How long ago the bucket started, in seconds.
    pub ago_s: u64,
    /// Pages served.
    pub pages: u64,
    /// Their latency, in milliseconds; `None` without pages.
    pub p50_ms: Option<f64>,
    /// The 99th percentile.
    pub p99_ms: Option<f64>,
    /// Ratings served from the cache without asking.
    pub cache_hits: u64,
    /// Ratings served from the cache because asking failed.
    pub fallbacks: u64,
}

/// One instance's last five minutes.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceHistory {
    /// Its service.
    pub service: &'static str,
    /// Its id as last registered.
    pub instance: String,
    /// Its address.
    pub address: String,
    /// Oldest bucket first.
    pub points: Vec<InstancePoint>,
}

/// An instance in one bucket.
#[derive(Debug, Clone, Serialize)]
pub struct InstancePoint {
    /// How long ago the bucket started, in seconds.
    pub ago_s: u64,
    /// Calls ended.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// Their latency, in milliseconds; `None` without calls.
    pub p50_ms: Option<f64>,
    /// The 99th percentile.
    pub p99_ms: Option<f64>,
    /// The worst state its breaker was seen in; `None` when not sampled.
    pub breaker: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_last_buckets_only() {
        let mut ring: Ring<u64> = Ring::new(0);
        *ring.at(0) += 1;
        *ring.at(3) += 5;
        *ring.at(100) += 7;
        assert_eq!(ring.slots.len(), BUCKETS);
        let window = ring.window(101);
        assert_eq!(window.len(), BUCKETS);
        assert_eq!(window[BUCKETS - 2], 7);
        assert_eq!(window[BUCKETS - 1], 0);
        assert!(window[..BUCKETS - 2].iter().all(|n| *n == 0));
        // Early on, the window ends with the first buckets, now on the right.
        let mut young: Ring<u64> = Ring::new(0);
        *young.at(0) += 2;
        *young.at(1) += 3;
        let window = young.window(1);
        assert_eq!(window.len(), BUCKETS);
        assert_eq!(&window[BUCKETS - 2..], &[2, 3]);
    }

    #[test]
    fn the_band_keeps_the_worst_state_of_a_bucket() {
        assert_eq!(worst(None, BreakerState::Closed), BreakerState::Closed);
        assert_eq!(
            worst(Some(BreakerState::Open), BreakerState::Closed),
            BreakerState::Open
        );
        assert_eq!(
            worst(Some(BreakerState::HalfOpen), BreakerState::Open),
            BreakerState::Open
        );
    }
}
