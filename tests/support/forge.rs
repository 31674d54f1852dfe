//! A stand-in for GitHub's REST API ("the forge"), for tests of what sits in
//! front of it (`agent read-cache --profile etag`). It runs on 127.0.0.1:0
//! in a thread of its own and follows GitHub's documented behaviour:
//!
//! - Conditional requests: every 200 carries a strong `ETag` (a digest of
//!   the representation) and `Last-Modified`; a matching `If-None-Match`, or
//!   without one a not-older `If-Modified-Since`, gets `304 Not Modified`
//!   with no body, and a 304 does not count against the rate limit.
//! - Pagination: lists take `per_page` (default 30, at most 100) and `page`;
//!   a list longer than one page has a `Link` header with absolute URLs of
//!   the forge itself and `rel` prev, next, last and first (only those that
//!   exist, in GitHub's order).
//! - Rate limits: `X-RateLimit-Limit/Remaining/Used/Reset/Resource` on every
//!   answer; 5000 an hour per token, 60 for anonymous callers; when spent,
//!   `403` with GitHub's message.
//! - Authentication: `Authorization: token T` or `Bearer T`; an unknown
//!   token gets `401 Bad credentials` (documented: and it is not served);
//!   `/user` without a token gets `401 Requires authentication`.
//! - `Cache-Control: private, max-age=60, s-maxage=60` for authenticated
//!   answers (`public` for anonymous ones), `Vary` as GitHub sends it.
//!
//! Each token is an account with its own user and repositories, so tokens
//! see different bytes. Tests change content mid-test ([`Forge::rename`],
//! [`Forge::set_repos`]), count what reached the forge ([`Forge::seen`]),
//! and can hold answers back ([`Forge::hold`]) to line up concurrent misses.
//!
//! Routes live in [`route`], one match arm each, so other endpoints
//! (e.g. a repository's hook deliveries) can be added beside them.
//!
//! [`get`] is a small blocking HTTP/1.1 client for the tests that returns
//! headers too (the agent's `raw_http` returns only status and body).

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::{oneshot, watch};

/// GitHub's default page size and its maximum.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;
/// Primary rate limits per hour, as documented.
const TOKEN_LIMIT: u64 = 5000;
const ANONYMOUS_LIMIT: u64 = 60;
const DOCS: &str = "https://docs.github.com/rest";

/// One request the forge answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub status: u16,
    /// The token sent, if any (this is a test double; its tokens are fake).
    pub token: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    /// All request headers, for assertions on what a proxy forwarded.
    pub headers: HeaderMap,
}

/// A repository of an account.
#[derive(Debug, Clone)]
struct Repo {
    name: String,
    description: String,
}

#[derive(Debug, Clone)]
struct Account {
    id: u64,
    login: String,
    name: String,
    repos: Vec<Repo>,
    /// Seconds since the epoch of the last change, for `Last-Modified`.
    user_modified: u64,
    repos_modified: u64,
}

