//! May this caller see this? Asked of the managed apiserver with the
//! caller's own credentials (a SelfSubjectAccessReview), so the answer is
//! the apiserver's: same authenticators, same authorizers, same RBAC.
//!
//! Decisions are reused for `--authz-cache-ttl` per credential and request
//! attributes (keyed by a SHA-256 over both, so no credential is held in
//! memory), concurrent identical reviews are merged, and the table is
//! bounded. Only [`Decision::Allowed`] lets the cache serve; every other
//! outcome sends the request to the apiserver as it is, so the caller gets
//! exactly the apiserver's own answer (401, 403, …).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::attrs::Attributes;
use crate::{coalesce::Coalescer, upstream::forward::Upstream};

/// The apiserver's answer for one caller and request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Denied, or the review itself was refused (401, 403): the apiserver
    /// answers the request itself.
    NotAllowed,
}

/// Why no decision could be had; the request then goes through uncached.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the review request failed: {0}")]
    Upstream(String),
    #[error("unexpected review response {0}")]
    Status(StatusCode),
    #[error("unreadable review response: {0}")]
    Body(String),
}

type DecisionKey = [u8; 32];

/// Cached, coalesced SelfSubjectAccessReviews.
pub struct Authorizer {
    ttl: Duration,
    max_entries: usize,
    timeout: Duration,
    decisions: Mutex<HashMap<DecisionKey, (Decision, Instant)>>,
    flights: Coalescer<DecisionKey, Decision>,
}

impl Authorizer {
    /// Decisions live for `ttl`; at most `max_entries` are kept; a review
    /// gets `timeout` in all.
    pub fn new(ttl: Duration, max_entries: usize, timeout: Duration) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            timeout,
            decisions: Mutex::default(),
            flights: Coalescer::new(),
        }
    }

    /// The decision for `credential` (the request's Authorization header, if
    /// any) on `attrs`, from the table or from the apiserver at `server`.
    pub async fn decide(
        &self,
        upstream: &Upstream,
        server: &str,
        credential: Option<&HeaderValue>,
        attrs: &Attributes,
    ) -> Result<Decision, ReviewError> {
        let key = decision_key(server, credential, attrs);
        if let Some(decision) = self.cached(&key) {
            return Ok(decision);
        }
        let (decision, _) = self
            .flights
            .get_or_fetch(key, || async {
                let decision =
                    tokio::time::timeout(self.timeout, review(upstream, server, credential, attrs))
                        .await
                        .map_err(|_| ReviewError::Upstream("timed out".into()))??;
                self.remember(key, decision);
                Ok::<_, ReviewError>(decision)
            })
            .await?;
        Ok(decision)
    }

    fn cached(&self, key: &DecisionKey) -> Option<Decision> {
        let decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        decisions
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(decision, _)| *decision)
    }

    fn remember(&self, key: DecisionKey, decision: Decision) {
        let now = Instant::now();
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if decisions.len() >= self.max_entries {
            decisions.retain(|_, (_, until)| *until > now);
            // Still full of live decisions: start over rather than grow; the
            // cost is one review per caller again.
            if decisions.len() >= self.max_entries {
                decisions.clear();
            }
        }
        decisions.insert(key, (decision, now + self.ttl));
    }

    /// Decisions currently held (live or not yet swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn decision_key(server: &str, credential: Option<&HeaderValue>, attrs: &Attributes) -> DecisionKey {
    let mut h = Sha256::new();
    h.update(b"cluster-relay/read-cache/authz/v1\0");
    put(&mut h, server.as_bytes());
    match credential {
        Some(value) => {
            h.update([1]);
            put(&mut h, value.as_bytes());
        }
        None => h.update([0]),
    }
    match attrs {
        Attributes::Resource(r) => {
            h.update([1]);
            for field in [
                r.group.as_str(),
                r.version.as_str(),
                r.resource.as_str(),
                r.verb,
            ] {
                put(&mut h, field.as_bytes());
            }
            for field in [&r.subresource, &r.namespace, &r.name] {
                match field {
                    Some(value) => {
                        h.update([1]);
                        put(&mut h, value.as_bytes());
                    }
                    None => h.update([0]),
                }
            }
        }
        Attributes::NonResource { path, verb } => {
            h.update([2]);
            put(&mut h, path.as_bytes());
            put(&mut h, verb.as_bytes());
        }
    }
    h.finalize().into()
}

