//! The pool: every listed instance of a service behind its own stack, and the
//! one place that picks an instance for every attempt, first, retry or hedge.
//!
//! The instances live in tower's `ReadyCache`, which polls each one's
//! readiness, so a breaker that is open (and so its instance not ready) is
//! simply not picked. A pick honours the attempt's [`Attempt::avoid`] list:
//! that is how a retry or a hedge goes to an instance not tried yet. How it
//! picks among the ready instances is the [`Balance`] mode (see `pick`).
//!
//! Every change of the instance set (from the discovery task) is applied
//! here at once, under the same lock as the picks: the pool is the one
//! record of the instances. Breakers are kept by address (see `breakers`).

mod breakers;
mod pick;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tower::{
    BoxError, Service,
    load::{CompleteOnResponse, PeakEwma},
    ready_cache::ReadyCache,
    util::BoxService,
};

use self::{breakers::Breakers, pick::Pick};
use crate::{
    Attempt, Balance, BreakerPolicy, Served,
    breaker::{Breaker, CircuitBreaker, EndpointLabel},
    endpoint::EndpointSnapshot,
    error::{AllServicesDown, Failed, NoOtherInstance},
};

/// One instance's stack, as the pool holds it: its breaker over its load
/// measure over the rest (the attempt timeout, any layers of the user's, and
/// the gRPC call), which is boxed so that the user's layers need not show in
/// the type.
pub type Instance<Req, Resp> =
    CircuitBreaker<PeakEwma<BoxService<Attempt<Req>, Resp, BoxError>, CompleteOnResponse>>;

type InstanceFuture<Req, Resp> = <Instance<Req, Resp> as Service<Attempt<Req>>>::Future;

/// The key of an instance in the pool: sorted by address, as the original
/// listed them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EndpointKey {
    pub(crate) address: Arc<str>,
    pub(crate) instance: Arc<str>,
}

/// The instances of one service, as a tower service that sends each
/// [`Attempt`] to one of them.
///
/// Cheap to clone; clones share the instances. `poll_ready` fails at once
/// with [`AllServicesDown`] when no instance could take a call: none is
/// listed, or every one's breaker is open. Unlike most tower services, that
/// error is not final: the pool is ready again as soon as an instance is.
/// It is never pending: an attempt that finds no instance ready at once
/// waits for one in its future, for at most the attempt timeout.
pub struct Pool<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
}

impl<Req, Resp> Clone for Pool<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<Req, Resp> fmt::Debug for Pool<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("service", &self.shared.service)
            .finish_non_exhaustive()
    }
}

struct Shared<Req, Resp> {
    service: Arc<str>,
    /// How long an attempt that found no ready instance waits for one.
    timeout: Duration,
    /// Locked only to change the instances, or to poll and call them, which
    /// never blocks: a call waiting for a ready instance waits on `waiters`,
    /// not on the lock, and a plain lock costs less than an async one here.
    state: Mutex<State<Req, Resp>>,
    /// The calls waiting for an instance to become ready.
    waiters: Arc<Waiters>,
    /// `waiters` as a waker: every instance is polled with it, since the
    /// cache keeps one waker per instance, the last it was polled with, and
    /// a caller's own waker would leave the other waiting callers unwoken.
    waker: Waker,
}

/// What the lock guards.
struct State<Req, Resp> {
    cache: ReadyCache<EndpointKey, Instance<Req, Resp>, Attempt<Req>>,
    /// The listed instances, sorted by address.
    listed: BTreeMap<EndpointKey, Arc<EndpointLabel>>,
    breakers: Breakers,
    pick: Pick,
}

// === impl Pool ===

