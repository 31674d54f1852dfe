//! The upstream allow-list of the ETag profile and the choice of an
//! upstream per request: the only places requests may go (no SSRF).
//!
//! Upstreams are base URLs (`https://api.github.com`, or a GitHub
//! Enterprise `https://ghe.example.com/api/v3`) given as flags. A request
//! names one of them in a configured header, or gets the first; a name that
//! is not on the list is refused, never resolved or dialled. The request's
//! own target contributes only its path and query, so an absolute-form
//! target (`GET http://elsewhere/ HTTP/1.1`) cannot steer the cache either.

use http::{HeaderMap, HeaderName, Uri, uri::Scheme};

/// Why an upstream flag or a request's choice is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error("--upstream {0:?}: not a URL ({1})")]
    NotUrl(String, String),
    #[error("--upstream {0:?}: the scheme must be http or https")]
    Scheme(String),
    #[error("--upstream {0:?}: has no host")]
    NoHost(String),
    #[error("--upstream {0:?}: must not carry credentials, a query or a fragment")]
    Extra(String),
    #[error("--upstream: at least one upstream is needed")]
    Empty,
    #[error(
        "--upstream is given {0} times: name --upstream-header for requests to choose among them"
    )]
    NoChooser(usize),
    #[error("the requested upstream is not on the allow-list")]
    NotAllowed,
    #[error("the request target has no path")]
    NoPath,
}

/// One allowed upstream, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `https://host[:port]` with scheme and host lower-cased and a default
    /// port left out: what cache keys and Link matching use.
    origin: String,
    /// Path prefix without a trailing slash (`/api/v3`), or empty.
    base_path: String,
    /// Origin plus base path, computed once: it is part of every key.
    base_url: String,
    scheme: Scheme,
    /// Host and port as dialled; the default port filled in.
    host: String,
    port: u16,
}

impl Upstream {
    /// Parses and normalizes an upstream base URL.
    pub fn parse(url: &str) -> Result<Self, UpstreamError> {
        let bad = || url.to_owned();
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|err: http::uri::InvalidUri| UpstreamError::NotUrl(bad(), err.to_string()))?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => Scheme::HTTPS,
            Some("http") => Scheme::HTTP,
            _ => return Err(UpstreamError::Scheme(bad())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| UpstreamError::NoHost(bad()))?;
        if authority.as_str().contains('@') || uri.query().is_some() || url.contains('#') {
            return Err(UpstreamError::Extra(bad()));
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(UpstreamError::NoHost(bad()));
        }
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let origin = if port == default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            base_url: format!("{origin}{base_path}"),
            origin,
            base_path,
            scheme,
            host,
            port,
        })
    }

    /// `scheme://host[:port]`, normalized.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The host, lower-cased, without the port.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path prefix every request path is appended to (may be empty).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The URL as a cache-key component and for logs: origin plus prefix.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The upstream URI for a request's path and query. The result always
    /// has this upstream's scheme and authority: `path_and_query` is an
    /// origin-form target (it starts with `/`), checked again here.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        if !path_and_query.starts_with('/') {
            return Err(UpstreamError::NoPath);
        }
        let uri: Uri = format!("{}{}{}", self.origin, self.base_path, path_and_query)
            .parse()
            .map_err(|_| UpstreamError::NoPath)?;
        // Defence in depth: whatever the path held, the authority is ours.
        let same = uri
            .authority()
            .is_some_and(|a| a.host().eq_ignore_ascii_case(&self.host))
            && uri.port_u16().unwrap_or(self.default_port()) == self.port
            && uri.scheme() == Some(&self.scheme);
        if same {
            Ok(uri)
        } else {
            Err(UpstreamError::NotAllowed)
        }
    }

    fn default_port(&self) -> u16 {
        if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        }
    }

    /// If `url` points at this upstream (same origin, under the base path),
    /// the part after the base path: `/user/repos?page=2`.
    pub fn strip(&self, url: &str) -> Option<String> {
        let uri: Uri = url.parse().ok()?;
        let other = Upstream::parse(&format!(
            "{}://{}",
            uri.scheme_str()?,
            uri.authority()?.as_str()
        ))
        .ok()?;
        if other.origin != self.origin {
            return None;
        }
        let rest = uri.path().strip_prefix(&self.base_path)?;
        // A prefix match must end at a segment boundary: /api/v3x is not
        // under /api/v3.
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let mut out = if rest.is_empty() {
            "/".to_owned()
        } else {
            rest.to_owned()
        };
        if let Some(query) = uri.query() {
            out.push('?');
            out.push_str(query);
        }
        Some(out)
    }
}

/// The allow-list and how a request picks from it.
#[derive(Debug, Clone)]
pub struct AllowList {
    upstreams: Vec<Upstream>,
    /// The request header naming an upstream, if requests may choose.
    chooser: Option<HeaderName>,
}

impl AllowList {
    /// From the flags: every `--upstream`, and `--upstream-header` if given.
    /// Several upstreams without a header to choose would leave all but the
    /// first unreachable, which is refused as a likely mistake.
    pub fn new(urls: &[String], chooser: Option<HeaderName>) -> Result<Self, UpstreamError> {
        let mut upstreams: Vec<Upstream> = Vec::new();
        for url in urls {
            let upstream = Upstream::parse(url)?;
            if !upstreams.contains(&upstream) {
                upstreams.push(upstream);
            }
        }
        if upstreams.is_empty() {
            return Err(UpstreamError::Empty);
        }
        if upstreams.len() > 1 && chooser.is_none() {
            return Err(UpstreamError::NoChooser(upstreams.len()));
        }
        Ok(Self { upstreams, chooser })
    }

