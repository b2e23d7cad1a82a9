//! The client: discovery, the balancer and the per-call policy around them.

use std::{
    convert::Infallible,
    future::Future,
    pin::{Pin, pin},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use futures::{
    FutureExt as _, Stream, StreamExt as _,
    future::{BoxFuture, Either},
    stream::FuturesUnordered,
};
use registry_client::{Registries, WatchConfig, WatchUpdate, Watcher};
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig};
use tower::{
    BoxError, Service, ServiceExt as _,
    balance::p2c::Balance as P2c,
    discover::Change,
    load::{CompleteOnResponse, PeakEwma},
    retry::budget::{Budget as _, TpsBudget},
    timeout::Timeout,
};

use crate::{
    Balance, CallError, Policy, PolicyError,
    breaker::{Breaker, CircuitBreaker, EndpointLabel, Outcome, classify},
    endpoint::{
        Attempt, DirectService, EndpointKey, EndpointSnapshot, Endpoints, Entry, GrpcEndpoint,
        Method, Served,
    },
    error::{AllServicesDown, BreakerOpen},
    round_robin::RoundRobin,
};

/// The stack the balancer holds per instance.
type Balanced<Req, Resp> =
    CircuitBreaker<PeakEwma<Timeout<GrpcEndpoint<Req, Resp>>, CompleteOnResponse>>;
/// One discovery change as the balancer takes it.
type ChangeOf<Req, Resp> = Result<Change<EndpointKey, Balanced<Req, Resp>>, Infallible>;
type Discovered<Req, Resp> = UnboundedReceiverStream<ChangeOf<Req, Resp>>;

/// The initial latency estimate of a new instance, before it has answered.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How fast peak-EWMA forgets a slow answer.
const EWMA_DECAY: Duration = Duration::from_secs(5);

enum Balancer<Req, Resp> {
    P2c(P2c<Discovered<Req, Resp>, Attempt<Req>>),
    RoundRobin(RoundRobin<Discovered<Req, Resp>, Attempt<Req>>),
}

impl<Req, Resp> Balancer<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn new(mode: Balance, discover: Discovered<Req, Resp>) -> Self {
        match mode {
            Balance::P2c => Self::P2c(P2c::new(discover)),
            Balance::RoundRobin => Self::RoundRobin(RoundRobin::new(discover)),
        }
    }
}

impl<Req, Resp> Service<Attempt<Req>> for Balancer<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Served<Resp>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Served<Resp>, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self {
            Self::P2c(b) => b.poll_ready(cx),
            Self::RoundRobin(b) => b.poll_ready(cx),
        }
    }

    fn call(&mut self, attempt: Attempt<Req>) -> Self::Future {
        match self {
            Self::P2c(b) => Box::pin(b.call(attempt)),
            Self::RoundRobin(b) => Box::pin(b.call(attempt)),
        }
    }
}

/// A resilient client of one gRPC method of one service.
///
/// Cheap to clone; clones share the instances, breakers and budget. The
/// discovery task stops when the last clone is dropped.
pub struct Client<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
}

impl<Req, Resp> Clone for Client<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<Req, Resp> {
    service: Arc<str>,
    policy: Policy,
    /// Locked only to poll and call the balancer, which never blocks: a
    /// call waiting for a ready instance waits on `ready`, not on the lock.
    /// (An async lock here formed a convoy under load: each release handed
    /// the lock to the next waiting task, which had to be scheduled before
    /// anyone could dispatch again; two thirds of the calls at 64 callers
    /// queued for it.)
    balancer: Mutex<Balancer<Req, Resp>>,
    /// Wakes every call waiting for the balancer to have a ready instance.
    ready: Arc<WakeAll>,
    /// The waker the balancer is always polled with: `ready`'s. The balancer
    /// keeps one waker, the last it was polled with, so a caller's own waker
    /// would leave the other waiting callers unwoken.
    ready_waker: Waker,
    endpoints: Arc<Endpoints<Req, Resp>>,
    budget: TpsBudget,
    synced: watch::Receiver<bool>,
    discovery: JoinHandle<()>,
}

