//! The HTTP server loop shared by the HTTP components: accept with a
//! connection cap, serve HTTP/1.1 and HTTP/2 (with upgrades) through one
//! handler, log and go on when a connection fails, and drain on shutdown:
//! stop accepting, let requests in flight finish until the grace period ends.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
};

use crate::{net::Stream, shutdown::Shutdown};

/// Errors of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response or request body of any origin.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A plain-text response.
pub fn text(status: http::StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(body.into()))
        .expect("static response parts are valid")
}

/// What serves each request.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Serves one client connection. By default hyper serves all of it; a
    /// handler with an HTTP/1.1 path of its own serves the requests it can
    /// and hands the rest of the connection to hyper with
    /// [`Connection::hand_over`].
    fn serve_connection(
        self: Arc<Self>,
        connection: Connection<Self>,
    ) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        connection.hand_over(Vec::new())
    }
}

/// A stream with bytes already read from it put back in front.
struct Rewind {
    read: Vec<u8>,
    at: usize,
    stream: Stream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// One accepted client connection (after the TLS handshake, with TLS) and
/// what serving it needs.
pub struct Connection<H> {
    pub stream: Stream,
    pub peer: SocketAddr,
    /// Time allowed for each request head.
    pub header_timeout: Duration,
    pub shutdown: Shutdown,
    handler: Arc<H>,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
}

impl<H: Handler> Connection<H> {
    /// Serves the rest of the connection with hyper, `read` (bytes already
    /// read from it and not used) first; graceful shutdown applies.
    pub async fn hand_over(self, read: Vec<u8>) {
        let Connection {
            stream,
            peer,
            handler,
            builder,
            watcher,
            ..
        } = self;
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request, peer).await) }
        });
        let io = TokioIo::new(Rewind {
            read,
            at: 0,
            stream,
        });
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }
}

/// The serving flags every HTTP component shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Most client connections served at once; further ones are closed.
    #[arg(long, env = "CLUSTER_RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Time a client has to send a request head (and, with TLS, to finish
    /// the handshake).
    #[arg(long, env = "CLUSTER_RELAY_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl ServeArgs {
    /// Validates the flags (the certificate included) into a config; call
    /// it before binding anything.
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        if self.max_connections == 0 {
            anyhow::bail!("--max-connections must be at least 1");
        }
        Ok(ServerConfig {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            tls: self.tls.acceptor()?,
        })
    }
}

/// Serving limits, and TLS when configured.
#[derive(Clone)]
pub struct ServerConfig {
    pub max_connections: usize,
    /// Time allowed to send the request head (and, with TLS, to finish the
    /// handshake).
    pub header_timeout: Duration,
    /// Serve HTTPS with this; plain HTTP when `None`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves until shutdown drains it; returns when open connections have
/// finished or shutdown aborts them.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.draining() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "rejected: too many connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = config.tls.clone();
        let header_timeout = config.header_timeout;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let stream = match tls {
                None => Stream::Plain(stream),
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => Stream::Tls(Box::new(stream.into())),
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let connection = Connection {
                stream,
                peer,
                header_timeout,
                shutdown,
                handler: handler.clone(),
                builder,
                watcher,
            };
            handler.serve_connection(connection).await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("draining: no longer accepting connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = shutdown.aborted() => tracing::warn!("closing the connections still open"),
    }
}
