//! Freshness policy of the ETag profile: which upstream answers may be
//! stored and for how long they are served without asking, what a
//! revalidation sends, how a `304 Not Modified` updates a stored entry, and
//! when the cache itself may answer a client's conditional request with a
//! 304.
//!
//! GitHub answers authenticated requests with `Cache-Control: private,
//! max-age=60, s-maxage=60`. `private` forbids a *shared* cache from reusing
//! a response for other users; this cache keys every entry by a hash of the
//! credential, so an entry is only ever reused for the same credential and
//! behaves as that user's private cache. That is why `private` is stored
//! here, except for anonymous requests, whose partition is shared by every
//! caller without a credential.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// Headers that describe one connection, not the message (RFC 9110
/// §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers: the fixed set and whatever `Connection`
/// lists.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The directives of a `Cache-Control` that matter here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    /// `s-maxage` if present (it wins for shared caches), else `max-age`.
    pub max_age: Option<Duration>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        let mut max_age = None;
        let mut s_maxage = None;
        for directive in headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
            let seconds = || {
                value
                    .trim()
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs)
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                // `no-cache="field"` also means revalidate before reuse.
                "no-cache" => cc.no_cache = true,
                "private" => cc.private = true,
                "max-age" => max_age = max_age.or(seconds()),
                "s-maxage" => s_maxage = s_maxage.or(seconds()),
                _ => {}
            }
        }
        cc.max_age = s_maxage.or(max_age);
        cc
    }
}

/// Whether a request asks not to be answered from the cache without
/// revalidation (`Cache-Control: no-cache`, `max-age=0`, `Pragma:
/// no-cache`).
pub fn request_wants_revalidation(headers: &HeaderMap) -> bool {
    let cc = CacheControl::parse(headers);
    cc.no_cache
        || cc.max_age == Some(Duration::ZERO)
        || headers
            .get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"))
}

/// Why an upstream answer is not stored (`None`: it is).
pub fn not_storable(
    status: StatusCode,
    headers: &HeaderMap,
    anonymous: bool,
    key_headers: &[HeaderName],
) -> Option<&'static str> {
    // Only complete 200s: errors (4xx/5xx) must never be replayed, and
    // other 2xx/3xx are rare enough on these APIs not to be worth the risk.
    if status != StatusCode::OK {
        return Some("status");
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store {
        return Some("no-store");
    }
    if cc.private && anonymous {
        return Some("private");
    }
    // Every header the upstream says the body depends on must be part of
    // the key; otherwise a stored body could be served to a request it was
    // not made for. Authorization is covered by the partition.
    for value in headers.get_all(header::VARY).iter() {
        let Ok(value) = value.to_str() else {
            return Some("vary");
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let covered = name == "*"
                || name.eq_ignore_ascii_case("authorization")
                || key_headers
                    .iter()
                    .any(|k| k.as_str().eq_ignore_ascii_case(name));
            if name == "*" || !covered {
                return Some("vary");
            }
        }
    }
    None
}

/// How long a stored answer is served without asking upstream: the
/// configured TTL, shortened by the upstream's own `s-maxage`/`max-age`,
/// and zero for `no-cache` (store, but revalidate every time).
pub fn fresh_for(headers: &HeaderMap, ttl: Duration) -> Duration {
    let cc = CacheControl::parse(headers);
    if cc.no_cache {
        return Duration::ZERO;
    }
    cc.max_age.map_or(ttl, |max_age| max_age.min(ttl))
}

