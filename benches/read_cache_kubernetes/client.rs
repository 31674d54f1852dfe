//! The bench's own HTTP/1.1 client: HTTPS to the apiserver (trusting the
//! plane's CA), plain HTTP to the cache, one pooled connection reused for
//! every request to one place, as a controller's client would. It checks
//! the first answers and times sequential requests, each until its whole
//! body has arrived.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bench_support::procs;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

/// A whole response.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Bounds one request, body included: a direct LIST takes a few hundred
/// milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpClient {
    /// Trusts `ca_pem` for https; plain http works too.
    pub fn new(ca_pem: &str) -> anyhow::Result<HttpClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("the plane's CA is PEM")?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        // HTTP/1.1 only, like wrk: the comparison is about the server, not
        // about HTTP/2.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// One GET of `url`, the whole answer read.
    pub async fn get(&self, url: &str, headers: &[(String, String)]) -> anyhow::Result<Answer> {
        let mut request = Request::get(url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Empty::new())?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("GET {url}: no whole answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("GET {url}"))
    }

    /// One GET of `url`, its body read and counted but not kept: gathering
    /// megabytes into one buffer would time the bench's copying too.
    async fn drain(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> anyhow::Result<(StatusCode, usize)> {
        let mut request = Request::get(url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Empty::new())?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            let mut bytes = 0;
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    bytes += data.len();
                }
            }
            anyhow::Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("GET {url}: no whole answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("GET {url}"))
    }

    /// Up to `count` GETs one after another, for at most `budget`: how
    /// long each took. Every answer must be a 200 of about `expected_bytes`
    /// (a LIST's bytes vary only in its resourceVersion), else the figures
    /// would time something else.
    pub async fn sequential(
        &self,
        url: &str,
        headers: &[(String, String)],
        count: usize,
        budget: Duration,
        expected_bytes: usize,
    ) -> anyhow::Result<Vec<Duration>> {
        let started = Instant::now();
        let mut took = Vec::with_capacity(count);
        while took.len() < count && started.elapsed() < budget {
            procs::check_interrupted()?;
            let sent = Instant::now();
            let (status, bytes) = self.drain(url, headers).await?;
            took.push(sent.elapsed());
            if status != StatusCode::OK || !about(bytes, expected_bytes) {
                bail!(
                    "answer {} was {status} with {bytes} bytes, not 200 with about {expected_bytes}",
                    took.len(),
                );
            }
        }
        Ok(took)
    }
}

/// Within 1% of each other.
pub fn about(a: usize, b: usize) -> bool {
    a.abs_diff(b) * 100 <= a.max(b)
}
