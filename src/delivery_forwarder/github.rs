//! The forge's REST API as the forwarder uses it (GitHub's documented
//! endpoints, also served by GitHub Enterprise under `--api-url`): hooks of
//! a repository or organization, the deliveries of a hook (newest first,
//! cursor pagination through the `Link` header, conditional with ETag), one
//! delivery's detail, and the app endpoints that turn a JWT into an
//! installation token.
//!
//! Every request waits at the rate gate ([`super::rate`]) first, and every
//! answer tells the gate what the forge said about its limits.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    auth::{App, Credentials},
    config::Source,
    metrics::ForwarderMetrics,
    rate::RateGate,
};
use crate::upstream::forward::{ForwardError, Upstream};

/// GitHub's REST API version the requests are written against.
const API_VERSION: &str = "2022-11-28";
/// Why an API call failed; `label` is its metric label.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("transport: {0}")]
    Transport(#[source] ForwardError),
    #[error("transport: reading the answer: {0}")]
    Answer(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("rate limited; no requests for {0:?}")]
    RateLimited(Duration),
    #[error("{status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("unexpected answer: {0}")]
    Decode(String),
    #[error("authentication: {0}")]
    Auth(String),
}

impl ApiError {
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::RateLimited(_) => "rate_limited",
            _ => "error",
        }
    }
}

/// One hook, as far as the forwarder cares.
#[derive(Debug, Clone, Deserialize)]
pub struct Hook {
    pub id: u64,
    #[serde(default)]
    pub config: HookConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HookConfig {
    #[serde(default)]
    pub url: Option<String>,
}

/// A delivery as the list shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub id: u64,
    pub guid: String,
    pub delivered_at: String,
    #[serde(default)]
    pub redelivery: bool,
    #[serde(default)]
    pub event: String,
}

impl Summary {
    /// `delivered_at` as a time (the epoch when unreadable, which only
    /// makes the lag gauge wrong, never the cursor).
    pub fn at(&self) -> SystemTime {
        self.recorded().unwrap_or(UNIX_EPOCH)
    }

    /// When the forge recorded the delivery, if `delivered_at` reads.
    pub fn recorded(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(self.delivered_at.trim_end_matches('Z')).ok()
    }
}

