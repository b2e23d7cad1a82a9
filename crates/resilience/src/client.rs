//! The client: the pool of a service's instances under the call policy's
//! layers, as one tower `Service`.
//!
//! ```text
//! Client ▶ Deadline ▶ Retry (budget) ▶ [Hedge] ▶ Pool ▶ per instance:
//!                                                  CircuitBreaker ▶ PeakEwma ▶ [user's layer] ▶ Timeout ▶ gRPC call
//! ```

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::{FutureExt as _, Stream};
use registry_client::{Registries, WatchConfig, WatchUpdate, Watcher};
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::{Channel, ClientTlsConfig};
use tower::{
    BoxError, Layer, Service, ServiceBuilder,
    retry::{Retry, RetryLayer, budget::TpsBudget},
    util::Either,
};

use crate::{
    Attempt, CallError, Policy, PolicyError, Pool, Served,
    deadline::{Deadline, DeadlineLayer},
    discovery::{self, Discovery, InstanceCall, InstanceLayer},
    endpoint::{EndpointSnapshot, Method},
    hedge::{Hedge, HedgeLayer},
    retry::RetryPolicy,
};

/// Below the retry layer: the pool, hedged or not.
type Attempts<Req, Resp> = Either<Hedge<Req, Resp>, Pool<Req, Resp>>;
/// The whole stack below the client.
type Stack<Req, Resp> = Deadline<Retry<RetryPolicy<Req, Resp>, Attempts<Req, Resp>>>;
type StackFuture<Req, Resp> = <Stack<Req, Resp> as Service<Attempt<Req>>>::Future;

/// A resilient client of one gRPC method of one service, as a tower
/// [`Service`].
///
/// `poll_ready` fails at once with [`CallError::AllServicesDown`] when no
/// instance could take a call (none is listed, or every breaker is open);
/// unlike most tower services, the client is not broken by it, and is ready
/// again as soon as an instance is. A call goes to the instance the pool
/// picks; a failed attempt is tried again on another instance (within the
/// retry budget and the deadline); with hedging, a slow attempt is raced by
/// one on another instance. Attempts that lose the race, or outlive the
/// deadline, run on in the background until their own timeout, so their
/// instance's breaker still learns how they ended.
///
/// Cheap to clone; clones share the instances, breakers and budget. The
/// discovery task stops when the last clone is dropped.
///
/// # Adding your own layers
///
/// Around the whole client, as around any tower service:
///
/// ```no_run
/// # async fn example(client: resilience::Client<String, String>) {
/// use tower::{Service as _, ServiceBuilder, ServiceExt as _};
///
/// let mut limited = ServiceBuilder::new()
///     .concurrency_limit(64)
///     .service(client);
/// let served = limited.ready().await.unwrap().call("camera".to_owned()).await;
/// # }
/// ```
///
/// Around each instance's call (inside its breaker and load measure, outside
/// its timeout), with [`Builder::instance_layer`]:
///
/// ```no_run
/// # fn example(registries: registry_client::Registries) -> Result<(), resilience::PolicyError> {
/// use resilience::{Client, Policy};
/// use tower::limit::ConcurrencyLimitLayer;
///
/// let client = Client::<String, String>::builder("echo", Policy::default())
///     .instance_layer(ConcurrencyLimitLayer::new(16))
///     .discover(registries, |channel, request| async move {
///         # let _ = (channel, request);
///         // Call your generated tonic client here, e.g.
///         // `EchoClient::new(channel).echo(request).await`.
///         # Err(tonic::Status::unimplemented("example"))
///     })?;
/// # Ok(())
/// # }
/// ```
pub struct Client<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    stack: Stack<Req, Resp>,
    shared: Arc<Shared<Req, Resp>>,
}

impl<Req, Resp> Clone for Client<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
            shared: self.shared.clone(),
        }
    }
}

struct Shared<Req, Resp> {
    pool: Pool<Req, Resp>,
    policy: Policy,
    synced: watch::Receiver<bool>,
    discovery: JoinHandle<()>,
}

