//! Cache keys: which requests may share one cached response.
//!
//! A [`CacheKey`] is a SHA-256 digest over everything that can change the
//! response bytes: method, upstream, path, the whole query (normalized),
//! the headers the response varies on, and a caller-chosen partition (a
//! credential hash or an authorization scope). Two requests get the same key
//! only if an upstream would answer them identically for the same caller.
//!
//! Normalization errs towards distinct keys: merging two requests that an
//! upstream tells apart would serve one caller another's bytes, while keeping
//! two equivalent requests apart only costs a miss.

use std::{fmt, hash::Hash};

use http::{HeaderMap, HeaderName, Method, Uri, header};
use sha2::{Digest, Sha256};

/// Version tag hashed first, so a change of layout never reuses old keys.
const DOMAIN: &[u8] = b"cluster-relay/read-cache/key/v1\0";

/// Longest human-readable form kept; enough to recognise a request in a log.
const MAX_DISPLAY: usize = 240;

/// Query parameter names whose values are never shown in the readable form,
/// because some APIs accept credentials in the query string.
const SENSITIVE_PARAMS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "sig",
    "auth",
    "key",
    "credential",
    "code",
];

/// Identity of a cacheable response: a fixed-size digest. Equality and
/// hashing use the digest only; it displays as a digest prefix, and
/// [`KeySpec::describe`] gives the readable form when a log needs one (it
/// is not built per request: fresh hits are the hot path).
#[derive(Clone)]
pub struct CacheKey {
    digest: [u8; 32],
}

impl CacheKey {
    /// The SHA-256 digest that identifies the entry.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("#")?;
        for b in &self.digest[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// How keys are built for one upstream profile: which request headers
/// (besides `Accept` and `Accept-Encoding`, always included) change the
/// response bytes. Built once at startup from configuration.
#[derive(Clone, Debug)]
pub struct KeySpec {
    /// Sorted and deduplicated, so the hash does not depend on flag order.
    vary: Vec<HeaderName>,
}

impl Default for KeySpec {
    fn default() -> Self {
        Self::new([])
    }
}

impl KeySpec {
    /// A spec varying on `Accept`, `Accept-Encoding` and `extra_vary`.
    pub fn new(extra_vary: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut vary = vec![header::ACCEPT, header::ACCEPT_ENCODING];
        vary.extend(extra_vary);
        vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        vary.dedup();
        Self { vary }
    }

    /// The headers keys vary on, sorted by name.
    pub fn vary(&self) -> &[HeaderName] {
        &self.vary
    }

    /// The key of a request. `upstream` is the scheme and authority the
    /// request goes to (`https://host:port`); only the path and query of
    /// `uri` are used. `partition` separates callers that may see different
    /// bytes (a credential hash, an authorization scope); an empty slice is
    /// one shared partition.
    pub fn key(
        &self,
        method: &Method,
        upstream: &str,
        uri: &Uri,
        headers: &HeaderMap,
        partition: &[u8],
    ) -> CacheKey {
        // Scheme and host are case-insensitive; a trailing slash is not part
        // of an authority.
        let upstream = upstream.trim_end_matches('/').to_ascii_lowercase();
        let path = normalize_path(uri.path());
        let query = parse_query(uri.query().unwrap_or(""));

        let mut h = Sha256::new();
        h.update(DOMAIN);
        put(&mut h, method.as_str().as_bytes());
        put(&mut h, upstream.as_bytes());
        put(&mut h, path.as_bytes());
        // Present-but-empty (`?`) and absent queries answer the same.
        h.update((query.len() as u64).to_be_bytes());
        for (name, value) in &query {
            name.hash_into(&mut h);
            value.hash_into(&mut h);
        }
        for name in &self.vary {
            put(&mut h, name.as_str().as_bytes());
            // The count keeps an absent header apart from an empty one, and
            // values stay in request order because order can matter.
            let values: Vec<_> = headers.get_all(name).iter().collect();
            h.update((values.len() as u64).to_be_bytes());
            for v in values {
                put(&mut h, v.as_bytes());
            }
        }
        put(&mut h, partition);
        CacheKey {
            digest: h.finalize().into(),
        }
    }

    /// The readable form of the key of a request, for logs: method,
    /// upstream, path and normalized query with sensitive values redacted,
    /// `Accept`, then the digest prefix. Never contains the partition or any
    /// other header.
    pub fn describe(
        &self,
        method: &Method,
        upstream: &str,
        uri: &Uri,
        headers: &HeaderMap,
        partition: &[u8],
    ) -> String {
        let key = self.key(method, upstream, uri, headers, partition);
        let upstream = upstream.trim_end_matches('/').to_ascii_lowercase();
        let path = normalize_path(uri.path());
        let query = parse_query(uri.query().unwrap_or(""));
        readable(method, &upstream, &path, &query, headers, &key)
    }
}

/// Length-prefixed, so adjacent fields can never run into each other.
fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// One decoded query name or value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Component {
    /// Form-decoded bytes: `%41`, `A` are the same; `+` is a space.
    Decoded(Vec<u8>),
    /// Had a malformed `%` escape, kept verbatim: servers reject or treat
    /// these specially, and decoding would collide `%zz` with `%25zz`.
    Raw(Vec<u8>),
}

impl Component {
    fn hash_into(&self, h: &mut Sha256) {
        let (tag, bytes) = match self {
            Component::Decoded(b) => (0u8, b),
            Component::Raw(b) => (1u8, b),
        };
        h.update([tag]);
        put(h, bytes);
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Component::Decoded(b) | Component::Raw(b) => b,
        }
    }
}

