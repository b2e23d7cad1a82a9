//! One instance as a tower service, and the set of all of them.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    sync::{Arc, OnceLock, RwLock, Weak},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tower::Service;

use crate::breaker::{Breaker, BreakerSnapshot, CircuitBreaker, EndpointLabel};

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

/// One attempt of a call on its way to an instance.
#[derive(Debug)]
pub(crate) struct Attempt<Req> {
    pub(crate) request: Req,
    /// When the attempt must be over: the time left at the moment it is sent
    /// goes as `grpc-timeout`, which tonic also enforces on this side.
    pub(crate) deadline: tokio::time::Instant,
    /// Filled in by the instance that takes the attempt.
    pub(crate) taken_by: Arc<OnceLock<Arc<EndpointLabel>>>,
}

impl<Req> Attempt<Req> {
    pub(crate) fn new(request: Req, deadline: tokio::time::Instant) -> Self {
        Self {
            request,
            deadline,
            taken_by: Arc::new(OnceLock::new()),
        }
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

/// The innermost service of an endpoint: calls the method on the instance's
/// channel. Always ready: the channel connects lazily and reports a refused
/// connection as the call's error, at once.
pub(crate) struct GrpcEndpoint<Req, Resp> {
    pub(crate) channel: Channel,
    pub(crate) label: Arc<EndpointLabel>,
    pub(crate) method: Method<Req, Resp>,
    /// For the instance's place in the address-sorted list, which the log
    /// shows. Weak: the set holds this endpoint, which must not keep the set.
    pub(crate) endpoints: Weak<Endpoints<Req, Resp>>,
}

impl<Req, Resp> Clone for GrpcEndpoint<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            channel: self.channel.clone(),
            label: self.label.clone(),
            method: self.method.clone(),
            endpoints: self.endpoints.clone(),
        }
    }
}

impl<Req, Resp> Service<Attempt<Req>> for GrpcEndpoint<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Served<Resp>;
    type Error = tonic::Status;
    type Future = BoxFuture<'static, Result<Served<Resp>, tonic::Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt<Req>) -> Self::Future {
        let _ = attempt.taken_by.set(self.label.clone());
        // The instance's place in the address-sorted list is worked out only
        // when the line is logged: it takes a lock and a scan.
        if tracing::enabled!(tracing::Level::INFO) {
            let index = self
                .endpoints
                .upgrade()
                .and_then(|endpoints| endpoints.position(&self.label))
                .map_or(0, |i| i + 1);
            tracing::info!(
                service = %self.label.service,
                instance = %self.label.instance,
                address = %self.label.address,
                "{} using instance {index}: {}", self.label.service, self.label.address
            );
        }
        let mut request = tonic::Request::new(attempt.request);
        request.metadata_mut().insert(
            GRPC_TIMEOUT,
            grpc_timeout(
                attempt
                    .deadline
                    .saturating_duration_since(tokio::time::Instant::now()),
            ),
        );
        let call = (self.method)(self.channel.clone(), request);
        let label = self.label.clone();
        Box::pin(async move {
            let response = call.await?;
            Ok(Served {
                response: response.into_inner(),
                instance: label,
            })
        })
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
/// cost the client ~10 µs of CPU per call at 64 callers (bench scenario 1).
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

/// The stack used for retries and hedges, which pick their instance directly
/// rather than through the balancer: the breaker over a timeout over the call.
pub(crate) type DirectService<Req, Resp> =
    CircuitBreaker<tower::timeout::Timeout<GrpcEndpoint<Req, Resp>>>;

/// What a dashboard shows of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// Its id in the registry.
    pub instance: String,
    /// Its address.
    pub address: String,
    /// Its breaker and counts.
    pub breaker: BreakerSnapshot,
}

/// The key of an instance: sorted by address, as the original listed them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EndpointKey {
    pub(crate) address: Arc<str>,
    pub(crate) instance: Arc<str>,
}

pub(crate) struct Entry<Req, Resp> {
    pub(crate) label: Arc<EndpointLabel>,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) direct: DirectService<Req, Resp>,
}

/// Every instance the client knows, sorted by address, with its breaker.
/// Kept up to date by the discovery task as soon as the registry reports a
/// change, whether or not calls are being made.
pub(crate) struct Endpoints<Req, Resp> {
    entries: RwLock<BTreeMap<EndpointKey, Entry<Req, Resp>>>,
}

impl<Req, Resp> Endpoints<Req, Resp> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: RwLock::new(BTreeMap::new()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<EndpointKey, Entry<Req, Resp>>> {
        self.entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<EndpointKey, Entry<Req, Resp>>> {
        self.entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, key: EndpointKey, entry: Entry<Req, Resp>) {
        self.write().insert(key, entry);
    }

    /// Removes the instance with this id; returns its key.
    pub(crate) fn remove(&self, instance: &str) -> Option<EndpointKey> {
        let mut entries = self.write();
        let key = entries.keys().find(|k| &*k.instance == instance)?.clone();
        entries.remove(&key);
        Some(key)
    }

    /// The key of the instance with this id.
    pub(crate) fn key_of(&self, instance: &str) -> Option<EndpointKey> {
        self.read()
            .keys()
            .find(|k| &*k.instance == instance)
            .cloned()
    }

    /// Where an instance stands in the address-sorted list, from 0.
    pub(crate) fn position(&self, label: &EndpointLabel) -> Option<usize> {
        self.read()
            .keys()
            .position(|k| k.address == label.address && k.instance == label.instance)
    }

    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no instance could take a call now: none is known, or each one's
    /// breaker is open (or busy with its probe).
    pub(crate) fn none_ready(&self) -> bool {
        !self.read().values().any(|e| e.breaker.would_admit())
    }

    /// The least loaded instance that could take a call now, other than those
    /// in `tried`, ready to call.
    pub(crate) fn pick_other(
        &self,
        tried: &[Arc<EndpointLabel>],
    ) -> Option<DirectService<Req, Resp>> {
        let entries = self.read();
        entries
            .values()
            .filter(|e| {
                !tried.iter().any(|t| t.instance == e.label.instance) && e.breaker.would_admit()
            })
            .min_by(|a, b| a.breaker.cost().total_cmp(&b.breaker.cost()))
            .map(|e| e.direct.clone())
    }

    pub(crate) fn snapshot(&self) -> Vec<EndpointSnapshot> {
        self.read()
            .iter()
            .map(|(key, entry)| EndpointSnapshot {
                instance: key.instance.to_string(),
                address: key.address.to_string(),
                breaker: entry.breaker.snapshot(),
            })
            .collect()
    }
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