    /// The header requests choose with, to be removed before forwarding.
    pub fn chooser(&self) -> Option<&HeaderName> {
        self.chooser.as_ref()
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The upstream a request goes to: the one its chooser header names
    /// (compared normalized), or the first when it names none. Several
    /// chooser headers, or a value that is not a URL on the list, are
    /// refused.
    pub fn choose(&self, headers: &HeaderMap) -> Result<&Upstream, UpstreamError> {
        let Some(name) = &self.chooser else {
            return Ok(&self.upstreams[0]);
        };
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return if headers.contains_key(name) {
                Err(UpstreamError::NotAllowed)
            } else {
                Ok(&self.upstreams[0])
            };
        };
        let wanted = value
            .to_str()
            .ok()
            .and_then(|v| Upstream::parse(v).ok())
            .ok_or(UpstreamError::NotAllowed)?;
        self.upstreams
            .iter()
            .find(|u| **u == wanted)
            .ok_or(UpstreamError::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn list(urls: &[&str], chooser: Option<&str>) -> AllowList {
        let urls: Vec<String> = urls.iter().map(|u| (*u).to_owned()).collect();
        AllowList::new(
            &urls,
            chooser.map(|c| HeaderName::from_bytes(c.as_bytes()).unwrap()),
        )
        .unwrap()
    }

    fn with(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn upstreams_are_normalized() {
        let u = Upstream::parse("HTTPS://API.GitHub.com:443/").unwrap();
        assert_eq!(u.origin(), "https://api.github.com");
        assert_eq!(u.base_path(), "");
        let ghe = Upstream::parse("https://ghe.example.com:8443/api/v3/").unwrap();
        assert_eq!(ghe.base_url(), "https://ghe.example.com:8443/api/v3");
        assert_eq!(
            Upstream::parse("http://127.0.0.1:80").unwrap().origin(),
            "http://127.0.0.1"
        );
    }

    #[test]
    fn bad_upstreams_are_refused_naming_the_flag() {
        for (url, want) in [
            ("ftp://x", "scheme"),
            ("api.github.com", "scheme"),
            ("https://user:pw@api.github.com", "credentials"),
            ("https://api.github.com/?a=1", "query"),
            ("https://api.github.com/#x", "fragment"),
            ("https://exa mple.com", "not a URL"),
        ] {
            let err = Upstream::parse(url).unwrap_err().to_string();
            assert!(err.starts_with("--upstream"), "{url}: {err}");
            assert!(err.contains(want), "{url}: {err}");
        }
        assert_eq!(AllowList::new(&[], None).unwrap_err(), UpstreamError::Empty);
        let two = [
            "https://a.example".to_owned(),
            "https://b.example".to_owned(),
        ];
        assert_eq!(
            AllowList::new(&two, None).unwrap_err(),
            UpstreamError::NoChooser(2)
        );
    }

    #[test]
    fn requests_choose_only_from_the_list() {
        let l = list(
            &["https://api.github.com", "https://ghe.example.com/api/v3"],
            Some("cluster-relay-upstream"),
        );
        let none = HeaderMap::new();
        assert_eq!(l.choose(&none).unwrap().origin(), "https://api.github.com");
        let ghe = with(
            "cluster-relay-upstream",
            &["https://GHE.example.com:443/api/v3/"],
        );
        assert_eq!(
            l.choose(&ghe).unwrap().base_url(),
            "https://ghe.example.com/api/v3"
        );
        for refused in [
            &["https://evil.example"][..],
            &["http://api.github.com"],
            &["https://api.github.com:8443"],
            &["https://ghe.example.com/api/v4"],
            &["https://ghe.example.com"],
            &["169.254.169.254"],
            &["https://api.github.com", "https://api.github.com"],
        ] {
            let h = with("cluster-relay-upstream", refused);
            assert_eq!(l.choose(&h), Err(UpstreamError::NotAllowed), "{refused:?}");
        }
        // Without a chooser header configured, headers do not matter.
        let fixed = list(&["https://api.github.com"], None);
        let h = with("cluster-relay-upstream", &["https://evil.example"]);
        assert_eq!(fixed.choose(&h).unwrap().origin(), "https://api.github.com");
    }

    #[test]
    fn request_paths_cannot_leave_the_upstream() {
        let u = Upstream::parse("https://api.github.com").unwrap();
        for path in [
            "/user",
            "//evil.example/x",
            "/@evil.example",
            "/a/../../b?x=1",
        ] {
            let uri = u.uri_for(path).unwrap();
            assert_eq!(uri.host(), Some("api.github.com"), "{path}");
            assert_eq!(uri.scheme_str(), Some("https"));
        }
        assert_eq!(u.uri_for("evil.example/x"), Err(UpstreamError::NoPath));
        let ghe = Upstream::parse("https://ghe.example.com/api/v3").unwrap();
        assert_eq!(
            ghe.uri_for("/user?per_page=2").unwrap().to_string(),
            "https://ghe.example.com/api/v3/user?per_page=2"
        );
    }

    #[test]
    fn strip_matches_origin_and_base_path_only() {
        let ghe = Upstream::parse("https://ghe.example.com/api/v3").unwrap();
        assert_eq!(
            ghe.strip("https://ghe.example.com:443/api/v3/user/repos?page=2")
                .as_deref(),
            Some("/user/repos?page=2")
        );
        assert_eq!(
            ghe.strip("https://ghe.example.com/api/v3").as_deref(),
            Some("/")
        );
        assert_eq!(ghe.strip("https://ghe.example.com/api/v3x/user"), None);
        assert_eq!(ghe.strip("http://ghe.example.com/api/v3/user"), None);
        assert_eq!(ghe.strip("https://other.example/api/v3/user"), None);
        assert_eq!(ghe.strip("/api/v3/user"), None);
    }
}