#[derive(Debug, Clone, Copy)]
struct Quota {
    limit: u64,
    used: u64,
    reset: u64,
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, Account>,
    /// Per token; `None` is the anonymous caller (GitHub counts those by IP).
    quotas: HashMap<Option<String>, Quota>,
    seen: Vec<Seen>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    /// While true, answers wait (after being counted as arrived).
    hold: watch::Sender<bool>,
    /// Requests that arrived, including those held.
    arrived: std::sync::atomic::AtomicUsize,
    addr: SocketAddr,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running stand-in; stops when dropped.
pub struct Forge {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forge {
    /// Starts an empty forge on 127.0.0.1:0.
    pub fn start() -> anyhow::Result<Forge> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            hold: watch::channel(false).0,
            arrived: Default::default(),
            addr,
        });
        let (stop, stopped) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("forge".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("forge runtime");
                runtime.block_on(serve(listener, serving, stopped));
            })?;
        Ok(Forge {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`, the API root (GitHub's `https://api.github.com`).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Adds an account reached with `token`, with `repos` repositories
    /// named `<login>-repo-<i>`.
    pub fn add_account(&self, token: &str, login: &str, repos: usize) {
        let mut state = self.shared.state();
        state.next_id += 1;
        let id = 1000 + state.next_id;
        let now = now_secs();
        let account = Account {
            id,
            login: login.to_owned(),
            name: format!("{login} the first"),
            repos: make_repos(login, repos, 0),
            user_modified: now,
            repos_modified: now,
        };
        state.accounts.insert(token.to_owned(), account);
    }

    /// Changes the display name of `token`'s user: `/user` changes.
    pub fn rename(&self, token: &str, name: &str) {
        let mut state = self.shared.state();
        let account = state.accounts.get_mut(token).expect("known token");
        account.name = name.to_owned();
        account.user_modified = later(account.user_modified);
    }

    /// Replaces `token`'s repositories by `count` new ones (their
    /// descriptions carry `generation`): every page of the list changes.
    pub fn set_repos(&self, token: &str, count: usize, generation: u32) {
        let mut state = self.shared.state();
        let account = state.accounts.get_mut(token).expect("known token");
        account.repos = make_repos(&account.login, count, generation);
        account.repos_modified = later(account.repos_modified);
    }

    /// Every request answered so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.state().seen.clone()
    }

    /// How many requests were answered.
    pub fn answered(&self) -> usize {
        self.shared.state().seen.len()
    }

    /// How many requests arrived (answered or held).
    pub fn arrived(&self) -> usize {
        self.shared
            .arrived
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Holds every answer until [`Forge::release`].
    pub fn hold(&self) {
        self.shared.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// `X-RateLimit-Used` of `token` (`None`: anonymous) now.
    pub fn used(&self, token: Option<&str>) -> u64 {
        self.shared
            .state()
            .quotas
            .get(&token.map(str::to_owned))
            .map_or(0, |q| q.used)
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.release();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn make_repos(login: &str, count: usize, generation: u32) -> Vec<Repo> {
    (0..count)
        .map(|i| Repo {
            name: format!("{login}-repo-{i}"),
            description: format!("repository {i} of {login}, generation {generation}"),
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A modification time after `previous`: HTTP dates have whole seconds, so
/// two changes within a second must still get different `Last-Modified`.
fn later(previous: u64) -> u64 {
    now_secs().max(previous + 1)
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    shared
        .arrived
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut hold = shared.hold.subscribe();
    let _ = hold.wait_for(|held| !held).await;
    let (parts, _) = request.into_parts();
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            matches!(scheme.to_ascii_lowercase().as_str(), "token" | "bearer")
                .then(|| token.trim().to_owned())
        });
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut state = shared.state();
    let response = route(
        &mut state,
        shared.addr,
        &parts.method,
        &parts.uri,
        &parts.headers,
        token.as_deref(),
    );
    state.seen.push(Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        status: response.status().as_u16(),
        token,
        if_none_match: header(header::IF_NONE_MATCH),
        if_modified_since: header(header::IF_MODIFIED_SINCE),
        headers: parts.headers.clone(),
    });
    response
}

/// What a route found: a JSON document (with the time it last changed and,
/// for lists, the pagination links), or an error status and message.
enum Found {
    Document {
        body: Value,
        modified: u64,
        links: Option<String>,
    },
    Error(StatusCode, &'static str),
}

/// Answers one request. New endpoints go here as match arms.
fn route(
    state: &mut State,
    addr: SocketAddr,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Response<Full<Bytes>> {
    let quota_key = token.map(str::to_owned);
    // An unknown token is rejected before anything else, as GitHub does.
    if let Some(token) = token
        && !state.accounts.contains_key(token)
    {
        return error(StatusCode::UNAUTHORIZED, "Bad credentials", None);
    }
    let now = now_secs();
    let quota = *state.quotas.entry(quota_key.clone()).or_insert(Quota {
        limit: if token.is_some() {
            TOKEN_LIMIT
        } else {
            ANONYMOUS_LIMIT
        },
        used: 0,
        reset: now + 3600,
    });
    if quota.used >= quota.limit {
        return error(
            StatusCode::FORBIDDEN,
            "API rate limit exceeded",
            Some(quota),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return error(StatusCode::NOT_FOUND, "Not Found", Some(quota));
    }
    let account = token.and_then(|t| state.accounts.get(t));
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let found = match (segments.as_slice(), account) {
        (["user"], Some(a)) => Found::Document {
            body: user_json(a),
            modified: a.user_modified,
            links: None,
        },
        (["user", "repos"], Some(a)) => {
            let (per_page, page) = paging(uri.query());
            let start = (page - 1).saturating_mul(per_page).min(a.repos.len());
            let end = start.saturating_add(per_page).min(a.repos.len());
            let items: Vec<Value> = a.repos[start..end]
                .iter()
                .map(|r| repo_json(a, r))
                .collect();
            Found::Document {
                body: Value::Array(items),
                modified: a.repos_modified,
                links: links(addr, uri, per_page, page, a.repos.len()),
            }
        }
        (["repos", owner, repo], _) => match find_repo(state, token, owner, repo) {
            Some((a, r)) => Found::Document {
                body: repo_json(a, r),
                modified: a.repos_modified,
                links: None,
            },
            None => Found::Error(StatusCode::NOT_FOUND, "Not Found"),
        },
        (["user"] | ["user", "repos"], None) => {
            Found::Error(StatusCode::UNAUTHORIZED, "Requires authentication")
        }
        _ => Found::Error(StatusCode::NOT_FOUND, "Not Found"),
    };
    match found {
        Found::Error(status, message) => {
            let quota = spend(state, &quota_key);
            error(status, message, Some(quota))
        }
        Found::Document {
            body,
            modified,
            links,
        } => {
            let body = serde_json::to_vec_pretty(&body).expect("JSON serializes");
            let etag = format!("\"{}\"", hex(&Sha256::digest(&body)[..16]));
            let last_modified = http_date(modified);
            let not_modified = match headers.get(header::IF_NONE_MATCH) {
                // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
                Some(inm) => etag_matches(inm, &etag),
                None => headers
                    .get(header::IF_MODIFIED_SINCE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_http_date)
                    .is_some_and(|since| modified <= since),
            };
            // A 304 does not count against the rate limit (GitHub's docs).
            let quota = if not_modified {
                quota
            } else {
                spend(state, &quota_key)
            };
            let mut builder = Response::builder()
                .status(if not_modified {
                    StatusCode::NOT_MODIFIED
                } else {
                    StatusCode::OK
                })
                .header(header::ETAG, &etag)
                .header(header::LAST_MODIFIED, last_modified)
                .header(
                    header::CACHE_CONTROL,
                    if token.is_some() {
                        "private, max-age=60, s-maxage=60"
                    } else {
                        "public, max-age=60, s-maxage=60"
                    },
                );
            if let Some(links) = &links {
                builder = builder.header(header::LINK, links);
            }
            let mut response = builder
                .body(Full::new(if not_modified || method == Method::HEAD {
                    Bytes::new()
                } else {
                    Bytes::from(body.clone())
                }))
                .expect("valid response");
            common_headers(response.headers_mut(), token.is_some(), Some(quota));
            if !not_modified {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            response
        }
    }
}

fn spend(state: &mut State, key: &Option<String>) -> Quota {
    let quota = state.quotas.get_mut(key).expect("created before routing");
    quota.used += 1;
    *quota
}

fn find_repo<'a>(
    state: &'a State,
    token: Option<&str>,
    owner: &str,
    repo: &str,
) -> Option<(&'a Account, &'a Repo)> {
    // Repositories here are private: only their owner's token sees them.
    let account = state.accounts.get(token?)?;
    if account.login != owner {
        return None;
    }
    Some((account, account.repos.iter().find(|r| r.name == repo)?))
}

fn user_json(a: &Account) -> Value {
    json!({
        "login": a.login,
        "id": a.id,
        "node_id": format!("U_{}", a.id),
        "type": "User",
        "site_admin": false,
        "name": a.name,
        "url": format!("https://api.github.com/users/{}", a.login),
        "public_repos": a.repos.len(),
    })
}

fn repo_json(a: &Account, r: &Repo) -> Value {
    json!({
        "id": a.id * 1000 + r.name.len() as u64,
        "name": r.name,
        "full_name": format!("{}/{}", a.login, r.name),
        "private": true,
        "owner": { "login": a.login, "id": a.id, "type": "User" },
        "description": r.description,
        "fork": false,
        "default_branch": "main",
    })
}

/// `per_page` and `page` as GitHub reads them: missing or invalid values
/// take the defaults, `per_page` is capped at 100, pages count from 1.
fn paging(query: Option<&str>) -> (usize, usize) {
    let mut per_page = DEFAULT_PER_PAGE;
    let mut page = 1;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.parse::<usize>().ok().filter(|v| *v > 0);
        match (name, value) {
            ("per_page", Some(v)) => per_page = v.min(MAX_PER_PAGE),
            ("page", Some(v)) => page = v,
            _ => {}
        }
    }
    (per_page, page)
}

/// The `Link` header of one page, or `None` when everything fits on one
/// page (GitHub omits it then). Other query parameters are kept.
fn links(
    addr: SocketAddr,
    uri: &http::Uri,
    per_page: usize,
    page: usize,
    total: usize,
) -> Option<String> {
    let last = total.div_ceil(per_page).max(1);
    if last == 1 {
        return None;
    }
    let others: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("page=") && !p.starts_with("per_page="))
        .collect();
    let url = |n: usize| {
        let mut query = others.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        format!(
            "<http://{addr}{}?{query}per_page={per_page}&page={n}>",
            uri.path()
        )
    };
    let mut parts = Vec::new();
    if page > 1 {
        parts.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        parts.push(format!("{}; rel=\"next\"", url(page + 1)));
        parts.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        parts.push(format!("{}; rel=\"first\"", url(1)));
    }
    Some(parts.join(", "))
}

/// Weak comparison (RFC 9110 §8.8.3.2), which `If-None-Match` uses.
fn etag_matches(if_none_match: &HeaderValue, etag: &str) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.trim_start_matches("W/") == etag.trim_start_matches("W/")
    })
}

fn common_headers(headers: &mut HeaderMap, authenticated: bool, quota: Option<Quota>) {
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        headers.insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_str(&value).expect("ASCII header value"),
        );
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::DATE,
        HeaderValue::from_str(&http_date(now_secs())).expect("date"),
    );
    headers.append(
        header::VARY,
        HeaderValue::from_static(if authenticated {
            "Accept, Authorization, Cookie, X-GitHub-OTP"
        } else {
            "Accept"
        }),
    );
    headers.append(
        header::VARY,
        HeaderValue::from_static("Accept-Encoding, Accept, X-Requested-With"),
    );
    set(
        headers,
        "x-github-media-type",
        "github.v3; format=json".into(),
    );
    set(
        headers,
        "x-github-api-version-selected",
        "2022-11-28".into(),
    );
    if let Some(q) = quota {
        set(headers, "x-ratelimit-limit", q.limit.to_string());
        set(
            headers,
            "x-ratelimit-remaining",
            q.limit.saturating_sub(q.used).to_string(),
        );
        set(headers, "x-ratelimit-used", q.used.to_string());
        set(headers, "x-ratelimit-reset", q.reset.to_string());
        set(headers, "x-ratelimit-resource", "core".into());
    }
}

