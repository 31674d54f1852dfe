//! The apiserver relay's metrics, registered once per run.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::admin::register;

/// Why a dial to the managed apiserver failed; the `reason` label.
#[derive(Debug, Clone, Copy)]
pub enum DialError {
    /// No managed kubeconfig has been read yet.
    NoTarget,
    /// Connection refused or reset: nothing listens there.
    Refused,
    /// --connect-timeout passed.
    Timeout,
    /// The host name did not resolve.
    Resolve,
    /// Anything else (unreachable network, no route, ...).
    Other,
}

impl DialError {
    pub fn label(self) -> &'static str {
        match self {
            DialError::NoTarget => "no_target",
            DialError::Refused => "refused",
            DialError::Timeout => "timeout",
            DialError::Resolve => "resolve",
            DialError::Other => "other",
        }
    }
}

/// Counters and gauges for the relay; cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    pub connections: IntCounter,
    pub active: IntGauge,
    pub rejected: IntCounter,
    pub accept_errors: IntCounter,
    pub bytes_to_upstream: IntCounter,
    pub bytes_to_client: IntCounter,
    dial_errors: IntCounterVec,
    pub duration: Histogram,
}

impl RelayMetrics {
    pub fn new(registry: &Registry) -> Self {
        let bytes = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "cluster_relay_apiserver_relay_bytes_total",
                    "Bytes relayed, by direction (to_upstream: client to apiserver; to_client: back).",
                ),
                &["direction"],
            )
            .expect("valid metric"),
        );
        let dial_errors = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "cluster_relay_apiserver_relay_dial_errors_total",
                    "Connections to the managed apiserver that failed, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        for reason in [
            DialError::NoTarget,
            DialError::Refused,
            DialError::Timeout,
            DialError::Resolve,
            DialError::Other,
        ] {
            dial_errors.with_label_values(&[reason.label()]);
        }
        Self {
            connections: register(
                registry,
                IntCounter::new(
                    "cluster_relay_apiserver_relay_connections_total",
                    "Client connections accepted and relayed (rejected ones not included).",
                )
                .expect("valid metric"),
            ),
            active: register(
                registry,
                IntGauge::new(
                    "cluster_relay_apiserver_relay_connections_active",
                    "Client connections open now.",
                )
                .expect("valid metric"),
            ),
            rejected: register(
                registry,
                IntCounter::new(
                    "cluster_relay_apiserver_relay_connections_rejected_total",
                    "Client connections closed at once because --max-connections were open.",
                )
                .expect("valid metric"),
            ),
            accept_errors: register(
                registry,
                IntCounter::new(
                    "cluster_relay_apiserver_relay_accept_errors_total",
                    "Errors accepting client connections (e.g. out of file descriptors).",
                )
                .expect("valid metric"),
            ),
            bytes_to_upstream: bytes.with_label_values(&["to_upstream"]),
            bytes_to_client: bytes.with_label_values(&["to_client"]),
            dial_errors,
            duration: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "cluster_relay_apiserver_relay_connection_duration_seconds",
                        "How long relayed connections stayed open.",
                    )
                    .buckets(vec![
                        0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0,
                        14400.0,
                    ]),
                )
                .expect("valid metric"),
            ),
        }
    }

    pub fn dial_error(&self, reason: DialError) {
        self.dial_errors.with_label_values(&[reason.label()]).inc();
    }
}
