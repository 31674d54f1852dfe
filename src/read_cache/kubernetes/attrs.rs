//! What a kube-apiserver request asks for, in the terms its authorizer uses:
//! the same reading of the path that the apiserver's RequestInfo resolver
//! makes (API group and version, namespace, resource, name, subresource,
//! verb), so a SelfSubjectAccessReview for these attributes gets the
//! decision the apiserver would make for the request itself.
//!
//! Anything this module does not recognise with certainty is `None`: the
//! cache then streams the request through untouched and the apiserver
//! decides, which is always safe.

use http::{Method, Uri};

/// Authorization attributes of a request on an API resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceAttrs {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
}

/// What a request touches, for authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttrs),
    /// A path outside the resource tree (/version, /apis, /openapi/v2…).
    NonResource {
        path: String,
        verb: &'static str,
    },
}

/// Subresources of a namespace itself, which the apiserver reads as
/// `/namespaces/NAME/SUB` rather than as a resource in the namespace.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

fn query_flag(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            key == name && matches!(value, "true" | "1")
        })
    })
}

/// A path segment as the apiserver sees it: percent-decoded. A segment
/// that decodes to something with a slash, a dot-segment or nothing is not
/// one this module will vouch for.
fn segment(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    if text.is_empty() || text == "." || text == ".." || text.contains('/') {
        return None;
    }
    Some(text)
}

/// Reads a request the way the apiserver's RequestInfo resolver does;
/// `None` for a request that must go to the apiserver as it is.
pub fn attributes(method: &Method, uri: &Uri) -> Option<Attributes> {
    let path = uri.path();
    let raw: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_api = matches!(raw.first(), Some(&"api")) && raw.len() >= 2
        || matches!(raw.first(), Some(&"apis")) && raw.len() >= 3;
    if !is_api {
        // Discovery and other non-resource paths: only reads are cached.
        if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
            return None;
        }
        let verb = match *method {
            Method::GET => "get",
            _ => return None,
        };
        return Some(Attributes::NonResource {
            path: path.to_owned(),
            verb,
        });
    }
    let mut parts = raw
        .iter()
        .map(|s| segment(s))
        .collect::<Option<Vec<String>>>()?;
    let (group, version, rest) = if parts[0] == "api" {
        let rest = parts.split_off(2);
        (String::new(), parts.swap_remove(1), rest)
    } else {
        let rest = parts.split_off(3);
        let version = parts.swap_remove(2);
        (parts.swap_remove(1), version, rest)
    };
    if rest.is_empty() {
        // /api/v1, /apis/apps/v1: discovery documents.
        return match *method {
            Method::GET => Some(Attributes::NonResource {
                path: path.to_owned(),
                verb: "get",
            }),
            _ => None,
        };
    }
    let mut rest = rest.as_slice();
    // The legacy /watch/ prefix is a watch whatever the method.
    let mut watch_prefix = false;
    if rest[0] == "watch" {
        watch_prefix = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest.first().map(String::as_str) == Some("namespaces") && rest.len() > 1 {
        namespace = Some(rest[1].clone());
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2].as_str()) {
            rest = &rest[2..];
        }
    }
    let resource = rest.first()?.clone();
    let name = rest.get(1).cloned();
    let subresource = rest.get(2).cloned();
    // Deeper paths (pods/x/proxy/a/b) are proxies: never cached.
    if rest.len() > 3 {
        return None;
    }
    // A namespace's own name is its namespace for authorization.
    if resource == "namespaces" && rest.len() >= 2 {
        namespace = name.clone();
    }
    let verb = if watch_prefix || query_flag(uri, "watch") {
        "watch"
    } else {
        match (method, &name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            _ => return None,
        }
    };
    Some(Attributes::Resource(ResourceAttrs {
        group,
        version,
        resource,
        subresource,
        namespace,
        name,
        verb,
    }))
}

impl ResourceAttrs {
    /// The type key watches and invalidation use: `resource.group`.
    pub fn type_key(&self) -> String {
        type_key(&self.group, &self.resource)
    }
}

