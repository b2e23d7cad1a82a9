//! Retries, as a tower [`retry::Policy`](tower::retry::Policy) under a retry
//! budget.
//!
//! A failed attempt is tried again on an instance it has not tried, as gRPC's
//! retry design has it (gRFC A6: retry only what failed on the way or at an
//! unwell server, never an answer; a budget, not a count alone, bounds the
//! extra load an outage can cause). The budget is tower's `TpsBudget`: every
//! call deposits, every retry or hedge withdraws, and over a 10 s window at
//! most a fraction of the calls (plus a floor of 10 a second) may be tried
//! again.
//!
//! The instance that failed comes back with the error ([`Failed`]); the
//! policy adds it to the attempt's [`Attempt::avoid`] list, and the pool picks
//! among the others. A retry is made only when the pool has another instance
//! that would take it, so that the budget is not spent on retries that
//! cannot go anywhere; when the last retry found no instance after all, the
//! call ends with the error that caused it, not with that.

use std::sync::Arc;

use tokio::time::Instant;
use tower::{
    BoxError,
    retry::budget::{Budget as _, TpsBudget},
};

use crate::{
    Attempt, Pool, Served,
    breaker::{Outcome, classify},
    error::{BreakerOpen, Failed, NoOtherInstance},
};

/// Decides whether a failed attempt is tried again, and where not to.
pub struct RetryPolicy<Req, Resp> {
    /// Where the instances are, to ask whether a retry could go anywhere.
    pool: Pool<Req, Resp>,
    budget: Arc<TpsBudget>,
    /// Retries a call may make.
    retries: u32,
    /// Retries this call may still make.
    left: u32,
    /// The error that caused the retry in flight, to end the call with if the
    /// retry finds no instance after all.
    cause: Option<BoxError>,
}

impl<Req, Resp> RetryPolicy<Req, Resp> {
    /// Up to `retries` retries per call, each on an instance of `pool` not
    /// tried yet, within `budget`.
    pub fn new(pool: Pool<Req, Resp>, budget: Arc<TpsBudget>, retries: u32) -> Self {
        Self {
            pool,
            budget,
            retries,
            left: retries,
            cause: None,
        }
    }
}

impl<Req, Resp> Clone for RetryPolicy<Req, Resp> {
    /// A policy for a new call: the retries of a call are counted afresh.
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            budget: self.budget.clone(),
            retries: self.retries,
            left: self.retries,
            cause: None,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for RetryPolicy<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("retries", &self.retries)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

/// Whether an attempt's failure warrants another try elsewhere: the
/// instance failed (by the breaker's definition), or the call was never sent
/// because its breaker opened first.
fn is_retryable(error: &BoxError) -> bool {
    error.is::<BreakerOpen>() || classify(error) == Outcome::Failure
}

impl<Req, Resp> tower::retry::Policy<Attempt<Req>, Served<Resp>, BoxError>
    for RetryPolicy<Req, Resp>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
{
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        attempt: &mut Attempt<Req>,
        result: &mut Result<Served<Resp>, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_mut().err()?;
        if error.is::<NoOtherInstance>() {
            if let Some(cause) = self.cause.take() {
                *error = cause;
            }
            return None;
        }
        let failed = error.downcast_ref::<Failed>()?;
        let retry = self.left > 0
            && is_retryable(&failed.error)
            && attempt
                .deadline
                .is_none_or(|deadline| Instant::now() < deadline);
        tracing::debug!(
            service = %self.pool.service(),
            instance = ?failed.instance().map(|i| &i.instance),
            error = %failed.error,
            retry,
            "attempt failed"
        );
        if !retry {
            return None;
        }
        let before = attempt.avoid.len();
        attempt
            .avoid
            .extend(failed.tried.iter().map(|instance| instance.address.clone()));
        if !self.pool.can_serve(attempt) || !self.budget.withdraw() {
            attempt.avoid.truncate(before);
            return None;
        }
        self.left -= 1;
        // The error is done with unless the retry finds no instance after
        // all; a unit placeholder takes its place (a `Box` of a zero-sized
        // value allocates nothing).
        self.cause = Some(std::mem::replace(error, Box::new(NoOtherInstance(()))));
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, attempt: &Attempt<Req>) -> Option<Attempt<Req>> {
        if self.left == self.retries {
            // Called once per call before its first attempt: the call's
            // deposit. Retries and hedges alike draw on it.
            self.budget.deposit();
        }
        (self.left > 0).then(|| attempt.clone())
    }
}