impl<Req, Resp> Drop for Shared<Req, Resp> {
    fn drop(&mut self) {
        self.discovery.abort();
    }
}

/// Wakes all the tasks waiting on it at once.
#[derive(Default)]
struct WakeAll(Notify);

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.0.notify_waiters();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_waiters();
    }
}

/// An attempt under way, and the instance it went to. Ends with the two.
struct InFlight<Resp> {
    instance: Arc<EndpointLabel>,
    answer: BoxFuture<'static, Result<Served<Resp>, BoxError>>,
}

impl<Resp> Future for InFlight<Resp> {
    type Output = (Arc<EndpointLabel>, Result<Served<Resp>, BoxError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = std::task::ready!(self.answer.as_mut().poll(cx));
        Poll::Ready((self.instance.clone(), answer))
    }
}

/// How dispatching the first attempt, without waiting, ended.
enum Dispatch<Req, Resp> {
    Sent(BoxFuture<'static, Result<Served<Resp>, BoxError>>),
    Failed(BoxError),
    /// The balancer has no ready instance now: the attempt back.
    NotReady(Attempt<Req>),
}

/// The attempts of one call. They are polled by the caller, so a call costs
/// no extra task; those still running when the call returns (a hedge's loser,
/// or attempts past the deadline) or when the caller gives up are handed to
/// the runtime, to run until their own timeout so that their instance's
/// breaker learns how they ended.
struct Attempts<Resp: Send + 'static> {
    running: FuturesUnordered<InFlight<Resp>>,
}

impl<Resp: Send + 'static> Attempts<Resp> {
    fn new() -> Self {
        Self {
            running: FuturesUnordered::new(),
        }
    }

    fn push(&mut self, attempt: InFlight<Resp>) {
        self.running.push(attempt);
    }
}