impl<Req, Resp> Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// An empty pool of `service`'s instances. Attempts that find no ready
    /// instance wait for one for at most `timeout`.
    pub(crate) fn new(
        service: Arc<str>,
        balance: Balance,
        breaker: BreakerPolicy,
        timeout: Duration,
    ) -> Self {
        let waiters = Arc::new(Waiters::default());
        Self {
            shared: Arc::new(Shared {
                service,
                timeout,
                state: Mutex::new(State {
                    cache: ReadyCache::default(),
                    listed: BTreeMap::new(),
                    breakers: Breakers::new(breaker),
                    pick: Pick::new(balance),
                }),
                waker: Waker::from(waiters.clone()),
                waiters,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<Req, Resp>> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The service's name.
    pub fn service(&self) -> &Arc<str> {
        &self.shared.service
    }

    /// Lists an instance, behind the stack `stack` builds around the breaker
    /// of its address.
    pub(crate) fn join(
        &self,
        label: Arc<EndpointLabel>,
        stack: impl FnOnce(Arc<Breaker>) -> Instance<Req, Resp>,
    ) {
        let key = EndpointKey {
            address: label.address.clone(),
            instance: label.instance.clone(),
        };
        {
            let mut state = self.lock();
            state.breakers.forget_expired(Instant::now());
            let breaker = state.breakers.acquire(&label);
            state.cache.push(key.clone(), stack(breaker));
            state.listed.insert(key, label);
        }
        self.shared.waker.wake_by_ref();
    }

    /// Unlists the instance with this id; its address keeps its breaker.
    /// Returns its address, if it was listed.
    pub(crate) fn leave(&self, instance: &str) -> Option<Arc<str>> {
        let address = {
            let mut state = self.lock();
            let key = state.key_of(instance)?;
            state.cache.evict(&key);
            state.listed.remove(&key);
            let now = Instant::now();
            if !state.listed.keys().any(|k| k.address == key.address) {
                state.breakers.release(&key.address, now);
            }
            state.breakers.forget_expired(now);
            key.address
        };
        // Calls waiting for an instance may now have none to wait for.
        self.shared.waker.wake_by_ref();
        Some(address)
    }

    /// The address of the listed instance with this id.
    pub(crate) fn address_of(&self, instance: &str) -> Option<Arc<str>> {
        self.lock().key_of(instance).map(|key| key.address)
    }

    /// How many instances are listed.
    pub fn len(&self) -> usize {
        self.lock().listed.len()
    }

    /// Whether no instance is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some listed instance other than those `attempt` avoids could
    /// take it now, as its breaker sees it: what a retry or a hedge asks
    /// before it spends the retry budget.
    pub fn can_serve(&self, attempt: &Attempt<Req>) -> bool {
        let state = self.lock();
        state
            .listed
            .keys()
            .filter(|key| !attempt.avoids(&key.address))
            .any(|key| state.admits(key))
    }

    /// The listed instances, sorted by address, with their breakers.
    pub fn listed(&self) -> Vec<EndpointSnapshot> {
        let state = self.lock();
        state
            .listed
            .keys()
            .filter_map(|key| {
                Some(EndpointSnapshot {
                    instance: key.instance.to_string(),
                    address: key.address.to_string(),
                    breaker: state.breakers.get(&key.address)?.snapshot(),
                })
            })
            .collect()
    }

    /// The breakers kept for addresses no listed instance has, sorted by
    /// address.
    pub fn absent(&self) -> Vec<EndpointSnapshot> {
        let mut state = self.lock();
        state.breakers.forget_expired(Instant::now());
        let mut absent: Vec<EndpointSnapshot> = state
            .breakers
            .absent()
            .map(|(address, kept)| EndpointSnapshot {
                instance: kept.instance.to_string(),
                address: address.to_string(),
                breaker: kept.breaker.snapshot(),
            })
            .collect();
        absent.sort_by(|a, b| a.address.cmp(&b.address));
        absent
    }

    fn all_down(&self) -> AllServicesDown {
        let service = &self.shared.service;
        tracing::warn!(service = %service, "{service}: no live instances! giving up");
        AllServicesDown(())
    }

    /// Picks an instance for `attempt` and sends it there, if one is ready.
    fn dispatch(&self, attempt: Attempt<Req>) -> Dispatch<Req, Resp> {
        // Asked before the lock is taken: it may start the call's span.
        let sampled_out = crate::trace::sampled_out();
        let mut cx = Context::from_waker(&self.shared.waker);
        let mut state = self.lock();
        state.promote(&mut cx);
        let Some(index) = state.pick(&mut cx, &attempt) else {
            let why = if !attempt.avoid.is_empty() {
                Unsent::NoOther
            } else if state.none_admits() {
                Unsent::AllDown
            } else {
                Unsent::NotReady
            };
            return Dispatch::Unsent(attempt, why);
        };
        let (key, _) = state
            .cache
            .get_ready_index(index)
            .expect("a picked instance is ready");
        let label = state.listed[key].clone();
        let position =
            tracing::enabled!(tracing::Level::INFO).then(|| state.listed.range(..key).count() + 1);
        // The attempt's span: the call's child, the instance's parent (its
        // context goes out with the request, see `trace`). None in a trace
        // that is sampled out.
        let span = if sampled_out {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                target: crate::trace::TARGET,
                "attempt",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                service = &*label.service,
                instance = &*label.instance,
                address = &*label.address,
                outcome = tracing::field::Empty,
            )
        };
        let future = span.in_scope(|| state.cache.call_ready_index(index, attempt));
        drop(state);
        if let Some(position) = position {
            tracing::info!(
                name: crate::trace::LOG_ONLY,
                service = %label.service,
                instance = %label.instance,
                address = %label.address,
                "{} using instance {position}: {}", label.service, label.address
            );
        }
        Dispatch::Sent(future, label, span)
    }

    /// The span of an attempt that was never sent, ended at once.
    fn unsent_span(&self, outcome: &'static str) {
        if crate::trace::sampled_out() {
            return;
        }
        let span = tracing::debug_span!(
            target: crate::trace::TARGET,
            "attempt",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            service = &*self.shared.service,
            outcome = tracing::field::Empty,
        );
        crate::trace::record_outcome(&span, outcome);
    }
}

impl<Req, Resp> Service<Attempt<Req>> for Pool<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Served<Resp>;
    type Error = BoxError;
    type Future = ResponseFuture<Req, Resp>;

    /// Ready while some instance could take a call; an attempt that then
    /// finds none ready at once waits for one in its future, for at most the
    /// attempt timeout, so that every wait of the stack is bounded by a
    /// timer. Fails at once with [`AllServicesDown`] when none could.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let mut state = self.lock();
        if state.cache.ready_len() == 0 {
            state.promote(&mut Context::from_waker(&self.shared.waker));
        }
        if state.cache.ready_len() > 0 || !state.none_admits() {
            return Poll::Ready(Ok(()));
        }
        drop(state);
        Poll::Ready(Err(self.all_down().into()))
    }

    fn call(&mut self, attempt: Attempt<Req>) -> Self::Future {
        let state = match self.dispatch(attempt) {
            Dispatch::Sent(future, instance, span) => Flight::Sent {
                future,
                instance,
                span,
            },
            Dispatch::Unsent(attempt, Unsent::NotReady) => Flight::Waiting {
                attempt: Some(attempt),
                pool: self.clone(),
                timer: Box::pin(tokio::time::sleep(self.shared.timeout)),
            },
            Dispatch::Unsent(_, Unsent::NoOther) => {
                self.unsent_span("no-other-instance");
                Flight::Refused(Some(NoOtherInstance(()).into()))
            }
            Dispatch::Unsent(_, Unsent::AllDown) => {
                self.unsent_span("breaker-open");
                Flight::Refused(Some(self.all_down().into()))
            }
        };
        ResponseFuture { state }
    }
}

