//! The forwarder's metrics: polls by result, deliveries by result, API
//! requests by endpoint and result, how far each hook's cursor is behind
//! its newest delivery, and the rate-limit budget the forge last reported.

use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};

use crate::admin::register;

/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ForwarderMetrics {
    polls: IntCounterVec,
    deliveries: IntCounterVec,
    api: IntCounterVec,
    lag: GaugeVec,
    remaining: IntGauge,
}

impl ForwarderMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            polls: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_delivery_forwarder_polls_total",
                        "Polls of a hook's deliveries, by result (not_modified, changed, rate_limited, error, backlog_overflow).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            deliveries: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_delivery_forwarder_deliveries_total",
                        "Deliveries by result (forwarded, duplicate, failed: an attempt that will be retried, dead_lettered).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            api: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_delivery_forwarder_api_requests_total",
                        "Requests to the forge's API, by endpoint (list, detail, hooks, installation, token) and result (ok, not_modified, rate_limited, error).",
                    ),
                    &["endpoint", "result"],
                )
                .expect("valid metric"),
            ),
            lag: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "cluster_relay_delivery_forwarder_cursor_lag_seconds",
                        "Seconds between the newest delivery seen on a hook and the last one forwarded (0 when caught up), by hook.",
                    ),
                    &["hook"],
                )
                .expect("valid metric"),
            ),
            remaining: register(
                registry,
                IntGauge::new(
                    "cluster_relay_delivery_forwarder_rate_limit_remaining",
                    "X-RateLimit-Remaining of the forge's last answer that carried it.",
                )
                .expect("valid metric"),
            ),
        }
    }

    pub fn poll(&self, result: &str) {
        self.polls.with_label_values(&[result]).inc();
    }

    pub fn delivery(&self, result: &str) {
        self.deliveries.with_label_values(&[result]).inc();
    }

    pub fn api(&self, endpoint: &str, result: &str) {
        self.api.with_label_values(&[endpoint, result]).inc();
    }

    pub fn lag(&self, hook: &str, seconds: f64) {
        self.lag.with_label_values(&[hook]).set(seconds.max(0.0));
    }

    pub fn remaining(&self, remaining: u64) {
        self.remaining
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }
}
