//! Pointing an upstream's own URLs back at the cache: the `Link` header of
//! paginated lists (RFC 8288, as GitHub sends it) and a redirect's
//! `Location`. A client that follows `rel="next"` must come back through
//! the cache, on the scheme and host it used to reach the cache, which a
//! proxy in front may have changed (`X-Forwarded-Proto`, `X-Forwarded-Host`).
//!
//! Only URLs of the upstream the request went to are rewritten; any other
//! URL is left as it is, so nothing is made to look like it is cached that
//! is not. Stored answers are rewritten once, when filled (the public base
//! is part of their key, see `fill`); answers passed through, when served.

use http::{HeaderMap, HeaderValue, header, uri::Authority};

use super::upstream::Upstream;

static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

/// The scheme and host a client reached the cache on: `http://host:port`.
/// `None` without a usable host (an HTTP/1.0 request without `Host`), and
/// then links are left alone.
pub fn public_base(headers: &HeaderMap) -> Option<String> {
    // The first value of a list is what the outermost proxy saw. Values
    // are validated, since they end up in a header sent to the client.
    let first = |name: &http::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let proto = match first(&X_FORWARDED_PROTO).map(str::to_ascii_lowercase) {
        Some(p) if p == "https" || p == "http" => p,
        _ => "http".to_owned(),
    };
    let host = first(&X_FORWARDED_HOST)
        .or_else(|| first(&header::HOST))
        .filter(|h| {
            h.parse::<Authority>()
                .is_ok_and(|a| !a.as_str().contains('@'))
        })?;
    Some(format!("{proto}://{host}"))
}

/// Rewrites `Link` and `Location` values that point at `upstream` to
/// `base` (see [`public_base`]). Values that cannot be parsed stay as they
/// are.
pub fn rewrite(headers: &mut HeaderMap, upstream: &Upstream, base: &str) {
    if let Some(link) = headers.get(header::LINK)
        && headers.get_all(header::LINK).iter().count() == 1
    {
        if let Some(new) = link
            .to_str()
            .ok()
            .and_then(|v| rewrite_link(v, upstream, base))
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(header::LINK, new);
        }
    } else if headers.contains_key(header::LINK) {
        let values: Vec<HeaderValue> = headers
            .get_all(header::LINK)
            .iter()
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| rewrite_link(s, upstream, base))
                    .and_then(|s| HeaderValue::from_str(&s).ok())
                    .unwrap_or_else(|| v.clone())
            })
            .collect();
        headers.remove(header::LINK);
        for v in values {
            headers.append(header::LINK, v);
        }
    }
    if let Some(new) = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| upstream.strip(v))
        .and_then(|rest| HeaderValue::from_str(&format!("{base}{rest}")).ok())
    {
        headers.insert(header::LOCATION, new);
    }
}