/// How dispatching an attempt ended.
enum Dispatch<Req, Resp> {
    Sent(InstanceFuture<Req, Resp>, Arc<EndpointLabel>, tracing::Span),
    Unsent(Attempt<Req>, Unsent),
}

/// Why an attempt was not sent.
enum Unsent {
    /// Every instance it does not avoid is busy or not ready.
    NoOther,
    /// No listed instance's breaker admits a call.
    AllDown,
    /// Some instance will be ready again soon.
    NotReady,
}

// === impl State ===

impl<Req, Resp> State<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Moves the instances that became ready into the ready set.
    fn promote(&mut self, cx: &mut Context<'_>) {
        loop {
            match self.cache.poll_pending(cx) {
                Poll::Ready(Ok(())) | Poll::Pending => return,
                Poll::Ready(Err(failed)) => {
                    // A breaker is never an error, but a user's layer may
                    // fail: that instance is out until discovery lists it
                    // again.
                    tracing::warn!(error = %failed, "dropping an instance whose readiness failed");
                }
            }
        }
    }

    fn key_of(&self, instance: &str) -> Option<EndpointKey> {
        self.listed
            .keys()
            .find(|key| &*key.instance == instance)
            .cloned()
    }

    /// Whether the breaker of a listed instance would let a call through.
    fn admits(&self, key: &EndpointKey) -> bool {
        self.breakers
            .get(&key.address)
            .is_some_and(|breaker| breaker.would_admit())
    }

    /// Whether no listed instance could take a call now: none is listed, or
    /// each one's breaker is open (or busy with its probe).
    fn none_admits(&self) -> bool {
        !self.listed.keys().any(|key| self.admits(key))
    }
}

// === impl ResponseFuture ===

