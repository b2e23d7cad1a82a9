//! Our load generator: closed loop at a fixed concurrency, or open loop at a
//! fixed rate, over any async call; latencies go into an HdrHistogram.
//!
//! In open loop the latency of a request is counted from when it was *meant*
//! to be sent (start + i / rate), not from when it was sent: a sender that
//! falls behind (a stalled runtime, a slow spawn) does not hide the wait from
//! the numbers. This is the correction for coordinated omission that Gil
//! Tene describes for HdrHistogram and wrk2: a closed loop only measures the
//! requests a stalled server lets it send, an open loop measures them all.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The latencies recorded, in microseconds: 1 µs to 10 min at 3 digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What one call reports: which instance answered, when known (0 when not),
/// or an error.
pub(crate) type Outcome = Result<u32, ()>;

/// The result of one run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// Latencies of every call, successful or not, in µs.
    pub(crate) hist: Histogram<u64>,
    /// Successful calls.
    pub(crate) ok: u64,
    /// Failed calls.
    pub(crate) errors: u64,
    /// Open loop: calls not sent because too many were in flight.
    pub(crate) dropped: u64,
    /// Wall time of the run.
    pub(crate) elapsed: Duration,
    /// Successful calls per answering instance (see [`Outcome`]).
    pub(crate) by_instance: BTreeMap<u32, u64>,
    /// Open loop: each call's intended send time since the start and its
    /// latency, in send order.
    pub(crate) timeline: Vec<(Duration, Duration)>,
}

impl Run {
    fn new() -> Self {
        Self {
            hist: histogram(),
            ok: 0,
            errors: 0,
            dropped: 0,
            elapsed: Duration::ZERO,
            by_instance: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    /// A run of measured event latencies (no calls: nothing failed).
    pub(crate) fn from_latencies(latencies: &[Duration]) -> Self {
        let mut run = Self::new();
        for latency in latencies {
            run.record(*latency, Ok(0));
        }
        run
    }

    fn record(&mut self, latency: Duration, outcome: Outcome) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(micros.max(1));
        match outcome {
            Ok(instance) => {
                self.ok += 1;
                *self.by_instance.entry(instance).or_default() += 1;
            }
            Err(()) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: &Run) {
        self.hist
            .add(&other.hist)
            .expect("histograms of the same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.dropped += other.dropped;
        for (instance, n) in &other.by_instance {
            *self.by_instance.entry(*instance).or_default() += n;
        }
    }

    /// Completed calls (ok or not) per second.
    pub(crate) fn throughput(&self) -> f64 {
        (self.ok + self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile, µs.
    pub(crate) fn quantile_us(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    /// Each instance's share of the successful calls, in %.
    pub(crate) fn shares(&self) -> BTreeMap<u32, f64> {
        let total: u64 = self.by_instance.values().sum();
        self.by_instance
            .iter()
            .map(|(k, n)| (*k, *n as f64 * 100.0 / total.max(1) as f64))
            .collect()
    }
}

/// Several runs of the same thing added up (rounds of an interleaved
/// comparison), with the medians of their per-run figures.
#[derive(Debug, Clone)]
pub(crate) struct Runs {
    /// Every run.
    pub(crate) runs: Vec<Run>,
}

impl Runs {
    /// No runs yet.
    pub(crate) fn new() -> Self {
        Self { runs: Vec::new() }
    }

    /// All runs as one.
    pub(crate) fn merged(&self) -> Run {
        let mut all = Run::new();
        for run in &self.runs {
            all.merge(run);
            all.elapsed += run.elapsed;
        }
        all
    }

    /// The median over runs of `f`.
    pub(crate) fn median(&self, f: impl Fn(&Run) -> f64) -> f64 {
        let mut values: Vec<f64> = self.runs.iter().map(f).collect();
        median(&mut values)
    }
}

/// The median of `values` (the mean of the two middle ones for an even count).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Runs `call` in a closed loop: `concurrency` callers, each sending its next
/// call when the last one answered, for `duration`.
pub(crate) async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut run = Run::new();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let outcome = call().await;
                    run.record(sent.elapsed(), outcome);
                }
                run
            })
        })
        .collect();
    let mut total = Run::new();
    for worker in workers {
        if let Ok(run) = worker.await {
            total.merge(&run);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Runs `call` in an open loop: `rate` calls a second for `duration`, each
/// sent at its scheduled time whatever the others do, at most `max_in_flight`
/// at once (beyond that a call is counted as dropped, and as an error). A
/// call's latency counts from its scheduled time (coordinated omission
/// corrected); a thread of its own keeps that schedule to the microsecond.
pub(crate) async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    call: F,
) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let shared = Arc::new(Mutex::new((Run::new(), Vec::new())));
    let limit = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let start = Instant::now();
    // The send times come from a thread of their own: Tokio's timers fire on
    // whole milliseconds, which would make every call up to 1 ms late by
    // the generator's doing and charge that to the system under test.
    let (fire, mut fired) = tokio::sync::mpsc::unbounded_channel();
    let pacer = {
        let start = start.into_std();
        std::thread::spawn(move || {
            for i in 0..total {
                let offset = period.mul_f64(i as f64);
                let until = start + offset;
                let now = std::time::Instant::now();
                if until > now {
                    std::thread::sleep(until - now);
                }
                if fire.send(offset).is_err() {
                    return;
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut dropped = 0;
    while let Some(offset) = fired.recv().await {
        let intended = start + offset;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let fut = call();
        let shared = shared.clone();
        tasks.spawn(async move {
            let outcome = fut.await;
            let latency = intended.elapsed();
            drop(permit);
            let mut shared = shared.lock().expect("results lock");
            shared.0.record(latency, outcome);
            shared.1.push((offset, latency));
        });
        // Reap finished tasks as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    let _ = pacer.join();
    while tasks.join_next().await.is_some() {}
    let (mut run, mut timeline) = std::mem::replace(
        &mut *shared.lock().expect("results lock"),
        (Run::new(), Vec::new()),
    );
    timeline.sort_by_key(|(offset, _)| *offset);
    run.timeline = timeline;
    run.dropped = dropped;
    run.errors += dropped;
    run.elapsed = start.elapsed();
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_counts_calls_and_instances() {
        let run = closed_loop(2, Duration::from_millis(100), || async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(7)
        })
        .await;
        assert!(run.ok > 10, "{} calls", run.ok);
        assert_eq!(run.errors, 0);
        assert_eq!(run.shares().get(&7).copied(), Some(100.0));
        assert!(run.quantile_us(0.5) >= 5_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_counts_latency_from_the_intended_send_time() {
        // The first call stalls the sender itself for 50 ms: the calls
        // meant to go out meanwhile are sent late, and their latency must
        // include that wait (no coordinated omission).
        let first = std::sync::atomic::AtomicBool::new(true);
        let run = open_loop(200.0, Duration::from_millis(100), 100, move || {
            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            async { Ok(0) }
        })
        .await;
        assert_eq!(run.ok, 20);
        assert_eq!(run.timeline.len(), 20);
        // The second call was meant 5 ms in and sent ~50 ms in.
        let (offset, latency) = run.timeline[1];
        assert_eq!(offset, Duration::from_millis(5));
        assert!(latency >= Duration::from_millis(40), "{latency:?}");
        // Calls meant after the stall are on time again.
        let (_, last) = run.timeline[19];
        assert!(last < latency, "{last:?} vs {latency:?}");
    }
}
