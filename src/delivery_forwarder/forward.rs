//! Replaying one delivery at the target: the body rebuilt from the payload
//! the forge recorded, the forge's event headers (`X-GitHub-Event`,
//! `X-GitHub-Delivery`, `X-GitHub-Hook-ID`, …, `Content-Type`) as they were,
//! and a fresh `X-Hub-Signature-256` of the bytes sent, made with the
//! configured secret, so a receiver that checks signatures (such as
//! `agent webhook-fanout`) accepts it unchanged.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::BodyExt;
use rustls::RootCertStore;
use secrecy::{ExposeSecret, SecretBox};

use super::github::Detail;
use crate::{
    signature::sign_sha256,
    tls::TlsError,
    upstream::{
        directory::Directory,
        forward::{ForwardError, Limits, Upstream, UpstreamConfig},
        pool::PoolLimits,
    },
};

/// Builds the client the API and the targets share: the shared pooled
/// client, with the trust anchors of [`crate::tls`] (the system's plus
/// `--ca-file`). `timeout` bounds connecting and a response head; each
/// caller bounds its whole exchange besides.
pub fn http_client(
    roots: RootCertStore,
    timeout: Duration,
    pool: PoolLimits,
) -> Result<Upstream, TlsError> {
    Upstream::new(UpstreamConfig {
        roots,
        server_name: None,
        directory: Directory::dns(Default::default()),
        limits: Limits {
            connect_timeout: timeout,
            response_timeout: timeout,
            max_body_bytes: None,
            pool,
        },
    })
}

/// Why a send to the target did not land; the reason goes to the dead
/// letter if it keeps happening.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the target answered {0}")]
    Status(u16),
    #[error("no answer from the target within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the target: {0}")]
    Transport(#[source] ForwardError),
    #[error("the recorded delivery cannot be replayed: {0}")]
    Unreplayable(String),
}

/// Sends deliveries to targets.
pub struct Sender {
    client: Upstream,
    timeout: Duration,
    secret: SecretBox<[u8]>,
}

/// Headers of the recorded request that travel with the replay. The old
/// signatures are left behind: they were made with the forge-side secret
/// over bytes that are not reproduced exactly.
fn travels(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    (name.starts_with("x-github-") || name == "content-type" || name == "user-agent")
        && name != "x-hub-signature"
        && name != "x-hub-signature-256"
}

/// Percent-encodes for an `application/x-www-form-urlencoded` value.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The replayed request's headers and body.
pub fn replay(
    detail: &Detail,
    secret: &[u8],
) -> Result<(Vec<(HeaderName, HeaderValue)>, Bytes), SendError> {
    let mut headers = Vec::new();
    let mut content_type = String::from("application/json");
    for (name, value) in &detail.request.headers {
        let Some(value) = value.as_str() else {
            continue;
        };
        if !travels(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("content-type") {
            content_type = value.to_owned();
        }
        let name = HeaderName::try_from(name.as_str())
            .map_err(|err| SendError::Unreplayable(format!("header {name:?}: {err}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|err| SendError::Unreplayable(format!("header {name}: {err}")))?;
        headers.push((name, value));
    }
    // GitHub records the payload as JSON; form-encoded hooks sent it as the
    // `payload` field.
    let json = serde_json::to_string(&detail.request.payload)
        .map_err(|err| SendError::Unreplayable(err.to_string()))?;
    let body = if content_type.starts_with("application/x-www-form-urlencoded") {
        format!("payload={}", form_encode(&json))
    } else {
        json
    };
    if !headers.iter().any(|(name, _)| name == header::CONTENT_TYPE) {
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    let signature = sign_sha256(secret, body.as_bytes());
    headers.push((
        HeaderName::from_static("x-hub-signature-256"),
        HeaderValue::from_str(&signature).expect("hex is a valid header value"),
    ));
    Ok((headers, Bytes::from(body)))
}

impl Sender {
    pub fn new(client: Upstream, timeout: Duration, secret: Vec<u8>) -> Self {
        Self {
            client,
            timeout,
            secret: SecretBox::new(secret.into_boxed_slice()),
        }
    }

    /// POSTs the delivery; Ok only for a 2xx answer.
    pub async fn send(&self, target: &Uri, detail: &Detail) -> Result<(), SendError> {
        let (headers, body) = replay(detail, self.secret.expose_secret())?;
        let mut request = Request::builder().method(Method::POST).uri(target.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(body)
            .map_err(|err| SendError::Unreplayable(err.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .send(request)
                .await
                .map_err(SendError::Transport)?;
            let status = response.status();
            // Drain (bounded by the timeout) so the connection is reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(SendError::Status(status.as_u16()))
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout(self.timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Verifier;

    fn detail(content_type: &str) -> Detail {
        serde_json::from_value(serde_json::json!({
            "id": 9, "guid": "g-1",
            "request": {
                "headers": {
                    "X-GitHub-Event": "push", "X-GitHub-Delivery": "g-1", "X-GitHub-Hook-ID": "7",
                    "Content-Type": content_type, "X-Hub-Signature-256": "sha256=old", "Accept": "*/*"
                },
                "payload": {"ref": "refs/heads/main", "n": 1}
            }
        }))
        .expect("a detail")
    }

    #[test]
    fn the_replay_keeps_event_headers_and_is_signed_afresh() {
        let (headers, body) = replay(&detail("application/json"), b"s3cret").expect("replayable");
        let map: http::HeaderMap = headers.into_iter().collect();
        assert_eq!(map["x-github-event"], "push");
        assert_eq!(map["x-github-delivery"], "g-1");
        assert_eq!(map["x-github-hook-id"], "7");
        assert_eq!(map["content-type"], "application/json");
        assert!(!map.contains_key("accept"));
        assert_ne!(map["x-hub-signature-256"], "sha256=old");
        assert_eq!(
            Verifier::new(b"s3cret".to_vec(), false).verify(&map, &body),
            Ok(())
        );
        let payload: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(payload["ref"], "refs/heads/main");
    }

    #[test]
    fn a_form_hook_is_replayed_as_a_form() {
        let (_, body) =
            replay(&detail("application/x-www-form-urlencoded"), b"s").expect("replayable");
        let text = std::str::from_utf8(&body).expect("ascii");
        assert!(text.starts_with("payload=%7B%22"), "{text}");
    }
}
