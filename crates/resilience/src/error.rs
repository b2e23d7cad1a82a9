//! Errors of the stack, named after what happened.

use std::{sync::Arc, time::Duration};

use tower::BoxError;

use crate::EndpointLabel;

/// Declares an error that carries nothing but its name and message.
macro_rules! event_error {
    ($(#[$doc:meta])* $name:ident, $message:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, thiserror::Error)]
        #[error($message)]
        pub struct $name(pub(crate) ());
    };
}

event_error!(
    /// No instance can take the call: none is known, or every breaker is open.
    AllServicesDown,
    "all services are down"
);
event_error!(
    /// The breaker opened between the readiness check and the call; the call
    /// was not sent.
    BreakerOpen,
    "the breaker opened before the call was sent"
);
event_error!(
    /// A retry or hedge found no instance it had not tried yet; nothing was
    /// sent.
    NoOtherInstance,
    "no instance left that this call has not tried"
);

/// The call's deadline passed before any attempt succeeded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the deadline of {0:?} passed")]
pub struct DeadlineElapsed(pub Duration);

/// An attempt that went to an instance and failed there, with the instances
/// it went to: the last one is the one whose error this is (a hedged attempt
/// that failed on both of its instances names both).
#[derive(Debug, thiserror::Error)]
#[error("{} failed: {error}", .tried.last().map_or("an instance", |i| &*i.address))]
pub struct Failed {
    pub(crate) tried: Vec<Arc<EndpointLabel>>,
    #[source]
    pub(crate) error: BoxError,
}

impl Failed {
    pub(crate) fn new(instance: Arc<EndpointLabel>, error: BoxError) -> Self {
        Self {
            tried: vec![instance],
            error,
        }
    }

    /// The instance whose error this is.
    pub fn instance(&self) -> Option<&Arc<EndpointLabel>> {
        self.tried.last()
    }

    /// Every instance the attempt went to.
    pub fn tried(&self) -> &[Arc<EndpointLabel>] {
        &self.tried
    }

    /// What went wrong there.
    pub fn error(&self) -> &BoxError {
        &self.error
    }
}

/// Why a call through the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No instance could take the call; it failed at once.
    #[error(transparent)]
    AllServicesDown(#[from] AllServicesDown),
    /// The last attempt got no answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The call's deadline passed before any attempt succeeded.
    #[error("the deadline of {0:?} passed")]
    DeadlineExceeded(Duration),
    /// The instance answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// Something else failed on the way.
    #[error("{0}")]
    Other(BoxError),
}

impl CallError {
    /// Sorts an error out of the stack into its kind; `timeout` is the
    /// attempt timeout a timed-out attempt is reported with.
    pub(crate) fn from_box(error: BoxError, timeout: Duration) -> Self {
        let error = match error.downcast::<Failed>() {
            Ok(failed) => failed.error,
            Err(error) => error,
        };
        let error = match error.downcast::<AllServicesDown>() {
            Ok(e) => return CallError::AllServicesDown(*e),
            Err(error) => error,
        };
        let error = match error.downcast::<DeadlineElapsed>() {
            Ok(e) => return CallError::DeadlineExceeded(e.0),
            Err(error) => error,
        };
        if is_timeout(&error) {
            return CallError::Timeout(timeout);
        }
        match error.downcast::<tonic::Status>() {
            Ok(status) => CallError::Status(*status),
            Err(error) => CallError::Other(error),
        }
    }
}

/// Whether an attempt's error is its timeout: the stack's own timer, or
/// tonic's, which enforces `grpc-timeout` on the client too, as CANCELLED.
pub(crate) fn is_timeout(error: &BoxError) -> bool {
    error.is::<tower::timeout::error::Elapsed>()
        || error.downcast_ref::<tonic::Status>().is_some_and(|status| {
            status.code() == tonic::Code::Cancelled && crate::breaker::caused_by_transport(status)
        })
}
