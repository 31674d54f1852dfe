//! Filling and revalidating entries of the ETag profile: the one fetch a
//! key's leader makes (see [`Coalescer`](crate::coalesce::Coalescer)), what
//! it shares with the callers that waited for it, and the representation it
//! stores for the public base the request reached the cache on.
//!
//! An entry is stored as served: `Link` and `Location` pointing back at the
//! cache, and JSON bodies with the upstream's URLs pointing back too
//! ([`rewrite`]), with an ETag derived from the upstream's. That work is
//! done here, once per answer and public base (the base is part of the
//! key), not on every hit. The entry's [`Freshness`] keeps the upstream's
//! own validators, which are what revalidation sends. JSON answers to
//! writes, which pass through uncached, get their URLs pointed back too.

use std::{convert::Infallible, sync::Arc};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    EtagCache, Target,
    body::{Buffered, buffer, chain},
    client::FetchError,
    link, policy,
    rewrite::{self, Outcome},
    upstream::Upstream,
};
use crate::{
    http_server::{Body, BoxError, full, text},
    read_cache::{
        key::CacheKey,
        store::{CachedResponse, Freshness},
    },
    upstream::forward::RequestBody,
};

/// What a fetch for one key produced, shared with every caller that waited
/// for it.
pub(super) enum Fetched {
    /// A whole answer in memory, stored or not (a 404 is shared with the
    /// waiters, never stored).
    Ready {
        entry: Arc<CachedResponse>,
        /// The upstream said 304 to the stored entry's validators.
        revalidated: bool,
    },
    /// Larger than `--max-object-bytes`: the leader streams it to its own
    /// client; waiters fetch theirs separately.
    TooLarge,
    /// The upstream failed; waiters get the same gateway error instead of
    /// each trying a failing upstream again.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Failure {
    Timeout,
    Unreachable,
    BrokenBody,
}

impl Failure {
    pub(super) fn response(self) -> Response<Body> {
        match self {
            Failure::Timeout => text(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the upstream did not answer in time\n",
            ),
            Failure::Unreachable => text(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the upstream could not be reached\n",
            ),
            Failure::BrokenBody => text(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the upstream's answer broke off\n",
            ),
        }
    }
}

impl From<&FetchError> for Failure {
    fn from(err: &FetchError) -> Self {
        match err {
            FetchError::Timeout => Failure::Timeout,
            FetchError::Upstream(_) => Failure::Unreachable,
            FetchError::Body(_) => Failure::BrokenBody,
        }
    }
}

/// One request's part in a fill: what it asked, where it goes, the public
/// base its answer is for.
pub(super) struct Fill<'a> {
    pub request: &'a HeaderMap,
    pub target: &'a Target<'a>,
    pub base: Option<&'a str>,
    pub key: CacheKey,
    pub stale: Option<Arc<CachedResponse>>,
    pub anonymous: bool,
}

/// The upstream's validators of an answer, kept apart from the headers
/// served (whose ETag may be derived).
struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

impl Validators {
    fn of(headers: &HeaderMap) -> Self {
        Self {
            etag: headers.get(header::ETAG).cloned(),
            last_modified: headers.get(header::LAST_MODIFIED).cloned(),
        }
    }
}

/// Points `Link` and `Location` of `upstream` back at `base`, and serves a
/// rewritten body with an ETag derived from the upstream's (the one in
/// `headers` when called).
fn present(headers: &mut HeaderMap, upstream: &Upstream, base: Option<&str>, rewritten: bool) {
    let Some(base) = base else {
        return;
    };
    if headers.contains_key(header::LINK) || headers.contains_key(header::LOCATION) {
        link::rewrite(headers, upstream, base);
    }
    if rewritten {
        derive_etag(headers, base);
    }
}

/// Replaces the upstream's ETag by the one of the representation served at
/// `base`, or removes it if none can be derived.
fn derive_etag(headers: &mut HeaderMap, base: &str) {
    match headers
        .get(header::ETAG)
        .and_then(|etag| rewrite::derived_etag(etag, base))
    {
        Some(derived) => headers.insert(header::ETAG, derived),
        None => headers.remove(header::ETAG),
    };
}