/// One `Link` value with each `<URI-Reference>` of `upstream` replaced;
/// `None` if nothing changed. Angle brackets inside quoted parameter values
/// are not link targets and are skipped.
pub fn rewrite_link(value: &str, upstream: &Upstream, base: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len() + 64);
    let mut changed = false;
    let mut rest = value;
    let mut in_quotes = false;
    while let Some(i) = rest.find(['<', '"', '\\']) {
        let c = rest.as_bytes()[i];
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match c {
            b'\\' if in_quotes => {
                // An escaped character inside a quoted string.
                let n = rest.char_indices().nth(2).map_or(rest.len(), |(n, _)| n);
                out.push_str(&rest[..n]);
                rest = &rest[n..];
            }
            b'"' => {
                in_quotes = !in_quotes;
                out.push('"');
                rest = &rest[1..];
            }
            b'<' if !in_quotes => {
                let end = rest.find('>')?;
                let target = &rest[1..end];
                match upstream.strip(target) {
                    Some(path) => {
                        out.push('<');
                        out.push_str(base);
                        out.push_str(&path);
                        out.push('>');
                        changed = true;
                    }
                    None => out.push_str(&rest[..=end]),
                }
                rest = &rest[end + 1..];
            }
            _ => {
                out.push(c as char);
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gh() -> Upstream {
        Upstream::parse("https://api.github.com").unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn github_pagination_links_point_back_at_the_cache() {
        let link = "<https://api.github.com/repositories/1300192/issues?page=2>; rel=\"prev\", \
                    <https://api.github.com/repositories/1300192/issues?page=4>; rel=\"next\", \
                    <https://api.github.com/repositories/1300192/issues?page=515>; rel=\"last\", \
                    <https://api.github.com/repositories/1300192/issues?page=1>; rel=\"first\"";
        let got = rewrite_link(link, &gh(), "http://cache:7445").unwrap();
        assert_eq!(
            got,
            "<http://cache:7445/repositories/1300192/issues?page=2>; rel=\"prev\", \
             <http://cache:7445/repositories/1300192/issues?page=4>; rel=\"next\", \
             <http://cache:7445/repositories/1300192/issues?page=515>; rel=\"last\", \
             <http://cache:7445/repositories/1300192/issues?page=1>; rel=\"first\""
        );
    }

    #[test]
    fn other_hosts_and_quoted_brackets_are_left_alone() {
        let link = "<https://uploads.github.com/x>; rel=\"upload\", \
                    <https://api.github.com/y?page=2>; title=\"a <https://api.github.com/z> \\\" b\"; rel=\"next\"";
        let got = rewrite_link(link, &gh(), "https://c").unwrap();
        assert_eq!(
            got,
            "<https://uploads.github.com/x>; rel=\"upload\", \
             <https://c/y?page=2>; title=\"a <https://api.github.com/z> \\\" b\"; rel=\"next\""
        );
        assert_eq!(
            rewrite_link("<https://elsewhere/x>; rel=\"next\"", &gh(), "http://c"),
            None
        );
        // Malformed: left as it is.
        assert_eq!(
            rewrite_link("<https://api.github.com/x", &gh(), "http://c"),
            None
        );
    }

    #[test]
    fn enterprise_base_paths_are_replaced() {
        let ghe = Upstream::parse("https://ghe.example.com/api/v3").unwrap();
        let got = rewrite_link(
            "<https://ghe.example.com/api/v3/user/repos?per_page=2&page=3>; rel=\"next\"",
            &ghe,
            "http://127.0.0.1:9",
        );
        assert_eq!(
            got.as_deref(),
            Some("<http://127.0.0.1:9/user/repos?per_page=2&page=3>; rel=\"next\"")
        );
    }

    #[test]
    fn public_base_respects_forwarded_headers_and_validates_them() {
        assert_eq!(
            public_base(&headers(&[("host", "127.0.0.1:7445")])).as_deref(),
            Some("http://127.0.0.1:7445")
        );
        assert_eq!(
            public_base(&headers(&[
                ("host", "127.0.0.1:7445"),
                ("x-forwarded-proto", "https, http"),
                ("x-forwarded-host", "cache.example.com, inner"),
            ]))
            .as_deref(),
            Some("https://cache.example.com")
        );
        // Garbage forwarded values fall back to safe ones.
        assert_eq!(
            public_base(&headers(&[
                ("host", "c:1"),
                ("x-forwarded-proto", "javascript"),
            ]))
            .as_deref(),
            Some("http://c:1")
        );
        assert_eq!(
            public_base(&headers(&[("host", "c:1"), ("x-forwarded-host", "a b>")])),
            None
        );
        assert_eq!(public_base(&headers(&[("host", "user@evil")])), None);
        assert_eq!(public_base(&HeaderMap::new()), None);
    }

    #[test]
    fn headers_are_rewritten_in_place() {
        let mut h = headers(&[
            ("link", "<https://api.github.com/a?page=2>; rel=\"next\""),
            ("location", "https://api.github.com/repositories/42"),
        ]);
        rewrite(&mut h, &gh(), "http://c:1");
        assert_eq!(h["link"], "<http://c:1/a?page=2>; rel=\"next\"");
        assert_eq!(h["location"], "http://c:1/repositories/42");
        let mut off = headers(&[("location", "https://evil.example/x")]);
        rewrite(&mut off, &gh(), "http://c:1");
        assert_eq!(off["location"], "https://evil.example/x");
    }
}
