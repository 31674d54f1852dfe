//! One request forwarded to its Service: the head goes, the body streams
//! up while the response streams down, and a pooled connection the Service
//! closed unanswered is replaced once for a request that is safe to send
//! again.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use bytes::{Buf as _, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    Answer, BODY_BUFFER, Forward, Next, answer,
    chunked::Chunked,
    download::Download,
    upstream::{Conn, Upstream},
    wire::Framing,
};
use crate::{
    net::Stream,
    service_relay::{directory::host, exit::Exit, forward::ForwardError},
};

/// A response relayed to the client.
pub(super) struct Relayed {
    pub code: StatusCode,
    /// The upstream connection can take another request.
    pub reusable: bool,
    pub next: Next,
}

/// Why a request body could not be relayed.
pub(super) enum UploadError {
    /// Past `--max-request-body-bytes`.
    TooLarge,
    /// Bad chunked framing from the client.
    Framing,
    /// The client went away or failed mid-body.
    Client,
    /// Writing to the upstream failed (it may still have answered).
    Upstream(std::io::Error),
}

/// Why a response could not be relayed, and whether the client has seen
/// any of it.
pub(super) struct DownloadError {
    pub error: ForwardError,
    /// Nothing reached the client yet: it can still get an error status.
    pub before_head: bool,
    /// Nothing came from the upstream at all (a pooled connection it had
    /// closed): the request may go again on a new connection.
    pub nothing_read: bool,
    /// The client's doing (it went away): not the upstream's.
    pub client: bool,
}

/// One request forwarded and its response relayed.
pub(super) struct Exchange<'a> {
    pub exit: &'a Exit,
    pub upstream: &'a Upstream,
    pub client: &'a mut Stream,
    pub cbuf: &'a mut BytesMut,
    pub up_head: &'a [u8],
    pub down: &'a mut Vec<u8>,
    pub started: Instant,
    /// Tell the client the connection closes after this response.
    pub close: bool,
    pub peer: SocketAddr,
}

impl Exchange<'_> {
    pub async fn run(&mut self, forward: &Forward) -> Next {
        let body_limit = self.upstream.max_body_bytes;
        if let (Framing::Length(n), Some(limit)) = (forward.framing, body_limit)
            && n > limit
        {
            return self
                .fail(forward, ForwardError::TooLarge, Next::Close)
                .await;
        }
        let after_failure = if forward.framing == Framing::Empty {
            Next::KeepAlive
        } else {
            Next::Close
        };
        let (mut conn, mut pooled) = match self.upstream.idle(&forward.origin) {
            Some(conn) => (conn, true),
            None => match self.upstream.connect(&forward.origin).await {
                Ok(conn) => (conn, false),
                Err(err) => return self.fail(forward, err, after_failure).await,
            },
        };
        loop {
            let result = if forward.framing == Framing::Empty {
                self.without_body(&mut conn, forward).await
            } else {
                self.with_body(&mut conn, forward).await
            };
            match result {
                Ok(relayed) => {
                    self.exit.metrics.answered(
                        "exit",
                        relayed.code,
                        self.started.elapsed().as_secs_f64(),
                    );
                    if relayed.reusable && conn.buf.is_empty() {
                        self.upstream.put(&forward.origin, conn, self.started);
                    }
                    return relayed.next;
                }
                // The upstream closed a pooled connection as the request
                // went out (its keep-alive ran out): once more on a new one.
                Err(err)
                    if pooled
                        && err.nothing_read
                        && forward.idempotent
                        && forward.framing == Framing::Empty =>
                {
                    pooled = false;
                    conn = match self.upstream.connect(&forward.origin).await {
                        Ok(conn) => conn,
                        Err(err) => return self.fail(forward, err, after_failure).await,
                    };
                }
                Err(err) if err.before_head => {
                    return self.fail(forward, err.error, after_failure).await;
                }
                Err(err) if err.client => {
                    tracing::debug!(peer = %self.peer, service = %host(&forward.target), "the client went away mid-exchange");
                    return Next::Close;
                }
                Err(err) => {
                    self.exit.metrics.upstream_error("exit", err.error.reason());
                    tracing::warn!(peer = %self.peer, service = %host(&forward.target), error = %err.error, "response cut short");
                    return Next::Close;
                }
            }
        }
    }

    /// Answers with the gateway status for `err`, counted and logged.
    async fn fail(&mut self, forward: &Forward, err: ForwardError, next: Next) -> Next {
        self.exit.metrics.upstream_error("exit", err.reason());
        tracing::warn!(peer = %self.peer, service = %host(&forward.target), error = %err, "forwarding failed");
        let response = err.response();
        let code = response.status();
        let next = if self.close { Next::Close } else { next };
        let reply = Answer {
            response,
            next,
            head: forward.head,
        };
        let written = answer(self.client, reply, self.down).await;
        self.exit
            .metrics
            .answered("exit", code, self.started.elapsed().as_secs_f64());
        if written.is_err() { Next::Close } else { next }
    }

    /// A request without a body: the head goes, the response comes back.
    async fn without_body(
        &mut self,
        conn: &mut Conn,
        forward: &Forward,
    ) -> Result<Relayed, DownloadError> {
        if let Err(err) = write_flush(&mut conn.io, self.up_head).await {
            return Err(DownloadError {
                error: ForwardError::Io(err),
                before_head: true,
                nothing_read: true,
                client: false,
            });
        }
        let sent_head = AtomicBool::new(false);
        Download {
            upstream: &mut conn.io,
            buf: &mut conn.buf,
            client: &mut *self.client,
            down: &mut *self.down,
            head: forward.head,
            close: self.close,
            timeout: Some(self.upstream.response_timeout),
            started: self.started,
            sent_head: &sent_head,
        }
        .run()
        .await
    }

    /// A request with a body: it streams up while the response streams
    /// down, as the upstream may answer before it has read it all.
    async fn with_body(
        &mut self,
        conn: &mut Conn,
        forward: &Forward,
    ) -> Result<Relayed, DownloadError> {
        let limit = self.upstream.max_body_bytes;
        let (mut client_read, mut client_write) = tokio::io::split(&mut *self.client);
        let (mut up_read, mut up_write) = tokio::io::split(&mut conn.io);
        let sent_head = AtomicBool::new(false);
        let up_head = self.up_head;
        let cbuf = &mut *self.cbuf;
        let upload = async {
            up_write
                .write_all(up_head)
                .await
                .map_err(UploadError::Upstream)?;
            upload(
                &mut client_read,
                cbuf,
                &mut up_write,
                forward.framing,
                limit,
            )
            .await
        };
        let mut download = Download {
            upstream: &mut up_read,
            buf: &mut conn.buf,
            client: &mut client_write,
            down: &mut *self.down,
            head: forward.head,
            close: self.close,
            timeout: None,
            started: self.started,
            sent_head: &sent_head,
        };
        let download = download.run();
        let mut upload = std::pin::pin!(upload);
        let mut download = std::pin::pin!(download);
        // The upstream's time to answer runs from the end of the body.
        let timeout = self.upstream.response_timeout;
        let mut deadline = std::pin::pin!(tokio::time::sleep(timeout));
        let mut uploaded = None;
        let result = loop {
            tokio::select! {
                result = &mut upload, if uploaded.is_none() => {
                    deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                    match result {
                        Ok(()) => uploaded = Some(true),
                        // The upstream stopped reading: its answer, if
                        // it gives one, still goes to the client.
                        Err(UploadError::Upstream(err)) => {
                            tracing::debug!(error = %err, "upstream stopped taking the request body");
                            uploaded = Some(false);
                        }
                        Err(UploadError::Client) => break None,
                        Err(err @ (UploadError::TooLarge | UploadError::Framing)) => {
                            if sent_head.load(Ordering::Relaxed) {
                                break None;
                            }
                            let error = match err {
                                UploadError::TooLarge => ForwardError::TooLarge,
                                _ => ForwardError::BadRequestBody,
                            };
                            break Some(Err(early(error)));
                        }
                    }
                }
                result = &mut download => break Some(result),
                () = &mut deadline, if uploaded.is_some() && !sent_head.load(Ordering::Relaxed) => {
                    break Some(Err(early(ForwardError::Timeout)));
                }
            }
        };
        match result {
            // Cut off mid-response: nothing more to say to the client.
            None => Err(client_gone()),
            Some(Err(err)) => Err(err),
            // A body not wholly read leaves both connections mid-message.
            Some(Ok(relayed)) if uploaded != Some(true) => Ok(Relayed {
                reusable: false,
                next: Next::Close,
                ..relayed
            }),
            Some(Ok(relayed)) => Ok(relayed),
        }
    }
}