/// `resource` or `resource.group`, as kubectl writes it.
pub fn type_key(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, uri: &str) -> Option<Attributes> {
        attributes(&method, &uri.parse().expect("valid uri"))
    }

    fn resource(method: Method, uri: &str) -> ResourceAttrs {
        match attrs(method, uri) {
            Some(Attributes::Resource(r)) => r,
            other => panic!("{uri}: {other:?}"),
        }
    }

    #[test]
    fn named_get_and_list() {
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets/foo");
        assert_eq!(
            (
                r.group.as_str(),
                r.version.as_str(),
                r.resource.as_str(),
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.verb
            ),
            ("", "v1", "secrets", Some("a"), Some("foo"), "get")
        );
        let r = resource(
            Method::GET,
            "/apis/apps/v1/namespaces/a/deployments?limit=5",
        );
        assert_eq!(
            (r.group.as_str(), r.resource.as_str(), r.name, r.verb),
            ("apps", "deployments", None, "list")
        );
        let r = resource(Method::GET, "/api/v1/configmaps");
        assert_eq!((r.namespace, r.verb), (None, "list"));
    }

    #[test]
    fn namespaces_are_their_own_namespace() {
        let r = resource(Method::GET, "/api/v1/namespaces/a");
        assert_eq!(
            (
                r.resource.as_str(),
                r.namespace.as_deref(),
                r.name.as_deref()
            ),
            ("namespaces", Some("a"), Some("a"))
        );
        let r = resource(Method::GET, "/api/v1/namespaces/a/status");
        assert_eq!(
            (r.resource.as_str(), r.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let r = resource(Method::GET, "/api/v1/namespaces");
        assert_eq!((r.namespace, r.verb), (None, "list"));
    }

    #[test]
    fn watches_are_recognised_both_ways() {
        assert_eq!(
            resource(Method::GET, "/api/v1/namespaces/a/pods?watch=true").verb,
            "watch"
        );
        assert_eq!(
            resource(Method::GET, "/api/v1/watch/namespaces/a/pods").verb,
            "watch"
        );
        assert_eq!(
            resource(Method::GET, "/api/v1/namespaces/a/pods?watch=false").verb,
            "list"
        );
    }

    #[test]
    fn writes_have_their_verbs() {
        assert_eq!(
            resource(Method::POST, "/api/v1/namespaces/a/configmaps").verb,
            "create"
        );
        assert_eq!(
            resource(Method::PATCH, "/api/v1/namespaces/a/configmaps/x").verb,
            "patch"
        );
        assert_eq!(
            resource(Method::DELETE, "/api/v1/namespaces/a/configmaps").verb,
            "deletecollection"
        );
        assert_eq!(
            resource(Method::PUT, "/api/v1/namespaces/a/pods/x/status")
                .subresource
                .as_deref(),
            Some("status")
        );
    }

    #[test]
    fn discovery_is_non_resource() {
        for path in [
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
        ] {
            assert!(
                matches!(
                    attrs(Method::GET, path),
                    Some(Attributes::NonResource { verb: "get", .. })
                ),
                "{path}"
            );
        }
        assert_eq!(attrs(Method::POST, "/version"), None);
    }

    #[test]
    fn doubtful_paths_are_not_vouched_for() {
        for path in [
            "/api/v1/namespaces/a/pods/x/proxy/metrics",
            "/api/v1/namespaces/a/secrets/%2Fetc",
            "/api/v1/namespaces/a/secrets/..",
            "/api/v1/namespaces/a//secrets",
            "/version/../api/v1/secrets",
        ] {
            assert_eq!(attrs(Method::GET, path), None, "{path}");
        }
    }

    #[test]
    fn percent_encoding_is_decoded_like_the_apiserver() {
        let r = resource(Method::GET, "/api/v1/namespaces/a/configmaps/my%2Dmap");
        assert_eq!(r.name.as_deref(), Some("my-map"));
    }
}