/// The review's request body.
fn review_body(attrs: &Attributes) -> serde_json::Value {
    let spec = match attrs {
        Attributes::Resource(r) => {
            let mut resource = json!({
                "group": r.group,
                "version": r.version,
                "resource": r.resource,
                "verb": r.verb,
            });
            for (field, value) in [
                ("subresource", &r.subresource),
                ("namespace", &r.namespace),
                ("name", &r.name),
            ] {
                if let Some(value) = value {
                    resource[field] = json!(value);
                }
            }
            json!({ "resourceAttributes": resource })
        }
        Attributes::NonResource { path, verb } => {
            json!({ "nonResourceAttributes": { "path": path, "verb": verb } })
        }
    };
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": spec,
    })
}

async fn review(
    upstream: &Upstream,
    server: &str,
    credential: Option<&HeaderValue>,
    attrs: &Attributes,
) -> Result<Decision, ReviewError> {
    let uri: Uri = format!(
        "{}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        server.trim_end_matches('/')
    )
    .parse()
    .map_err(|err: http::uri::InvalidUri| ReviewError::Upstream(err.to_string()))?;
    let body = serde_json::to_vec(&review_body(attrs)).expect("a JSON value serializes");
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Bytes::from(body))
        .expect("static request parts are valid");
    if let Some(credential) = credential {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, credential.clone());
    }
    let response = upstream
        .send(request)
        .await
        .map_err(|err| ReviewError::Upstream(err.to_string()))?;
    let status = response.status();
    match status {
        StatusCode::CREATED | StatusCode::OK => {}
        // The caller is not authenticated, or may not even ask: the
        // apiserver will say so to the request itself.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Ok(Decision::NotAllowed),
        other => return Err(ReviewError::Status(other)),
    }
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|err| ReviewError::Body(err.to_string()))?
        .to_bytes();
    let review: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|err| ReviewError::Body(err.to_string()))?;
    let allowed = review
        .pointer("/status/allowed")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let denied = review
        .pointer("/status/denied")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    Ok(if allowed && !denied {
        Decision::Allowed
    } else {
        Decision::NotAllowed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_cache::kubernetes::attrs::attributes;

    fn attrs(uri: &str) -> Attributes {
        attributes(&Method::GET, &uri.parse().expect("uri")).expect("recognised")
    }

    #[test]
    fn keys_separate_credentials_and_every_attribute() {
        let a = HeaderValue::from_static("Bearer a");
        let b = HeaderValue::from_static("Bearer b");
        let secret = attrs("/api/v1/namespaces/a/secrets/x");
        let configmap = attrs("/api/v1/namespaces/a/configmaps/x");
        let list = attrs("/api/v1/namespaces/a/secrets");
        let other_ns = attrs("/api/v1/namespaces/b/secrets/x");
        let keys = [
            decision_key("s", Some(&a), &secret),
            decision_key("s", Some(&b), &secret),
            decision_key("s", None, &secret),
            decision_key("s", Some(&a), &configmap),
            decision_key("s", Some(&a), &list),
            decision_key("s", Some(&a), &other_ns),
            decision_key("t", Some(&a), &secret),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(keys[0], decision_key("s", Some(&a), &secret));
    }

    #[test]
    fn review_body_carries_the_attributes() {
        let body = review_body(&attrs("/apis/apps/v1/namespaces/a/deployments/web"));
        assert_eq!(
            body["spec"]["resourceAttributes"],
            json!({"group": "apps", "version": "v1", "resource": "deployments",
                   "verb": "get", "namespace": "a", "name": "web"})
        );
        let body = review_body(&attrs("/version"));
        assert_eq!(
            body["spec"]["nonResourceAttributes"],
            json!({"path": "/version", "verb": "get"})
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let authz = Authorizer::new(Duration::from_secs(60), 3, Duration::from_secs(1));
        for i in 0..10u8 {
            authz.remember([i; 32], Decision::Allowed);
            assert!(authz.len() <= 3);
        }
        assert_eq!(authz.cached(&[9; 32]), Some(Decision::Allowed));
    }
}
