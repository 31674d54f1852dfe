//! The exit role, on the managed cluster: verify the relay caller, strip
//! every `Cluster-Proxy-*` header, restore the caller's `Authorization`, and
//! forward to the target Service named by the routing headers.

use std::{fmt::Write as _, net::SocketAddr};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header, uri::Authority};
use hyper::body::Incoming;

use super::{
    caller::{Callers, Verdict},
    directory::{Directory, LookupError, host},
    forward::{Destination, Upstream},
    headers::{self, bearer_token, take_cluster_proxy_headers},
    metrics::RelayMetrics,
    pool::Origin,
    target::{self, Scheme, Target},
};
use crate::http_server::{Body, text};

pub struct Exit {
    pub callers: Callers,
    pub directory: Directory,
    pub upstream: Upstream,
    pub metrics: RelayMetrics,
}

fn header_str<'a>(request: &'a Request<Incoming>, name: &HeaderName) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut response = text(StatusCode::UNAUTHORIZED, format!("{message}\n"));
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The status for a failed lookup; details go to the log.
pub fn lookup_response(err: &LookupError) -> Response<Body> {
    match err {
        LookupError::NoService(_) | LookupError::NoPort { .. } => {
            text(StatusCode::NOT_FOUND, format!("{err}\n"))
        }
        LookupError::AmbiguousPort(_) | LookupError::NeedsApi => {
            text(StatusCode::BAD_REQUEST, format!("{err}\n"))
        }
        LookupError::NoEndpoints(_) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")),
        LookupError::Api { .. } | LookupError::Dns(..) => text(
            StatusCode::BAD_GATEWAY,
            "bad gateway: cannot locate the service\n",
        ),
    }
}

/// Where the request for `target` goes: `<name>.<namespace>.svc:<port>`,
/// asked for the path and query the request came with.
fn destination(target: &Target, port: u16, uri: &Uri) -> Option<Destination> {
    let mut authority = host(target);
    // Writing to a String cannot fail.
    let _ = write!(authority, ":{port}");
    let path = match uri.path_and_query() {
        // The request's own target, shared rather than copied.
        Some(path) if path.as_str() == target.path_and_query => Uri::from(path.clone()),
        _ => target.path_and_query.parse().ok()?,
    };
    Some(Destination {
        origin: Origin {
            https: target.scheme == Scheme::Https,
            authority: Authority::from_maybe_shared(Bytes::from(authority)).ok()?,
        },
        path,
    })
}

impl Exit {
    pub async fn handle(&self, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let Some(token) = request
            .headers()
            .get(&headers::RELAY_AUTHORIZATION_NAME)
            .and_then(bearer_token)
        else {
            self.metrics.rejected("no_credential");
            return unauthorized("missing relay credential");
        };
        match self.callers.verify(token).await {
            Ok(Verdict::Allowed(_)) => {}
            Ok(Verdict::NotAllowed(user)) => {
                self.metrics.rejected("not_allowed");
                tracing::warn!(%peer, caller = %user, "refused: not an allowed caller");
                return text(
                    StatusCode::FORBIDDEN,
                    "forbidden: not an allowed relay caller\n",
                );
            }
            Ok(Verdict::Unauthenticated) => {
                self.metrics.rejected("unauthenticated");
                return unauthorized("invalid relay credential");
            }
            Err(err) => {
                self.metrics.rejected("review_failed");
                tracing::warn!(%peer, error = %err, "cannot verify the relay caller");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot verify the relay caller now\n",
                );
            }
        }
        let target: Target = match target::from_headers(
            header_str(&request, &headers::PROTO_NAME),
            header_str(&request, &headers::NAMESPACE_NAME),
            header_str(&request, &headers::SERVICE_NAME),
            header_str(&request, &headers::PORT_NAME),
            request.uri().path_and_query().map_or("/", |p| p.as_str()),
        ) {
            Ok(target) => target,
            Err(err) => return text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        };
        // The caller's own credential, or none: never the relay's.
        match take_cluster_proxy_headers(request.headers_mut()) {
            Some(authorization) => request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization),
            None => request.headers_mut().remove(header::AUTHORIZATION),
        };
        let port = match self.directory.port(&target).await {
            Ok(port) => port,
            Err(err) => {
                self.metrics.upstream_error("exit", "lookup");
                tracing::warn!(%peer, error = %err, "cannot locate the target");
                return lookup_response(&err);
            }
        };
        let Some(to) = destination(&target, port, request.uri()) else {
            return text(StatusCode::BAD_REQUEST, "invalid path\n");
        };
        match self.upstream.forward(request, to, peer, "http").await {
            Ok(response) => response,
            Err(err) => {
                self.metrics.upstream_error("exit", err.reason());
                tracing::warn!(%peer, service = %host(&target), error = %err, "forwarding failed");
                err.response()
            }
        }
    }
}