impl<Resp: Send + 'static> Drop for Attempts<Resp> {
    fn drop(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for attempt in std::mem::take(&mut self.running) {
            runtime.spawn(attempt);
        }
    }
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
{
    /// A client of `service` that finds its instances through the registry,
    /// and calls them with the registry's TLS settings (plaintext when it has
    /// none). Call it inside a Tokio runtime.
    pub fn discover<F, Fut>(
        service: &str,
        registries: Registries,
        policy: Policy,
        method: F,
    ) -> Result<Self, PolicyError>
    where
        F: Fn(Channel, tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    {
        let tls = registries.tls().cloned();
        let watcher = Watcher::spawn(registries, WatchConfig::new(service));
        Self::with_tls(service, watcher, policy, tls, method)
    }

    /// A client of `service` whose instances come from `updates` (for
    /// example a [`Watcher`]). Call it inside a Tokio runtime.
    pub fn new<U, F, Fut>(
        service: &str,
        updates: U,
        policy: Policy,
        method: F,
    ) -> Result<Self, PolicyError>
    where
        U: Stream<Item = WatchUpdate> + Send + 'static,
        F: Fn(Channel, tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    {
        Self::with_tls(service, updates, policy, None, method)
    }

    /// Like [`Client::new`], calling the instances over TLS with `tls`: then
    /// only `https://` instances are called (plaintext ones are ignored, with
    /// a warning), and without it only `http://` ones.
    pub fn with_tls<U, F, Fut>(
        service: &str,
        updates: U,
        policy: Policy,
        tls: Option<ClientTlsConfig>,
        method: F,
    ) -> Result<Self, PolicyError>
    where
        U: Stream<Item = WatchUpdate> + Send + 'static,
        F: Fn(Channel, tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    {
        policy.validate()?;
        let method: Method<Req, Resp> =
            Arc::new(move |channel, request| method(channel, request).boxed());
        let service: Arc<str> = service.into();
        let endpoints = Endpoints::new();
        let (changes, discover) = mpsc::unbounded_channel();
        let (synced_tx, synced) = watch::channel(false);
        let discovery = tokio::spawn(follow(
            updates,
            Discovery {
                service: service.clone(),
                policy,
                tls,
                method,
                endpoints: endpoints.clone(),
                changes,
                synced: synced_tx,
            },
        ));
        let budget = TpsBudget::new(Duration::from_secs(10), 10, policy.retry_budget);
        let ready = Arc::new(WakeAll::default());
        Ok(Self {
            shared: Arc::new(Shared {
                service,
                policy,
                balancer: Mutex::new(Balancer::new(
                    policy.balance,
                    UnboundedReceiverStream::new(discover),
                )),
                ready_waker: Waker::from(ready.clone()),
                ready,
                endpoints,
                budget,
                synced,
                discovery,
            }),
        })
    }

    /// Waits until the registry has told the client its instances once.
    pub async fn synced(&self) {
        let mut synced = self.shared.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// The instances known now, sorted by address, with their breakers.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.shared.endpoints.snapshot()
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// Calls the service.
    ///
    /// Fails at once with [`CallError::AllServicesDown`] when no instance can
    /// take the call. Otherwise a first attempt goes to the instance the
    /// balancer picks; a failed attempt is tried again on another instance
    /// (within the retry budget and the deadline); with hedging, a slow attempt
    /// is raced by one on another instance. Attempts that lose the race, or
    /// outlive the deadline, run on in the background until their own timeout,
    /// so their instance's breaker still learns how they ended.
    pub async fn call(&self, request: Req) -> Result<Served<Resp>, CallError> {
        let shared = &self.shared;
        let policy = shared.policy;
        let deadline = Instant::now() + policy.deadline;
        shared.budget.deposit();

        let mut tried: Vec<Arc<EndpointLabel>> = Vec::new();
        let mut in_flight = Attempts::new();
        let first = match self.first_attempt(request.clone(), deadline).await? {
            Some(first) => first,
            // Nothing was sent: try the best instance directly, once.
            None => match self.other_attempt(request.clone(), deadline, &[], false) {
                Some(attempt) => attempt,
                None if shared.endpoints.none_ready() => return Err(self.all_down()),
                None => return Err(CallError::Timeout(policy.timeout)),
            },
        };
        tried.push(first.instance.clone());
        in_flight.push(first);

        // A lone attempt sent now ends by its own timeout, before the
        // deadline: the call arms a deadline timer of its own only once that
        // no longer holds. Timers are not free: arming the earliest one wakes
        // the runtime's timer driver, which costs a lone call measurably.
        let mut overall = None;
        if Instant::now() + policy.timeout > deadline {
            arm(&mut overall, deadline);
        }
        let mut retries_left = policy.retries;
        let mut hedge = policy
            .hedge_after
            .map(|after| Box::pin(tokio::time::sleep(after)));
        loop {
            let hedge_timer = match &mut hedge {
                Some(timer) => Either::Left(timer.as_mut()),
                None => Either::Right(futures::future::pending()),
            };
            let deadline_timer = match &mut overall {
                Some(timer) => Either::Left(timer.as_mut()),
                None => Either::Right(futures::future::pending()),
            };
            tokio::select! {
                Some((instance, answer)) = in_flight.running.next() => match answer {
                    Ok(served) => return Ok(served),
                    Err(error) => {
                        let retry = retries_left > 0 && is_retryable(&error) && Instant::now() < deadline;
                        tracing::debug!(service = %shared.service, instance = %instance.instance, %error, retry, "attempt failed");
                        if retry {
                            retries_left -= 1;
                            if let Some(attempt) = self.other_attempt(request.clone(), deadline, &tried, true) {
                                tried.push(attempt.instance.clone());
                                in_flight.push(attempt);
                                arm(&mut overall, deadline);
                            }
                        }
                        if in_flight.running.is_empty() {
                            return Err(CallError::from_box(error, policy.timeout));
                        }
                    }
                },
                () = hedge_timer => {
                    hedge = None;
                    if let Some(attempt) = self.other_attempt(request.clone(), deadline, &tried, true)
                    {
                        tracing::debug!(service = %shared.service, instance = %attempt.instance.instance, "hedging");
                        tried.push(attempt.instance.clone());
                        in_flight.push(attempt);
                        arm(&mut overall, deadline);
                    }
                },
                () = deadline_timer => {
                    return Err(CallError::DeadlineExceeded(policy.deadline));
                }
            }
        }
    }

    /// Sends the first attempt through the balancer; `None` when nothing was
    /// sent (the chosen instance's breaker opened meanwhile, or no instance
    /// became ready in time).
    async fn first_attempt(
        &self,
        request: Req,
        deadline: Instant,
    ) -> Result<Option<InFlight<Resp>>, CallError> {
        let shared = &self.shared;
        let policy = shared.policy;
        let started = Instant::now();
        if shared.endpoints.none_ready() {
            return Err(self.all_down());
        }
        let attempt_deadline = (started + policy.timeout).min(deadline);
        let attempt = Attempt::new(request, attempt_deadline);
        let taken_by = attempt.taken_by.clone();
        let answer = match self.dispatch(attempt) {
            Dispatch::Sent(answer) => answer,
            Dispatch::Failed(error) => return Err(CallError::Other(error)),
            Dispatch::NotReady(attempt) => {
                let dispatched =
                    tokio::time::timeout_at(attempt_deadline, self.dispatch_when_ready(attempt))
                        .await;
                match dispatched {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(error)) => return Err(CallError::Other(error)),
                    // Every instance became unready while we waited.
                    Err(_) if shared.endpoints.none_ready() => return Err(self.all_down()),
                    // The balancer found no ready instance in time: nothing was sent.
                    Err(_) => return Ok(None),
                }
            }
        };
        Ok(taken_by.get().map(|instance| InFlight {
            instance: instance.clone(),
            answer,
        }))
    }

    /// Sends the first attempt at once if the balancer has a ready
    /// instance: the common case, which arms no timer and waits for no one.
    /// Otherwise hands the attempt back.
    fn dispatch(&self, attempt: Attempt<Req>) -> Dispatch<Req, Resp> {
        let shared = &self.shared;
        let mut balancer = shared
            .balancer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut cx = Context::from_waker(&shared.ready_waker);
        match balancer.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Dispatch::Sent(balancer.call(attempt)),
            Poll::Ready(Err(error)) => Dispatch::Failed(error),
            Poll::Pending => Dispatch::NotReady(attempt),
        }
    }

    /// Sends the first attempt once the balancer has a ready instance.
    async fn dispatch_when_ready(
        &self,
        mut attempt: Attempt<Req>,
    ) -> Result<BoxFuture<'static, Result<Served<Resp>, BoxError>>, BoxError> {
        loop {
            // Listen before polling, so that a wake between the poll and the
            // wait is not lost.
            let mut woken = pin!(self.shared.ready.0.notified());
            woken.as_mut().enable();
            match self.dispatch(attempt) {
                Dispatch::Sent(answer) => return Ok(answer),
                Dispatch::Failed(error) => return Err(error),
                Dispatch::NotReady(back) => attempt = back,
            }
            woken.await;
        }
    }

    /// Sends an attempt to the least loaded instance not tried yet; a retry
    /// or a hedge (`from_budget`) only when the retry budget allows, which is
    /// asked only once there is an instance to send it to.
    fn other_attempt(
        &self,
        request: Req,
        deadline: Instant,
        tried: &[Arc<EndpointLabel>],
        from_budget: bool,
    ) -> Option<InFlight<Resp>> {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let mut service: DirectService<Req, Resp> = self.shared.endpoints.pick_other(tried)?;
        if from_budget && !self.shared.budget.withdraw() {
            return None;
        }
        // Ready at once when the breaker admits: the inner call is always ready.
        service.ready().now_or_never()?.ok()?;
        let attempt = Attempt::new(request, (now + self.shared.policy.timeout).min(deadline));
        let taken_by = attempt.taken_by.clone();
        let answer = service.call(attempt);
        let instance = taken_by.get()?.clone();
        Some(InFlight {
            instance,
            answer: Box::pin(answer),
        })
    }

    fn all_down(&self) -> CallError {
        let service = &self.shared.service;
        tracing::warn!(
            service = %service,
            known = self.shared.endpoints.len(),
            "{service}: no live instances! giving up"
        );
        CallError::AllServicesDown(AllServicesDown(()))
    }
}

/// Arms the call's deadline timer, once.
fn arm(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, deadline: Instant) {
    timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
}

/// Whether an attempt's failure warrants another try elsewhere: the
/// instance failed (by the breaker's definition), or the call was never sent.
fn is_retryable(error: &BoxError) -> bool {
    error.is::<BreakerOpen>() || classify(error) == Outcome::Failure
}

/// What the discovery task needs.
struct Discovery<Req, Resp> {
    service: Arc<str>,
    policy: Policy,
    tls: Option<ClientTlsConfig>,
    method: Method<Req, Resp>,
    endpoints: Arc<Endpoints<Req, Resp>>,
    changes: mpsc::UnboundedSender<ChangeOf<Req, Resp>>,
    synced: watch::Sender<bool>,
}

/// Applies the registry's updates to the endpoint set at once, and queues
/// them for the balancer, which takes them at its next call.
async fn follow<Req, Resp, U>(updates: U, discovery: Discovery<Req, Resp>)
where
    U: Stream<Item = WatchUpdate> + Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let mut updates = std::pin::pin!(updates);
    while let Some(update) = updates.next().await {
        match update {
            WatchUpdate::Upsert(instance) => {
                if let Some(key) = discovery.endpoints.key_of(&instance.id) {
                    if *key.address == *instance.address {
                        // Same instance, same place: keep its breaker and connection.
                        continue;
                    }
                    discovery.endpoints.remove(&instance.id);
                    let _ = discovery.changes.send(Ok(Change::Remove(key)));
                }
                let Some((key, balanced)) = discovery.endpoint(&instance) else {
                    continue;
                };
                if discovery
                    .changes
                    .send(Ok(Change::Insert(key, balanced)))
                    .is_err()
                {
                    return;
                }
            }
            WatchUpdate::Remove(instance) => {
                if let Some(key) = discovery.endpoints.remove(&instance.id) {
                    tracing::info!(service = %discovery.service, instance = %instance.id, address = %instance.address, "instance {} left", instance.id);
                    if discovery.changes.send(Ok(Change::Remove(key))).is_err() {
                        return;
                    }
                }
            }
            WatchUpdate::Synced(_) => {
                discovery.synced.send_replace(true);
            }
        }
    }
}