/// The answer of one attempt sent through a [`Pool`].
///
/// Dropped before its instance answers (a hedge that lost the race, an
/// attempt that outlived the call's deadline, a caller that gave up), the
/// attempt is not cancelled: it runs on in a task of its own until its own
/// timeout, so that its instance's breaker and load measure learn how it
/// ended.
pub struct ResponseFuture<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    state: Flight<Req, Resp>,
}

enum Flight<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    Sent {
        future: InstanceFuture<Req, Resp>,
        instance: Arc<EndpointLabel>,
        /// The attempt's span, entered while it is polled.
        span: tracing::Span,
    },
    /// No instance was ready when the attempt came; it waits for one, for at
    /// most the attempt timeout.
    Waiting {
        attempt: Option<Attempt<Req>>,
        pool: Pool<Req, Resp>,
        timer: Pin<Box<Sleep>>,
    },
    Refused(Option<BoxError>),
    Done,
}

// Nothing in a `ResponseFuture` is ever pinned in place: the instance's future
// is `Unpin` (its state is boxed), and the request is only moved.
impl<Req: Send + 'static, Resp: Send + 'static> Unpin for ResponseFuture<Req, Resp> {}

impl<Req, Resp> ResponseFuture<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// The instance the attempt went to, once it was sent.
    pub fn instance(&self) -> Option<&Arc<EndpointLabel>> {
        match &self.state {
            Flight::Sent { instance, .. } => Some(instance),
            _ => None,
        }
    }
}

impl<Req, Resp> Future for ResponseFuture<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Output = Result<Served<Resp>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                Flight::Sent {
                    future,
                    instance,
                    span,
                } => {
                    let result = {
                        let _entered = span.enter();
                        std::task::ready!(Pin::new(future).poll(cx))
                    };
                    crate::trace::record_outcome(
                        span,
                        crate::trace::outcome(result.as_ref().err()),
                    );
                    let instance = instance.clone();
                    this.state = Flight::Done;
                    return Poll::Ready(match result {
                        Ok(response) => Ok(Served { response, instance }),
                        Err(error) => Err(Failed::new(instance, error).into()),
                    });
                }
                Flight::Waiting {
                    attempt,
                    pool,
                    timer,
                } => {
                    let seen = pool.shared.waiters.epoch();
                    let unsent = attempt.take().expect("a waiting attempt has its request");
                    match pool.dispatch(unsent) {
                        Dispatch::Sent(future, instance, span) => {
                            this.state = Flight::Sent {
                                future,
                                instance,
                                span,
                            };
                        }
                        Dispatch::Unsent(_, Unsent::AllDown) => {
                            pool.unsent_span("breaker-open");
                            let error = pool.all_down();
                            this.state = Flight::Done;
                            return Poll::Ready(Err(error.into()));
                        }
                        Dispatch::Unsent(unsent, _) => {
                            if timer.as_mut().poll(cx).is_ready() {
                                pool.unsent_span("timeout");
                                this.state = Flight::Done;
                                return Poll::Ready(Err(
                                    tower::timeout::error::Elapsed::new().into()
                                ));
                            }
                            *attempt = Some(unsent);
                            pool.shared.waiters.wait(cx.waker(), seen);
                            return Poll::Pending;
                        }
                    }
                }
                Flight::Refused(error) => {
                    let error = error.take().expect("polled after it ended");
                    this.state = Flight::Done;
                    return Poll::Ready(Err(error));
                }
                Flight::Done => panic!("pool::ResponseFuture polled after it ended"),
            }
        }
    }
}

impl<Req, Resp> Drop for ResponseFuture<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn drop(&mut self) {
        if let Flight::Sent { future, span, .. } = std::mem::replace(&mut self.state, Flight::Done)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            use tracing::Instrument as _;
            let record = span.clone();
            runtime.spawn(
                async move {
                    let result = future.await;
                    crate::trace::record_outcome(
                        &record,
                        crate::trace::outcome(result.as_ref().err()),
                    );
                }
                .instrument(span),
            );
        }
    }
}

// === impl Waiters ===

/// The wakers of the calls waiting for an instance to become ready; woken
/// all at once.
#[derive(Default)]
struct Waiters {
    /// Bumped at every wake, so that a call that looked before a wake and
    /// registers after it is not left waiting.
    epoch: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl Waiters {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Registers `waker`, unless a wake came since `seen`: then wakes it now.
    fn wait(&self, waker: &Waker, seen: u64) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::SeqCst) != seen {
            drop(wakers);
            waker.wake_by_ref();
            return;
        }
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }
}