/// `body` streamed on as it comes.
fn stream(body: Incoming) -> Body {
    body.map_err(|err| Box::new(err) as BoxError).boxed()
}

impl EtagCache {
    /// The leader's fetch for `fill.key`: conditional when a stale entry
    /// exists, stored when the policy allows, never longer than the response
    /// timeout. An answer too large to hold is left in `own` for the
    /// leader to stream.
    pub(super) async fn fetch(
        &self,
        fill: Fill<'_>,
        own: &mut Option<Response<Body>>,
    ) -> Result<Arc<Fetched>, Infallible> {
        let Fill {
            request,
            target,
            base,
            key,
            stale,
            anonymous,
        } = fill;
        let started = Instant::now();
        let deadline = started + self.client.response_timeout();
        let mut headers = self.forward_headers(request);
        // The cache's validators, not the client's: the cache needs a whole
        // answer it can keep, and answers the client's conditions itself.
        headers.remove(header::IF_NONE_MATCH);
        headers.remove(header::IF_MODIFIED_SINCE);
        if let Some(stale) = &stale {
            policy::add_validators(
                &mut headers,
                stale.freshness.etag.as_ref(),
                stale.freshness.last_modified.as_ref(),
            );
        }
        let mut upstream_request = Request::new(RequestBody::whole(Bytes::new()));
        *upstream_request.uri_mut() = target.uri.clone();
        *upstream_request.headers_mut() = headers;
        let response = match self.client.send(upstream_request).await {
            Ok(response) => response,
            Err(err) => return Ok(Arc::new(Fetched::Failed(self.failed(target, &err)))),
        };
        let (mut parts, body) = response.into_parts();
        policy::remove_hop_by_hop(&mut parts.headers);
        let now = Instant::now();
        if parts.status == StatusCode::NOT_MODIFIED
            && let Some(stale) = stale
        {
            let entry = self.revalidated(&stale, &parts.headers, base, now, target);
            self.store.insert(key, entry.clone());
            return Ok(Arc::new(Fetched::Ready {
                entry: Arc::new(entry),
                revalidated: true,
            }));
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = if declared.is_some_and(|n| n > self.max_object_bytes as u64) {
            Buffered::TooLarge(BytesMut::new(), body)
        } else {
            match tokio::time::timeout_at(deadline, buffer(body, self.max_object_bytes)).await {
                Err(_) => {
                    return Ok(Arc::new(Fetched::Failed(
                        self.failed(target, &FetchError::Timeout),
                    )));
                }
                Ok(Err(err)) => return Ok(Arc::new(Fetched::Failed(self.failed(target, &err)))),
                Ok(Ok(body)) => body,
            }
        };
        let body = match body {
            Buffered::Whole(body) => body,
            Buffered::TooLarge(prefix, rest) => {
                // What is stored under this key is superseded by an answer
                // that will not be kept.
                self.store.remove(&key);
                let mut headers = parts.headers;
                present(&mut headers, target.upstream, base, false);
                let mut response = Response::new(chain(prefix.freeze(), rest));
                *response.status_mut() = parts.status;
                *response.headers_mut() = headers;
                *own = Some(response);
                return Ok(Arc::new(Fetched::TooLarge));
            }
        };
        let mut headers = parts.headers;
        // Recomputed from the stored body when served.
        headers.remove(header::CONTENT_LENGTH);
        let validators = Validators::of(&headers);
        let (body, rewritten) = self.rewrite_body(&mut headers, body, target, base);
        present(&mut headers, target.upstream, base, rewritten);
        let entry = self.entry(parts.status, headers, body, validators, now, target);
        match policy::not_storable(entry.status, &entry.headers, anonymous, self.spec.vary()) {
            None => {
                self.store.insert(key, entry.clone());
            }
            Some(why) => {
                tracing::debug!(key = %key, status = entry.status.as_u16(), why, "not stored");
                // A client error means the stored answer no longer holds
                // (gone, or the credential lost access); a server error may
                // pass, and the entry can still be revalidated later.
                if entry.status.is_client_error() {
                    self.store.remove(&key);
                }
            }
        }
        Ok(Arc::new(Fetched::Ready {
            entry: Arc::new(entry),
            revalidated: false,
        }))
    }

    /// The body of an answer passed through uncached (a write's): JSON up
    /// to `--max-object-bytes` is read whole and its URLs pointed back at
    /// `base` as a stored answer's are, so that a client following the URLs
    /// of what it created stays on the cache; anything else, and what
    /// proves larger, streams as it comes. Its `Link` and `Location` are
    /// the caller's to point back.
    pub(super) async fn passed_body(
        &self,
        headers: &mut HeaderMap,
        body: Incoming,
        target: &Target<'_>,
        base: Option<&str>,
    ) -> Result<Body, Failure> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if base.is_none()
            || !rewrite::is_json(headers)
            || declared.is_some_and(|n| n > self.max_object_bytes as u64)
        {
            return Ok(stream(body));
        }
        let read = tokio::time::timeout(
            self.client.response_timeout(),
            buffer(body, self.max_object_bytes),
        )
        .await;
        match read {
            Err(_) => Err(self.failed(target, &FetchError::Timeout)),
            Ok(Err(err)) => Err(self.failed(target, &err)),
            Ok(Ok(Buffered::TooLarge(prefix, rest))) => Ok(chain(prefix.freeze(), rest)),
            Ok(Ok(Buffered::Whole(whole))) => {
                let (whole, rewritten) = self.rewrite_body(headers, whole, target, base);
                if rewritten && let Some(base) = base {
                    headers.remove(header::CONTENT_LENGTH);
                    derive_etag(headers, base);
                }
                Ok(full(whole))
            }
        }
    }

