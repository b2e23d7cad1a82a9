//! A circuit breaker per endpoint, as a gate on readiness.
//!
//! ```text
//!                 failures reach failure_limit
//!        ┌────────┐ ───────────────────────────▶ ┌──────┐
//!        │ Closed │                              │ Open │ ◀───────────┐
//!        └────────┘ ◀──────┐                     └──────┘             │
//!                          │ probe succeeds          │ open period    │ probe fails
//!                          │                         ▼ elapsed        │ (period grows)
//!                          │                    ┌──────────┐          │
//!                          └─────────────────── │ HalfOpen │ ─────────┘
//!                                               └──────────┘
//! ```
//!
//! - **Closed**: calls flow; consecutive failures are counted and a success
//!   resets the count. At `failure_limit` the breaker opens.
//! - **Open**: the endpoint is *not ready*: `poll_ready` returns `Pending` and a
//!   timer wakes the caller when the open period ends. It never returns an
//!   error, because tower's balancer drops an endpoint whose readiness fails;
//!   a pending one is kept and routed around.
//! - **HalfOpen**: exactly one call, the probe, is let through; the endpoint is
//!   not ready again until the probe ends. Success closes the breaker; failure
//!   opens it again for longer: the first open period is `retest_delay`, each
//!   one after a failed probe doubles, with up to `jitter` added, capped at
//!   `max_open` (a cap equal to `retest_delay` gives the original's fixed
//!   period). A probe that ends neither way (cancelled) frees the slot for the
//!   next one.
//!
//! This corrects two faults of the original client library: its breaker let
//! every call through after the retest delay (not one probe), and a refused
//! connection counted only when the timeout fired. Here the outcome of a call
//! is classified by [`classify`] as soon as it is known.

/// Logs a transition of `$breaker` at `$level`, with the fields of its
/// endpoint and its new `$state`, and the original's wording as the message.
macro_rules! transition {
    ($level:ident, $breaker:expr, $state:literal, $($message:tt)+) => {
        tracing::$level!(
            service = %$breaker.label.service,
            instance = %$breaker.label.instance,
            address = %$breaker.label.address,
            state = $state,
            $($message)+
        )
    };
}

mod layer;
mod service;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::Waker,
    time::Duration,
};

use tokio::time::Instant;
use tower::BoxError;

pub use self::{
    layer::CircuitBreakerLayer,
    service::{CircuitBreaker, ResponseFuture},
};

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker (at least 1).
    pub failure_limit: u32,
    /// The first open period.
    pub retest_delay: Duration,
    /// The longest open period, however many probes failed.
    pub max_open: Duration,
    /// The fraction, 0 to 1, that may be added at random to each open period
    /// after a failed probe, so that many clients do not retest in step.
    pub jitter: f64,
}

