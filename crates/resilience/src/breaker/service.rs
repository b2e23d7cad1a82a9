//! The breaker as a tower service.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower::{BoxError, Service, load::Load};

use super::{Breaker, CallKind, Gate, Outcome, classify};

/// Wraps one endpoint's service: the endpoint is ready only while its breaker
/// lets calls through, and every call's outcome feeds the breaker.
///
/// Clones share the breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S> CircuitBreaker<S> {
    /// Guards `inner` with `breaker`.
    pub fn new(inner: S, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }

    /// The breaker, for snapshots.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for CircuitBreaker<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.breaker.gate(cx.waker()) {
            Gate::Pass => self.inner.poll_ready(cx).map_err(Into::into),
            // Never an error: a balancer drops endpoints whose readiness fails.
            Gate::Wait => Poll::Pending,
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.admit() {
            Some(kind) => ResponseFuture {
                inner: Some(self.inner.call(request)),
                guard: Some(Guard {
                    breaker: self.breaker.clone(),
                    kind,
                    started: Instant::now(),
                    reported: false,
                }),
            },
            None => ResponseFuture {
                inner: None,
                guard: None,
            },
        }
    }
}

impl<S: Load> Load for CircuitBreaker<S> {
    type Metric = S::Metric;

    fn load(&self) -> S::Metric {
        self.inner.load()
    }
}

/// Reports a call's end to its breaker exactly once: with the outcome when
/// the call completes, or as neutral when the call is dropped unfinished.
#[derive(Debug)]
struct Guard {
    breaker: Arc<Breaker>,
    kind: CallKind,
    started: Instant,
    reported: bool,
}

impl Guard {
    fn report(&mut self, outcome: Outcome) {
        if !self.reported {
            self.reported = true;
            self.breaker
                .record(self.kind, outcome, self.started.elapsed());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.report(Outcome::Neutral);
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`CircuitBreaker`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        guard: Option<Guard>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(crate::BreakerOpen(()).into()));
        };
        let result = std::task::ready!(inner.poll(cx)).map_err(Into::into);
        if let Some(mut guard) = this.guard.take() {
            let outcome = match &result {
                Ok(_) => Outcome::Success,
                Err(error) => classify(error),
            };
            guard.report(outcome);
        }
        Poll::Ready(result)
    }
}