    /// The body as served at `base`, and whether it differs from the
    /// upstream's; a rewritten gzip body is served decoded.
    fn rewrite_body(
        &self,
        headers: &mut HeaderMap,
        body: Bytes,
        target: &Target<'_>,
        base: Option<&str>,
    ) -> (Bytes, bool) {
        let Some(base) = base else {
            return (body, false);
        };
        match rewrite::represent(headers, &body, target.upstream, base, self.max_object_bytes) {
            Outcome::Unchanged => (body, false),
            Outcome::Rewritten(new) => {
                headers.remove(header::CONTENT_ENCODING);
                (new, true)
            }
        }
    }

    /// The stale entry refreshed by a 304: the headers it carries merged
    /// in, its (upstream) validators kept for the next revalidation, and
    /// the stored body, already as served, kept.
    fn revalidated(
        &self,
        stale: &CachedResponse,
        not_modified: &HeaderMap,
        base: Option<&str>,
        now: Instant,
        target: &Target<'_>,
    ) -> CachedResponse {
        let mut headers = policy::merge_not_modified(&stale.headers, not_modified);
        let validators = Validators {
            etag: not_modified
                .get(header::ETAG)
                .or(stale.freshness.etag.as_ref())
                .cloned(),
            last_modified: not_modified
                .get(header::LAST_MODIFIED)
                .or(stale.freshness.last_modified.as_ref())
                .cloned(),
        };
        // A served ETag other than the upstream's means the body was
        // rewritten: derive it again from the upstream's current one.
        let rewritten = stale.headers.get(header::ETAG) != stale.freshness.etag.as_ref();
        if rewritten && let Some(etag) = &validators.etag {
            headers.insert(header::ETAG, etag.clone());
        }
        present(&mut headers, target.upstream, base, rewritten);
        self.entry(
            stale.status,
            headers,
            stale.body.clone(),
            validators,
            now,
            target,
        )
    }

    fn entry(
        &self,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        validators: Validators,
        now: Instant,
        target: &Target<'_>,
    ) -> CachedResponse {
        let fresh_until = now + policy::fresh_for(&headers, self.ttl);
        CachedResponse {
            status,
            freshness: Freshness {
                fresh_until,
                etag: validators.etag,
                last_modified: validators.last_modified,
            },
            headers,
            body,
            stored_at: now,
            path: target.uri.path().to_owned(),
        }
    }

    pub(super) fn failed(&self, target: &Target<'_>, err: &FetchError) -> Failure {
        // The path only: a query may carry a credential.
        tracing::warn!(
            upstream = target.upstream.base_url(),
            path = target.uri.path(),
            reason = err.reason(),
            error = %err,
            "upstream request failed"
        );
        Failure::from(err)
    }
}
