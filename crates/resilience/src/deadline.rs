//! The call's deadline: one bound over every attempt of a call, sent along
//! to the servers as `grpc-timeout` (each attempt sends what is left of it,
//! as gRPC's deadline propagation does).
//!
//! Unlike tower's `Timeout`, the deadline is written into the
//! [`Attempt`] for the layers below, and its error is [`DeadlineElapsed`].
//! Attempts still running when it passes are not cancelled: the pool lets
//! them run on to their own timeout, so that their instances' breakers learn
//! how they ended.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

use crate::{Attempt, error::DeadlineElapsed};

/// Bounds each call by a deadline; see the module docs.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    deadline: Duration,
    attempt_timeout: Option<Duration>,
}

/// Puts a [`Deadline`] over a service of attempts.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    deadline: Duration,
    attempt_timeout: Option<Duration>,
}

impl DeadlineLayer {
    /// Calls must end within `deadline`.
    pub fn new(deadline: Duration) -> Self {
        Self {
            deadline,
            attempt_timeout: None,
        }
    }

    /// Tells the layer that every attempt below ends by its own timer within
    /// `timeout`: the deadline's timer is then armed only once an attempt
    /// could outlive the deadline (a lone first attempt sent at once never
    /// does, when the deadline is at least the timeout). Timers are not free:
    /// arming the earliest one wakes the runtime's timer driver, which a
    /// lone call pays for measurably.
    pub fn attempts_end_within(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
        }
    }
}

impl<S, Req> Service<Attempt<Req>> for Deadline<S>
where
    S: Service<Attempt<Req>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut attempt: Attempt<Req>) -> Self::Future {
        let deadline = Instant::now() + self.deadline;
        let deadline = attempt.deadline.map_or(deadline, |d| d.min(deadline));
        attempt.deadline = Some(deadline);
        ResponseFuture {
            inner: self.inner.call(attempt),
            deadline,
            length: self.deadline,
            attempt_timeout: self.attempt_timeout,
            timer: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Deadline`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        deadline: Instant,
        length: Duration,
        attempt_timeout: Option<Duration>,
        // Boxed: it is armed on few calls.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        if this.timer.is_none() {
            // An attempt sent now would end by its own timer after the
            // deadline: from now on the deadline needs a timer of its own.
            let needed = this
                .attempt_timeout
                .is_none_or(|timeout| Instant::now() + timeout > *this.deadline);
            if !needed {
                return Poll::Pending;
            }
            *this.timer = Some(Box::pin(tokio::time::sleep_until(*this.deadline)));
        }
        let timer = this.timer.as_mut().expect("armed above");
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(DeadlineElapsed(*this.length).into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