/// A delivery with the request the forge sent.
#[derive(Debug, Clone, Deserialize)]
pub struct Detail {
    pub id: u64,
    pub guid: String,
    pub request: DeliveryRequest,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeliveryRequest {
    #[serde(default)]
    pub headers: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// One page of deliveries, or word that the first page is unchanged.
#[derive(Debug)]
pub enum Page {
    NotModified,
    Items {
        items: Vec<Summary>,
        /// The next page's path and query, relative to the API base.
        next: Option<String>,
        etag: Option<String>,
    },
}

/// The API client; cheap to clone.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    http: Upstream,
    timeout: Duration,
    max_body: usize,
    credentials: Credentials,
    /// No request before this time.
    gate: RateGate,
    metrics: ForwarderMetrics,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// How one request authenticates.
enum As<'a> {
    App,
    For(&'a Source),
}

impl Api {
    pub fn new(
        base: &str,
        http: Upstream,
        timeout: Duration,
        max_body: usize,
        credentials: Credentials,
        metrics: ForwarderMetrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                base: base.trim_end_matches('/').to_owned(),
                http,
                timeout,
                max_body,
                credentials,
                gate: RateGate::new(metrics.clone()),
                metrics,
            }),
        })
    }

    /// Sends one request (after the gate) and reads the whole answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&SecretString>,
        extra: &[(header::HeaderName, &str)],
        body: Option<Vec<u8>>,
        endpoint: &'static str,
    ) -> Result<Answer, ApiError> {
        self.inner.gate.pass().await;
        let url = format!("{}{path}", self.inner.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION)
            .header(header::USER_AGENT, "cluster-relay-delivery-forwarder");
        if let Some(token) = authorization {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                .map_err(|_| ApiError::Auth("the token is not a valid header value".into()))?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        for (name, value) in extra {
            request = request.header(name, *value);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Bytes::from(body.unwrap_or_default()))
            .map_err(|err| ApiError::Decode(format!("building {url}: {err}")))?;
        let exchange = async {
            let response = self
                .inner
                .http
                .send(request)
                .await
                .map_err(ApiError::Transport)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.inner.max_body)
                .collect()
                .await
                .map_err(ApiError::Answer)?
                .to_bytes();
            Ok::<_, ApiError>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let result = match tokio::time::timeout(self.inner.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout(self.inner.timeout)),
        };
        let answer = match result {
            Ok(answer) => answer,
            Err(err) => {
                self.inner.metrics.api(endpoint, "error");
                return Err(err);
            }
        };
        let limited = self
            .inner
            .gate
            .note(answer.status, &answer.headers, &answer.body);
        let result = if answer.status == StatusCode::NOT_MODIFIED {
            "not_modified"
        } else if limited.is_some() {
            "rate_limited"
        } else if answer.status.is_success() {
            "ok"
        } else {
            "error"
        };
        self.inner.metrics.api(endpoint, result);
        if let Some(wait) = limited {
            return Err(ApiError::RateLimited(wait));
        }
        Ok(answer)
    }

    /// The bearer token for a request about `source`.
    async fn authorization(&self, source: &Source) -> Result<SecretString, ApiError> {
        match &self.inner.credentials {
            Credentials::Token(token) => Ok(token.clone()),
            Credentials::App(app) => self.installation_token(app, source).await,
        }
    }

    async fn installation_token(
        &self,
        app: &App,
        source: &Source,
    ) -> Result<SecretString, ApiError> {
        let installation = match app.installation_id {
            Some(id) => id,
            None => self.installation_of(app, source).await?,
        };
        let mut tokens = app.tokens.lock().await;
        if let Some(token) = App::fresh(&tokens, installation, app.refresh_before) {
            return Ok(token);
        }
        #[derive(Deserialize)]
        struct Issued {
            token: String,
            expires_at: String,
        }
        let answer = self
            .call_as(
                Method::POST,
                &format!("/app/installations/{installation}/access_tokens"),
                As::App,
                &[],
                None,
                "token",
            )
            .await?;
        let issued: Issued = decode(&answer)?;
        let expires = humantime::parse_rfc3339_weak(issued.expires_at.trim_end_matches('Z'))
            .map_err(|err| {
                ApiError::Decode(format!("expires_at {:?}: {err}", issued.expires_at))
            })?;
        tracing::info!(installation, expires_at = %issued.expires_at, "installation token issued");
        let token = SecretString::from(issued.token);
        tokens.insert(installation, (token.clone(), expires));
        Ok(token)
    }

    async fn installation_of(&self, app: &App, source: &Source) -> Result<u64, ApiError> {
        let owner = match source {
            Source::Repo { owner, .. } | Source::Org(owner) => owner.clone(),
        };
        if let Some(id) = app.installations.lock().await.get(&owner) {
            return Ok(*id);
        }
        #[derive(Deserialize)]
        struct Installation {
            id: u64,
        }
        let answer = self
            .call_as(
                Method::GET,
                &source.installation_path(),
                As::App,
                &[],
                None,
                "installation",
            )
            .await?;
        let found: Installation = decode(&answer)?;
        app.installations.lock().await.insert(owner, found.id);
        Ok(found.id)
    }

    async fn call_as(
        &self,
        method: Method,
        path: &str,
        who: As<'_>,
        extra: &[(header::HeaderName, &str)],
        body: Option<Vec<u8>>,
        endpoint: &'static str,
    ) -> Result<Answer, ApiError> {
        let token = match who {
            As::App => match &self.inner.credentials {
                Credentials::App(app) => {
                    app.jwt().map_err(|err| ApiError::Auth(err.to_string()))?
                }
                Credentials::Token(_) => {
                    return Err(ApiError::Auth("app endpoints need app credentials".into()));
                }
            },
            As::For(source) => Box::pin(self.authorization(source)).await?,
        };
        let answer = self
            .send(method, path, Some(&token), extra, body, endpoint)
            .await?;
        if answer.status.is_success() || answer.status == StatusCode::NOT_MODIFIED {
            Ok(answer)
        } else {
            Err(status_error(&answer))
        }
    }

    /// One hook by id; `None` when the forge does not know it.
    pub async fn hook(&self, source: &Source, id: u64) -> Result<Option<Hook>, ApiError> {
        let path = format!("{}/{id}", source.hooks_path());
        match self
            .call_as(Method::GET, &path, As::For(source), &[], None, "hooks")
            .await
        {
            Ok(answer) => decode(&answer).map(Some),
            Err(ApiError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Every hook of `source`, following pages.
    pub async fn hooks(&self, source: &Source) -> Result<Vec<Hook>, ApiError> {
        let mut path = format!("{}?per_page=100", source.hooks_path());
        let mut hooks = Vec::new();
        // Bounded: no source has more than a few dozen hooks (GitHub caps
        // them at 20 per event per source).
        for _ in 0..50 {
            let answer = self
                .call_as(Method::GET, &path, As::For(source), &[], None, "hooks")
                .await?;
            hooks.extend(decode::<Vec<Hook>>(&answer)?);
            match self.next_link(&answer.headers)? {
                Some(next) => path = next,
                None => break,
            }
        }
        Ok(hooks)
    }

    /// Creates an active `web` hook posting JSON to `url` for `events`
    /// (`push` when none are given, as GitHub defaults).
    pub async fn create_hook(
        &self,
        source: &Source,
        url: &str,
        events: &[String],
    ) -> Result<Hook, ApiError> {
        let events = if events.is_empty() {
            vec!["push".to_owned()]
        } else {
            events.to_vec()
        };
        let body = serde_json::json!({
            "name": "web",
            "active": true,
            "events": events,
            "config": {"url": url, "content_type": "json", "insecure_ssl": "0"},
        });
        let answer = self
            .call_as(
                Method::POST,
                &source.hooks_path(),
                As::For(source),
                &[],
                Some(body.to_string().into_bytes()),
                "hooks",
            )
            .await?;
        decode(&answer)
    }

    /// One page of a hook's deliveries: the first (`page` = None) with
    /// `etag` as If-None-Match, or the page a Link header named.
    pub async fn deliveries(
        &self,
        source: &Source,
        hook_id: u64,
        per_page: u8,
        page: Option<&str>,
        etag: Option<&str>,
    ) -> Result<Page, ApiError> {
        let path = match page {
            Some(next) => next.to_owned(),
            None => format!(
                "{}/{hook_id}/deliveries?per_page={per_page}",
                source.hooks_path()
            ),
        };
        let extra: Vec<(header::HeaderName, &str)> = etag
            .map(|etag| (header::IF_NONE_MATCH, etag))
            .into_iter()
            .collect();
        let answer = self
            .call_as(Method::GET, &path, As::For(source), &extra, None, "list")
            .await?;
        if answer.status == StatusCode::NOT_MODIFIED {
            return Ok(Page::NotModified);
        }
        Ok(Page::Items {
            items: decode(&answer)?,
            next: self.next_link(&answer.headers)?,
            etag: answer
                .headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }

    /// One delivery with its request; `None` when the forge no longer has it.
    pub async fn delivery(
        &self,
        source: &Source,
        hook_id: u64,
        id: u64,
    ) -> Result<Option<Detail>, ApiError> {
        let path = format!("{}/{hook_id}/deliveries/{id}", source.hooks_path());
        match self
            .call_as(Method::GET, &path, As::For(source), &[], None, "detail")
            .await
        {
            Ok(answer) => decode(&answer).map(Some),
            Err(ApiError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The `rel="next"` link as a path relative to the API base. A link
    /// elsewhere is refused: the token must not follow it.
    fn next_link(&self, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Some(url) = headers
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find(|part| part.contains("rel=\"next\""))
            .and_then(|part| Some(part.split_once('<')?.1.split_once('>')?.0.trim().to_owned()))
        else {
            return Ok(None);
        };
        url.strip_prefix(&self.inner.base)
            .filter(|rest| rest.starts_with('/'))
            .map(|rest| Some(rest.to_owned()))
            .ok_or_else(|| ApiError::Decode(format!("a next link outside --api-url: {url}")))
    }
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, ApiError> {
    serde_json::from_slice(&answer.body).map_err(|err| ApiError::Decode(err.to_string()))
}

fn status_error(answer: &Answer) -> ApiError {
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        message: String,
    }
    let message = serde_json::from_slice::<Message>(&answer.body)
        .map(|m| m.message)
        .unwrap_or_default();
    let message: String = message.chars().take(200).collect();
    if answer.status == StatusCode::UNAUTHORIZED {
        return ApiError::Auth(format!("401: {message}"));
    }
    ApiError::Status {
        status: answer.status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Api {
        Api::new(
            "http://127.0.0.1:1/api/v3/",
            super::super::forward::http_client(
                rustls::RootCertStore::empty(),
                Duration::from_secs(1),
                Default::default(),
            )
            .expect("a client"),
            Duration::from_secs(1),
            1 << 20,
            Credentials::Token(SecretString::from("t")),
            ForwarderMetrics::new(&prometheus::Registry::new()),
        )
        .expect("a client")
    }

    #[tokio::test]
    async fn next_links_stay_under_the_base() {
        let api = api();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LINK,
            HeaderValue::from_static(
                "<http://127.0.0.1:1/api/v3/repos/o/r/hooks/1/deliveries?per_page=2&cursor=v1_9>; rel=\"next\"",
            ),
        );
        assert_eq!(
            api.next_link(&headers).expect("under the base").as_deref(),
            Some("/repos/o/r/hooks/1/deliveries?per_page=2&cursor=v1_9")
        );
        headers.insert(
            header::LINK,
            HeaderValue::from_static("<https://evil.example/x>; rel=\"next\""),
        );
        assert!(api.next_link(&headers).is_err());
        assert_eq!(api.next_link(&HeaderMap::new()).expect("none"), None);
    }
}
