//! The ETag profile of `agent read-cache`, for REST APIs such as GitHub's:
//! GET answers are served from the store while fresh (`--cache-ttl`,
//! shortened by the upstream's `max-age`), then revalidated with
//! `If-None-Match` / `If-Modified-Since`; a `304` refreshes the entry (its
//! rate-limit headers included) and the stored body is served.
//!
//! The parts, split the way pingora-cache splits a cache:
//! - `args`: the flags and the configuration errors they can cause.
//! - [`upstream`]: the allow-list and the choice of an upstream per request.
//! - the key: [`KeySpec`] over method, upstream, path, query, `Accept` and
//!   the `--vary-header`s, partitioned by a hash of the credential and by
//!   the public base the client reached the cache on.
//! - [`policy`]: what is stored, for how long, how a 304 merges.
//! - storage and eviction: the shared byte-bounded LRU [`Store`].
//! - the lock merging misses: the shared [`Coalescer`]; `fill`: the fetch
//!   that fills or revalidates an entry.
//! - [`link`] and [`rewrite`]: the upstream's URLs in `Link`, `Location`
//!   and JSON bodies pointed back at the cache, so that clients following
//!   them stay on it.
//! - [`client`]: the upstream client, with its timeouts; `body`: bodies
//!   buffered up to `--max-object-bytes`, streamed beyond.
//!
//! Other methods pass through uncached (a successful one drops the entries
//! of its path; a JSON answer is read to point its URLs back at the cache),
//! as do HEADs without a fresh entry; answers larger than
//! `--max-object-bytes` stream through with only `Link` and `Location`
//! rewritten.

mod args;
mod body;
pub mod client;
mod fill;
pub mod link;
pub mod policy;
pub mod rewrite;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

pub use self::args::{ConfigError, EtagArgs};
use self::{
    client::UpstreamClient,
    fill::{Failure, Fetched, Fill},
    upstream::{AllowList, Upstream},
};
use super::{
    Common,
    key::{CacheKey, KeySpec},
    served::Served,
    store::{CachedResponse, Store},
};
use crate::{
    coalesce::{Coalescer, Role},
    http_server::{Body, BoxError, empty, full, text},
    upstream::forward::RequestBody,
};

/// The ETag profile: one per process, shared by all connections.
pub struct EtagCache {
    allow: AllowList,
    spec: KeySpec,
    store: Arc<Store>,
    client: UpstreamClient,
    flights: Coalescer<CacheKey, Arc<Fetched>>,
    max_object_bytes: usize,
    ttl: Duration,
    /// Longest a caller waits on fetches for one request, its own and
    /// other callers' it joined.
    wait_bound: Duration,
}

/// Where a request that is not a fresh hit goes. Built only then: a hit
/// needs no upstream URI.
struct Target<'a> {
    upstream: &'a Upstream,
    uri: http::Uri,
}

impl Target<'_> {
    fn for_request<'a>(upstream: &'a Upstream, request: &http::Uri) -> Option<Target<'a>> {
        let path_and_query = request.path_and_query().map_or("/", |pq| pq.as_str());
        let uri = upstream.uri_for(path_and_query).ok()?;
        Some(Target { upstream, uri })
    }
}

/// The answer to a request whose target gives no upstream URI.
fn no_path() -> Response<Body> {
    text(StatusCode::BAD_REQUEST, "bad request: no usable path\n")
}

/// Points `Link` and `Location` of `upstream` back at the cache as the
/// client reached it (see [`link`]), for answers passed through.
fn point_back(headers: &mut HeaderMap, upstream: &Upstream, request: &HeaderMap) {
    if (headers.contains_key(header::LINK) || headers.contains_key(header::LOCATION))
        && let Some(base) = link::public_base(request)
    {
        link::rewrite(headers, upstream, &base);
    }
}

impl EtagCache {
    /// Validates the flags and builds the upstream client.
    pub fn new(args: &EtagArgs, common: Common) -> anyhow::Result<Self> {
        Ok(Self::build(args, common)?)
    }

