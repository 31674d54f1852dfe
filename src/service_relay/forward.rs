//! Forwarding one request upstream and its response back: hop-by-hop
//! headers removed, `X-Forwarded-*` set, bodies streamed both ways, protocol
//! upgrades spliced, a timeout on the response head, and upstream failures
//! mapped to a gateway status once, here.

use std::{io::BufReader, net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use rustls::{ClientConfig, RootCertStore};

use super::{
    directory::Resolver,
    headers::{add_forwarded, is_upgrade, remove_hop_by_hop},
};
use crate::http_server::{Body, BoxError, text};

/// Why a client for an upstream cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA bundle {0}: no PEM certificates in it")]
    NoCertificates(String),
    #[error("CA bundle {0}: {1}")]
    Read(String, String),
    #[error("TLS server name {0:?} is not a valid name")]
    ServerName(String),
    #[error("insecure-skip-tls-verify is not supported; give the server's CA")]
    Insecure,
}

/// Trust anchors from PEM bytes; `what` names the source in errors.
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(pem)) {
        let cert = cert.map_err(|err| TlsError::Read(what.to_owned(), err.to_string()))?;
        roots
            .add(cert)
            .map_err(|err| TlsError::Read(what.to_owned(), err.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificates(what.to_owned()));
    }
    Ok(roots)
}

/// A pooled HTTP/1.1 client for http and https upstreams.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector<Resolver>>, Body>,
    response_timeout: Duration,
    max_body_bytes: Option<u64>,
}

/// How upstream exchanges are bounded (from the flags).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Largest request body accepted; `None` for no limit.
    pub max_body_bytes: Option<u64>,
}

/// How to reach upstreams.
pub struct UpstreamConfig {
    pub roots: RootCertStore,
    /// Verify the server as this name instead of the URI's host.
    pub server_name: Option<String>,
    pub resolver: Resolver,
    pub limits: Limits,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Self, TlsError> {
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|err| TlsError::Read("TLS".into(), err.to_string()))?
                .with_root_certificates(config.roots)
                .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(config.resolver);
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.limits.connect_timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match config.server_name {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        // HTTP/1.1 only: upgrades (WebSocket, SPDY) are not possible over h2.
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self {
            client,
            response_timeout: config.limits.response_timeout,
            max_body_bytes: config.limits.max_body_bytes,
        })
    }

    /// An upstream for the managed apiserver of `kubeconfig`: its CA (data
    /// or file) and TLS server name, looked up by DNS.
    pub fn for_kubeconfig(
        kubeconfig: &crate::managed_kubeconfig::ManagedKubeconfig,
        limits: Limits,
    ) -> Result<Self, String> {
        use base64::Engine as _;
        let cluster = kubeconfig.cluster().cloned().unwrap_or_default();
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Err(TlsError::Insecure.to_string());
        }
        let pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|err| format!("certificate-authority-data: {err}"))?,
            (None, Some(path)) => {
                std::fs::read(path).map_err(|err| format!("certificate-authority {path}: {err}"))?
            }
            (None, None) => return Err("the managed kubeconfig has no CA".into()),
        };
        let roots =
            roots_from_pem(&pem, "the managed kubeconfig's CA").map_err(|err| err.to_string())?;
        Self::new(UpstreamConfig {
            roots,
            server_name: cluster.tls_server_name.clone(),
            resolver: super::directory::Directory::new(
                None,
                super::directory::Resolution::Dns,
                Default::default(),
                Duration::from_secs(5),
            )
            .resolver(),
            limits,
        })
        .map_err(|err| err.to_string())
    }

    /// Sends a request of our own (its URI absolute) and returns the
    /// upstream's response, within the response timeout.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, ForwardError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Err(err)) => Err(ForwardError::Upstream(err)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Sends `request` to `uri` and returns the response to give the client.
    /// `proto` is the scheme the client used, for `X-Forwarded-Proto`.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        uri: Uri,
        peer: SocketAddr,
        proto: &str,
    ) -> Result<Response<Body>, ForwardError> {
        if let Some(limit) = self.max_body_bytes {
            let declared = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|length| length > limit) {
                return Err(ForwardError::TooLarge);
            }
        }
        let upgrade = is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        add_forwarded(&mut parts.headers, peer.ip(), proto);
        // The client sets Host from the URI.
        parts.headers.remove(header::HOST);
        if let Some(authority) = uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let body = body.map_err(|err| Box::new(err) as BoxError);
        // A body without a declared length is cut off at the limit.
        let body = match self.max_body_bytes {
            Some(limit) => {
                http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
                    .boxed()
            }
            None => body.boxed(),
        };
        let request = Request::from_parts(parts, body);
        let mut response =
            match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
                Err(_) => return Err(ForwardError::Timeout),
                Ok(Err(err)) => return Err(ForwardError::Upstream(err)),
                Ok(Ok(response)) => response,
            };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let (mut client, mut upstream) =
                            (TokioIo::new(client), TokioIo::new(upstream));
                        if let Err(err) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(error = %err, "upgraded connection ended with an error");
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "upgrade failed"),
                }
            });
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, crate::http_server::empty()));
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        // Our side of the exchange is ours: HTTP/1.1 (or h2) to the client,
        // whatever the upstream spoke.
        parts.version = http::Version::default();
        Ok(Response::from_parts(
            parts,
            body.map_err(|err| Box::new(err) as BoxError).boxed(),
        ))
    }
}

/// An upstream failure, before any response byte reached the client.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the request body is larger than the limit")]
    TooLarge,
    #[error("no response head within the timeout")]
    Timeout,
    #[error("upstream: {0}")]
    Upstream(#[source] hyper_util::client::legacy::Error),
}

impl ForwardError {
    /// The `reason` label of the upstream error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::TooLarge => "too_large",
            ForwardError::Timeout => "timeout",
            ForwardError::Upstream(_) => "connect",
        }
    }

    /// The status the client gets; the detail goes to the log only.
    pub fn response(&self) -> Response<Body> {
        match self {
            ForwardError::TooLarge => {
                text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
            }
            ForwardError::Timeout => text(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the upstream did not answer in time\n",
            ),
            ForwardError::Upstream(_) => text(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the upstream could not be reached\n",
            ),
        }
    }
}
