//! The provisioner's metrics.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::admin::register;

/// Counters and gauges; cheap to clone.
#[derive(Debug, Clone)]
pub struct ProvisionerMetrics {
    pub token_expiration: IntGauge,
    pub refresh: IntCounterVec,
    pub rewrites: IntCounterVec,
    pub errors: IntCounterVec,
    pub last_success: IntGauge,
}

impl ProvisionerMetrics {
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, label: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let metrics = Self {
            token_expiration: gauge(
                "cluster_relay_provisioner_token_expiration_timestamp_seconds",
                "When the token in the target Secret expires (Unix time).",
            ),
            refresh: counter(
                "cluster_relay_provisioner_refresh_total",
                "Reconciliations by result: success (the target Secret is good, written or kept) or failure.",
                "result",
            ),
            rewrites: counter(
                "cluster_relay_provisioner_writes_total",
                "Target Secrets written, by reason (missing, altered, unrecognised, source_changed, expiring, rejected).",
                "reason",
            ),
            errors: counter(
                "cluster_relay_provisioner_errors_total",
                "Failures by stage (source, managed, token, verify, hosting, hub).",
                "stage",
            ),
            last_success: gauge(
                "cluster_relay_provisioner_last_success_timestamp_seconds",
                "When a reconciliation last succeeded (Unix time).",
            ),
        };
        for result in ["success", "failure"] {
            metrics.refresh.with_label_values(&[result]);
        }
        metrics
    }
}
