//! The exit role, on the managed cluster: verify the relay caller, strip
//! every `Cluster-Proxy-*` header, restore the caller's `Authorization`, and
//! forward to the target Service named by the routing headers.

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::{
    caller::{Callers, Verdict},
    directory::{Directory, LookupError, host},
    forward::Upstream,
    headers::{self, bearer_token, take_cluster_proxy_headers},
    metrics::RelayMetrics,
    target::{self, Target},
};
use crate::http_server::{Body, text};

pub struct Exit {
    pub callers: Callers,
    pub directory: Directory,
    pub upstream: Upstream,
    pub metrics: RelayMetrics,
}

fn header_str<'a>(request: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
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

impl Exit {
    pub async fn handle(&self, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let Some(token) = request
            .headers()
            .get(headers::RELAY_AUTHORIZATION)
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
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let target: Target = match target::from_headers(
            header_str(&request, headers::PROTO),
            header_str(&request, headers::NAMESPACE),
            header_str(&request, headers::SERVICE),
            header_str(&request, headers::PORT),
            &path_and_query,
        ) {
            Ok(target) => target,
            Err(err) => return text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        };
        let authorization = take_cluster_proxy_headers(request.headers_mut());
        request.headers_mut().remove(header::AUTHORIZATION);
        if let Some(authorization) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization);
        }
        let port = match self.directory.port(&target).await {
            Ok(port) => port,
            Err(err) => {
                self.metrics.upstream_error("exit", "lookup");
                tracing::warn!(%peer, error = %err, "cannot locate the target");
                return lookup_response(&err);
            }
        };
        let uri = match format!(
            "{}://{}:{port}{}",
            target.scheme.as_str(),
            host(&target),
            target.path_and_query
        )
        .parse()
        {
            Ok(uri) => uri,
            Err(_) => return text(StatusCode::BAD_REQUEST, "invalid path\n"),
        };
        match self.upstream.forward(request, uri, peer, "http").await {
            Ok(response) => response,
            Err(err) => {
                self.metrics.upstream_error("exit", err.reason());
                tracing::warn!(%peer, service = %host(&target), error = %err, "forwarding failed");
                err.response()
            }
        }
    }
}
