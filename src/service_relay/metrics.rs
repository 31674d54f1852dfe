//! The service relay's metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::admin::register;

/// Counters and histograms; cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    /// The series nearly every exit request lands in, looked up once (at
    /// the first such request, so no other role shows them): a label
    /// lookup hashes its values on every call.
    exit_ok: std::sync::Arc<std::sync::OnceLock<(prometheus::IntCounter, prometheus::Histogram)>>,
    rejections: IntCounterVec,
    upstream_errors: IntCounterVec,
}

impl RelayMetrics {
    pub fn new(registry: &Registry) -> Self {
        let requests: IntCounterVec = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "cluster_relay_service_relay_requests_total",
                    "Requests answered, by role and status code.",
                ),
                &["role", "code"],
            )
            .expect("valid metric"),
        );
        let duration: HistogramVec = register(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "cluster_relay_service_relay_request_duration_seconds",
                    "Time from the request to the response head, by role.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["role"],
            )
            .expect("valid metric"),
        );
        Self {
            exit_ok: Default::default(),
            requests,
            duration,
            rejections: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_service_relay_caller_rejections_total",
                        "Requests the exit relay refused, by reason (no_credential, unauthenticated, not_allowed, review_failed).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            upstream_errors: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_service_relay_upstream_errors_total",
                        "Requests that could not be forwarded, by role and reason (lookup, connect, timeout, too_large, protocol, bad_request_body, no_kubeconfig).",
                    ),
                    &["role", "reason"],
                )
                .expect("valid metric"),
            ),
        }
    }

    pub fn answered(&self, role: &str, code: http::StatusCode, seconds: f64) {
        if role == "exit" && code == http::StatusCode::OK {
            let (requests, duration) = self.exit_ok.get_or_init(|| {
                (
                    self.requests.with_label_values(&["exit", "200"]),
                    self.duration.with_label_values(&["exit"]),
                )
            });
            requests.inc();
            duration.observe(seconds);
            return;
        }
        // as_str: the label without an allocation per request.
        self.requests
            .with_label_values(&[role, code.as_str()])
            .inc();
        self.duration.with_label_values(&[role]).observe(seconds);
    }

    pub fn rejected(&self, reason: &str) {
        self.rejections.with_label_values(&[reason]).inc();
    }

    pub fn upstream_error(&self, role: &str, reason: &str) {
        self.upstream_errors
            .with_label_values(&[role, reason])
            .inc();
    }
}
