//! The fan-out's metrics: inbound deliveries by result, sends by backend
//! and result, the queue's depth and oldest age, and delivery latency.

use std::time::Duration;

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use crate::admin::register;

/// Counters, gauges and histograms; cheap to clone.
#[derive(Debug, Clone)]
pub struct FanoutMetrics {
    inbound: IntCounterVec,
    attempts_failed: IntCounterVec,
    finished: IntCounterVec,
    latency: HistogramVec,
    depth: IntGauge,
    oldest: Gauge,
}

impl FanoutMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            inbound: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_webhook_fanout_inbound_total",
                        "Deliveries received, by result (accepted, duplicate, bad_signature, too_large, bad_request, queue_full, storage_error).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            attempts_failed: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_webhook_fanout_send_failures_total",
                        "Sends to a backend that failed and will be retried, by backend and reason (connect, timeout, status).",
                    ),
                    &["backend", "reason"],
                )
                .expect("valid metric"),
            ),
            finished: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_webhook_fanout_forwarded_total",
                        "Deliveries a backend is done with, by backend and result (delivered, rejected, expired, removed).",
                    ),
                    &["backend", "result"],
                )
                .expect("valid metric"),
            ),
            latency: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "cluster_relay_webhook_fanout_delivery_latency_seconds",
                        "From receiving a delivery to a backend accepting it, by backend.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
                    ]),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            depth: register(
                registry,
                IntGauge::new(
                    "cluster_relay_webhook_fanout_queue_depth",
                    "Deliveries still owed to a backend, counted per backend.",
                )
                .expect("valid metric"),
            ),
            oldest: register(
                registry,
                Gauge::new(
                    "cluster_relay_webhook_fanout_oldest_pending_age_seconds",
                    "Age of the oldest delivery still owed to a backend (0 when none); updated on change and every second.",
                )
                .expect("valid metric"),
            ),
        }
    }

    pub fn inbound(&self, result: &str) {
        self.inbound.with_label_values(&[result]).inc();
    }

    pub fn attempt_failed(&self, backend: &str, reason: &str) {
        self.attempts_failed
            .with_label_values(&[backend, reason])
            .inc();
    }

    pub fn delivered(&self, backend: &str, latency: Duration) {
        self.latency
            .with_label_values(&[backend])
            .observe(latency.as_secs_f64());
    }

    pub fn finished(&self, backend: &str, result: &str) {
        self.finished.with_label_values(&[backend, result]).inc();
    }

    /// Pending pairs and the oldest arrival (ms since the epoch).
    pub fn set_depth(&self, (depth, oldest_ms): (usize, Option<u64>)) {
        self.depth.set(depth as i64);
        let age_ms = oldest_ms.map_or(0, |ms| super::journal::now_ms().saturating_sub(ms));
        self.oldest.set(age_ms as f64 / 1000.0);
    }
}