fn error(status: StatusCode, message: &str, quota: Option<Quota>) -> Response<Full<Bytes>> {
    let body = json!({ "message": message, "documentation_url": DOCS, "status": status.as_str() });
    let body = serde_json::to_vec(&body).expect("JSON serializes");
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .expect("valid response");
    common_headers(response.headers_mut(), false, quota);
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// IMF-fixdate (RFC 9110 §5.6.7) of `secs` since the epoch.
pub fn http_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch of an IMF-fixdate; other formats give `None`
/// (and so never a 304).
pub fn parse_http_date(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace().skip(1);
    let d: i64 = it.next()?.parse().ok()?;
    let month = it.next()?;
    let m = MONTHS.iter().position(|x| *x == month)? as i64 + 1;
    let y: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, mi, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let days = days_from_civil(y, m, d);
    u64::try_from(days)
        .ok()
        .map(|days| days * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Howard Hinnant's civil-date algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A response as [`get`] read it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Names lower-cased, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

/// A blocking `GET target` to `addr` with `headers`, on a fresh connection
/// (`Connection: close`); bounded by a 30 s read timeout.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
    request(addr, "GET", target, headers)
}

/// Like [`get`] with any method and no body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method != "GET" && method != "HEAD" {
        head.push_str("Content-Length: 0\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of the response head in {text:?}");
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("no status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
