//! The breaker as a tower layer.

use std::sync::Arc;

use tower::Layer;

use super::{Breaker, CircuitBreaker};

/// Wraps a service in a [`CircuitBreaker`] with the given breaker.
///
/// The breaker is given, not made by the layer, because it belongs to the
/// endpoint's address rather than to the service the layer wraps: the pool
/// keeps one per address and hands it back when an instance registers there
/// again (see `Pool`). Every service the layer wraps shares it.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<Breaker>,
}

impl CircuitBreakerLayer {
    /// A layer that guards what it wraps with `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::new(inner, self.breaker.clone())
    }
}
