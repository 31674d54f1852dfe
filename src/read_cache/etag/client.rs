//! The ETag profile's upstream client: pooled HTTP/1.1 over plain TCP or
//! rustls (system trust anchors plus `--upstream-ca-file`), a connect
//! timeout and a timeout on the response head. It never follows redirects:
//! a `Location` is the client's to follow (rewritten to point back at the
//! cache when it names the same upstream), so a redirect cannot lead the
//! cache off its allow-list.

use std::{io::BufReader, path::PathBuf, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{ClientConfig, RootCertStore};

use crate::http_server::Body;

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--upstream-ca-file {0}: {1}")]
    CaFile(String, String),
    #[error("--upstream-ca-file {0}: no PEM certificates in it")]
    NoCertificates(String),
    #[error("no trust anchors for https upstreams: the system has none; give --upstream-ca-file")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// An upstream failure before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no response head within the timeout")]
    Timeout,
    #[error("upstream: {0}")]
    Upstream(#[source] hyper_util::client::legacy::Error),
    #[error("upstream body: {0}")]
    Body(String),
}

impl FetchError {
    /// A short label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Upstream(_) => "connect",
            FetchError::Body(_) => "body",
        }
    }
}

/// A pooled client for the allowed upstreams.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    response_timeout: Duration,
}

/// Trust anchors: the system's, plus every PEM file given. With `need`
/// false (no https upstream), an empty store is fine.
pub fn roots(ca_files: &[PathBuf], need: bool) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: the files given (or the
    // rest of the system store) may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for path in ca_files {
        let what = path.display().to_string();
        let pem =
            std::fs::read(path).map_err(|e| ClientError::CaFile(what.clone(), e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut BufReader::new(pem.as_slice())) {
            let cert = cert.map_err(|e| ClientError::CaFile(what.clone(), e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::CaFile(what.clone(), e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::NoCertificates(what));
        }
    }
    if need && roots.is_empty() {
        return Err(ClientError::NoRoots);
    }
    Ok(roots)
}

impl UpstreamClient {
    pub fn new(
        roots: RootCertStore,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self {
            client,
            response_timeout,
        })
    }

    /// The bound on a response head, also used for buffering whole bodies.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends `request` and waits for the response head, within the
    /// response timeout (the connect timeout is the connector's).
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, FetchError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Err(_) => Err(FetchError::Timeout),
            Ok(Err(err)) => Err(FetchError::Upstream(err)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}
