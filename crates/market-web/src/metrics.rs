//! `/metrics` in the Prometheus (OpenMetrics) text format.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use ratings_client::RatingsClient;
use resilience::BreakerState;

/// How a page found a rating in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Lookup {
    /// Fresh enough to serve as it is.
    Hit,
    /// Served, with a background refresh.
    Stale,
    /// Asked of the service.
    Miss,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    cache: Lookup,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    outcome: &'static str,
}

/// The web app's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pages: Histogram,
    lookups: Family<LookupLabels, Counter>,
    results: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Metrics, with per-instance figures read from `client` at each scrape.
    pub fn new(client: Option<RatingsClient>) -> Arc<Self> {
        let mut registry = Registry::default();
        let pages = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "market_page_seconds",
            "Time to render the shop page",
            pages.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "market_ratings_cache",
            "Rating lookups by what the cache did",
            lookups.clone(),
        );
        let results = Family::<ResultLabels, Counter>::default();
        registry.register(
            "market_ratings_calls",
            "Calls to the ratings service by outcome",
            results.clone(),
        );
        if let Some(client) = client {
            registry.register_collector(Box::new(Instances(client)));
        }
        Arc::new(Self {
            registry: Mutex::new(registry),
            pages,
            lookups,
            results,
        })
    }

    /// Records a page's render time.
    pub fn page(&self, seconds: f64) {
        self.pages.observe(seconds);
    }

    /// Records a cache lookup.
    pub fn lookup(&self, lookup: Lookup) {
        self.lookups
            .get_or_create(&LookupLabels { cache: lookup })
            .inc();
    }

    /// Records a call's outcome.
    pub fn result(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.results.get_or_create(&ResultLabels { outcome }).inc();
    }

    /// The text of `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Per-instance figures from the client's breakers, read at each scrape.
#[derive(Debug)]
struct Instances(RatingsClient);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
    address: String,
}

impl Collector for Instances {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let endpoints = self.0.endpoints();
        let labels: Vec<InstanceLabels> = endpoints
            .iter()
            .map(|e| InstanceLabels {
                instance: e.instance.clone(),
                address: e.address.clone(),
            })
            .collect();
        {
            let mut family = encoder.encode_descriptor(
                "market_ratings_instance_calls",
                "Calls sent to each ratings instance",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (endpoint, labels) in endpoints.iter().zip(&labels) {
                ConstCounter::new(endpoint.breaker.calls).encode(family.encode_family(labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "market_ratings_instance_failures",
                "Failed calls to each ratings instance",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (endpoint, labels) in endpoints.iter().zip(&labels) {
                ConstCounter::new(endpoint.breaker.failures)
                    .encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "market_breaker_state",
            "Each ratings instance's breaker: 0 closed, 1 half-open, 2 open",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (endpoint, labels) in endpoints.iter().zip(&labels) {
            let state: i64 = match endpoint.breaker.state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            ConstGauge::new(state).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}
