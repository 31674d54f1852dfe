//! A stand-in for GitHub's REST API ("the forge"), for tests of what sits in
//! front of it (`agent read-cache --profile etag`) and of real GitHub
//! clients (PyGithub, Octokit, go-github) through it. It runs on
//! 127.0.0.1:0 in a thread of its own and follows GitHub's documented
//! behaviour:
//!
//! - Conditional requests: every 200 carries a strong `ETag` (a digest of
//!   the representation) and `Last-Modified`; a matching `If-None-Match`, or
//!   without one a not-older `If-Modified-Since`, gets `304 Not Modified`
//!   with no body, and a 304 does not count against the rate limit.
//! - Pagination: lists take `per_page` (default 30, at most 100) and `page`;
//!   a list longer than one page has a `Link` header with absolute URLs of
//!   the forge itself and `rel` prev, next, last and first (only those that
//!   exist, in GitHub's order).
//! - Documents carry absolute API URLs of the forge itself (`url`,
//!   `issues_url{/number}`, ...), as GitHub's carry `https://api.github.com`
//!   ones; `forge/documents.rs` has their shapes, `forge/routes.rs` the
//!   endpoints (users, repositories, issues, pull requests, their files and
//!   comments).
//! - Compression: a request that accepts gzip gets a gzip body
//!   (`Content-Encoding: gzip`), as from api.github.com.
//! - Rate limits: `X-RateLimit-Limit/Remaining/Used/Reset/Resource` on every
//!   answer; 5000 an hour per token, 60 for anonymous callers; when spent,
//!   `403` with GitHub's message.
//! - Writes: `POST /repos/{owner}/{repo}/issues` creates an issue (201,
//!   the issue, `Location`); other writes get 404.
//! - Authentication: `Authorization: token T` or `Bearer T`; an unknown
//!   token gets `401 Bad credentials` (documented: and it is not served);
//!   `/user` without a token gets `401 Requires authentication`.
//! - `Cache-Control: private, max-age=60, s-maxage=60` for authenticated
//!   answers (`public` for anonymous ones), `Vary` as GitHub sends it.
//!
//! Each token is an account with its own user and repositories, so tokens
//! see different bytes. Tests change content mid-test ([`Forge::rename`],
//! [`Forge::set_repos`], [`Forge::add_issues`]), count what reached the
//! forge ([`Forge::seen`]), and can hold answers back ([`Forge::hold`]) to
//! line up concurrent misses.
//!
//! `forge/wire.rs` has [`get`], a small blocking HTTP/1.1 client for the
//! tests that returns headers too, and the HTTP dates.

mod documents;
mod routes;
mod wire;

use std::{
    collections::HashMap,
    convert::Infallible,
    io::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::sync::{oneshot, watch};

use self::routes::Found;
pub use self::wire::{Answer, get, http_date, parse_http_date, request};
use self::wire::{accepts_gzip, common_headers, error, etag_matches, hex};

/// GitHub's default page size and its maximum.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;
/// Primary rate limits per hour, as documented.
const TOKEN_LIMIT: u64 = 5000;
const ANONYMOUS_LIMIT: u64 = 60;

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
    /// The `ETag` answered (on a 200 or 304), the upstream's validator.
    pub etag: Option<String>,
    /// All request headers, for assertions on what a proxy forwarded.
    pub headers: HeaderMap,
}

/// A repository of an account.
#[derive(Debug, Clone)]
struct Repo {
    name: String,
    description: String,
    /// Issues and pull requests, numbered from 1 in creation order.
    issues: Vec<Issue>,
}

/// An issue, or a pull request (which GitHub also lists as an issue).
#[derive(Debug, Clone)]
struct Issue {
    number: u64,
    title: String,
    pull: bool,
    /// Issue comments, and as many review comments on a pull request.
    comments: usize,
    /// A pull request's changed files.
    files: Vec<String>,
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

    /// Adds `issues` issues and then `pulls` pull requests to `token`'s
    /// repository `repo`, each with `comments` comments (issue comments,
    /// and as many review comments on a pull request) and each pull
    /// request with `files` changed files.
    pub fn add_issues(
        &self,
        token: &str,
        repo: &str,
        issues: usize,
        pulls: usize,
        comments: usize,
        files: usize,
    ) {
        let mut state = self.shared.state();
        let account = state.accounts.get_mut(token).expect("known token");
        let r = account
            .repos
            .iter_mut()
            .find(|r| r.name == repo)
            .expect("known repository");
        for i in 0..issues + pulls {
            let number = r.issues.len() as u64 + 1;
            let pull = i >= issues;
            let kind = if pull { "pull request" } else { "issue" };
            r.issues.push(Issue {
                number,
                title: format!("{kind} {number} of {repo}"),
                pull,
                comments,
                files: if pull {
                    (0..files).map(|f| format!("src/file_{f}.rs")).collect()
                } else {
                    Vec::new()
                },
            });
        }
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
            issues: Vec::new(),
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
    let (parts, body) = request.into_parts();
    // Bodies are small here (an issue's title); a broken one reads as empty.
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
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
        &body,
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
        etag: response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        headers: parts.headers.clone(),
    });
    response
}

/// Answers one request: credentials, rate limit, then the document
/// [`routes::find`] finds, conditionally and compressed as asked, or what
/// [`routes::create`] made of a POST.
fn route(
    state: &mut State,
    addr: SocketAddr,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    token: Option<&str>,
    body: &[u8],
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
    let found = match *method {
        Method::GET | Method::HEAD => routes::find(state, addr, uri, token),
        Method::POST => routes::create(state, addr, uri, token, body),
        _ => return error(StatusCode::NOT_FOUND, "Not Found", Some(quota)),
    };
    match found {
        Found::Created { body, location } => {
            // As documented for "Create an issue": 201, the new issue, and
            // its URL in Location.
            let quota = spend(state, &quota_key);
            let body = serde_json::to_vec_pretty(&body).expect("JSON serializes");
            let mut response = Response::builder()
                .status(StatusCode::CREATED)
                .header(header::LOCATION, location)
                .header(header::CONTENT_LENGTH, body.len())
                .body(Full::new(Bytes::from(body)))
                .expect("valid response");
            common_headers(response.headers_mut(), true, Some(quota));
            response
        }
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
            let mut etag = format!("\"{}\"", hex(&Sha256::digest(&body)[..16]));
            // Compressed, as api.github.com answers, with its ETag weak.
            let gzip = accepts_gzip(headers);
            let body = if gzip {
                etag.insert_str(0, "W/");
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(&body).expect("writes to memory");
                encoder.finish().expect("writes to memory")
            } else {
                body
            };
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
            if gzip && !not_modified {
                builder = builder.header(header::CONTENT_ENCODING, "gzip");
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
