//! What travels through the stack (an [`Attempt`] down, a [`Served`] answer
//! up), and the innermost service of every instance: the gRPC call.

use std::{
    cell::RefCell,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{TryFutureExt as _, future::BoxFuture};
use tokio::time::Instant;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tower::Service;

use crate::breaker::{BreakerSnapshot, EndpointLabel};

/// Calls one gRPC method on a channel: the only service-specific part of the
/// stack. A `Fn(Channel, tonic::Request<Req>) -> Future<Output = Result<Resp, Status>>`.
pub(crate) type Method<Req, Resp> = Arc<
    dyn Fn(
            Channel,
            tonic::Request<Req>,
        ) -> BoxFuture<'static, Result<tonic::Response<Resp>, tonic::Status>>
        + Send
        + Sync,
>;

/// One attempt of a call, as it goes down the stack below the [`Client`]:
/// the request, the call's deadline, and the instances it must not go to.
///
/// The layers that try again (retry, hedge) add the instances already tried
/// to [`Attempt::avoid`], so the pool picks another one; nothing else keeps
/// that record.
///
/// [`Client`]: crate::Client
#[derive(Debug, Clone)]
pub struct Attempt<Req> {
    /// The request.
    pub request: Req,
    /// When the whole call must be over, if it is bounded; what is left of it
    /// when an attempt is sent goes to the server as `grpc-timeout`.
    pub deadline: Option<Instant>,
    /// The addresses of the instances this attempt must not go to.
    pub avoid: Vec<Arc<str>>,
}

impl<Req> Attempt<Req> {
    /// A first attempt: no deadline yet, nothing to avoid.
    pub fn new(request: Req) -> Self {
        Self {
            request,
            deadline: None,
            avoid: Vec::new(),
        }
    }

    /// Whether the instance at `address` is to be avoided.
    pub fn avoids(&self, address: &str) -> bool {
        self.avoid.iter().any(|a| &**a == address)
    }
}

/// An answer, with the instance that gave it.
#[derive(Debug, Clone)]
pub struct Served<Resp> {
    /// The answer.
    pub response: Resp,
    /// Which instance answered.
    pub instance: Arc<EndpointLabel>,
}

/// The innermost service of an instance: calls the method on the instance's
/// channel, sending what is left of the attempt's time as `grpc-timeout`.
///
/// Always ready: the channel connects lazily and reports a refused
/// connection as the call's error, at once.
pub struct GrpcCall<Req, Resp> {
    channel: Channel,
    method: Method<Req, Resp>,
    /// The longest one attempt may take: the `grpc-timeout` sent when the
    /// call's deadline is further away, or absent.
    timeout: Duration,
}

impl<Req, Resp> GrpcCall<Req, Resp> {
    pub(crate) fn new(channel: Channel, method: Method<Req, Resp>, timeout: Duration) -> Self {
        Self {
            channel,
            method,
            timeout,
        }
    }
}

impl<Req, Resp> Clone for GrpcCall<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            channel: self.channel.clone(),
            method: self.method.clone(),
            timeout: self.timeout,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for GrpcCall<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcCall")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Takes the message out of a tonic response.
fn into_inner<Resp>(response: tonic::Response<Resp>) -> Resp {
    response.into_inner()
}

impl<Req, Resp> Service<Attempt<Req>> for GrpcCall<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = tonic::Status;
    type Future = futures::future::MapOk<
        BoxFuture<'static, Result<tonic::Response<Resp>, tonic::Status>>,
        fn(tonic::Response<Resp>) -> Resp,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt<Req>) -> Self::Future {
        let left = match attempt.deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(self.timeout),
            None => self.timeout,
        };
        let mut request = tonic::Request::new(attempt.request);
        request
            .metadata_mut()
            .insert(GRPC_TIMEOUT, grpc_timeout(left));
        crate::trace::inject_metadata(request.metadata_mut());
        (self.method)(self.channel.clone(), request).map_ok(into_inner as fn(_) -> _)
    }
}

/// The header that carries an attempt's deadline to the server.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The `grpc-timeout` an attempt sends for the time it has `left`: whole
/// milliseconds, rounded down (the server must not think it has more time than
/// the client gives it), at least one, and at most the 8 digits the gRPC spec
/// allows (27 hours).
///
/// Whole milliseconds keep the header's value the same from one call to the
/// next (a fresh attempt sends its timeout less the microseconds since it
/// began, which rounds down to a millisecond less), so HPACK sends it as an
/// index into the connection's table. Microseconds, tonic's choice for a
/// duration under 100 s (`Request::set_timeout`), make every value new: each
/// call then adds an entry to the table of both ends, evicting others, which
/// costs the client ~10 µs of CPU per call at 64 callers (bench scenario 1).
/// The value is formatted once per thread and millisecond count.
fn grpc_timeout(left: Duration) -> MetadataValue<Ascii> {
    const MAX_MILLIS: u128 = 99_999_999;
    thread_local! {
        static LAST: RefCell<Option<(u128, MetadataValue<Ascii>)>> = const { RefCell::new(None) };
    }
    let millis = left.as_millis().clamp(1, MAX_MILLIS);
    LAST.with_borrow_mut(|last| match last {
        Some((cached, value)) if *cached == millis => value.clone(),
        _ => {
            let value = MetadataValue::try_from(format!("{millis}m"))
                .expect("digits and a unit are a valid header value");
            *last = Some((millis, value.clone()));
            value
        }
    })
}

/// What a dashboard shows of one instance, or of the breaker an address
/// left behind.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// Its id in the registry (the last one registered at the address, for
    /// an address no longer listed).
    pub instance: String,
    /// Its address.
    pub address: String,
    /// Its breaker and counts.
    pub breaker: BreakerSnapshot,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::grpc_timeout;

    #[test]
    fn grpc_timeouts_are_whole_milliseconds_rounded_down() {
        let header = |left| grpc_timeout(left).to_str().unwrap().to_owned();
        assert_eq!(header(Duration::from_micros(999_873)), "999m");
        assert_eq!(header(Duration::from_secs(1)), "1000m");
        // The same count again, from the thread's cache.
        assert_eq!(header(Duration::from_micros(1_000_999)), "1000m");
        assert_eq!(header(Duration::from_micros(1_999)), "1m");
        // An attempt out of time still sends the smallest timeout, not zero.
        assert_eq!(header(Duration::from_micros(300)), "1m");
        assert_eq!(header(Duration::ZERO), "1m");
        assert_eq!(header(Duration::from_secs(200_000)), "99999999m");
    }
}
