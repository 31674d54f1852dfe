//! Sending each queued delivery to each of its backends: all backends at
//! once, each with its own timeout, and a failed send (connection error,
//! timeout, 5xx, 408, 429) retried with exponential backoff and jitter
//! until `--retry-max-age` after the delivery arrived. A 4xx other than
//! those is the backend's final answer. Every outcome is recorded in the
//! journal, so a restart resends exactly what was not yet delivered.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use super::{
    backends::Registry,
    journal::{Delivery, Journal, now_ms},
    metrics::FanoutMetrics,
};
use crate::upstream::forward::Upstream;

/// When to try again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Give up this long after the delivery arrived.
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (attempt counts from 1):
    /// uniformly random up to the exponential step, so backends that come
    /// back are not hit by every delivery at once.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let millis = step.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(millis / 2..=millis))
    }
}

/// How one send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Worth another try.
    Failed(&'static str),
    /// The backend refused it for good.
    Rejected,
}

#[derive(Default)]
struct State {
    /// Backends still to get each delivery.
    remaining: HashMap<String, usize>,
    /// Deliveries with work left, by arrival, for the oldest-age gauge.
    by_age: BTreeMap<(u64, String), ()>,
    /// Pending (backend, delivery) pairs.
    depth: usize,
    /// Body bytes of deliveries with work left.
    held_bytes: usize,
}

/// Sends deliveries; cheap to share.
pub struct Dispatcher {
    journal: Journal,
    registry: Arc<Registry>,
    upstream: Upstream,
    timeout: Duration,
    retry: RetryPolicy,
    sends: Semaphore,
    state: Mutex<State>,
    metrics: FanoutMetrics,
}

/// Headers never copied to a backend: hop-by-hop ones and those the client
/// sets itself.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// The headers of a request worth keeping for the backends.
pub fn forwarded_headers(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| !NOT_FORWARDED.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

impl Dispatcher {
    pub fn new(
        journal: Journal,
        registry: Arc<Registry>,
        upstream: Upstream,
        timeout: Duration,
        retry: RetryPolicy,
        max_in_flight: usize,
        metrics: FanoutMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            journal,
            registry,
            upstream,
            timeout,
            retry,
            sends: Semaphore::new(max_in_flight.max(1)),
            state: Mutex::default(),
            metrics,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Body bytes of deliveries that still have backends to reach.
    pub fn held_bytes(&self) -> usize {
        self.state().held_bytes
    }

    /// Pending (backend, delivery) pairs, and the arrival time (ms) of the
    /// oldest delivery with work left.
    pub fn depth(&self) -> (usize, Option<u64>) {
        let state = self.state();
        (state.depth, state.by_age.keys().next().map(|(at, _)| *at))
    }

    /// Starts sending `delivery` to `backends` (already journaled).
    pub fn start(self: &Arc<Self>, delivery: Arc<Delivery>, backends: Vec<String>) {
        if backends.is_empty() {
            return;
        }
        {
            let mut state = self.state();
            state.depth += backends.len();
            state.held_bytes += delivery.body.len();
            state.remaining.insert(delivery.id.clone(), backends.len());
            state
                .by_age
                .insert((delivery.received_ms, delivery.id.clone()), ());
        }
        self.metrics.set_depth(self.depth());
        for backend in backends {
            tokio::spawn(self.clone().deliver(delivery.clone(), backend));
        }
    }

    async fn deliver(self: Arc<Self>, delivery: Arc<Delivery>, backend: String) {
        let mut attempt = 0u32;
        let result = loop {
            let Some(url) = self.registry.url(&backend) else {
                break "removed";
            };
            attempt += 1;
            let outcome = {
                let _permit = self.sends.acquire().await.expect("never closed");
                self.send(&url, &delivery).await
            };
            match outcome {
                Outcome::Delivered => {
                    let latency = now_ms().saturating_sub(delivery.received_ms);
                    self.metrics
                        .delivered(&backend, Duration::from_millis(latency));
                    break "delivered";
                }
                Outcome::Rejected => {
                    tracing::warn!(%backend, delivery = %delivery.id, "the backend refused the delivery for good");
                    break "rejected";
                }
                Outcome::Failed(reason) => {
                    self.metrics.attempt_failed(&backend, reason);
                    let age = Duration::from_millis(now_ms().saturating_sub(delivery.received_ms));
                    let pause = self.retry.backoff(attempt);
                    if age + pause > self.retry.max_age {
                        tracing::error!(%backend, delivery = %delivery.id, attempts = attempt, "giving up: --retry-max-age reached");
                        break "expired";
                    }
                    tracing::debug!(%backend, delivery = %delivery.id, reason, ?pause, "send failed; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        };
        self.metrics.finished(&backend, result);
        self.journal.done(&backend, &delivery.id).await;
        let last = {
            let mut state = self.state();
            state.depth -= 1;
            let left = state
                .remaining
                .get_mut(&delivery.id)
                .map(|n| {
                    *n -= 1;
                    *n
                })
                .unwrap_or(0);
            if left == 0 {
                state.remaining.remove(&delivery.id);
                state
                    .by_age
                    .remove(&(delivery.received_ms, delivery.id.clone()));
                state.held_bytes -= delivery.body.len();
            }
            left == 0
        };
        if last {
            self.journal.forget(&delivery.id).await;
        }
        self.metrics.set_depth(self.depth());
    }

    async fn send(&self, url: &Uri, delivery: &Delivery) -> Outcome {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .body(delivery.body.clone())
            .expect("a valid URI and method");
        let headers = request.headers_mut();
        for (name, value) in &delivery.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        if let Some(authority) = url.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, host);
        }
        let exchange = async {
            let response = self
                .upstream
                .send(request)
                .await
                .map_err(|err| err.reason())?;
            let status = response.status();
            // Read the answer out so the connection can be reused.
            let _ = response.into_body().collect().await.map(|b| b.to_bytes());
            Ok::<StatusCode, &'static str>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Failed("timeout"),
            Ok(Err(reason)) => Outcome::Failed(reason),
            Ok(Ok(status)) if status.is_success() => Outcome::Delivered,
            Ok(Ok(status))
                if status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Failed("status")
            }
            Ok(Ok(_)) => Outcome::Rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_age: Duration::from_secs(60),
        };
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let fourth = policy.backoff(4);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            let late = policy.backoff(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-github-event", HeaderValue::from_static("push"));
        headers.insert("host", HeaderValue::from_static("fanout"));
        headers.insert("content-length", HeaderValue::from_static("2"));
        headers.insert("connection", HeaderValue::from_static("close"));
        let kept = forwarded_headers(&headers);
        assert_eq!(kept, [("x-github-event".to_owned(), b"push".to_vec())]);
    }
}