pub(super) async fn write_flush<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Relays a request body of `framing` from the client (what is buffered
/// first) to the upstream, as it came.
pub(super) async fn upload<R, W>(
    client: &mut R,
    cbuf: &mut BytesMut,
    upstream: &mut W,
    framing: Framing,
    limit: Option<u64>,
) -> Result<(), UploadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        if !cbuf.is_empty() {
            let take = match framing {
                Framing::Length(_) => left.min(cbuf.len() as u64) as usize,
                _ => {
                    let n = chunked.scan(cbuf).map_err(|_| UploadError::Framing)?;
                    if limit.is_some_and(|limit| chunked.data > limit) {
                        return Err(UploadError::TooLarge);
                    }
                    n
                }
            };
            upstream
                .write_all(&cbuf[..take])
                .await
                .map_err(UploadError::Upstream)?;
            cbuf.advance(take);
            left -= take as u64;
        }
        let done = match framing {
            Framing::Length(_) => left == 0,
            _ => chunked.done(),
        };
        if done {
            return upstream.flush().await.map_err(UploadError::Upstream);
        }
        // Keep what follows the body (a pipelined request) for later.
        cbuf.reserve(BODY_BUFFER);
        match client.read_buf(cbuf).await {
            Ok(0) | Err(_) => return Err(UploadError::Client),
            Ok(_) => {}
        }
    }
}

/// A failure before anything reached the client.
pub(super) fn early(error: ForwardError) -> DownloadError {
    DownloadError {
        error,
        before_head: true,
        nothing_read: false,
        client: false,
    }
}

/// An upstream failure after the response head went to the client.
pub(super) fn cut(error: ForwardError) -> DownloadError {
    DownloadError {
        error,
        before_head: false,
        nothing_read: false,
        client: false,
    }
}

/// The client went away (or broke its body) mid-exchange.
pub(super) fn client_gone() -> DownloadError {
    DownloadError {
        error: ForwardError::Protocol("the client went away"),
        before_head: false,
        nothing_read: false,
        client: true,
    }
}