/// Splits and decodes a query the way Go's `url.ParseQuery` and Rack do
/// (`&`-separated, `+` is a space), then sorts by name then value. Repeated
/// parameters are all kept; `a` and `a=` both mean an empty value, distinct
/// from an absent `a`; empty segments (`&&`) carry nothing and are dropped.
fn parse_query(query: &str) -> Vec<(Component, Component)> {
    let mut params: Vec<_> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect();
    params.sort();
    params
}

fn decode(s: &str) -> Component {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => return Component::Raw(b.to_vec()),
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Component::Decoded(out)
}

fn hex(c: &u8) -> Option<u8> {
    (*c as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §6.2.2 normalization only: escapes of unreserved characters are
/// decoded and hex digits upper-cased. `%2F` stays apart from `/`, because
/// servers differ on whether that is the same path.
fn normalize_path(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex))
        {
            let c = hi << 4 | lo;
            if is_unreserved(c) {
                out.push(c as char);
            } else {
                out.push_str(&format!("%{c:02X}"));
            }
            i += 3;
            continue;
        }
        // Paths in an `http::Uri` are ASCII, so byte-wise pushing is exact.
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Percent-encodes everything but unreserved characters, for logs.
fn encode_into(out: &mut String, bytes: &[u8]) {
    for &c in bytes {
        if is_unreserved(c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
}

fn is_sensitive(name: &[u8]) -> bool {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    SENSITIVE_PARAMS.iter().any(|s| name.contains(s))
}

fn readable(
    method: &Method,
    upstream: &str,
    path: &str,
    query: &[(Component, Component)],
    headers: &HeaderMap,
    key: &CacheKey,
) -> String {
    let mut s = format!("{method} {upstream}{path}");
    for (i, (name, value)) in query.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        encode_into(&mut s, name.bytes());
        s.push('=');
        if is_sensitive(name.bytes()) {
            s.push_str("<redacted>");
        } else {
            encode_into(&mut s, value.bytes());
        }
    }
    // Accept is what most often tells two otherwise equal keys apart (JSON,
    // Table, protobuf) and never carries a credential.
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        s.push_str(" accept=");
        s.push_str(accept);
    }
    if s.len() > MAX_DISPLAY {
        let mut end = MAX_DISPLAY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s.push(' ');
    s.push_str(&key.to_string());
    s
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const UP: &str = "https://10.0.0.1:6443";

    fn key_with(spec: &KeySpec, uri: &str, headers: &[(&str, &str)], partition: &[u8]) -> CacheKey {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        spec.key(&Method::GET, UP, &uri.parse().unwrap(), &map, partition)
    }

    fn key(uri: &str) -> CacheKey {
        key_with(&KeySpec::default(), uri, &[], b"p")
    }

    /// Asserts every pair of keys differs, naming the pair that does not.
    fn assert_distinct<T: fmt::Debug>(cases: &[T], keys: &[CacheKey]) {
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "{:?} vs {:?}", cases[i], cases[j]);
            }
        }
    }

    #[test]
    fn parameter_order_and_escapes_do_not_matter() {
        let a = key("/api/v1/pods?limit=500&labelSelector=app%3Dweb&a=%41");
        let b = key("/api/v1/pods?a=A&labelSelector=app=web&limit=500");
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(key("/x?a=b+c"), key("/x?a=b%20c"));
        assert_eq!(key("/%7Euser/%61"), key("/~user/a"));
        assert_eq!(key("/x?"), key("/x"));
        assert_eq!(key("/x?a&&b"), key("/x?b=&a="));
    }

    #[test]
    fn distinct_queries_give_distinct_keys() {
        let queries = [
            "",
            "?limit=500",
            "?limit=501",
            "?limit=500&continue=abc",
            "?limit=500&continue=abd",
            "?labelSelector=app%3Dweb",
            "?labelSelector=app%3Ddb",
            "?fieldSelector=spec.nodeName%3Dn1",
            "?fieldSelector=spec.nodeName%3Dn2",
            "?resourceVersion=0",
            "?resourceVersion=100",
            "?resourceVersion=",
            "?resourceVersion=0&resourceVersionMatch=NotOlderThan",
            // Repeats are kept, and `+` is not `%2B`.
            "?a=1&a=1",
            "?a=1",
            "?a=x+y",
            "?a=x%2By",
            // A malformed escape is not the escaped percent sign.
            "?a=%zz",
            "?a=%25zz",
            // Name/value boundaries matter.
            "?ab=c",
            "?a=bc",
        ];
        let keys: Vec<_> = queries
            .iter()
            .map(|q| key(&format!("/api/v1/namespaces/a/pods{q}")))
            .collect();
        assert_distinct(&queries, &keys);
    }

    #[test]
    fn named_gets_of_different_kinds_never_collide() {
        let paths = [
            "/api/v1/namespaces/a/secrets/x",
            "/api/v1/namespaces/a/configmaps/x",
            "/api/v1/namespaces/b/secrets/x",
            "/api/v1/namespaces/a/secrets/y",
            "/apis/apps/v1/namespaces/a/deployments/x",
            "/apis/apps/v1beta1/namespaces/a/deployments/x",
            "/api/v1/namespaces/a%2Fsecrets/x",
        ];
        let keys: Vec<_> = paths.iter().map(|p| key(p)).collect();
        assert_distinct(&paths, &keys);
    }

    #[test]
    fn accept_encoding_and_extra_headers_vary() {
        let spec = KeySpec::default();
        let cases: [&[(&str, &str)]; 7] = [
            &[("accept", "application/json")],
            &[("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
            &[("accept", "application/vnd.kubernetes.protobuf")],
            &[("accept", "")],
            &[],
            &[("accept-encoding", "gzip")],
            &[
                ("accept", "application/json"),
                ("accept", "application/yaml"),
            ],
        ];
        let keys: Vec<_> = cases
            .iter()
            .map(|h| key_with(&spec, "/api/v1/pods", h, b"p"))
            .collect();
        assert_distinct(&cases, &keys);

        // Extra headers count only when the spec names them.
        let api = [("x-github-api-version", "2022-11-28")];
        let github = KeySpec::new([HeaderName::from_static("x-github-api-version")]);
        assert_eq!(
            key_with(&spec, "/u", &api, b"p"),
            key_with(&spec, "/u", &[], b"p")
        );
        assert_ne!(
            key_with(&github, "/u", &api, b"p"),
            key_with(&github, "/u", &[], b"p")
        );
    }

    #[test]
    fn partition_method_and_upstream_vary() {
        let spec = KeySpec::default();
        let alice = key_with(&spec, "/api/v1/pods", &[], b"alice");
        assert_ne!(alice, key_with(&spec, "/api/v1/pods", &[], b"bob"));
        assert_ne!(alice, key_with(&spec, "/api/v1/pods", &[], b""));
        assert_eq!(alice, key_with(&spec, "/api/v1/pods", &[], b"alice"));

        let (u, h): (Uri, _) = ("/api/v1/pods".parse().unwrap(), HeaderMap::new());
        let get = spec.key(&Method::GET, UP, &u, &h, b"p");
        assert_ne!(get, spec.key(&Method::HEAD, UP, &u, &h, b"p"));
        assert_ne!(
            get,
            spec.key(&Method::GET, "https://other:6443", &u, &h, b"p")
        );
        assert_eq!(
            get,
            spec.key(&Method::GET, "HTTPS://10.0.0.1:6443/", &u, &h, b"p")
        );
    }

    fn describe(uri: &str, headers: &[(&str, &str)], partition: &[u8]) -> (CacheKey, String) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        let spec = KeySpec::default();
        (
            spec.key(&Method::GET, UP, &uri, &map, partition),
            spec.describe(&Method::GET, UP, &uri, &map, partition),
        )
    }

    #[test]
    fn readable_form_hides_credentials() {
        let (k, r) = describe(
            "/repos/o/r/pulls?access_token=ghp_secret123&per_page=100",
            &[("accept", "application/vnd.github+json")],
            b"Bearer ghp_partition_secret",
        );
        assert!(
            r.starts_with("GET https://10.0.0.1:6443/repos/o/r/pulls?"),
            "{r}"
        );
        assert!(r.contains("per_page=100"), "{r}");
        assert!(r.contains("access_token=<redacted>"), "{r}");
        assert!(r.contains("accept=application/vnd.github+json"), "{r}");
        assert!(!r.contains("ghp_"), "{r}");
        assert!(r.ends_with(&format!(" {k}")), "{r}");
        assert!(!format!("{k:?}").contains("ghp_"));

        let (_, long) = describe(&format!("/x?a={}", "b".repeat(1000)), &[], b"p");
        assert!(long.len() < MAX_DISPLAY + 32);
    }
}
