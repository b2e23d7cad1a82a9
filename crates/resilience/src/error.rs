//! Errors of the stack, named after what happened.

/// No instance can take the call: none is known, or every breaker is open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("all services are down")]
pub struct AllServicesDown(pub(crate) ());

/// The breaker opened between the readiness check and the call; the call was
/// not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the breaker opened before the call was sent")]
pub struct BreakerOpen(pub(crate) ());

/// Why a call through the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No instance could take the call; it failed at once.
    #[error(transparent)]
    AllServicesDown(#[from] AllServicesDown),
    /// The last attempt got no answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The call's deadline passed before any attempt succeeded.
    #[error("the deadline of {0:?} passed")]
    DeadlineExceeded(std::time::Duration),
    /// The instance answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// Something else failed on the way.
    #[error("{0}")]
    Other(tower::BoxError),
}

impl CallError {
    /// Sorts an error out of the stack into its kind.
    pub(crate) fn from_box(error: tower::BoxError, timeout: std::time::Duration) -> Self {
        let error = match error.downcast::<AllServicesDown>() {
            Ok(e) => return CallError::AllServicesDown(*e),
            Err(error) => error,
        };
        let error = match error.downcast::<tonic::Status>() {
            // tonic enforces `grpc-timeout` on the client too, as CANCELLED.
            Ok(status)
                if status.code() == tonic::Code::Cancelled
                    && crate::breaker::caused_by_transport(&status) =>
            {
                return CallError::Timeout(timeout);
            }
            Ok(status) => return CallError::Status(*status),
            Err(error) => error,
        };
        if error.is::<tower::timeout::error::Elapsed>() {
            return CallError::Timeout(timeout);
        }
        CallError::Other(error)
    }
}