impl<Req, Resp> Drop for Shared<Req, Resp> {
    fn drop(&mut self) {
        self.discovery.abort();
    }
}

/// Builds a [`Client`]: its service, policy, TLS settings and any layer of
/// the user's around each instance.
pub struct Builder<Req, Resp> {
    service: Arc<str>,
    policy: Policy,
    tls: Option<ClientTlsConfig>,
    instance_layer: Option<InstanceLayer<Req, Resp>>,
}

impl<Req, Resp> Builder<Req, Resp>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
{
    /// Calls the instances over TLS with `tls`: then only `https://`
    /// instances are called (plaintext ones are ignored, with a warning), and
    /// without it only `http://` ones. [`Builder::discover`] takes the
    /// registry's TLS settings unless these are given.
    pub fn tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Wraps each instance's call in `layer`: inside the instance's breaker
    /// and load measure, around its attempt timeout and gRPC call. A layer
    /// that makes an instance not ready (a concurrency limit, say) makes the
    /// pool pick another. Replaces a layer given before; compose several
    /// with `ServiceBuilder`.
    pub fn instance_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<InstanceCall<Req, Resp>> + Send + Sync + 'static,
        L::Service: Service<Attempt<Req>, Response = Resp> + Send + 'static,
        <L::Service as Service<Attempt<Req>>>::Error: Into<BoxError>,
        <L::Service as Service<Attempt<Req>>>::Future: Send + 'static,
    {
        self.instance_layer = Some(discovery::instance_layer(layer));
        self
    }

