//! The gate every API request waits at, shut by what the forge says about
//! its rate limits: an answer with `X-RateLimit-Remaining: 0` shuts it
//! until `X-RateLimit-Reset`; a 403/429 with `Retry-After` for that long;
//! a secondary limit without `Retry-After` for a minute, as GitHub asks.
//! Nothing is sent while it is shut. One gate serves every hook: their
//! requests share the credential's budget.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, StatusCode};

use super::metrics::ForwarderMetrics;

/// How long to stay away after a secondary rate limit that gave no
/// Retry-After (GitHub: "at least one minute").
const SECONDARY_PAUSE: Duration = Duration::from_secs(60);
/// Slack after X-RateLimit-Reset, for clocks that disagree slightly.
const RESET_SLACK: Duration = Duration::from_millis(500);

/// No request before the time it holds.
pub struct RateGate {
    until: Mutex<SystemTime>,
    metrics: ForwarderMetrics,
}

impl RateGate {
    pub fn new(metrics: ForwarderMetrics) -> Self {
        Self {
            until: Mutex::new(UNIX_EPOCH),
            metrics,
        }
    }

    /// Waits while the gate is shut.
    pub async fn pass(&self) {
        loop {
            let until = *self.until.lock().expect("gate lock is never poisoned");
            match until.duration_since(SystemTime::now()) {
                Ok(wait) if !wait.is_zero() => {
                    tracing::debug!(wait = ?wait, "waiting for the forge's rate limit");
                    tokio::time::sleep(wait).await;
                }
                _ => return,
            }
        }
    }

    fn shut(&self, until: SystemTime) {
        let mut gate = self.until.lock().expect("gate lock is never poisoned");
        if until > *gate {
            *gate = until;
        }
    }

    /// Reads an answer's rate-limit headers and shuts the gate as they ask;
    /// returns the pause when the answer itself is a rate-limit refusal.
    pub fn note(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let now = SystemTime::now();
        let remaining = number("x-ratelimit-remaining");
        let reset = number("x-ratelimit-reset").map(|s| UNIX_EPOCH + Duration::from_secs(s));
        if let Some(remaining) = remaining {
            self.metrics.remaining(remaining);
        }
        let exhausted_until = match (remaining, reset) {
            (Some(0), Some(reset)) => {
                let until = reset + RESET_SLACK;
                tracing::info!(
                    wait = ?until.duration_since(now).unwrap_or_default(),
                    "the forge's rate limit is spent; pausing until it resets"
                );
                self.shut(until);
                Some(until)
            }
            _ => None,
        };
        if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let retry_after = number("retry-after").map(Duration::from_secs);
        let secondary = String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("secondary rate limit");
        let until = match (retry_after, exhausted_until) {
            (Some(wait), _) => now + wait,
            (None, Some(until)) => until,
            (None, None) if secondary => now + SECONDARY_PAUSE,
            // A plain 403 (permissions): not a rate limit.
            (None, None) => return None,
        };
        self.shut(until);
        let wait = until.duration_since(now).unwrap_or_default();
        tracing::warn!(wait = ?wait, %status, "rate limited by the forge");
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn gate() -> RateGate {
        RateGate::new(ForwarderMetrics::new(&prometheus::Registry::new()))
    }

    #[test]
    fn a_spent_budget_shuts_the_gate_until_reset() {
        let gate = gate();
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 100;
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).expect("digits"),
        );
        assert_eq!(
            gate.note(StatusCode::OK, &headers, b""),
            None,
            "a 200 is not a refusal"
        );
        assert_eq!(
            *gate.until.lock().expect("lock"),
            UNIX_EPOCH + Duration::from_secs(reset) + RESET_SLACK
        );
    }

    #[test]
    fn retry_after_and_secondary_limits_are_refusals_and_a_plain_403_is_not() {
        let gate = gate();
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("30"));
        let wait = gate
            .note(StatusCode::TOO_MANY_REQUESTS, &headers, b"")
            .expect("a refusal");
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30));
        assert_eq!(
            gate.note(
                StatusCode::FORBIDDEN,
                &HeaderMap::new(),
                b"{\"message\":\"Resource not accessible\"}"
            ),
            None
        );
        let wait = gate
            .note(
                StatusCode::FORBIDDEN,
                &HeaderMap::new(),
                b"{\"message\":\"You have exceeded a secondary rate limit\"}",
            )
            .expect("a refusal");
        assert!(wait >= Duration::from_secs(59));
    }
}
