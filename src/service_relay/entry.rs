//! The entry role, on the hosting cluster: take kube-style service-proxy
//! paths and send them through the managed apiserver's `services/proxy` to
//! the exit relay, authenticated with the provisioned token (read per
//! request from the followed kubeconfig, so rotation needs no restart). The
//! caller's `Authorization` travels in `Cluster-Proxy-Authorization`. In
//! direct mode the entry forwards to the Service itself.

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use secrecy::ExposeSecret;

use super::{
    directory::{Directory, host},
    exit::lookup_response,
    forward::{Destination, KubeconfigUpstream, Upstream},
    headers::{self, take_cluster_proxy_headers},
    metrics::RelayMetrics,
    target::{self, Target},
};
use crate::{
    http_server::{Body, text},
    managed_kubeconfig::Current,
};

/// Where the exit relay's Service is on the managed cluster.
#[derive(Debug, Clone)]
pub struct ExitService {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub scheme: String,
}

// One per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Mode {
    /// Through the managed apiserver to the exit relay.
    Relayed {
        current: Current,
        exit: ExitService,
        /// The client for the current kubeconfig.
        upstream: KubeconfigUpstream,
    },
    /// Straight to the Service.
    Direct {
        directory: Directory,
        upstream: Upstream,
    },
}

pub struct Entry {
    pub mode: Mode,
    pub metrics: RelayMetrics,
}

/// Sets a header; false if the value cannot be a header value.
fn set(request: &mut Request<Incoming>, name: &'static str, value: &str) -> bool {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            request.headers_mut().insert(name, value);
            true
        }
        Err(_) => false,
    }
}

impl Entry {
    pub async fn handle(&self, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let target: Target = match target::parse_path(request.uri().path(), request.uri().query()) {
            Ok(target) => target,
            Err(err) => return text(StatusCode::NOT_FOUND, format!("{err}\n")),
        };
        // Whatever a client sent in these headers is not to be trusted.
        take_cluster_proxy_headers(request.headers_mut());
        match &self.mode {
            Mode::Direct {
                directory,
                upstream,
            } => {
                let port = match directory.port(&target).await {
                    Ok(port) => port,
                    Err(err) => {
                        self.metrics.upstream_error("entry", "lookup");
                        return lookup_response(&err);
                    }
                };
                let uri = format!(
                    "{}://{}:{port}{}",
                    target.scheme.as_str(),
                    host(&target),
                    target.path_and_query
                );
                self.send(upstream, request, uri, peer).await
            }
            Mode::Relayed {
                current,
                exit,
                upstream,
            } => {
                let Some(kubeconfig) = current.borrow().clone() else {
                    self.metrics.upstream_error("entry", "no_kubeconfig");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no managed kubeconfig yet\n",
                    );
                };
                let Some(token) = kubeconfig.bearer_token() else {
                    self.metrics.upstream_error("entry", "no_kubeconfig");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the managed kubeconfig has no token\n",
                    );
                };
                let client = match upstream.get(&kubeconfig) {
                    Ok(client) => client,
                    Err(err) => {
                        self.metrics.upstream_error("entry", "no_kubeconfig");
                        tracing::warn!(error = %err, "cannot use the managed kubeconfig");
                        return text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the managed kubeconfig is unusable\n",
                        );
                    }
                };
                let bearer = format!("Bearer {}", token.expose_secret());
                let original = request.headers_mut().remove(header::AUTHORIZATION);
                if let Some(original) = original {
                    request
                        .headers_mut()
                        .insert(headers::AUTHORIZATION, original);
                }
                let port = target
                    .port
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                for (name, value) in [
                    ("authorization", bearer.as_str()),
                    (headers::RELAY_AUTHORIZATION, bearer.as_str()),
                    (headers::PROTO, target.scheme.as_str()),
                    (headers::NAMESPACE, target.namespace.as_str()),
                    (headers::SERVICE, target.name.as_str()),
                    (headers::PORT, port.as_str()),
                ] {
                    if !set(&mut request, name, value) {
                        return text(StatusCode::BAD_REQUEST, "invalid header value\n");
                    }
                }
                let server = kubeconfig.server.to_string();
                let uri = format!(
                    "{}/api/v1/namespaces/{}/services/{}:{}:{}/proxy{}",
                    server.trim_end_matches('/'),
                    exit.namespace,
                    exit.scheme,
                    exit.name,
                    exit.port,
                    target.path_and_query
                );
                self.send(&client, request, uri, peer).await
            }
        }
    }

    async fn send(
        &self,
        upstream: &Upstream,
        request: Request<Incoming>,
        uri: String,
        peer: SocketAddr,
    ) -> Response<Body> {
        let Some(to) = uri.parse().ok().and_then(Destination::from_uri) else {
            return text(StatusCode::BAD_REQUEST, "invalid path\n");
        };
        match upstream.forward(request, to, peer, "http").await {
            Ok(response) => response,
            Err(err) => {
                self.metrics.upstream_error("entry", err.reason());
                tracing::warn!(%peer, error = %err, "forwarding failed");
                err.response()
            }
        }
    }
}
