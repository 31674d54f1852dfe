//! The target of a request: which Service, in which namespace, by which
//! scheme and port, and the path below it. Parsed from kube-style
//! service-proxy paths at the entry and from the `Cluster-Proxy-*` headers
//! at the exit; both carry the same `Target`.

use std::fmt;

/// Scheme to the Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn parse(text: &str) -> Option<Scheme> {
        match text {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }
}

/// A Service port, by number or by name; `None` means the Service's only port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    Number(u16),
    Name(String),
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(n) => write!(f, "{n}"),
            Port::Name(name) => f.write_str(name),
        }
    }
}

/// A Service and the path (with query) to request from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub namespace: String,
    pub name: String,
    pub port: Option<Port>,
    /// Starts with `/`; includes the query, if any.
    pub path_and_query: String,
}

/// Why a path or header set does not name a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "not a service proxy path: expected /api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH"
    )]
    NotServiceProxy,
    #[error("invalid namespace {0:?}")]
    Namespace(String),
    #[error("invalid service {0:?}: expected [http:|https:]NAME[:PORT]")]
    Service(String),
    #[error("invalid port {0:?}")]
    Port(String),
    #[error("missing header {0}")]
    MissingHeader(&'static str),
}

/// A DNS-1123 label, as namespace and Service names are.
fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn parse_port(text: &str) -> Result<Option<Port>, TargetError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u16>() {
            Ok(n) if n > 0 => Ok(Some(Port::Number(n))),
            _ => Err(TargetError::Port(text.to_owned())),
        };
    }
    // An IANA service name, as Service port names are.
    let valid = text.len() <= 15
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--");
    if valid {
        Ok(Some(Port::Name(text.to_owned())))
    } else {
        Err(TargetError::Port(text.to_owned()))
    }
}

/// Splits `[scheme:]name[:port]` the way Kubernetes does.
pub fn split_scheme_name_port(
    text: &str,
) -> Result<(Option<Scheme>, String, Option<Port>), TargetError> {
    let bad = || TargetError::Service(text.to_owned());
    let parts: Vec<&str> = text.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => (None, *name, ""),
        [name, port] => (None, *name, *port),
        [scheme, name, port] => (Some(Scheme::parse(scheme).ok_or_else(bad)?), *name, *port),
        _ => return Err(bad()),
    };
    if !is_label(name) {
        return Err(bad());
    }
    Ok((scheme, name.to_owned(), parse_port(port)?))
}

/// Parses `/api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy[/PATH]`
/// plus an optional query. The scheme defaults to http, as in Kubernetes.
pub fn parse_path(path: &str, query: Option<&str>) -> Result<Target, TargetError> {
    let rest = path
        .strip_prefix("/api/v1/namespaces/")
        .ok_or(TargetError::NotServiceProxy)?;
    let (namespace, rest) = rest.split_once('/').ok_or(TargetError::NotServiceProxy)?;
    let rest = rest
        .strip_prefix("services/")
        .ok_or(TargetError::NotServiceProxy)?;
    let (service, rest) = rest.split_once('/').ok_or(TargetError::NotServiceProxy)?;
    let below = match rest.strip_prefix("proxy") {
        Some("") => "/",
        Some(below) if below.starts_with('/') => below,
        _ => return Err(TargetError::NotServiceProxy),
    };
    if !is_label(namespace) {
        return Err(TargetError::Namespace(namespace.to_owned()));
    }
    let (scheme, name, port) = split_scheme_name_port(service)?;
    let mut path_and_query = below.to_owned();
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Ok(Target {
        scheme: scheme.unwrap_or(Scheme::Http),
        namespace: namespace.to_owned(),
        name,
        port,
        path_and_query,
    })
}

/// Builds a target from the exit relay's routing headers (the path comes
/// from the request).
pub fn from_headers(
    proto: Option<&str>,
    namespace: Option<&str>,
    service: Option<&str>,
    port: Option<&str>,
    path_and_query: &str,
) -> Result<Target, TargetError> {
    use super::headers::{NAMESPACE, PORT, PROTO, SERVICE};
    let proto = proto.ok_or(TargetError::MissingHeader(PROTO))?;
    let namespace = namespace.ok_or(TargetError::MissingHeader(NAMESPACE))?;
    let service = service.ok_or(TargetError::MissingHeader(SERVICE))?;
    let port = port.ok_or(TargetError::MissingHeader(PORT))?;
    let scheme =
        Scheme::parse(proto).ok_or_else(|| TargetError::Service(format!("{proto}:{service}")))?;
    if !is_label(namespace) {
        return Err(TargetError::Namespace(namespace.to_owned()));
    }
    if !is_label(service) {
        return Err(TargetError::Service(service.to_owned()));
    }
    Ok(Target {
        scheme,
        namespace: namespace.to_owned(),
        name: service.to_owned(),
        port: parse_port(port)?,
        path_and_query: if path_and_query.starts_with('/') {
            path_and_query.to_owned()
        } else {
            format!("/{path_and_query}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_style_paths() {
        let t = parse_path(
            "/api/v1/namespaces/ns1/services/https:echo:8443/proxy/a/b",
            Some("x=1&y=2"),
        )
        .expect("parses");
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!((t.namespace.as_str(), t.name.as_str()), ("ns1", "echo"));
        assert_eq!(t.port, Some(Port::Number(8443)));
        assert_eq!(t.path_and_query, "/a/b?x=1&y=2");

        let t = parse_path("/api/v1/namespaces/ns1/services/echo:web/proxy", None).expect("parses");
        assert_eq!(t.scheme, Scheme::Http);
        assert_eq!(t.port, Some(Port::Name("web".into())));
        assert_eq!(t.path_and_query, "/");

        let t =
            parse_path("/api/v1/namespaces/ns1/services/echo/proxy/", Some("")).expect("parses");
        assert_eq!(t.port, None);
        assert_eq!(t.path_and_query, "/");
    }

    #[test]
    fn bad_paths_are_refused() {
        for path in [
            "/api/v1/namespaces/ns1/services/echo/proxyx",
            "/api/v1/namespaces/ns1/pods/echo/proxy/",
            "/healthz",
            "/api/v1/namespaces/ns1/services/echo",
        ] {
            assert_eq!(
                parse_path(path, None),
                Err(TargetError::NotServiceProxy),
                "{path}"
            );
        }
        assert!(matches!(
            parse_path("/api/v1/namespaces/NS/services/echo/proxy/", None),
            Err(TargetError::Namespace(_))
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/ns/services/ftp:echo:1/proxy/", None),
            Err(TargetError::Service(_))
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/ns/services/echo:70000/proxy/", None),
            Err(TargetError::Port(_))
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/ns/services/a:b:c:d/proxy/", None),
            Err(TargetError::Service(_))
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/ns/services/../proxy/", None),
            Err(TargetError::Service(_))
        ));
    }

    #[test]
    fn headers_name_targets_too() {
        let t = from_headers(
            Some("https"),
            Some("ns"),
            Some("echo"),
            Some("8443"),
            "/x?y",
        )
        .expect("parses");
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!(t.port, Some(Port::Number(8443)));
        assert_eq!(t.path_and_query, "/x?y");
        assert_eq!(
            from_headers(None, Some("ns"), Some("echo"), Some("80"), "/"),
            Err(TargetError::MissingHeader("Cluster-Proxy-Proto"))
        );
    }
}
