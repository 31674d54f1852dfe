//! The one upstream HTTP/1.1 client ([`Upstream`]), on the pool. It
//! forwards a client's request and its response back (hop-by-hop headers
//! removed, `X-Forwarded-*` set, bodies streamed both ways, protocol
//! upgrades spliced) or sends a request of a component's own as it is; a
//! timeout bounds the response head, and upstream failures are typed
//! ([`ForwardError`]) and mapped to a gateway status once, here.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header, uri::PathAndQuery};
use http_body_util::BodyExt;
use hyper::{
    body::{Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use tokio::sync::oneshot;

use super::{
    directory::Directory,
    headers::{add_forwarded, is_upgrade, remove_hop_by_hop},
    pool::{ConnectError, Connector, IdleState, Origin, Pool, PoolLimits, Pooled},
};
use crate::{
    http_server::{Body, BoxError, text},
    tls::{TlsError, client_config, roots_from_pem},
};

/// Why the managed kubeconfig gives no usable upstream.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("the managed kubeconfig has no CA")]
    NoCa,
    #[error("certificate-authority-data: {0}")]
    CaData(#[source] base64::DecodeError),
    #[error("certificate-authority {0}: {1}")]
    CaFile(String, #[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A pooled HTTP/1.1 client for http and https upstreams; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    pool: Pool<SendRequest<RequestBody>>,
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
    /// How many idle connections are kept, and how long.
    pub pool: PoolLimits,
}

/// How to reach upstreams.
pub struct UpstreamConfig {
    pub roots: RootCertStore,
    /// Verify the server as this name instead of the URI's host.
    pub server_name: Option<String>,
    /// Resolves the names of upstream hosts.
    pub directory: Directory,
    pub limits: Limits,
}

/// Where a request goes: the origin to connect to and the request target
/// (path and query, origin-form) to ask it for.
pub struct Destination {
    pub origin: Origin,
    pub path: Uri,
}

impl Destination {
    /// From an absolute http or https URI; `None` for any other.
    pub fn from_uri(uri: Uri) -> Option<Destination> {
        let parts = uri.into_parts();
        let https = match parts.scheme.as_ref().map(http::uri::Scheme::as_str) {
            Some("https") => true,
            Some("http") => false,
            _ => return None,
        };
        let path = Uri::from(
            parts
                .path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Some(Destination {
            origin: Origin {
                https,
                authority: parts.authority?,
            },
            path,
        })
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Self, TlsError> {
        let tls = client_config(config.roots)?;
        let server_name = match config.server_name {
            Some(name) => Some(
                rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name))?,
            ),
            None => None,
        };
        let pool = Pool::new(
            Connector {
                tls: Arc::new(tls),
                server_name,
                directory: config.directory,
                connect_timeout: config.limits.connect_timeout,
            },
            config.limits.pool,
        );
        Ok(Self {
            pool,
            response_timeout: config.limits.response_timeout,
            max_body_bytes: config.limits.max_body_bytes,
        })
    }

    /// An upstream for the managed apiserver of `kubeconfig`: its CA (data
    /// or file) and TLS server name, looked up by DNS.
    pub fn for_kubeconfig(
        kubeconfig: &crate::managed_kubeconfig::ManagedKubeconfig,
        limits: Limits,
    ) -> Result<Self, KubeconfigError> {
        use base64::Engine as _;
        let cluster = kubeconfig.cluster().cloned().unwrap_or_default();
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Err(TlsError::Insecure.into());
        }
        let pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(KubeconfigError::CaData)?,
            (None, Some(path)) => {
                std::fs::read(path).map_err(|err| KubeconfigError::CaFile(path.clone(), err))?
            }
            (None, None) => return Err(KubeconfigError::NoCa),
        };
        let roots = roots_from_pem(&pem, "the managed kubeconfig's CA")?;
        Ok(Self::new(UpstreamConfig {
            roots,
            server_name: cluster.tls_server_name.clone(),
            directory: Directory::dns(Default::default()),
            limits,
        })?)
    }

    /// Sends a request of our own (its URI absolute, its body whole) and
    /// returns the upstream's response, within the response timeout.
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response<Incoming>, ForwardError> {
        self.request(request.map(RequestBody::whole)).await
    }

    /// Sends a request as it is (its URI absolute; `Host` set from it) and
    /// returns the upstream's response head, within the response timeout
    /// counted from the start. No header is added or removed: that is the
    /// caller's, unlike [`Upstream::forward`].
    pub async fn request(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (mut parts, body) = request.into_parts();
        let Some(to) = Destination::from_uri(parts.uri.clone()) else {
            return Err(ForwardError::BadTarget);
        };
        if let Ok(host) = HeaderValue::from_str(to.origin.authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = to.path;
        parts.version = http::Version::HTTP_11;
        let request = Request::from_parts(parts, body);
        match tokio::time::timeout(self.response_timeout, self.exchange(&to.origin, request)).await
        {
            Err(_) => Err(ForwardError::Timeout),
            Ok(result) => result,
        }
    }

    /// How long an upstream has to begin its response.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends `request` to `uri` and returns the response to give the client.
    /// Sends `request` to `to` and returns the response to give the client.
    /// `proto` is the scheme the client used, for `X-Forwarded-Proto`.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        to: Destination,
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
        // Host names the upstream, as a client of it would.
        if let Ok(host) = HeaderValue::from_str(to.origin.authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = to.path;
        parts.version = http::Version::HTTP_11;
        // A body without a declared length is cut off at the limit.
        let (sent, body_sent) = oneshot::channel();
        let body = RequestBody {
            inner: Source::Client(body),
            remaining: self.max_body_bytes,
            sent: Some(sent),
        };
        let request = Request::from_parts(parts, body);
        let exchange = self.exchange(&to.origin, request);
        // The upstream's time to answer runs from the end of the request
        // body (or from when it stopped taking it), so a long upload is not
        // cut off halfway.
        let timeout = self.response_timeout;
        let deadline = async move {
            let _ = body_sent.await;
            tokio::time::sleep(timeout).await;
        };
        let mut response = tokio::select! {
            result = exchange => result?,
            () = deadline => return Err(ForwardError::Timeout),
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

    /// One request on a pooled connection, or on a new one. A pooled
    /// connection the upstream closed before taking the request (a race
    /// with its keep-alive timeout) hands the request back, and it goes on
    /// the next connection instead. One it closed after taking the request
    /// but before answering gets it again on a new connection when that is
    /// safe: an idempotent method (RFC 9110 section 9.2.2) and no body.
    async fn exchange(
        &self,
        origin: &Origin,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut fresh = false;
        loop {
            let (mut sender, pooled) = match self.pool.idle(origin).filter(|_| !fresh) {
                Some(sender) => (sender, true),
                // Boxed: the connect future (TLS handshake included) is
                // large, and every request would otherwise move it around.
                None => (Box::pin(self.connect(origin)).await?, false),
            };
            let again = pooled.then(|| replayable(&request)).flatten();
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // After a switch of protocols the connection is the
                    // client's; otherwise it can serve another request once
                    // this response has ended.
                    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                        self.pool.put(origin, sender);
                    }
                    return Ok(response);
                }
                Err(mut err) => match (err.take_message(), again) {
                    (Some(unsent), _) if pooled => request = unsent,
                    (None, Some(copy)) if err.error().is_incomplete_message() => {
                        tracing::debug!(origin = %origin.authority, "pooled connection closed unanswered; sending again");
                        request = copy;
                        fresh = true;
                    }
                    _ => {
                        let err = err.into_error();
                        // Our own body limit, not the upstream's failure.
                        let too_large = std::error::Error::source(&err)
                            .is_some_and(|source| source.is::<BodyTooLarge>());
                        return Err(if too_large {
                            ForwardError::TooLarge
                        } else {
                            ForwardError::Upstream(err)
                        });
                    }
                },
            }
        }
    }
}

/// A copy of `request` to send again, when that is safe: an idempotent
/// method, no body, no upgrade.
fn replayable(request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    use hyper::body::Body as _;
    if !super::headers::is_idempotent(request.method().as_str())
        || !request.body().is_end_stream()
        || is_upgrade(request.headers())
    {
        return None;
    }
    let mut copy = Request::new(RequestBody::whole(Bytes::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

impl Upstream {
    /// How this upstream connects (for another pool to the same places).
    pub fn connector(&self) -> &Connector {
        self.pool.connector()
    }

    /// A new connection to `origin`, its HTTP/1.1 on a task of its own,
    /// with upgrades.
    async fn connect(&self, origin: &Origin) -> Result<SendRequest<RequestBody>, ConnectError> {
        let stream = self.pool.connector().connect(origin).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| ConnectError::Handshake(origin.authority.host().to_owned(), err))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Pooled for SendRequest<RequestBody> {
    fn idle_state(&self) -> IdleState {
        if self.is_ready() {
            IdleState::Ready
        } else if self.is_closed() {
            IdleState::Closed
        } else {
            IdleState::Busy
        }
    }
}

/// The upstream for the current managed kubeconfig, built once per
/// kubeconfig (by its hash) and reused until the kubeconfig changes, so a
/// rotated token or a new CA needs no restart.
pub struct KubeconfigUpstream {
    limits: Limits,
    slot: std::sync::Mutex<Option<(String, Upstream)>>,
}

impl KubeconfigUpstream {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            slot: std::sync::Mutex::new(None),
        }
    }

    /// The upstream for `kubeconfig`; an error says why it is unusable.
    pub fn get(
        &self,
        kubeconfig: &crate::managed_kubeconfig::ManagedKubeconfig,
    ) -> Result<Upstream, KubeconfigError> {
        let mut slot = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((hash, upstream)) = slot.as_ref()
            && *hash == kubeconfig.hash
        {
            return Ok(upstream.clone());
        }
        let upstream = Upstream::for_kubeconfig(kubeconfig, self.limits)?;
        *slot = Some((kubeconfig.hash.clone(), upstream.clone()));
        Ok(upstream)
    }
}

/// A request body on its way upstream: the client's, streamed and cut off
/// with an error past the body limit when it has one, or one of our own
/// (a review, a delivery), whole.
pub struct RequestBody {
    inner: Source,
    remaining: Option<u64>,
    /// Told (or dropped) once the body has ended.
    sent: Option<oneshot::Sender<()>>,
}

enum Source {
    Client(Incoming),
    /// `None` once sent.
    Whole(Option<Bytes>),
}

impl RequestBody {
    /// A body of our own.
    pub fn whole(bytes: Bytes) -> Self {
        Self {
            inner: Source::Whole(Some(bytes).filter(|b| !b.is_empty())),
            remaining: None,
            sent: None,
        }
    }

    /// A body received from a client, streamed on as it is, unlimited.
    pub fn streamed(body: Incoming) -> Self {
        Self {
            inner: Source::Client(body),
            remaining: None,
            sent: None,
        }
    }

    fn ended(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

/// A request body went past `--max-request-body-bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the limit")]
struct BodyTooLarge;

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let inner = match &mut this.inner {
            Source::Whole(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Client(inner) => inner,
        };
        match ready!(Pin::new(&mut *inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(remaining), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    let length = data.len() as u64;
                    if length > *remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= length;
                }
                if inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(Box::new(err)))),
            None => {
                this.ended();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Client(inner) => inner.is_end_stream(),
            Source::Whole(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Client(inner) => inner.size_hint(),
            Source::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
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
    Connect(#[from] ConnectError),
    #[error("upstream: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("not an absolute http or https URL")]
    BadTarget,
    #[error("upstream: {0}")]
    Io(#[source] std::io::Error),
    #[error("upstream broke HTTP/1.1: {0}")]
    Protocol(&'static str),
    #[error("the client sent a request body with invalid chunked framing")]
    BadRequestBody,
}

impl ForwardError {
    /// The `reason` label of the upstream error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::TooLarge => "too_large",
            ForwardError::Timeout => "timeout",
            ForwardError::Connect(_) | ForwardError::Upstream(_) | ForwardError::Io(_) => "connect",
            ForwardError::BadTarget => "bad_target",
            ForwardError::Protocol(_) => "protocol",
            ForwardError::BadRequestBody => "bad_request_body",
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
            ForwardError::Connect(_) | ForwardError::Upstream(_) | ForwardError::Io(_) => text(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the upstream could not be reached\n",
            ),
            ForwardError::BadTarget | ForwardError::Protocol(_) => {
                text(StatusCode::BAD_GATEWAY, "bad gateway\n")
            }
            ForwardError::BadRequestBody => text(
                StatusCode::BAD_REQUEST,
                "bad request: invalid chunked request body\n",
            ),
        }
    }
}