/// Sets the validators of a stored entry on a revalidation request.
/// `If-None-Match` is what GitHub documents; `If-Modified-Since` is sent
/// too for upstreams that only have `Last-Modified` (with both, servers
/// evaluate `If-None-Match`, RFC 9110 §13.2.2).
pub fn add_validators(
    headers: &mut HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<&HeaderValue>,
) {
    if let Some(etag) = etag {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = last_modified {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Headers a `304` updates in the stored entry: all it carries (rate-limit
/// counters, `Date`, `ETag`, `Cache-Control`, ...), except the ones that
/// describe the 304 itself rather than the stored representation (RFC 9111
/// §3.2 leaves `Content-Length` out).
pub fn merge_not_modified(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    let skip = |name: &HeaderName| {
        *name == header::CONTENT_LENGTH
            || *name == header::CONTENT_TYPE
            || *name == header::CONTENT_ENCODING
    };
    for name in fresh.keys() {
        if !skip(name) {
            merged.remove(name);
        }
    }
    for (name, value) in fresh {
        if !skip(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

/// Whether the client's own conditional request is satisfied by a response
/// with `headers`, so it gets a 304 from the cache: `If-None-Match` by weak
/// comparison (RFC 9110 §13.1.2), or without it `If-Modified-Since` no
/// earlier than `Last-Modified`.
pub fn client_not_modified(request: &HeaderMap, response: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let etag = etag.trim_start_matches("W/");
        return inm.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|c| c == "*" || c.trim_start_matches("W/") == etag)
        });
    }
    let date = |h: &HeaderMap, name| -> Option<SystemTime> {
        httpdate::parse_http_date(h.get(name)?.to_str().ok()?).ok()
    };
    match (
        date(request, header::IF_MODIFIED_SINCE),
        date(response, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The 304 a client gets for a satisfied conditional request: the
/// response's headers without those describing a body.
pub fn not_modified_headers(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_TYPE);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    const KEYED: [HeaderName; 2] = [header::ACCEPT, header::ACCEPT_ENCODING];

    #[test]
    fn github_authenticated_answers_are_stored_per_credential() {
        let gh = h(&[
            ("cache-control", "private, max-age=60, s-maxage=60"),
            ("vary", "Accept, Authorization, Cookie, X-GitHub-OTP"),
            ("vary", "Accept-Encoding, Accept, X-Requested-With"),
        ]);
        let keyed = [
            header::ACCEPT,
            header::ACCEPT_ENCODING,
            header::COOKIE,
            HeaderName::from_static("x-github-otp"),
            HeaderName::from_static("x-requested-with"),
        ];
        assert_eq!(not_storable(StatusCode::OK, &gh, false, &keyed), None);
        // Private answers are not put in the shared anonymous partition.
        assert_eq!(
            not_storable(StatusCode::OK, &gh, true, &keyed),
            Some("private")
        );
        // A Vary header the key does not cover: not stored.
        assert_eq!(
            not_storable(StatusCode::OK, &gh, false, &KEYED),
            Some("vary")
        );
        assert_eq!(
            not_storable(StatusCode::OK, &h(&[("vary", "*")]), false, &KEYED),
            Some("vary")
        );
        assert_eq!(
            fresh_for(&gh, Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            fresh_for(&gh, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn errors_and_no_store_are_never_stored() {
        for status in [
            StatusCode::NOT_MODIFIED,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::PARTIAL_CONTENT,
        ] {
            assert_eq!(
                not_storable(status, &HeaderMap::new(), false, &KEYED),
                Some("status")
            );
        }
        let no_store = h(&[("cache-control", "public, no-store")]);
        assert_eq!(
            not_storable(StatusCode::OK, &no_store, false, &KEYED),
            Some("no-store")
        );
        let no_cache = h(&[("cache-control", "no-cache")]);
        assert_eq!(not_storable(StatusCode::OK, &no_cache, false, &KEYED), None);
        assert_eq!(
            fresh_for(&no_cache, Duration::from_secs(60)),
            Duration::ZERO
        );
        assert_eq!(
            fresh_for(&HeaderMap::new(), Duration::from_secs(7)),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn a_304_refreshes_rate_limit_headers_and_keeps_the_body_metadata() {
        let stored = h(&[
            ("etag", "\"a\""),
            ("content-type", "application/json"),
            ("x-ratelimit-remaining", "4999"),
            ("x-ratelimit-used", "1"),
            ("link", "<https://api.github.com/x?page=2>; rel=\"next\""),
        ]);
        let fresh = h(&[
            ("etag", "\"a\""),
            ("x-ratelimit-remaining", "4990"),
            ("x-ratelimit-used", "10"),
            ("content-length", "0"),
        ]);
        let merged = merge_not_modified(&stored, &fresh);
        assert_eq!(merged["x-ratelimit-remaining"], "4990");
        assert_eq!(merged["x-ratelimit-used"], "10");
        assert_eq!(merged["content-type"], "application/json");
        assert!(merged.contains_key("link"));
        assert!(!merged.contains_key("content-length"));
        assert_eq!(merged.get_all("etag").iter().count(), 1);
    }

    #[test]
    fn client_conditionals_are_answered_from_the_entry() {
        let response = h(&[
            ("etag", "\"abc\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        for (inm, want) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abd\"", false),
        ] {
            assert_eq!(
                client_not_modified(&h(&[("if-none-match", inm)]), &response),
                want,
                "{inm}"
            );
        }
        for (since, want) in [
            ("Sun, 06 Nov 1994 08:49:37 GMT", true),
            ("Mon, 07 Nov 1994 08:49:37 GMT", true),
            ("Sat, 05 Nov 1994 08:49:37 GMT", false),
            ("yesterday", false),
        ] {
            assert_eq!(
                client_not_modified(&h(&[("if-modified-since", since)]), &response),
                want,
                "{since}"
            );
        }
        // If-None-Match wins over If-Modified-Since.
        let both = h(&[
            ("if-none-match", "\"nope\""),
            ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!client_not_modified(&both, &response));
    }

    #[test]
    fn request_directives_force_revalidation() {
        assert!(request_wants_revalidation(&h(&[(
            "cache-control",
            "no-cache"
        )])));
        assert!(request_wants_revalidation(&h(&[(
            "cache-control",
            "max-age=0"
        )])));
        assert!(request_wants_revalidation(&h(&[("pragma", "no-cache")])));
        assert!(!request_wants_revalidation(&h(&[(
            "cache-control",
            "max-age=60"
        )])));
        assert!(!request_wants_revalidation(&HeaderMap::new()));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = h(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("x-ratelimit-used", "3"),
        ]);
        remove_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-ratelimit-used"]);
    }
}