impl<Req, Resp> Discovery<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// A lazily connected channel to an instance's address, over TLS when
    /// the client has TLS settings, or why there can be none.
    fn channel(&self, address: &str) -> Result<Channel, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
            .map_err(|error| format!("its address is unusable: {error}"))?
            .connect_timeout(self.policy.timeout)
            .tcp_nodelay(true);
        let secure = endpoint.uri().scheme_str() == Some("https");
        let endpoint = match (&self.tls, secure) {
            // The handshake is bounded like the connection: an attempt's
            // timeout.
            (Some(tls), true) => endpoint
                .tls_config(tls.clone().timeout(self.policy.timeout))
                .map_err(|error| format!("TLS does not apply to its address: {error}"))?,
            (Some(_), false) => {
                return Err("its address is plaintext and this client calls over TLS only".into());
            }
            (None, true) => {
                return Err("its address needs TLS and this client has no TLS settings".into());
            }
            (None, false) => endpoint,
        };
        Ok(endpoint.connect_lazy())
    }

    /// Builds the stacks of a new instance and records it.
    fn endpoint(
        &self,
        instance: &registry_client::Instance,
    ) -> Option<(EndpointKey, Balanced<Req, Resp>)> {
        let channel = match self.channel(&instance.address) {
            Ok(channel) => channel,
            Err(why) => {
                tracing::warn!(service = %self.service, instance = %instance.id, address = %instance.address, "ignoring instance {}: {why}", instance.id);
                return None;
            }
        };
        let label = Arc::new(EndpointLabel {
            service: self.service.clone(),
            instance: instance.id.as_str().into(),
            address: instance.address.as_str().into(),
        });
        let key = EndpointKey {
            address: label.address.clone(),
            instance: label.instance.clone(),
        };
        let breaker = Breaker::new((*label).clone(), self.policy.breaker);
        let grpc = GrpcEndpoint {
            channel,
            label: label.clone(),
            method: self.method.clone(),
            endpoints: Arc::downgrade(&self.endpoints),
        };
        let timeout = self.policy.timeout;
        let balanced = CircuitBreaker::new(
            PeakEwma::new(
                Timeout::new(grpc.clone(), timeout),
                DEFAULT_RTT,
                EWMA_DECAY.as_nanos() as f64,
                CompleteOnResponse::default(),
            ),
            breaker.clone(),
        );
        let direct = CircuitBreaker::new(Timeout::new(grpc, timeout), breaker.clone());
        tracing::info!(service = %self.service, instance = %instance.id, address = %instance.address, "instance {} joined", instance.id);
        self.endpoints.insert(
            key.clone(),
            Entry {
                label,
                breaker,
                direct,
            },
        );
        Some((key, balanced))
    }
}