    fn build(args: &EtagArgs, common: Common) -> Result<Self, ConfigError> {
        let chooser = args
            .upstream_header
            .as_deref()
            .map(|name| {
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| ConfigError::UpstreamHeader(name.to_owned()))
            })
            .transpose()?;
        let allow = AllowList::new(&args.upstreams, chooser)?;
        let vary = args
            .vary_headers
            .iter()
            .filter(|name| !name.trim().is_empty())
            .map(|name| {
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| ConfigError::VaryHeader(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let need_tls = allow
            .upstreams()
            .iter()
            .any(|u| u.origin().starts_with("https:"));
        let client = UpstreamClient::new(&args.upstream_ca_files, need_tls, &common)?;
        Ok(Self {
            allow,
            spec: KeySpec::new(vary),
            store: common.store,
            client,
            flights: Coalescer::new(),
            max_object_bytes: common.max_object_bytes,
            ttl: common.cache_ttl,
            wait_bound: common.response_timeout * 2 + common.connect_timeout,
        })
    }

    /// Serves one request and says how.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        _peer: SocketAddr,
    ) -> (Response<Body>, Served) {
        let (parts, body) = request.into_parts();
        let upstream = match self.allow.choose(&parts.headers) {
            Ok(upstream) => upstream,
            Err(err) => {
                tracing::info!(error = %err, "refused a request for an upstream off the allow-list");
                return (
                    text(
                        StatusCode::FORBIDDEN,
                        "forbidden: that upstream is not on this cache's allow-list\n",
                    ),
                    Served::Bypass,
                );
            }
        };
        let head = parts.method == Method::HEAD;
        if parts.method != Method::GET && !head {
            let target = match Target::for_request(upstream, &parts.uri) {
                Some(target) => target,
                None => return (no_path(), Served::Bypass),
            };
            return (self.pass(parts, Some(body), &target).await, Served::Bypass);
        }
        drop(body);

        // Entries are stored as served at one public base (their links and
        // JSON URLs point at it), so the base is part of the partition.
        let base = link::public_base(&parts.headers);
        let (partition, anonymous) = partition(&parts.headers, base.as_deref());
        // HEAD shares GET's entries: it is answered from them when fresh.
        let key = self.spec.key(
            &Method::GET,
            upstream.base_url(),
            &parts.uri,
            &parts.headers,
            &partition,
        );
        let stored = self.store.get(&key);
        if let Some(entry) = &stored
            && entry.freshness.fresh_until > Instant::now()
            && !policy::request_wants_revalidation(&parts.headers)
        {
            return (self.serve(entry, &parts.headers, head), Served::FreshHit);
        }
        let target = match Target::for_request(upstream, &parts.uri) {
            Some(target) => target,
            None => return (no_path(), Served::Bypass),
        };
        if head {
            return (self.pass(parts, None, &target).await, Served::Bypass);
        }

        let mut own: Option<Response<Body>> = None;
        let slot = &mut own;
        let fill = Fill {
            request: &parts.headers,
            target: &target,
            base: base.as_deref(),
            key: key.clone(),
            stale: stored,
            anonymous,
        };
        let fetch = || self.fetch(fill, slot);
        let joined = tokio::time::timeout(
            self.wait_bound,
            self.flights.get_or_fetch(key.clone(), fetch),
        )
        .await;
        let (fetched, role) = match joined {
            Err(_) => return (Failure::Timeout.response(), Served::Miss),
            Ok(Ok(joined)) => joined,
            Ok(Err(never)) => match never {},
        };
        let leader = role == Role::Leader;
        match &*fetched {
            Fetched::Ready { entry, revalidated } => {
                let served = match (leader, revalidated) {
                    (false, _) => Served::Coalesced,
                    (true, true) => Served::RevalidatedHit,
                    (true, false) => Served::Miss,
                };
                (self.serve(entry, &parts.headers, false), served)
            }
            Fetched::Failed(failure) => (
                failure.response(),
                if leader {
                    Served::Miss
                } else {
                    Served::Coalesced
                },
            ),
            Fetched::TooLarge => match own {
                Some(response) => (response, Served::Miss),
                // Another caller's answer was too large to share: fetch
                // this one's without storing it.
                None => (self.pass(parts, None, &target).await, Served::Miss),
            },
        }
    }

    /// Builds the answer for `entry`: its headers (stored as served, links
    /// already pointing back at the cache) with an `Age`, its body (none
    /// for HEAD), or a 304 when the client's own validators match the
    /// served ones.
    fn serve(&self, entry: &CachedResponse, request: &HeaderMap, head: bool) -> Response<Body> {
        let mut headers = entry.headers.clone();
        headers.insert(
            header::AGE,
            HeaderValue::from(entry.stored_at.elapsed().as_secs()),
        );
        let (status, body) =
            if entry.status == StatusCode::OK && policy::client_not_modified(request, &headers) {
                headers = policy::not_modified_headers(&headers);
                (StatusCode::NOT_MODIFIED, empty())
            } else if head {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
                (entry.status, empty())
            } else {
                (entry.status, full(entry.body.clone()))
            };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// The client's headers as sent upstream: hop-by-hop ones, `Host` (the
    /// client sets it from the URI) and the upstream chooser removed, and
    /// `Accept-Encoding` narrowed to codings the cache can read, so that
    /// bodies can be rewritten (the client accepts whichever comes back).
    fn forward_headers(&self, request: &HeaderMap) -> HeaderMap {
        let mut headers = request.clone();
        policy::remove_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        if let Some(chooser) = self.allow.chooser() {
            headers.remove(chooser);
        }
        match rewrite::upstream_accept_encoding(request) {
            Some(coding) => headers.insert(header::ACCEPT_ENCODING, coding),
            None => headers.remove(header::ACCEPT_ENCODING),
        };
        headers
    }

    /// Forwards a request uncached, streaming both ways (but for a JSON
    /// answer, read whole to point its URLs back, see `passed_body`). A
    /// successful unsafe method drops the stored answers for its path,
    /// which it may have changed.
    async fn pass(
        &self,
        parts: http::request::Parts,
        body: Option<Incoming>,
        target: &Target<'_>,
    ) -> Response<Body> {
        let method = parts.method.clone();
        let mut request = Request::new(match body {
            Some(body) => RequestBody::streamed(body),
            None => RequestBody::whole(Bytes::new()),
        });
        *request.method_mut() = parts.method;
        *request.uri_mut() = target.uri.clone();
        *request.headers_mut() = self.forward_headers(&parts.headers);
        let request_headers = parts.headers;
        let response = match self.client.send(request).await {
            Ok(response) => response,
            Err(err) => return self.failed(target, &err).response(),
        };
        if !method.is_safe() && response.status().is_success() {
            let path = target.uri.path();
            let removed = self.store.remove_where(|_, entry| entry.path == path);
            if removed > 0 {
                tracing::debug!(path, removed, %method, "dropped entries a write may have changed");
            }
        }
        let (mut parts, body) = response.into_parts();
        policy::remove_hop_by_hop(&mut parts.headers);
        point_back(&mut parts.headers, target.upstream, &request_headers);
        parts.version = http::Version::default();
        let bodiless = method == Method::HEAD
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let body = if bodiless {
            body.map_err(|err| Box::new(err) as BoxError).boxed()
        } else {
            let base = link::public_base(&request_headers);
            match self
                .passed_body(&mut parts.headers, body, target, base.as_deref())
                .await
            {
                Ok(body) => body,
                Err(failure) => return failure.response(),
            }
        };
        Response::from_parts(parts, body)
    }
}

/// The cache partition of a request: the public base its answer is
/// served for, then every `Authorization` value (a hash of it ends up in
/// the key, never the value itself), or the anonymous partition. Tag bytes
/// keep "no header" apart from an empty one, lengths keep the parts apart.
fn partition(headers: &HeaderMap, base: Option<&str>) -> (Vec<u8>, bool) {
    let mut partition = match base {
        None => vec![0],
        Some(base) => {
            let mut p = vec![1];
            p.extend_from_slice(&(base.len() as u64).to_be_bytes());
            p.extend_from_slice(base.as_bytes());
            p
        }
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter().peekable();
    if values.peek().is_none() {
        partition.push(0);
        return (partition, true);
    }
    partition.push(1);
    for value in values {
        partition.extend_from_slice(&(value.len() as u64).to_be_bytes());
        partition.extend_from_slice(value.as_bytes());
    }
    (partition, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(upstreams: &[&str]) -> EtagArgs {
        EtagArgs {
            upstreams: upstreams.iter().map(|u| (*u).to_owned()).collect(),
            upstream_header: None,
            upstream_ca_files: Vec::new(),
            vary_headers: vec!["X-GitHub-Api-Version".into()],
        }
    }

    fn common() -> Common {
        Common {
            store: Arc::new(Store::new(1 << 20)),
            max_object_bytes: 1 << 16,
            cache_ttl: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool: Default::default(),
        }
    }

    #[test]
    fn bad_flags_are_named() {
        let err = |a: EtagArgs| EtagCache::new(&a, common()).err().unwrap().to_string();
        assert!(err(args(&["ftp://x"])).starts_with("--upstream"));
        assert!(err(args(&["http://a", "http://b"])).contains("--upstream-header"));
        let mut bad_header = args(&["http://a"]);
        bad_header.upstream_header = Some("not a header".into());
        assert!(err(bad_header).starts_with("--upstream-header"));
        let mut bad_vary = args(&["http://a"]);
        bad_vary.vary_headers = vec!["x y".into()];
        assert!(err(bad_vary).starts_with("--vary-header"));
        let mut bad_ca = args(&["https://a"]);
        bad_ca.upstream_ca_files = vec!["/nonexistent/ca.pem".into()];
        assert!(err(bad_ca).starts_with("--upstream-ca-file"));
        assert!(EtagCache::new(&args(&["http://127.0.0.1:1"]), common()).is_ok());
    }

    #[test]
    fn credentials_partition_and_never_collide_with_anonymous() {
        let mut a = HeaderMap::new();
        a.insert(header::AUTHORIZATION, HeaderValue::from_static("token a"));
        let mut b = HeaderMap::new();
        b.insert(header::AUTHORIZATION, HeaderValue::from_static("token b"));
        let mut empty_auth = HeaderMap::new();
        empty_auth.insert(header::AUTHORIZATION, HeaderValue::from_static(""));
        let base = Some("http://cache:7445");
        let (pa, anon_a) = partition(&a, base);
        let (pb, _) = partition(&b, base);
        let (pe, anon_e) = partition(&empty_auth, base);
        let (pn, anon_n) = partition(&HeaderMap::new(), base);
        assert!(!anon_a && !anon_e && anon_n);
        assert_ne!(pa, pb);
        assert_ne!(pe, pn);
        // Another public base, or none, is another partition.
        assert_ne!(partition(&a, Some("https://cache.example.com")).0, pa);
        assert_ne!(partition(&a, None).0, pa);
        assert_ne!(partition(&HeaderMap::new(), None).0, pn);
    }
}
