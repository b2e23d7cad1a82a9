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
use resilience::{BreakerState, EndpointSnapshot};

/// Reads a service's instances, with their breakers, at each scrape.
pub type Endpoints = Box<dyn Fn() -> Vec<EndpointSnapshot> + Send + Sync>;

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
struct CallLabels {
    service: &'static str,
    outcome: &'static str,
}

/// The web app's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pages: Histogram,
    lookups: Family<LookupLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    services: Instances,
    history: crate::history::History,
}

/// Every service's instances, by service.
type Services = Vec<(&'static str, Endpoints)>;

impl Metrics {
    /// Metrics, with per-instance figures of each service read from its
    /// [`Endpoints`] at each scrape.
    pub fn new(services: Vec<(&'static str, Endpoints)>) -> Arc<Self> {
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
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "market_calls",
            "Calls to each service by outcome",
            calls.clone(),
        );
        registry.register_collector(Box::new(Spans));
        let services = Instances(Arc::new(services));
        if !services.0.is_empty() {
            registry.register_collector(Box::new(services.clone()));
        }
        Arc::new(Self {
            registry: Mutex::new(registry),
            pages,
            lookups,
            calls,
            services,
            history: crate::history::History::new(),
        })
    }

    /// Records a page's render time.
    pub fn page(&self, seconds: f64) {
        self.pages.observe(seconds);
        self.history
            .page(std::time::Duration::from_secs_f64(seconds));
        self.sample();
    }

    /// Records a cache lookup.
    pub fn lookup(&self, lookup: Lookup) {
        self.lookups
            .get_or_create(&LookupLabels { cache: lookup })
            .inc();
        if lookup != Lookup::Miss {
            self.history.cache_hit();
        }
    }

    /// Records a rating served from the cache because asking failed.
    pub fn fallback(&self) {
        self.history.fallback();
    }

    /// Samples the instances into the history, at most once a second.
    fn sample(&self) {
        if self.history.sample_due() {
            for (service, endpoints) in self.services.0.iter() {
                self.history.sample(service, &endpoints());
            }
        }
    }

    /// The last five minutes of the page and of every instance.
    pub fn history(&self) -> crate::history::HistoryView {
        self.sample();
        self.history.view()
    }

    /// Records the outcome of a call to `service`.
    pub fn call(&self, service: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.calls
            .get_or_create(&CallLabels { service, outcome })
            .inc();
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

/// The spans this process exported and dropped (see `daemon::telemetry`).
#[derive(Debug)]
struct Spans;

impl Collector for Spans {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "market_spans_exported",
                "Spans exported over OTLP",
                daemon::telemetry::spans_exported(),
            ),
            (
                "market_spans_dropped",
                "Spans dropped: the export queue was full, their export failed, or the collector was down when they would have been made",
                daemon::telemetry::spans_dropped(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Per-instance figures from each service's breakers, read at each scrape.
#[derive(Clone)]
struct Instances(Arc<Services>);

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(name, _)| *name).collect();
        f.debug_tuple("Instances").field(&names).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InstanceLabels {
    service: &'static str,
    instance: String,
    address: String,
}

impl Collector for Instances {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let endpoints: Vec<(&'static str, EndpointSnapshot)> = self
            .0
            .iter()
            .flat_map(|(service, read)| read().into_iter().map(move |e| (*service, e)))
            .collect();
        let labels: Vec<InstanceLabels> = endpoints
            .iter()
            .map(|(service, e)| InstanceLabels {
                service,
                instance: e.instance.clone(),
                address: e.address.clone(),
            })
            .collect();
        let endpoints: Vec<EndpointSnapshot> = endpoints.into_iter().map(|(_, e)| e).collect();
        {
            let mut family = encoder.encode_descriptor(
                "market_instance_calls",
                "Calls sent to each instance of each service",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (endpoint, labels) in endpoints.iter().zip(&labels) {
                ConstCounter::new(endpoint.breaker.calls).encode(family.encode_family(labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "market_instance_failures",
                "Failed calls to each instance of each service",
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
            "Each instance's breaker: 0 closed, 1 half-open, 2 open",
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
