//! Upstream URLs in JSON bodies pointed back at the cache, so that a client
//! library following them (PyGithub's lazy objects, Octokit's and
//! go-github's follow-up requests, `next` objects, URL templates such as
//! `issues_url: ".../issues{/number}"`) stays on the cache.
//!
//! Every JSON string *value* that starts with the upstream's base URL
//! (origin plus base path, e.g. `https://ghe.example.com/api/v3`) followed by
//! the end of the string, `/`, `?`, `#` or `{` gets the cache's public base
//! instead; keys, other hosts and look-alikes (`https://api.github.com.evil`,
//! `/api/v3x`) are left as they are. Strings with escapes (`https:\/\/...`)
//! are decoded before matching and written back re-encoded. A body that is
//! not JSON, cannot be read, or is larger than `--max-object-bytes` once
//! decoded is left untouched.
//!
//! A rewritten body is another representation: it is served with an ETag
//! derived from the upstream's and the public base ([`derived_etag`]), while
//! the upstream's own validators are kept for revalidation.

use std::io::Read as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use memchr::{memchr, memchr2, memmem};
use sha2::{Digest as _, Sha256};

use super::upstream::Upstream;

/// Hashed in front of the public base in derived ETags: bump it when the
/// rewrite changes what it produces for the same input.
const ETAG_DOMAIN: &[u8] = b"cluster-relay/read-cache/rewrite/v1\0";

/// What [`represent`] made of an upstream body.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No upstream URL in it, or not JSON it could read: served as it came.
    Unchanged,
    /// Rewritten: the new body, served without `Content-Encoding` when the
    /// upstream's was gzip (it is decoded to be rewritten).
    Rewritten(Bytes),
}

/// Rewrites the upstream URLs of a JSON `body` whose response `headers`
/// are given, for a client that reached the cache at `base`
/// (`http://host:port`). Gzip bodies are decoded up to `limit` bytes;
/// other encodings are not read.
pub fn represent(
    headers: &HeaderMap,
    body: &[u8],
    upstream: &Upstream,
    base: &str,
    limit: usize,
) -> Outcome {
    if !is_json(headers) {
        return Outcome::Unchanged;
    }
    let decoded;
    let plain = match content_coding(headers) {
        Coding::Identity => body,
        Coding::Gzip => match gunzip(body, limit) {
            Some(bytes) => {
                decoded = bytes;
                &decoded[..]
            }
            None => return Outcome::Unchanged,
        },
        Coding::Other => return Outcome::Unchanged,
    };
    match json_urls(plain, upstream, base) {
        Some(out) => Outcome::Rewritten(Bytes::from(out)),
        None => Outcome::Unchanged,
    }
}

/// Whether the response's media type is JSON (`application/json`,
/// `application/vnd.github+json`, ...).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|media| media == "application/json" || media.ends_with("+json"))
}

enum Coding {
    Identity,
    Gzip,
    Other,
}

fn content_coding(headers: &HeaderMap) -> Coding {
    let mut codings = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity");
    match (codings.next().as_deref(), codings.next()) {
        (None, _) => Coding::Identity,
        (Some("gzip" | "x-gzip"), None) => Coding::Gzip,
        _ => Coding::Other,
    }
}

/// The gzip body decoded, or `None` if it is broken or decodes to more than
/// `limit` bytes (read no further: a small body can inflate enormously).
fn gunzip(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(out)
}

/// What the cache asks the upstream for, from the client's
/// `Accept-Encoding`: gzip if the client takes it (the cache can read and
/// so rewrite it), otherwise no header, which means identity. Other codings
/// would come back unreadable and so unrewritten.
pub fn upstream_accept_encoding(request: &HeaderMap) -> Option<HeaderValue> {
    let takes_gzip = request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused && matches!(coding.as_str(), "gzip" | "x-gzip" | "*")
        });
    takes_gzip.then(|| HeaderValue::from_static("gzip"))
}

/// `body` with every string value naming `upstream` pointed at `base`, or
/// `None` when nothing changed or the body is not well-formed enough to
/// find its strings (an unterminated string).
pub fn json_urls(body: &[u8], upstream: &Upstream, base: &str) -> Option<Vec<u8>> {
    // Hosts never need escapes, so a body without the host has no URL of
    // the upstream: most bodies that need nothing cost one scan.
    memmem::find(body, upstream.host().as_bytes())?;
    // The base as it goes into a JSON string (a Host header cannot hold a
    // quote or backslash today, but the output must stay JSON regardless).
    let quoted_base = serde_json::to_string(base).ok()?;
    let escaped_base = &quoted_base[1..quoted_base.len() - 1];
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = memchr(b'"', &body[at..]) {
        let open = at + found;
        let (close, escaped) = string_end(body, open + 1)?;
        at = close + 1;
        let is_key = body[at..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b':');
        if is_key {
            continue;
        }
        let content = &body[open + 1..close];
        let replacement = if escaped {
            let Ok(text) = serde_json::from_slice::<String>(&body[open..=close]) else {
                continue;
            };
            let Some(rest) = under(text.as_bytes(), upstream) else {
                continue;
            };
            let rest = String::from_utf8_lossy(rest);
            serde_json::to_string(&format!("{base}{rest}")).ok()?
        } else {
            let Some(rest) = under(content, upstream) else {
                continue;
            };
            let mut s = String::with_capacity(escaped_base.len() + rest.len() + 2);
            s.push('"');
            s.push_str(escaped_base);
            // `content` held no backslash, and JSON strings are UTF-8.
            s.push_str(std::str::from_utf8(rest).ok()?);
            s.push('"');
            s
        };
        let out = out.get_or_insert_with(|| Vec::with_capacity(body.len() + body.len() / 8));
        out.extend_from_slice(&body[copied..open]);
        out.extend_from_slice(replacement.as_bytes());
        copied = close + 1;
    }
    let mut out = out?;
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

/// The closing quote of the string whose content starts at `from`, and
/// whether the content has escapes; `None` if it is never closed.
fn string_end(body: &[u8], mut from: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let i = from + memchr2(b'"', b'\\', body.get(from..)?)?;
        if body[i] == b'"' {
            return Some((i, escaped));
        }
        escaped = true;
        from = i + 2;
    }
}

/// If `url` is the upstream's base URL or below it, what follows the base:
/// the base matched exactly (upstreams write their own in lower case, as
/// it is normalized here; anything else is left alone), then the end or a
/// character that cannot continue a host, port or segment.
fn under<'a>(url: &'a [u8], upstream: &Upstream) -> Option<&'a [u8]> {
    let rest = url.strip_prefix(upstream.base_url().as_bytes())?;
    match rest.first() {
        None | Some(b'/' | b'?' | b'#' | b'{') => Some(rest),
        Some(_) => None,
    }
}

/// The ETag of a rewritten representation: the upstream's opaque tag with
/// a digest of the public base appended, weak if the upstream's was. The
/// same upstream answer and base always give the same tag, so a client's
/// `If-None-Match` keeps matching across refills and revalidations, while
/// the upstream's tag (another representation) does not match it. `None`
/// for a malformed upstream tag: then none is served.
pub fn derived_etag(upstream: &HeaderValue, base: &str) -> Option<HeaderValue> {
    let tag = upstream.to_str().ok()?.trim();
    let (weak, quoted) = match tag.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", tag),
    };
    let opaque = quoted.strip_prefix('"')?.strip_suffix('"')?;
    if opaque.contains('"') {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(ETAG_DOMAIN)
        .chain_update(base.as_bytes())
        .finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("{weak}\"{opaque}-cr{hex}\"")).ok()
}

#[cfg(test)]
mod tests;
