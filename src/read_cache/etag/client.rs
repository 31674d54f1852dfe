//! The ETag profile's upstream client: the shared pooled client
//! ([`crate::upstream::forward::Upstream`]) with the trust anchors of
//! [`crate::tls`] (the system's plus `--upstream-ca-file`), a connect
//! timeout and a timeout on the response head. It never follows redirects:
//! a `Location` is the client's to follow (rewritten to point back at the
//! cache when it names the same upstream), so a redirect cannot lead the
//! cache off its allow-list.

use std::path::PathBuf;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::{
    read_cache::Common,
    tls::{TlsError, trust_roots},
    upstream::{
        directory::Directory,
        forward::{ForwardError, Limits, RequestBody, Upstream, UpstreamConfig},
    },
};

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("no trust anchors for https upstreams: the system has none; give --upstream-ca-file")]
    NoRoots,
}

/// An upstream failure before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no response head within the timeout")]
    Timeout,
    #[error(transparent)]
    Upstream(ForwardError),
    #[error("upstream body: {0}")]
    Body(String),
}

impl FetchError {
    /// A short label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Upstream(err) => err.reason(),
            FetchError::Body(_) => "body",
        }
    }
}

/// A pooled client for the allowed upstreams; cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    upstream: Upstream,
}

impl UpstreamClient {
    /// Trusts the system's anchors plus `ca_files`; with `need_tls` (an
    /// https upstream is allowed), refuses to start with none at all.
    pub fn new(ca_files: &[PathBuf], need_tls: bool, common: &Common) -> Result<Self, ClientError> {
        let roots = trust_roots(ca_files, "--upstream-ca-file")?;
        if need_tls && roots.is_empty() {
            return Err(ClientError::NoRoots);
        }
        let upstream = Upstream::new(UpstreamConfig {
            roots,
            server_name: None,
            directory: Directory::dns(Default::default()),
            limits: Limits {
                connect_timeout: common.connect_timeout,
                response_timeout: common.response_timeout,
                max_body_bytes: None,
                pool: common.pool,
            },
        })?;
        Ok(Self { upstream })
    }

    /// The bound on a response head, also used for buffering whole bodies.
    pub fn response_timeout(&self) -> std::time::Duration {
        self.upstream.response_timeout()
    }

    /// Sends `request` (its URI absolute) and waits for the response head,
    /// within the response timeout.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, FetchError> {
        self.upstream
            .request(request)
            .await
            .map_err(|err| match err {
                ForwardError::Timeout => FetchError::Timeout,
                err => FetchError::Upstream(err),
            })
    }
}
