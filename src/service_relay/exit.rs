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
    /// For what hyper serves.
    pub upstream: Upstream,
    /// For the relay's own HTTP/1.1 path.
    pub h1: super::h1::Upstream,
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

/// The origin of `target` on `port`: `<name>.<namespace>.svc:<port>`.
pub fn origin(target: &Target, port: u16) -> Option<Origin> {
    let mut authority = host(target);
    // Writing to a String cannot fail.
    let _ = write!(authority, ":{port}");
    Some(Origin {
        https: target.scheme == Scheme::Https,
        authority: Authority::from_maybe_shared(Bytes::from(authority)).ok()?,
    })
}

/// Where the request for `target` goes, asked for the path and query the
/// request came with.
fn destination(target: &Target, port: u16, uri: &Uri) -> Option<Destination> {
    let path = match uri.path_and_query() {
        // The request's own target, shared rather than copied.
        Some(path) if path.as_str() == target.path_and_query => Uri::from(path.clone()),
        _ => target.path_and_query.parse().ok()?,
    };
    Some(Destination {
        origin: origin(target, port)?,
        path,
    })
}

/// The routing headers of a request at the exit, however it was read.
#[derive(Default)]
pub struct Routing<'a> {
    pub relay_authorization: Option<&'a [u8]>,
    pub proto: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub service: Option<&'a str>,
    pub port: Option<&'a str>,
}

impl Exit {
    /// Checks the relay caller and finds where the request goes; an error
    /// is the response to give instead.
    pub async fn admit(
        &self,
        routing: &Routing<'_>,
        path_and_query: &str,
        peer: SocketAddr,
    ) -> Result<(Target, u16), Response<Body>> {
        let Some(token) = routing.relay_authorization.and_then(bearer_token) else {
            self.metrics.rejected("no_credential");
            return Err(unauthorized("missing relay credential"));
        };
        match self.callers.verify(token).await {
            Ok(Verdict::Allowed(_)) => {}
            Ok(Verdict::NotAllowed(user)) => {
                self.metrics.rejected("not_allowed");
                tracing::warn!(%peer, caller = %user, "refused: not an allowed caller");
                return Err(text(
                    StatusCode::FORBIDDEN,
                    "forbidden: not an allowed relay caller\n",
                ));
            }
            Ok(Verdict::Unauthenticated) => {
                self.metrics.rejected("unauthenticated");
                return Err(unauthorized("invalid relay credential"));
            }
            Err(err) => {
                self.metrics.rejected("review_failed");
                tracing::warn!(%peer, error = %err, "cannot verify the relay caller");
                return Err(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot verify the relay caller now\n",
                ));
            }
        }
        let target = target::from_headers(
            routing.proto,
            routing.namespace,
            routing.service,
            routing.port,
            path_and_query,
        )
        .map_err(|err| text(StatusCode::BAD_REQUEST, format!("{err}\n")))?;
        match self.directory.port(&target).await {
            Ok(port) => Ok((target, port)),
            Err(err) => {
                self.metrics.upstream_error("exit", "lookup");
                tracing::warn!(%peer, error = %err, "cannot locate the target");
                Err(lookup_response(&err))
            }
        }
    }

    pub async fn handle(&self, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let routing = Routing {
            relay_authorization: request
                .headers()
                .get(&headers::RELAY_AUTHORIZATION_NAME)
                .map(HeaderValue::as_bytes),
            proto: header_str(&request, &headers::PROTO_NAME),
            namespace: header_str(&request, &headers::NAMESPACE_NAME),
            service: header_str(&request, &headers::SERVICE_NAME),
            port: header_str(&request, &headers::PORT_NAME),
        };
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let (target, port) = match self.admit(&routing, path, peer).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
        // The caller's own credential, or none: never the relay's.
        match take_cluster_proxy_headers(request.headers_mut()) {
            Some(authorization) => request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization),
            None => request.headers_mut().remove(header::AUTHORIZATION),
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
