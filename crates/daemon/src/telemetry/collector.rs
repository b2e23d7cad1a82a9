//! The trace layer's circuit breaker on its collector.
//!
//! Making a span costs its process a few µs, whether or not the span ever
//! reaches a collector. While the collector does not take the exports (it
//! is down, or does not answer in time), every span made would be dropped,
//! so none is made: the trace layer's filter turns the spans away, and each
//! counts as dropped. Once every [`PROBE_EVERY`] one trace goes through (a
//! span outside any traced span, and the spans made inside it); the export
//! that carries it closes the breaker if the collector takes it.
//!
//! While the breaker is open, the process makes no spans of its own; a
//! request that came with a trace context passes it on unchanged, to the
//! calls made while serving it and into its log lines, as a hop that does
//! not trace does (`telemetry::passed_on`).

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long after a failed export the next trace goes, to try the
/// collector again.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(PROBE_EVERY_MS);
const PROBE_EVERY_MS: u64 = 5_000;

/// Whether the collector takes the exports, and when to try it again if it
/// does not.
#[derive(Debug)]
pub(crate) struct Breaker {
    open: AtomicBool,
    /// While open: when the next trace may go, in ms since `epoch`.
    probe_at: AtomicU64,
    epoch: OnceLock<Instant>,
}

impl Breaker {
    pub(crate) const fn new() -> Self {
        Self {
            open: AtomicBool::new(false),
            probe_at: AtomicU64::new(0),
            epoch: OnceLock::new(),
        }
    }

    /// An export went through: spans are made again. True if the breaker
    /// was open.
    pub(crate) fn exported(&self) -> bool {
        self.open.swap(false, Ordering::AcqRel)
    }

    /// An export failed: no span is made until the next probe. True if
    /// the breaker was closed.
    pub(crate) fn failed(&self) -> bool {
        self.failed_at(self.now())
    }

    /// Whether a span may be made: always while the breaker is closed;
    /// while it is open, inside a traced span (a probe's), or as the first
    /// span of the next probe. `in_traced_span` is asked only when the
    /// breaker is open.
    pub(crate) fn admits(&self, in_traced_span: impl FnOnce() -> bool) -> bool {
        self.admits_at(in_traced_span, || self.now())
    }

    /// [`Breaker::admits`], with the time read by `now` (ms since `epoch`)
    /// when the probe's turn is to be checked.
    fn admits_at(&self, in_traced_span: impl FnOnce() -> bool, now: impl FnOnce() -> u64) -> bool {
        !self.open.load(Ordering::Acquire) || in_traced_span() || self.probe_due(now())
    }

    fn failed_at(&self, now: u64) -> bool {
        self.probe_at.store(now + PROBE_EVERY_MS, Ordering::Relaxed);
        !self.open.swap(true, Ordering::AcqRel)
    }

    /// Whether the probe is due at `now`; if it is, the next one is a
    /// [`PROBE_EVERY`] away (one trace goes, however many spans ask).
    fn probe_due(&self, now: u64) -> bool {
        let at = self.probe_at.load(Ordering::Relaxed);
        now >= at
            && self
                .probe_at
                .compare_exchange(
                    at,
                    now + PROBE_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn now(&self) -> u64 {
        let elapsed = self.epoch.get_or_init(Instant::now).elapsed().as_millis();
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks for a span outside any traced span, at `now`.
    fn root(breaker: &Breaker, now: u64) -> bool {
        breaker.admits_at(|| false, || now)
    }

    #[test]
    fn closed_admits_every_span() {
        let breaker = Breaker::new();
        assert!(breaker.admits(|| false));
        assert!(root(&breaker, 0));
    }

    #[test]
    fn open_admits_one_trace_per_probe_period() {
        let breaker = Breaker::new();
        assert!(breaker.failed_at(1_000), "it was closed");
        let every = PROBE_EVERY_MS;
        assert!(!root(&breaker, 1_000), "no span right after the failure");
        assert!(!root(&breaker, 1_000 + every - 1));
        assert!(root(&breaker, 1_000 + every), "the probe is due");
        assert!(
            !root(&breaker, 1_000 + every),
            "one trace per period, however many spans ask"
        );
        assert!(breaker.admits(|| true), "the probe's own spans go with it");
        assert!(root(&breaker, 1_000 + 2 * every), "the next probe");
    }

    #[test]
    fn a_failure_puts_the_next_probe_off_and_an_export_closes_it() {
        let breaker = Breaker::new();
        breaker.failed_at(0);
        let every = PROBE_EVERY_MS;
        assert!(
            !breaker.failed_at(every - 1),
            "already open: a second failure is not a transition"
        );
        assert!(!root(&breaker, every), "the failure put the probe off");
        assert!(root(&breaker, 2 * every - 1));
        assert!(breaker.exported(), "it was open");
        assert!(!breaker.exported(), "closed already");
        assert!(breaker.admits(|| false));
    }
}