    /// A client whose instances come from `updates` (for example a
    /// [`Watcher`]), calling each with `method`, the one part of the stack
    /// that knows the service: typically `|channel, request| async move {
    /// MyClient::new(channel).my_method(request).await }`. Call it inside a
    /// Tokio runtime.
    pub fn build<U, F, Fut>(self, updates: U, method: F) -> Result<Client<Req, Resp>, PolicyError>
    where
        U: Stream<Item = WatchUpdate> + Send + 'static,
        F: Fn(Channel, tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    {
        let policy = self.policy;
        policy.validate()?;
        let method: Method<Req, Resp> =
            Arc::new(move |channel, request| method(channel, request).boxed());
        let pool = Pool::new(self.service, policy.balance, policy.breaker, policy.timeout);
        let (synced_tx, synced) = watch::channel(false);
        let discovery = tokio::spawn(discovery::follow(
            updates,
            Discovery {
                pool: pool.clone(),
                policy,
                tls: self.tls,
                method,
                instance_layer: self.instance_layer,
                synced: synced_tx,
            },
        ));
        Ok(Client {
            stack: stack(&pool, &policy),
            shared: Arc::new(Shared {
                pool,
                policy,
                synced,
                discovery,
            }),
        })
    }

    /// A client that finds its instances through the registry, and calls
    /// them with the registry's TLS settings (plaintext when it has none)
    /// unless [`Builder::tls`] gave others. Call it inside a Tokio runtime.
    pub fn discover<F, Fut>(
        mut self,
        registries: Registries,
        method: F,
    ) -> Result<Client<Req, Resp>, PolicyError>
    where
        F: Fn(Channel, tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    {
        if self.tls.is_none() {
            self.tls = registries.tls().cloned();
        }
        let watcher = Watcher::spawn(registries, WatchConfig::new(&*self.service));
        self.build(watcher, method)
    }
}

/// The call policy's layers over the pool, each a layer of its own.
fn stack<Req, Resp>(pool: &Pool<Req, Resp>, policy: &Policy) -> Stack<Req, Resp>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
{
    let budget = Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        10,
        policy.retry_budget,
    ));
    ServiceBuilder::new()
        .layer(DeadlineLayer::new(policy.deadline).attempts_end_within(policy.timeout))
        .layer(RetryLayer::new(RetryPolicy::new(
            pool.clone(),
            budget.clone(),
            policy.retries,
        )))
        .option_layer(
            policy
                .hedge_after
                .map(|after| HedgeLayer::new(after, budget.clone())),
        )
        .service(pool.clone())
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
{
    /// Starts building a client of `service` that calls as `policy` says.
    pub fn builder(service: &str, policy: Policy) -> Builder<Req, Resp> {
        Builder {
            service: service.into(),
            policy,
            tls: None,
            instance_layer: None,
        }
    }
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Waits until the registry has told the client its instances once.
    pub async fn synced(&self) {
        let mut synced = self.shared.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// The listed instances, sorted by address, with their breakers.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.shared.pool.listed()
    }

    /// The breakers kept for addresses no listed instance has (they left,
    /// and may come back to them), sorted by address.
    pub fn absent(&self) -> Vec<EndpointSnapshot> {
        self.shared.pool.absent()
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// The pool of instances the client calls.
    pub fn pool(&self) -> &Pool<Req, Resp> {
        &self.shared.pool
    }
}

impl<Req, Resp> Service<Req> for Client<Req, Resp>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
{
    type Response = Served<Resp>;
    type Error = CallError;
    type Future = ResponseFuture<Req, Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        let timeout = self.shared.policy.timeout;
        self.stack
            .poll_ready(cx)
            .map_err(|error| CallError::from_box(error, timeout))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The call's span: its attempts (a retry, a hedge) are its children.
        // In a trace that is sampled out (see `trace::sampled_out`), none:
        // the span the call is made in is entered instead, so that attempts
        // sent from later polls still carry the trace's context.
        let (span, own_span) = if crate::trace::sampled_out() {
            (tracing::Span::current(), false)
        } else {
            let span = tracing::debug_span!(
                target: crate::trace::TARGET,
                "call",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                service = &**self.shared.pool.service(),
                outcome = tracing::field::Empty,
            );
            (span, true)
        };
        let inner = span.in_scope(|| self.stack.call(Attempt::new(request)));
        let woken = Arc::new(Woken {
            woken: AtomicBool::new(true),
            task: futures::task::AtomicWaker::new(),
        });
        ResponseFuture {
            inner,
            timeout: self.shared.policy.timeout,
            span,
            own_span,
            waker: Waker::from(woken.clone()),
            woken,
        }
    }
}

/// Whether the stack asked for the call to be polled again since it last
/// was, and the task to wake when it does.
///
/// A call is often polled when it did not ask to be: `join_all` polls every
/// future it holds whenever any one of them wakes, so a page's four lookups
/// are each polled for the wakes of all four. Such a poll returns at once,
/// without entering the call's span or polling the stack's layers.
struct Woken {
    woken: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Client`].
    pub struct ResponseFuture<Req, Resp>
    where
        Req: Clone,
        Req: Send,
        Req: Sync,
        Req: 'static,
        Resp: Send,
        Resp: 'static,
    {
        #[pin]
        inner: StackFuture<Req, Resp>,
        timeout: Duration,
        // Entered while the stack is polled: the call's own span, or in a
        // trace that is sampled out the span the call was made in.
        span: tracing::Span,
        // Whether `span` is the call's own, whose outcome it records.
        own_span: bool,
        // What the stack is polled with: it wakes `woken`, which wakes the
        // task.
        waker: Waker,
        woken: Arc<Woken>,
    }
}

impl<Req, Resp> Future for ResponseFuture<Req, Resp>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
{
    type Output = Result<Served<Resp>, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.woken.task.register(cx.waker());
        if !this.woken.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let timeout = *this.timeout;
        let result = {
            let _entered = this.span.enter();
            let mut cx = Context::from_waker(this.waker);
            std::task::ready!(this.inner.poll(&mut cx))
        };
        if !this.span.is_none() {
            if *this.own_span {
                let outcome = if result.is_ok() { "ok" } else { "error" };
                crate::trace::record_outcome(this.span, outcome);
            }
            // The call's span closes as it answers, not when the future is
            // dropped (`join_all` keeps every answered lookup until the last
            // one): a subscriber may end a span when it closes.
            *this.span = tracing::Span::none();
        }
        Poll::Ready(result.map_err(|error| CallError::from_box(error, timeout)))
    }
}

#[cfg(test)]
mod tests;
