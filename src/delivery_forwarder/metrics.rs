//! The forwarder's metrics: polls by result, deliveries by result, API
//! requests by endpoint and result, how far each hook's cursor is behind
//! its newest delivery, the rate-limit budget the forge last reported, and
//! the dead letters waiting for a replay (also a `/readyz` line, which
//! informs and never fails: a dead letter is the operator's to act on, not
//! a reason to take the forwarder out of service).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::admin::{ReadinessCheck, register};

/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ForwarderMetrics {
    polls: IntCounterVec,
    deliveries: IntCounterVec,
    api: IntCounterVec,
    lag: GaugeVec,
    remaining: IntGauge,
    dead_letters: IntGaugeVec,
    dead_letters_dropped: IntCounter,
    dedup_evicted: IntCounter,
    /// Dead letters per hook, for the `/readyz` line.
    waiting: Arc<Mutex<BTreeMap<String, usize>>>,
    readiness: Option<ReadinessCheck>,
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
                        "Deliveries by result (forwarded, duplicate, failed: an attempt that will be retried, dead_lettered, replayed: a dead letter sent again).",
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
            dead_letters: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "cluster_relay_delivery_forwarder_dead_letters",
                        "Dead letters waiting for agent delivery-forwarder --replay-dead-letters, by hook.",
                    ),
                    &["hook"],
                )
                .expect("valid metric"),
            ),
            dead_letters_dropped: register(
                registry,
                IntCounter::new(
                    "cluster_relay_delivery_forwarder_dead_letters_dropped_total",
                    "Dead letters dropped, oldest first, because a hook had more than --max-dead-letters; they cannot be replayed.",
                )
                .expect("valid metric"),
            ),
            dedup_evicted: register(
                registry,
                IntCounter::new(
                    "cluster_relay_delivery_forwarder_dedup_evicted_total",
                    "Forwarded GUIDs forgotten before --dedup-window ended, because of --dedup-max-entries.",
                )
                .expect("valid metric"),
            ),
            waiting: Arc::default(),
            readiness: None,
        }
    }

    /// Reports the dead letters waiting as the `dead-letters` line of
    /// `/readyz`, which is always ready.
    pub fn with_readiness(mut self, check: ReadinessCheck) -> Self {
        check.ready("0 waiting");
        self.readiness = Some(check);
        self
    }

    /// The dead letters now waiting on `hook`.
    pub fn dead_letters(&self, hook: &str, waiting: usize) {
        self.dead_letters
            .with_label_values(&[hook])
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let total: usize = {
            let mut board = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            board.insert(hook.to_owned(), waiting);
            board.values().sum()
        };
        if let Some(check) = &self.readiness {
            if total == 0 {
                check.ready("0 waiting");
            } else {
                check.ready(format!(
                    "{total} waiting; agent delivery-forwarder --replay-dead-letters sends them again"
                ));
            }
        }
    }

    pub fn dead_letter_dropped(&self) {
        self.dead_letters_dropped.inc();
    }

    pub fn dedup_evicted(&self, count: usize) {
        self.dedup_evicted
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
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
