//! A stand-in for the forge's webhook-delivery API, written from GitHub's
//! REST documentation, for the delivery-forwarder tests and benchmark: an
//! HTTP server on 127.0.0.1 with
//! - `GET/POST /repos/O/R/hooks`, `/orgs/O/hooks`, `GET …/hooks/ID`;
//! - `GET …/hooks/ID/deliveries?per_page=N&cursor=C`: newest first, the
//!   next page in a `Link: <…>; rel="next"` header with `cursor=`, an
//!   `ETag`, and 304 for a matching `If-None-Match`;
//! - `GET …/hooks/ID/deliveries/DID` with `request.headers` and
//!   `request.payload`;
//! - GitHub App auth: `GET /repos/O/R/installation`, `/orgs/O/installation`
//!   and `POST /app/installations/ID/access_tokens` take an RS256 JWT
//!   verified with the app's public key (iss, iat, exp at most ten minutes
//!   apart); installation tokens expire, and an expired one gets 401;
//! - a primary rate limit on token requests (`X-RateLimit-Limit`,
//!   `-Remaining`, `-Used`, `-Reset`, `-Resource`; 304s are free; a spent
//!   budget gets 403) and secondary limits on demand (403 with
//!   `Retry-After`);
//! - a log of every request (time, method, path, status, credential) and
//!   of every window in which the forge told the client to stay away.
//!
//! The test creates deliveries (and redeliveries with the same GUID) with
//! [`HookForge::deliver`] and [`HookForge::redeliver`].

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// How the stand-in authenticates and limits.
#[derive(Clone)]
pub struct ForgeConfig {
    /// A personal access token it accepts.
    pub token: Option<String>,
    /// An app: its id (the JWT issuer) and public key (PKCS#1 PEM,
    /// `openssl rsa -RSAPublicKey_out`).
    pub app: Option<(String, String)>,
    /// Lifetime of installation tokens (GitHub: one hour).
    pub token_ttl: Duration,
    /// Primary budget per window, and the window.
    pub budget: u64,
    pub window: Duration,
}

impl Default for ForgeConfig {
    fn default() -> Self {
        Self {
            token: Some("ghp_test".into()),
            app: None,
            token_ttl: Duration::from_secs(3600),
            budget: 5_000,
            window: Duration::from_secs(3600),
        }
    }
}

/// One request as the stand-in answered it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// "jwt", "token" or "none".
    pub auth: &'static str,
}

#[derive(Debug, Clone)]
struct Delivery {
    id: u64,
    guid: String,
    delivered_at: String,
    redelivery: bool,
    event: String,
    action: Option<String>,
    hook_id: u64,
    payload: Value,
}

