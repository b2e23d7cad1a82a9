//! Hedging: an attempt still unanswered after a delay is raced by a second
//! one on another instance, and the first answer wins.
//!
//! This is the "hedged request" of Dean and Barroso's "The Tail at Scale"
//! (CACM, 2013), with a fixed delay as gRPC's hedging policy has it (gRFC A6,
//! `hedgingDelay`), rather than tower's `hedge` middleware, whose delay is a
//! latency percentile. A hedge goes only to an instance the first attempt did
//! not go to, only when the pool has one that would take it, and only within
//! the retry budget. The attempt that loses the race is not cancelled: the
//! pool lets it run on to its own end, so that its instance's breaker learns
//! how it went.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Sleep;
use tower::{
    BoxError, Layer, Service,
    retry::budget::{Budget as _, TpsBudget},
};

use crate::{Attempt, Pool, Served, error::Failed, pool};

/// Races a slow attempt with a second one; see the module docs.
pub struct Hedge<Req, Resp> {
    pool: Pool<Req, Resp>,
    after: Duration,
    budget: Arc<TpsBudget>,
}

impl<Req, Resp> Clone for Hedge<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            after: self.after,
            budget: self.budget.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Hedge<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// Puts a [`Hedge`] over a [`Pool`].
#[derive(Debug, Clone)]
pub struct HedgeLayer {
    after: Duration,
    budget: Arc<TpsBudget>,
}

impl HedgeLayer {
    /// Hedges attempts unanswered after `after`, within `budget`.
    pub fn new(after: Duration, budget: Arc<TpsBudget>) -> Self {
        Self { after, budget }
    }
}

impl<Req, Resp> Layer<Pool<Req, Resp>> for HedgeLayer {
    type Service = Hedge<Req, Resp>;

    fn layer(&self, pool: Pool<Req, Resp>) -> Hedge<Req, Resp> {
        Hedge {
            pool,
            after: self.after,
            budget: self.budget.clone(),
        }
    }
}

impl<Req, Resp> Service<Attempt<Req>> for Hedge<Req, Resp>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
{
    type Response = Served<Resp>;
    type Error = BoxError;
    type Future = ResponseFuture<Req, Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.pool.poll_ready(cx)
    }

    fn call(&mut self, attempt: Attempt<Req>) -> Self::Future {
        let spare = attempt.clone();
        ResponseFuture {
            first: Some(self.pool.call(attempt)),
            second: None,
            timer: tokio::time::sleep(self.after),
            spare: Some(spare),
            hedge: self.clone(),
            failed: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Hedge`]: the first attempt's, or the hedge's.
    pub struct ResponseFuture<Req, Resp>
    where
        Req: Send,
        Req: 'static,
        Resp: Send,
        Resp: 'static,
    {
        first: Option<pool::ResponseFuture<Req, Resp>>,
        second: Option<pool::ResponseFuture<Req, Resp>>,
        #[pin]
        timer: Sleep,
        // The request for the hedge, until it is sent (or not).
        spare: Option<Attempt<Req>>,
        hedge: Hedge<Req, Resp>,
        // The first of the two to fail, while the other runs.
        failed: Option<BoxError>,
    }
}

/// Polls one of the two attempts; `Some` once it has ended.
fn poll_attempt<Req: Send + 'static, Resp: Send + 'static>(
    slot: &mut Option<pool::ResponseFuture<Req, Resp>>,
    cx: &mut Context<'_>,
) -> Option<Result<Served<Resp>, BoxError>> {
    let future = slot.as_mut()?;
    let Poll::Ready(result) = Pin::new(future).poll(cx) else {
        return None;
    };
    *slot = None;
    Some(result)
}

/// The error of a hedged attempt that failed twice: the later error, naming
/// every instance either went to.
fn merge(earlier: BoxError, later: BoxError) -> BoxError {
    match (earlier.downcast::<Failed>(), later.downcast::<Failed>()) {
        (Ok(earlier), Ok(mut later)) => {
            let mut tried = earlier.tried;
            tried.append(&mut later.tried);
            later.tried = tried;
            later
        }
        (_, Ok(later)) => later,
        (_, Err(later)) => later,
    }
}

impl<Req, Resp> Future for ResponseFuture<Req, Resp>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
{
    type Output = Result<Served<Resp>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            for slot in [&mut *this.first, &mut *this.second] {
                match poll_attempt(slot, cx) {
                    None => {}
                    Some(Ok(served)) => return Poll::Ready(Ok(served)),
                    Some(Err(error)) => {
                        *this.failed = Some(match this.failed.take() {
                            Some(earlier) => merge(earlier, error),
                            None => error,
                        });
                    }
                }
            }
            let running = this.first.is_some() || this.second.is_some();
            // Once the first attempt has failed, there is nothing to race:
            // its failure is the call's to deal with (the retry layer's).
            if !running || this.spare.is_none() || this.first.is_none() {
                if !running {
                    let error = this.failed.take().expect("an attempt that ended failed");
                    return Poll::Ready(Err(error));
                }
                return Poll::Pending;
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let mut spare = this.spare.take().expect("checked above");
            if let Some(instance) = this.first.as_ref().and_then(|f| f.instance()) {
                spare.avoid.push(instance.address.clone());
            }
            let hedge = &mut *this.hedge;
            if !hedge.pool.can_serve(&spare)
                || !matches!(hedge.pool.poll_ready(cx), Poll::Ready(Ok(())))
                || !hedge.budget.withdraw()
            {
                return Poll::Pending;
            }
            tracing::debug!(service = %hedge.pool.service(), "hedging");
            *this.second = Some(hedge.pool.call(spare));
        }
    }
}