#[cfg(test)]
mod tests {
    use registry_client::Instance;

    use super::*;

    fn upsert(id: &str, address: &str) -> WatchUpdate {
        WatchUpdate::Upsert(Instance {
            id: id.to_owned(),
            address: address.to_owned(),
            metadata: Default::default(),
            ttl: Duration::from_secs(10),
        })
    }

    /// Two instances that never answer, and a method that ignores the
    /// channel (so only the stack's own timers can end a call).
    /// How a call to them fails, and how long that took.
    async fn fail_against_hanging_instances(policy: Policy) -> (CallError, Duration) {
        let updates = futures::stream::iter([
            upsert("a", "http://127.0.0.1:1"),
            upsert("b", "http://127.0.0.1:2"),
            WatchUpdate::Synced(1),
        ])
        .chain(futures::stream::pending());
        let client = Client::<(), ()>::new("ratings", updates, policy, |_, _| {
            futures::future::pending()
        })
        .expect("a valid policy");
        client.synced().await;
        let started = Instant::now();
        let error = client.call(()).await.expect_err("nobody answers");
        (error, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_would_outlive_the_deadline_ends_at_the_deadline() {
        let policy = Policy {
            timeout: Duration::from_millis(100),
            deadline: Duration::from_millis(150),
            ..Policy::default()
        };
        let (error, took) = fail_against_hanging_instances(policy).await;
        // The first attempt times out at 100 ms, the retry runs into the
        // deadline at 150 ms, before its own timeout (200 ms).
        assert!(
            matches!(error, CallError::DeadlineExceeded(d) if d == policy.deadline),
            "{error:?}"
        );
        assert_eq!(took, policy.deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_attempt_ends_at_its_timeout() {
        let policy = Policy {
            timeout: Duration::from_millis(100),
            deadline: Duration::from_millis(1000),
            retries: 0,
            ..Policy::default()
        };
        let (error, took) = fail_against_hanging_instances(policy).await;
        assert!(
            matches!(error, CallError::Timeout(t) if t == policy.timeout),
            "{error:?}"
        );
        assert_eq!(took, policy.timeout);
    }

    #[tokio::test]
    async fn tls_clients_call_only_https_instances_and_plaintext_clients_only_http() {
        for (tls, only) in [(None, "plain"), (Some(ClientTlsConfig::new()), "secure")] {
            let updates = futures::stream::iter([
                upsert("plain", "http://127.0.0.1:1"),
                upsert("secure", "https://127.0.0.1:2"),
                WatchUpdate::Synced(1),
            ])
            .chain(futures::stream::pending());
            let client = Client::<(), ()>::with_tls(
                "ratings",
                updates,
                Policy::default(),
                tls,
                |_, _| async { Err(tonic::Status::unavailable("never called")) },
            )
            .expect("a valid policy");
            client.synced().await;
            let known: Vec<String> = client
                .endpoints()
                .into_iter()
                .map(|endpoint| endpoint.instance)
                .collect();
            assert_eq!(known, [only]);
        }
    }
}
