//! A strict round robin over the instances sorted by address, skipping those
//! that are not ready: the original's policy, kept for the walkthrough, where
//! calls visibly interleave between instances.
//!
//! It shares tower's `ReadyCache` with the p2c balancer, so readiness (and so
//! the circuit breakers) works the same in both.

use std::{
    hash::Hash,
    pin::Pin,
    task::{Context, Poll},
};

use tower::{
    BoxError, Service,
    discover::{Change, Discover},
    ready_cache::ReadyCache,
};

/// Picks the next ready instance in address order for each call.
pub(crate) struct RoundRobin<D, Req>
where
    D: Discover,
    D::Key: Hash,
{
    discover: D,
    services: ReadyCache<D::Key, D::Service, Req>,
    /// The keys, sorted (keys sort by address).
    order: Vec<D::Key>,
    /// Where the next search starts in `order`.
    next: usize,
    /// The instance chosen by `poll_ready` for the next `call`.
    chosen: Option<D::Key>,
}

impl<D, Req> RoundRobin<D, Req>
where
    D: Discover + Unpin,
    D::Key: Hash + Ord + Clone,
    D::Error: Into<BoxError>,
    D::Service: Service<Req>,
    <D::Service as Service<Req>>::Error: Into<BoxError>,
{
    pub(crate) fn new(discover: D) -> Self {
        Self {
            discover,
            services: ReadyCache::default(),
            order: Vec::new(),
            next: 0,
            chosen: None,
        }
    }

    fn update_from_discover(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        while let Poll::Ready(change) = Pin::new(&mut self.discover).poll_discover(cx) {
            match change.transpose().map_err(Into::into)? {
                None => break,
                Some(Change::Insert(key, service)) => {
                    if let Err(at) = self.order.binary_search(&key) {
                        self.order.insert(at, key.clone());
                    }
                    self.services.push(key, service);
                }
                Some(Change::Remove(key)) => {
                    if let Ok(at) = self.order.binary_search(&key) {
                        self.order.remove(at);
                    }
                    self.services.evict(&key);
                }
            }
        }
        Ok(())
    }
}

impl<D, Req> Service<Req> for RoundRobin<D, Req>
where
    D: Discover + Unpin,
    D::Key: Hash + Ord + Clone,
    D::Error: Into<BoxError>,
    D::Service: Service<Req>,
    <D::Service as Service<Req>>::Error: Into<BoxError>,
{
    type Response = <D::Service as Service<Req>>::Response;
    type Error = BoxError;
    type Future = futures::future::MapErr<
        <D::Service as Service<Req>>::Future,
        fn(<D::Service as Service<Req>>::Error) -> BoxError,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.update_from_discover(cx)?;
        loop {
            match self.services.poll_pending(cx) {
                Poll::Ready(Ok(())) | Poll::Pending => break,
                Poll::Ready(Err(failed)) => {
                    // An endpoint whose readiness failed is dropped until
                    // discovery inserts it again.
                    tracing::debug!(error = %failed, "dropping a failed endpoint");
                }
            }
        }
        if let Some(key) = &self.chosen {
            if matches!(self.services.check_ready(cx, key), Ok(true)) {
                return Poll::Ready(Ok(()));
            }
            self.chosen = None;
        }
        let len = self.order.len();
        for step in 0..len {
            let at = (self.next + step) % len;
            let key = &self.order[at];
            if matches!(self.services.check_ready(cx, key), Ok(true)) {
                self.chosen = Some(key.clone());
                self.next = (at + 1) % len;
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }

    fn call(&mut self, request: Req) -> Self::Future {
        use futures::TryFutureExt as _;
        let key = self
            .chosen
            .take()
            .expect("poll_ready chose an instance before call");
        self.services
            .call_ready(&key, request)
            .map_err(Into::into as fn(_) -> BoxError)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use tower::ServiceExt as _;
    use tower_test::mock;

    use super::*;

    type Handles = Vec<(&'static str, mock::Handle<&'static str, &'static str>)>;

    /// Makes `n` calls; returns which instance took each.
    async fn rotate<D>(
        rr: &mut RoundRobin<D, &'static str>,
        handles: &mut Handles,
        n: usize,
    ) -> Vec<&'static str>
    where
        D: Discover<Key = &'static str, Service = mock::Mock<&'static str, &'static str>> + Unpin,
        D::Error: Into<BoxError>,
    {
        let mut order = Vec::new();
        for _ in 0..n {
            rr.ready().await.unwrap();
            let response = rr.call("camera");
            for (key, handle) in handles.iter_mut() {
                if let std::task::Poll::Ready(Some((_, reply))) = handle.poll_request() {
                    order.push(*key);
                    reply.send_response("45");
                }
            }
            response.await.unwrap();
        }
        order
    }

    #[tokio::test]
    async fn rotates_in_key_order_and_skips_instances_not_ready() {
        let mut handles = Vec::new();
        let mut changes = Vec::new();
        // Inserted out of order: the rotation follows the keys' order.
        for key in ["c", "a", "b"] {
            let (service, handle) = mock::pair::<&'static str, &'static str>();
            changes.push(Ok::<_, std::convert::Infallible>(Change::Insert(
                key, service,
            )));
            handles.push((key, handle));
        }
        let discover = Box::pin(futures::stream::iter(changes).chain(futures::stream::pending()));
        let mut rr = RoundRobin::new(discover);

        let order = rotate(&mut rr, &mut handles, 6).await;
        assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);

        // b stops being ready. It already promised one call (tower's readiness
        // is a reservation), which it gets; from then on the rotation skips it.
        handles
            .iter_mut()
            .find(|(k, _)| *k == "b")
            .unwrap()
            .1
            .allow(0);
        let order = rotate(&mut rr, &mut handles, 7).await;
        assert_eq!(order, ["a", "b", "c", "a", "c", "a", "c"]);
    }
}
