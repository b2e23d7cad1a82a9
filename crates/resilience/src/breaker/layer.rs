//! The breaker as a tower layer.

use tower::Layer;

use super::{Breaker, BreakerPolicy, CircuitBreaker, EndpointLabel};

/// Wraps one endpoint's service in a fresh [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    label: EndpointLabel,
    policy: BreakerPolicy,
}

impl CircuitBreakerLayer {
    /// A layer for the endpoint `label`, with `policy`.
    pub fn new(label: EndpointLabel, policy: BreakerPolicy) -> Self {
        Self { label, policy }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::new(inner, Breaker::new(self.label.clone(), self.policy))
    }
}