impl Default for BreakerPolicy {
    /// The original's: open at the first failure, retest after 30 s; the open
    /// period grows to at most 5 minutes.
    fn default() -> Self {
        Self {
            failure_limit: 1,
            retest_delay: Duration::from_secs(30),
            max_open: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl BreakerPolicy {
    /// How long the breaker stays open after `reopened` failed probes in a row.
    fn open_period(&self, reopened: u32) -> Duration {
        let cap = self.max_open.max(Duration::from_millis(1));
        if reopened == 0 {
            return self.retest_delay.min(cap);
        }
        let grown = self
            .retest_delay
            .checked_mul(1u32.checked_shl(reopened.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(cap);
        let jitter = if self.jitter > 0.0 {
            grown.mul_f64(self.jitter.min(1.0) * rand::random::<f64>())
        } else {
            Duration::ZERO
        };
        grown.saturating_add(jitter).min(cap)
    }
}

/// Which instance a breaker guards: for logs and snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointLabel {
    /// The service's name, e.g. `ratings`.
    pub service: Arc<str>,
    /// The instance's id in the registry.
    pub instance: Arc<str>,
    /// The instance's address, e.g. `http://127.0.0.1:8001`.
    pub address: Arc<str>,
}

impl fmt::Display for EndpointLabel {
    /// `[ratings at http://127.0.0.1:8001]`, as the original wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} at {}]", self.service, self.address)
    }
}

/// The breaker's state, as shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are held back until the open period ends.
    Open,
    /// One probe call may go through.
    HalfOpen,
}

impl BreakerState {
    /// Its name: `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The instance answered (with a value or an application error).
    Success,
    /// The instance failed: unreachable, too slow, or unwell.
    Failure,
    /// Says nothing about the instance: the call was cancelled or never sent.
    Neutral,
}

/// The default classification of an error, for gRPC.
///
/// Failures: transport errors (a refused connection among them, at once),
/// timeouts ([`tower::timeout::error::Elapsed`], or tonic's own enforcement
/// of `grpc-timeout`, a `CANCELLED` status caused by a transport error), and
/// the statuses
/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL` and
/// `UNKNOWN`. Any other status is an answer from a healthy server: a success.
pub fn classify(error: &BoxError) -> Outcome {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        use tonic::Code;
        if caused_by_transport(status) {
            return Outcome::Failure;
        }
        return match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown => Outcome::Failure,
            _ => Outcome::Success,
        };
    }
    Outcome::Failure
}

/// Whether a status was made on the client's side from a transport error
/// (a refused connection, a reset, or tonic's `grpc-timeout` timer) rather
/// than sent by the server.
pub(crate) fn caused_by_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// What a breaker's owner can see of it from outside: state and counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    /// The state now.
    pub state: BreakerState,
    /// Failures in a row while closed.
    pub consecutive_failures: u32,
    /// How long until the next probe may go, while open.
    pub retest_in: Option<Duration>,
    /// The exponentially weighted average latency of answered calls.
    pub ewma: Option<Duration>,
    /// Calls in flight now.
    pub in_flight: u32,
    /// Calls so far.
    pub calls: u64,
    /// Failed calls so far.
    pub failures: u64,
    /// How long the calls so far took, answered or failed.
    pub latencies: crate::LatencyCounts,
}

/// The breaker's state machine, shared by every clone of one endpoint's
/// breaker and by its response futures.
#[derive(Debug)]
pub struct Breaker {
    label: EndpointLabel,
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// The tasks waiting for the endpoint to become ready again.
    wakers: Vec<Waker>,
    /// Bumped at each opening, so a stale retest timer does nothing.
    epoch: u64,
    stats: Stats,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, reopened: u32 },
    HalfOpen { probing: bool, reopened: u32 },
}

#[derive(Debug, Default)]
struct Stats {
    in_flight: u32,
    calls: u64,
    failures: u64,
    /// Nanoseconds; `None` before the first answer.
    ewma_ns: Option<f64>,
    latencies: crate::LatencyCounts,
}

/// Whether a call may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Pass,
    Wait,
}

/// What an admitted call is to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// A call while closed.
    Normal,
    /// The single call let through while half-open.
    Probe,
}

/// How much one new latency sample weighs in the average.
const EWMA_WEIGHT: f64 = 0.2;

impl Inner {
    fn wake_all(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker for one endpoint.
    pub fn new(label: EndpointLabel, policy: BreakerPolicy) -> Arc<Self> {
        Arc::new(Self {
            label,
            policy: BreakerPolicy {
                failure_limit: policy.failure_limit.max(1),
                ..policy
            },
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                wakers: Vec::new(),
                epoch: 0,
                stats: Stats::default(),
            }),
        })
    }

    /// The endpoint it guards.
    pub fn label(&self) -> &EndpointLabel {
        &self.label
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state and counts now.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = Instant::now();
        let mut inner = self.lock();
        // The retest timer may not have run yet at the very instant it is due.
        self.retest_if_due(&mut inner, now);
        let (state, consecutive_failures, retest_in) = match inner.state {
            State::Closed { failures } => (BreakerState::Closed, failures, None),
            State::Open { until, .. } => (
                BreakerState::Open,
                0,
                Some(until.saturating_duration_since(now)),
            ),
            State::HalfOpen { .. } => (BreakerState::HalfOpen, 0, None),
        };
        BreakerSnapshot {
            state,
            consecutive_failures,
            retest_in,
            ewma: inner
                .stats
                .ewma_ns
                .map(|ns| Duration::from_nanos(ns as u64)),
            in_flight: inner.stats.in_flight,
            calls: inner.stats.calls,
            failures: inner.stats.failures,
            latencies: inner.stats.latencies,
        }
    }

    /// Whether a call may go now, as a balancer would see it: an open breaker
    /// whose period has ended counts as ready (it will let a probe through).
    pub fn would_admit(&self) -> bool {
        let now = Instant::now();
        match self.lock().state {
            State::Closed { .. } | State::HalfOpen { probing: false, .. } => true,
            State::Open { until, .. } => now >= until,
            State::HalfOpen { probing: true, .. } => false,
        }
    }

    /// Readiness: passes when closed or when a probe may go; otherwise keeps
    /// `waker` to be woken when that may change.
    pub(crate) fn gate(self: &Arc<Self>, waker: &Waker) -> Gate {
        let now = Instant::now();
        let mut inner = self.lock();
        self.retest_if_due(&mut inner, now);
        match inner.state {
            // Closed => Closed
            State::Closed { .. } | State::HalfOpen { probing: false, .. } => Gate::Pass,
            // Open => Open (until the timer), HalfOpen(probing) => HalfOpen (until the probe ends)
            State::Open { .. } | State::HalfOpen { probing: true, .. } => {
                if !inner.wakers.iter().any(|w| w.will_wake(waker)) {
                    inner.wakers.push(waker.clone());
                }
                Gate::Wait
            }
        }
    }

    /// Admits a call, or refuses it when the breaker changed since the gate
    /// passed (another call's failure opened it meanwhile).
    pub(crate) fn admit(&self) -> Option<CallKind> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.retest_if_due(&mut inner, now);
        let kind = match &mut inner.state {
            State::Closed { .. } => CallKind::Normal,
            // HalfOpen => HalfOpen(probing)
            State::HalfOpen { probing, .. } if !*probing => {
                *probing = true;
                CallKind::Probe
            }
            State::HalfOpen { .. } | State::Open { .. } => return None,
        };
        inner.stats.in_flight += 1;
        inner.stats.calls += 1;
        Some(kind)
    }

    /// Records how an admitted call ended.
    pub(crate) fn record(self: &Arc<Self>, kind: CallKind, outcome: Outcome, latency: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.stats.in_flight = inner.stats.in_flight.saturating_sub(1);
        if outcome != Outcome::Neutral {
            inner.stats.latencies.record(latency);
        }
        match outcome {
            Outcome::Success => {
                let sample = latency.as_nanos() as f64;
                inner.stats.ewma_ns = Some(match inner.stats.ewma_ns {
                    Some(avg) => avg + EWMA_WEIGHT * (sample - avg),
                    None => sample,
                });
            }
            Outcome::Failure => inner.stats.failures += 1,
            Outcome::Neutral => {}
        }
        match (inner.state, kind, outcome) {
            // Closed => Closed
            (State::Closed { .. }, _, Outcome::Success) => {
                inner.state = State::Closed { failures: 0 }
            }
            // Closed => Closed | Open
            (State::Closed { failures }, _, Outcome::Failure) => {
                let failures = failures + 1;
                if failures >= self.policy.failure_limit {
                    self.open(&mut inner, now, 0);
                } else {
                    inner.state = State::Closed { failures };
                }
            }
            // HalfOpen(probing) => Closed
            (State::HalfOpen { probing: true, .. }, CallKind::Probe, Outcome::Success) => {
                inner.state = State::Closed { failures: 0 };
                inner.wake_all();
                transition!(info, self, "closed", "CLOSE breaker on {}", self.label);
            }
            // HalfOpen(probing) => Open
            (
                State::HalfOpen {
                    probing: true,
                    reopened,
                },
                CallKind::Probe,
                Outcome::Failure,
            ) => {
                self.open(&mut inner, now, reopened + 1);
            }
            // HalfOpen(probing) => HalfOpen: the probe said nothing; let another go.
            (
                State::HalfOpen {
                    probing: true,
                    reopened,
                },
                CallKind::Probe,
                Outcome::Neutral,
            ) => {
                inner.state = State::HalfOpen {
                    probing: false,
                    reopened,
                };
                inner.wake_all();
            }
            // Late answers of calls sent while closed change nothing once the
            // breaker left Closed: only the probe decides.
            _ => {}
        }
    }

    fn open(self: &Arc<Self>, inner: &mut Inner, now: Instant, reopened: u32) {
        let period = self.policy.open_period(reopened);
        let until = now + period;
        inner.state = State::Open { until, reopened };
        inner.epoch += 1;
        transition!(warn, self, "open", retest_in = ?period, "OPEN breaker on {}", self.label);
        // The retest happens on time even when nobody calls, so that it shows
        // in the logs as the original's did.
        let breaker: Weak<Self> = Arc::downgrade(self);
        let epoch = inner.epoch;
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(breaker) = breaker.upgrade() {
                let mut inner = breaker.lock();
                if inner.epoch == epoch {
                    breaker.retest_if_due(&mut inner, Instant::now());
                }
            }
        });
    }

    /// Open => HalfOpen, once the open period is over.
    fn retest_if_due(&self, inner: &mut Inner, now: Instant) {
        if let State::Open { until, reopened } = inner.state
            && now >= until
        {
            inner.state = State::HalfOpen {
                probing: false,
                reopened,
            };
            transition!(warn, self, "half-open", "RETEST breaker on {}", self.label);
            inner.wake_all();
        }
    }
}
