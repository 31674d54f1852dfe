//! The read cache's metrics: requests by how they were served, durations,
//! and the store's size, entries and evictions read at scrape time.

use std::sync::Arc;

use http::{Method, StatusCode};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use super::{served::Served, store::Store};
use crate::admin::register;

/// Request counters and histograms; cheap to clone.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    profile: &'static str,
    requests: IntCounterVec,
    duration: HistogramVec,
    invalidations: IntCounterVec,
}

/// A bounded label for a request method.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl CacheMetrics {
    /// Registers the metrics, labelled with `profile`, and a collector that
    /// reads `store`'s figures when scraped.
    pub fn new(registry: &Registry, profile: &'static str, store: Arc<Store>) -> Self {
        let metrics = Self {
            profile,
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_read_cache_requests_total",
                        "Requests answered, by profile, method, status code and how they were served (fresh_hit, revalidated_hit, miss, coalesced, bypass).",
                    ),
                    &["profile", "method", "code", "cache"],
                )
                .expect("valid metric"),
            ),
            duration: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "cluster_relay_read_cache_request_duration_seconds",
                        "Time from the request to the response head, by profile and how it was served.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["profile", "cache"],
                )
                .expect("valid metric"),
            ),
            invalidations: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_read_cache_invalidations_total",
                        "Entries dropped because the upstream data changed, by cause (write, watch, resync).",
                    ),
                    &["cause"],
                )
                .expect("valid metric"),
            ),
        };
        registry
            .register(Box::new(StoreCollector::new(store)))
            .expect("metric names are unique and valid");
        metrics
    }

    /// Counts one answered request.
    pub fn answered(&self, method: &Method, code: StatusCode, served: Served, seconds: f64) {
        let cache = served.as_str();
        self.requests
            .with_label_values(&[self.profile, method_label(method), code.as_str(), cache])
            .inc();
        self.duration
            .with_label_values(&[self.profile, cache])
            .observe(seconds);
    }

    /// Counts `entries` dropped for `cause`.
    pub fn invalidated(&self, cause: &'static str, entries: usize) {
        self.invalidations
            .with_label_values(&[cause])
            .inc_by(entries as u64);
    }
}

/// Reports the store's own counters at scrape time, so the request path
/// never updates gauges.
struct StoreCollector {
    store: Arc<Store>,
    descs: Vec<Desc>,
}

const STORE_METRICS: [(&str, &str); 5] = [
    (
        "cluster_relay_read_cache_store_bytes",
        "Bytes held by the store (bodies, headers and a fixed overhead per entry).",
    ),
    (
        "cluster_relay_read_cache_store_max_bytes",
        "The store's bound in bytes (--max-bytes).",
    ),
    ("cluster_relay_read_cache_store_entries", "Entries held."),
    (
        "cluster_relay_read_cache_store_evictions_total",
        "Entries evicted to stay within --max-bytes.",
    ),
    (
        "cluster_relay_read_cache_store_rejections_total",
        "Responses not stored because they alone exceed the bound.",
    ),
];

impl StoreCollector {
    fn new(store: Arc<Store>) -> Self {
        let descs = STORE_METRICS
            .iter()
            .map(|(name, help)| {
                Desc::new((*name).into(), (*help).into(), vec![], Default::default())
                    .expect("valid metric description")
            })
            .collect();
        Self { store, descs }
    }
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let values = [
            self.store.bytes() as f64,
            self.store.max_bytes() as f64,
            self.store.len() as f64,
            self.store.evictions() as f64,
            self.store.rejections() as f64,
        ];
        STORE_METRICS
            .iter()
            .zip(values)
            .map(|((name, help), value)| {
                let family = if name.ends_with("_total") {
                    prometheus::IntCounter::with_opts(Opts::new(*name, *help)).map(|c| {
                        c.inc_by(value as u64);
                        c.collect()
                    })
                } else {
                    prometheus::Gauge::with_opts(Opts::new(*name, *help)).map(|g| {
                        g.set(value);
                        g.collect()
                    })
                };
                family.expect("valid metric").remove(0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_figures_are_scraped() {
        let registry = Registry::new();
        let store = Arc::new(Store::new(4096));
        let metrics = CacheMetrics::new(&registry, "etag", store);
        metrics.answered(&Method::GET, StatusCode::OK, Served::FreshHit, 0.001);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        assert!(
            text.contains("cluster_relay_read_cache_store_max_bytes 4096"),
            "{text}"
        );
        assert!(
            text.contains("cluster_relay_read_cache_store_entries 0"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"cluster_relay_read_cache_requests_total{cache="fresh_hit",code="200",method="GET",profile="etag"} 1"#
            ),
            "{text}"
        );
    }
}