struct State {
    config: ForgeConfig,
    /// Hooks by source ("repos/O/R" or "orgs/O"): (id, config url).
    hooks: BTreeMap<String, Vec<(u64, String)>>,
    /// Deliveries by hook id, oldest first.
    deliveries: HashMap<u64, Vec<Delivery>>,
    next_hook: u64,
    next_delivery: u64,
    tokens: HashMap<String, SystemTime>,
    tokens_issued: u64,
    jwt_rejected: u64,
    remaining: u64,
    reset: u64,
    units_used: u64,
    secondary: Option<(u32, u64)>,
    quiet: Vec<(SystemTime, SystemTime, &'static str)>,
    log: Vec<Logged>,
}

/// The running stand-in; stops when dropped.
pub struct HookForge {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

fn epoch_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn source_of(segments: &[&str]) -> Option<(String, usize)> {
    match segments {
        ["repos", o, r, ..] => Some((format!("repos/{o}/{r}"), 3)),
        ["orgs", o, ..] => Some((format!("orgs/{o}"), 2)),
        _ => None,
    }
}

impl HookForge {
    pub async fn start(config: ForgeConfig) -> HookForge {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the forge binds");
        let addr = listener.local_addr().expect("bound");
        let state = Arc::new(Mutex::new(State {
            remaining: config.budget,
            reset: epoch_secs(SystemTime::now() + config.window) + 1,
            config,
            hooks: BTreeMap::new(),
            deliveries: HashMap::new(),
            next_hook: 1,
            next_delivery: 10_000_000_000,
            tokens: HashMap::new(),
            tokens_issued: 0,
            jwt_rejected: 0,
            units_used: 0,
            secondary: None,
            quiet: Vec::new(),
            log: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut state = state.lock().expect("forge lock");
                            Ok::<_, Infallible>(state.answer(addr, &parts, &body))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HookForge { addr, state, task }
    }

    /// The API base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("forge lock")
    }

    /// Adds a hook to `source` ("repos/O/R" or "orgs/O") posting to `url`.
    pub fn add_hook(&self, source: &str, url: &str) -> u64 {
        let mut state = self.lock();
        let id = state.next_hook;
        state.next_hook += 1;
        state
            .hooks
            .entry(source.to_owned())
            .or_default()
            .push((id, url.to_owned()));
        id
    }

    /// Hooks of `source` as (id, url).
    pub fn hooks(&self, source: &str) -> Vec<(u64, String)> {
        self.lock().hooks.get(source).cloned().unwrap_or_default()
    }

    /// Records a delivery the forge attempted; returns (id, guid).
    pub fn deliver(&self, hook_id: u64, event: &str, payload: Value) -> (u64, String) {
        let mut state = self.lock();
        let id = state.next_delivery;
        state.next_delivery += 1;
        let guid = format!("{:08x}-0000-11ee-8000-{:012x}", id % 0xffff_ffff, id);
        state.record(Delivery {
            id,
            guid: guid.clone(),
            delivered_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            redelivery: false,
            event: event.to_owned(),
            action: payload["action"].as_str().map(str::to_owned),
            hook_id,
            payload,
        });
        (id, guid)
    }

    /// Redelivers `id`: a new delivery id, the same GUID and payload.
    pub fn redeliver(&self, hook_id: u64, id: u64) -> u64 {
        let mut state = self.lock();
        let original = state.deliveries[&hook_id]
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .expect("a known delivery");
        let new_id = state.next_delivery;
        state.next_delivery += 1;
        state.record(Delivery {
            id: new_id,
            redelivery: true,
            delivered_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            ..original
        });
        new_id
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// Windows (from the answer that said so, to when the client may
    /// come back) in which no request should arrive, with why.
    pub fn quiet_windows(&self) -> Vec<(SystemTime, SystemTime, &'static str)> {
        self.lock().quiet.clone()
    }

    /// Answers the next `count` token requests with a secondary rate limit
    /// (403, Retry-After: `retry_after` seconds).
    pub fn secondary_limit(&self, count: u32, retry_after: u64) {
        self.lock().secondary = Some((count, retry_after));
    }

    /// Installation tokens issued, and JWTs refused.
    pub fn tokens_issued(&self) -> u64 {
        self.lock().tokens_issued
    }

    pub fn jwt_rejected(&self) -> u64 {
        self.lock().jwt_rejected
    }

    /// Primary rate-limit units spent.
    pub fn units_used(&self) -> u64 {
        self.lock().units_used
    }
}

impl Drop for HookForge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn message(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        json!({"message": text, "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn summary(d: &Delivery) -> Value {
    json!({
        "id": d.id, "guid": d.guid, "delivered_at": d.delivered_at,
        "redelivery": d.redelivery, "duration": 0.03,
        "status": "Invalid HTTP Response: 503", "status_code": 503,
        "event": d.event, "action": d.action,
        "installation_id": null, "repository_id": 1, "throttled_at": null,
    })
}

impl State {
    fn record(&mut self, delivery: Delivery) {
        self.deliveries
            .entry(delivery.hook_id)
            .or_default()
            .push(delivery);
    }

    fn answer(
        &mut self,
        addr: SocketAddr,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let now = SystemTime::now();
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("token "))
            })
            .map(str::to_owned);
        let path = parts.uri.path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let app_route =
            matches!(segments.as_slice(), ["app", ..]) || segments.last() == Some(&"installation");
        let (auth, mut response) = if app_route {
            (
                "jwt",
                self.app_route(&parts.method, &segments, bearer.as_deref(), now),
            )
        } else {
            let token_ok = match bearer.as_deref() {
                Some(token) if self.config.token.as_deref() == Some(token) => true,
                Some(token) => self.tokens.get(token).is_some_and(|exp| *exp > now),
                None => false,
            };
            if !token_ok {
                ("none", message(StatusCode::UNAUTHORIZED, "Bad credentials"))
            } else {
                ("token", self.limited(addr, parts, &segments, body, now))
            }
        };
        self.log.push(Logged {
            at: now,
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or(path),
            status: response.status().as_u16(),
            auth,
        });
        response.headers_mut().insert(
            "x-github-request-id",
            HeaderValue::from_static("0000:STANDIN"),
        );
        response
    }

    /// A token request under the primary and secondary limits.
    fn limited(
        &mut self,
        addr: SocketAddr,
        parts: &http::request::Parts,
        segments: &[&str],
        body: &[u8],
        now: SystemTime,
    ) -> Response<Full<Bytes>> {
        if epoch_secs(now) >= self.reset {
            self.remaining = self.config.budget;
            self.reset = epoch_secs(now + self.config.window) + 1;
        }
        if let Some((count, retry_after)) = self.secondary {
            self.secondary = (count > 1).then_some((count - 1, retry_after));
            self.quiet
                .push((now, now + Duration::from_secs(retry_after), "secondary"));
            let mut response = message(
                StatusCode::FORBIDDEN,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after.to_string()).expect("digits"),
            );
            return response;
        }
        let mut response = if self.remaining == 0 {
            message(
                StatusCode::FORBIDDEN,
                "API rate limit exceeded for installation. Check out the documentation.",
            )
        } else {
            self.route(addr, parts, segments, body, now)
        };
        let spent = self.remaining > 0 && response.status() != StatusCode::NOT_MODIFIED;
        if spent {
            self.remaining -= 1;
            self.units_used += 1;
            if self.remaining == 0 {
                self.quiet
                    .push((now, UNIX_EPOCH + Duration::from_secs(self.reset), "primary"));
            }
        }
        let headers = response.headers_mut();
        let number = |n: u64| HeaderValue::from_str(&n.to_string()).expect("digits");
        headers.insert("x-ratelimit-limit", number(self.config.budget));
        headers.insert("x-ratelimit-remaining", number(self.remaining));
        headers.insert(
            "x-ratelimit-used",
            number(self.config.budget - self.remaining),
        );
        headers.insert("x-ratelimit-reset", number(self.reset));
        headers.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
        response
    }

    fn verify_jwt(&mut self, bearer: Option<&str>, now: SystemTime) -> bool {
        let ok = self
            .config
            .app
            .as_ref()
            .zip(bearer)
            .and_then(|((app_id, public_pem), jwt)| verified_claims(jwt, app_id, public_pem, now))
            .is_some_and(|(iat, exp)| {
                // GitHub: at most ten minutes into the future, and issued
                // no later than now (a minute of drift allowed).
                exp > iat && exp - iat <= 660 && iat <= epoch_secs(now) + 60
            });
        if !ok {
            self.jwt_rejected += 1;
        }
        ok
    }

    fn app_route(
        &mut self,
        method: &Method,
        segments: &[&str],
        bearer: Option<&str>,
        now: SystemTime,
    ) -> Response<Full<Bytes>> {
        if !self.verify_jwt(bearer, now) {
            return message(
                StatusCode::UNAUTHORIZED,
                "A JSON web token could not be decoded",
            );
        }
        match (method, segments) {
            (&Method::GET, ["repos", _, _, "installation"] | ["orgs", _, "installation"]) => {
                respond(StatusCode::OK, json!({"id": 77, "app_id": 1}))
            }
            (&Method::POST, ["app", "installations", "77", "access_tokens"]) => {
                self.tokens_issued += 1;
                let token = format!("ghs_standin{:06}", self.tokens_issued);
                let expires = now + self.config.token_ttl;
                self.tokens.insert(token.clone(), expires);
                respond(
                    StatusCode::CREATED,
                    json!({
                        "token": token,
                        "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
                        "permissions": {"repository_hooks": "read"},
                    }),
                )
            }
            _ => message(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    fn route(
        &mut self,
        addr: SocketAddr,
        parts: &http::request::Parts,
        segments: &[&str],
        body: &[u8],
        now: SystemTime,
    ) -> Response<Full<Bytes>> {
        let Some((source, at)) = source_of(segments) else {
            return message(StatusCode::NOT_FOUND, "Not Found");
        };
        let rest = &segments[at..];
        let hook_of = |state: &State, id: &str| {
            let id: u64 = id.parse().ok()?;
            state
                .hooks
                .get(&source)?
                .iter()
                .find(|(hook, _)| *hook == id)
                .cloned()
        };
        let hook_json = |(id, url): &(u64, String)| {
            json!({"type": "Repository", "id": id, "name": "web", "active": true,
                   "events": ["push"], "config": {"url": url, "content_type": "json", "insecure_ssl": "0"}})
        };
        match (&parts.method, rest) {
            (&Method::GET, ["hooks"]) => {
                let hooks: Vec<Value> = self
                    .hooks
                    .get(&source)
                    .map(|hooks| hooks.iter().map(hook_json).collect())
                    .unwrap_or_default();
                respond(StatusCode::OK, Value::Array(hooks))
            }
            (&Method::POST, ["hooks"]) => {
                let Ok(spec) = serde_json::from_slice::<Value>(body) else {
                    return message(StatusCode::BAD_REQUEST, "Problems parsing JSON");
                };
                let Some(url) = spec["config"]["url"].as_str() else {
                    return message(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
                };
                let id = self.next_hook;
                self.next_hook += 1;
                let hook = (id, url.to_owned());
                self.hooks.entry(source).or_default().push(hook.clone());
                respond(StatusCode::CREATED, hook_json(&hook))
            }
            (&Method::GET, ["hooks", id]) => match hook_of(self, id) {
                Some(hook) => respond(StatusCode::OK, hook_json(&hook)),
                None => message(StatusCode::NOT_FOUND, "Not Found"),
            },
            (&Method::GET, ["hooks", id, "deliveries"]) => {
                let Some((hook, _)) = hook_of(self, id) else {
                    return message(StatusCode::NOT_FOUND, "Not Found");
                };
                self.list(addr, parts, &source, hook)
            }
            (&Method::GET, ["hooks", id, "deliveries", delivery]) => {
                let Some((hook, _)) = hook_of(self, id) else {
                    return message(StatusCode::NOT_FOUND, "Not Found");
                };
                let found = self
                    .deliveries
                    .get(&hook)
                    .and_then(|all| all.iter().find(|d| delivery.parse() == Ok(d.id)).cloned());
                match found {
                    Some(d) => {
                        let mut detail = summary(&d);
                        detail["url"] = json!("");
                        detail["request"] = json!({
                            "headers": {
                                "Accept": "*/*",
                                "User-Agent": "GitHub-Hookshot/standin",
                                "X-GitHub-Delivery": d.guid,
                                "X-GitHub-Event": d.event,
                                "X-GitHub-Hook-ID": hook.to_string(),
                                "X-GitHub-Hook-Installation-Target-ID": "1",
                                "X-GitHub-Hook-Installation-Target-Type": "repository",
                                "X-Hub-Signature-256": "sha256=0000",
                                "content-type": "application/json",
                            },
                            "payload": d.payload,
                        });
                        detail["response"] = json!({"headers": {}, "payload": null});
                        let _ = now;
                        respond(StatusCode::OK, detail)
                    }
                    None => message(StatusCode::NOT_FOUND, "Not Found"),
                }
            }
            _ => message(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    /// One page, newest first; `cursor` is the id below which it starts.
    fn list(
        &self,
        addr: SocketAddr,
        parts: &http::request::Parts,
        source: &str,
        hook: u64,
    ) -> Response<Full<Bytes>> {
        let query: HashMap<String, String> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let per_page = query
            .get("per_page")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(30)
            .clamp(1, 100);
        let below = match query.get("cursor") {
            Some(cursor) => match cursor
                .strip_prefix("v1_")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(id) => id,
                None => return message(StatusCode::BAD_REQUEST, "Invalid cursor"),
            },
            None => u64::MAX,
        };
        let newest_first: Vec<&Delivery> = self
            .deliveries
            .get(&hook)
            .map(|all| all.iter().rev().filter(|d| d.id < below).collect())
            .unwrap_or_default();
        let page: Vec<Value> = newest_first
            .iter()
            .take(per_page)
            .map(|d| summary(d))
            .collect();
        let body = Value::Array(page).to_string();
        let etag = format!(
            "W/\"{}\"",
            Sha256::digest(body.as_bytes())
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let matches = parts
            .headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
        let mut response = if matches {
            Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .body(Full::new(Bytes::new()))
                .expect("a valid response")
        } else {
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response")
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
        if newest_first.len() > per_page && !matches {
            let last = newest_first[per_page - 1].id;
            let link = format!(
                "<http://{addr}/{source}/hooks/{hook}/deliveries?per_page={per_page}&cursor=v1_{last}>; rel=\"next\""
            );
            headers.insert(header::LINK, HeaderValue::from_str(&link).expect("ascii"));
        }
        response
    }
}

/// `iat` and `exp` of an app JWT whose RS256 signature verifies with the
/// app's public key (PKCS#1 PEM, `RSA PUBLIC KEY`), whose issuer is the app
/// and which has not expired at `now` (a minute of leeway); checked with
/// ring directly, independently of jsonwebtoken and of the agent's signing
/// code.
fn verified_claims(
    jwt: &str,
    app_id: &str,
    public_pem: &str,
    now: SystemTime,
) -> Option<(u64, u64)> {
    use base64::{
        Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD,
    };
    let der = STANDARD
        .decode(
            public_pem
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect::<String>(),
        )
        .ok()?;
    let (message, signature) = jwt.rsplit_once('.')?;
    let (header, claims) = message.split_once('.')?;
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, der);
    key.verify(message.as_bytes(), &URL_SAFE_NO_PAD.decode(signature).ok()?)
        .ok()?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    let exp = claims["exp"].as_u64()?;
    let unexpired = exp + 60 > epoch_secs(now);
    (header["alg"] == "RS256" && claims["iss"] == app_id && unexpired)
        .then_some((claims["iat"].as_u64()?, exp))
}
