//! The exit relay's own HTTP/1.1 path. Parsing a request into hyper's
//! types and encoding it again, on both sides, was two thirds of the exit
//! relay's cost per request; here a request head is read once (httparse),
//! rewritten into one buffer for the target Service, and bodies pass
//! through as the bytes they are, framing included, both ways at once.
//!
//! It serves the plain HTTP/1.1 requests the managed apiserver's
//! services/proxy sends. Anything else (HTTP/1.0 or HTTP/2, upgrades,
//! `Expect`, odd or bad framing, over-long heads) is handed to hyper with
//! the rest of the connection, and served as before.

mod chunked;
mod wire;

use std::{
    mem::MaybeUninit,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use self::{
    chunked::Chunked,
    wire::{Framing, MAX_HEADERS},
};
use super::{
    directory::host,
    exit::{Exit, origin},
    forward::ForwardError,
    pool::{Connector, IdleState, Origin, Pool, Pooled},
    target::Target,
};
use crate::{
    http_server::{Body, Connection, Handler},
    net::Stream,
};

/// Longest request or response head read here; a longer request goes to
/// hyper (which answers 431 past its own limit).
const MAX_HEAD: usize = 64 * 1024;
/// Buffer sizes: heads fit the first; bodies stream through up to the
/// second.
const HEAD_BUFFER: usize = 8 * 1024;
const BODY_BUFFER: usize = 64 * 1024;
/// A pooled connection idle for longer is checked for a close from the
/// upstream before it is used.
const CHECK_IDLE_AFTER: Duration = Duration::from_millis(50);

/// A connection to an upstream, with what was read from it and not used.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
    idle_since: Instant,
}

impl Pooled for Conn {
    fn idle_state(&self) -> IdleState {
        // A close is found when the connection is taken (see `alive`).
        IdleState::Ready
    }
}

impl Conn {
    /// Whether a connection that sat idle still looks open: nothing to
    /// read, no end of stream. One read attempt, on the TCP socket itself;
    /// any byte there (a TLS close_notify included) means it is done.
    fn alive(&self) -> bool {
        if self.idle_since.elapsed() < CHECK_IDLE_AFTER {
            return true;
        }
        let mut byte = [0u8; 1];
        matches!(self.io.tcp().try_read(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// The exit relay's upstream pool for this path; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    pool: Pool<Conn>,
    response_timeout: Duration,
    max_body_bytes: Option<u64>,
}

impl Upstream {
    pub fn new(connector: Connector, limits: super::forward::Limits) -> Self {
        Self {
            pool: Pool::new(connector),
            response_timeout: limits.response_timeout,
            max_body_bytes: limits.max_body_bytes,
        }
    }

    /// A pooled connection to `origin` that is still open, if any.
    fn idle(&self, origin: &Origin) -> Option<Conn> {
        while let Some(conn) = self.pool.idle(origin) {
            if conn.alive() {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self, origin: &Origin) -> Result<Conn, ForwardError> {
        let io = Box::pin(self.pool.connector().connect(origin)).await?;
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(HEAD_BUFFER),
            idle_since: Instant::now(),
        })
    }

    /// Takes back a connection idle since `since` (a time already read,
    /// to spare a clock read per request).
    fn put(&self, origin: &Origin, mut conn: Conn, since: Instant) {
        conn.idle_since = since;
        self.pool.put(origin, conn);
    }
}

/// What became of the client connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Ready for the next request.
    KeepAlive,
    Close,
}

/// A request admitted and rewritten, ready to go upstream.
struct Forward {
    origin: Origin,
    framing: Framing,
    head: bool,
    idempotent: bool,
    close: bool,
    target: Target,
}

/// A response of the relay's own.
struct Answer {
    response: Response<Body>,
    next: Next,
    /// To a HEAD request: no body.
    head: bool,
}

/// What to do with a request whose head has been read.
enum Plan {
    Forward(Forward),
    /// Answer this (a refusal or a bad request); the body, if any, is
    /// not read, so the connection closes after it unless there is none.
    Answer(Answer),
    HandOver,
}

/// Serves a client connection of the exit relay.
pub async fn serve<H: Handler>(exit: &Exit, mut connection: Connection<H>) {
    if connection.stream.is_h2() {
        return connection.hand_over(Vec::new()).await;
    }
    let peer = connection.peer;
    let header_timeout = connection.header_timeout;
    let mut draining = std::pin::pin!(connection.shutdown.draining_owned());
    let mut timer = std::pin::pin!(tokio::time::sleep(header_timeout));
    let mut cbuf = BytesMut::with_capacity(HEAD_BUFFER);
    let mut up_head = Vec::with_capacity(2048);
    let mut down = Vec::with_capacity(2048);
    loop {
        // Wait for a whole head; the clock runs from the first wait.
        let mut waited = false;
        loop {
            if !cbuf.is_empty() {
                if head_ends(&cbuf) {
                    break;
                }
                if cbuf.len() >= MAX_HEAD {
                    // hyper answers what is too long for this path.
                    return connection.hand_over(cbuf.to_vec()).await;
                }
            }
            if !waited {
                waited = true;
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + header_timeout);
            }
            cbuf.reserve(HEAD_BUFFER / 2);
            let read = tokio::select! {
                biased;
                read = connection.stream.read_buf(&mut cbuf) => read,
                () = &mut timer => {
                    tracing::debug!(%peer, "no request head in time; closing");
                    return;
                }
                () = &mut draining, if cbuf.is_empty() => return,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let started = Instant::now();
        let (head_len, plan) = {
            // Uninitialised: filling 96 empty headers per request showed.
            let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut []);
            match parsed.parse_with_uninit_headers(&cbuf, &mut headers) {
                Ok(httparse::Status::Complete(n)) => {
                    (n, plan(exit, &parsed, peer, &mut up_head).await)
                }
                // Too many headers, or not HTTP/1.x as httparse knows it:
                // hyper's to answer.
                _ => (0, Plan::HandOver),
            }
        };
        let next = match plan {
            Plan::HandOver => return connection.hand_over(cbuf.to_vec()).await,
            Plan::Answer(mut reply) => {
                cbuf.advance(head_len);
                if connection.shutdown.is_draining() {
                    reply.next = Next::Close;
                }
                let (code, next) = (reply.response.status(), reply.next);
                let written = answer(&mut connection.stream, reply, &mut down).await;
                exit.metrics
                    .answered("exit", code, started.elapsed().as_secs_f64());
                if written.is_err() { Next::Close } else { next }
            }
            Plan::Forward(forward) => {
                cbuf.advance(head_len);
                let close = forward.close || connection.shutdown.is_draining();
                let mut exchange = Exchange {
                    exit,
                    upstream: &exit.h1,
                    client: &mut connection.stream,
                    cbuf: &mut cbuf,
                    up_head: &up_head,
                    down: &mut down,
                    started,
                    close,
                    peer,
                };
                let next = exchange.run(&forward).await;
                if close { Next::Close } else { next }
            }
        };
        if next == Next::Close {
            let _ = connection.stream.shutdown().await;
            return;
        }
        // Keep the buffers of a connection that once carried a big body
        // from staying big while it idles.
        if cbuf.capacity() > BODY_BUFFER && cbuf.is_empty() {
            cbuf = BytesMut::with_capacity(HEAD_BUFFER);
        }
    }
}

/// Whether `buf` holds a whole head: the blank line that ends it (CRLF, or
/// the bare LF httparse also accepts), found without parsing.
fn head_ends(buf: &[u8]) -> bool {
    // A request without a body usually ends the buffer.
    buf.ends_with(b"\r\n\r\n")
        || memchr::memmem::find(buf, b"\r\n\r\n").is_some()
        || memchr::memmem::find(buf, b"\n\n").is_some()
}

/// Reads the request head, admits the caller, and writes the upstream head.
async fn plan(
    exit: &Exit,
    parsed: &httparse::Request<'_, '_>,
    peer: SocketAddr,
    up_head: &mut Vec<u8>,
) -> Plan {
    let Some(request) = wire::request(parsed) else {
        return Plan::HandOver;
    };
    // A refusal leaves a body unread, so the connection cannot go on.
    let after_refusal = if request.framing == Framing::Empty && !request.close {
        Next::KeepAlive
    } else {
        Next::Close
    };
    let head = request.method == "HEAD";
    let refuse = |response| {
        Plan::Answer(Answer {
            response,
            next: after_refusal,
            head,
        })
    };
    let (target, port) = match exit.admit(&request.routing, request.path, peer).await {
        Ok(admitted) => admitted,
        Err(response) => return refuse(response),
    };
    let Some(origin) = origin(&target, port) else {
        return refuse(crate::http_server::text(
            StatusCode::BAD_REQUEST,
            "invalid service\n",
        ));
    };
    up_head.clear();
    request.write_upstream_head(origin.authority.as_str(), peer.ip(), up_head);
    Plan::Forward(Forward {
        framing: request.framing,
        head,
        // RFC 9110 section 9.2.2.
        idempotent: matches!(
            request.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        close: request.close,
        origin,
        target,
    })
}

/// Writes a response of the relay's own (small, whole) to the client.
async fn answer(client: &mut Stream, answer: Answer, out: &mut Vec<u8>) -> std::io::Result<()> {
    let Answer {
        response,
        next,
        head,
    } = answer;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if next == Next::Close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(&body);
    }
    client.write_all(out).await?;
    client.flush().await
}

/// A response relayed to the client.
struct Relayed {
    code: StatusCode,
    /// The upstream connection can take another request.
    reusable: bool,
    next: Next,
}

/// Why a request body could not be relayed.
enum UploadError {
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
struct DownloadError {
    error: ForwardError,
    /// Nothing reached the client yet: it can still get an error status.
    before_head: bool,
    /// Nothing came from the upstream at all (a pooled connection it had
    /// closed): the request may go again on a new connection.
    nothing_read: bool,
    /// The client's doing (it went away): not the upstream's.
    client: bool,
}

/// One request forwarded and its response relayed.
struct Exchange<'a> {
    exit: &'a Exit,
    upstream: &'a Upstream,
    client: &'a mut Stream,
    cbuf: &'a mut BytesMut,
    up_head: &'a [u8],
    down: &'a mut Vec<u8>,
    started: Instant,
    /// Tell the client the connection closes after this response.
    close: bool,
    peer: SocketAddr,
}

impl Exchange<'_> {
    async fn run(&mut self, forward: &Forward) -> Next {
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

async fn write_flush<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Relays a request body of `framing` from the client (what is buffered
/// first) to the upstream, as it came.
async fn upload<R, W>(
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

/// Reading a response from the upstream and passing it to the client.
struct Download<'a, R, W> {
    upstream: &'a mut R,
    buf: &'a mut BytesMut,
    client: &'a mut W,
    down: &'a mut Vec<u8>,
    head: bool,
    close: bool,
    /// For the response head, from `started`; `None` when the caller
    /// keeps the time.
    timeout: Option<Duration>,
    started: Instant,
    sent_head: &'a AtomicBool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Download<'_, R, W> {
    /// Relays the response; returns its status, whether the upstream
    /// connection can be reused, and what becomes of the client's.
    async fn run(&mut self) -> Result<Relayed, DownloadError> {
        let deadline = self
            .timeout
            .map(|t| tokio::time::Instant::from_std(self.started) + t);
        let response = loop {
            let head = match deadline {
                None => self.read_head().await?,
                Some(deadline) => match tokio::time::timeout_at(deadline, self.read_head()).await {
                    Ok(head) => head?,
                    Err(_) => return Err(early(ForwardError::Timeout)),
                },
            };
            if head.framing == Framing::Empty && (100..200).contains(&head.code) {
                // Interim (103 Early Hints and the like): passed on.
                self.sent_head.store(true, Ordering::Relaxed);
                write_flush(self.client, self.down)
                    .await
                    .map_err(|_| client_gone())?;
                continue;
            }
            break head;
        };
        let code = StatusCode::from_u16(response.code).unwrap_or(StatusCode::BAD_GATEWAY);
        self.sent_head.store(true, Ordering::Relaxed);
        let (reusable, next) = self.body(response.framing, response.reusable).await?;
        Ok(Relayed {
            code,
            reusable,
            next: if self.close { Next::Close } else { next },
        })
    }

    /// Reads a response head into `down` (rewritten for the client) and
    /// drops it from `buf`.
    async fn read_head(&mut self) -> Result<wire::Response, DownloadError> {
        let mut read_any = !self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut parsed,
                    self.buf,
                    &mut headers,
                ) {
                    Ok(httparse::Status::Complete(n)) => {
                        self.down.clear();
                        let response = wire::response(&parsed, self.head, self.close, self.down)
                            .map_err(|err| {
                                tracing::debug!(error = %err, "bad response head");
                                early(ForwardError::Protocol("bad response head"))
                            })?;
                        self.buf.advance(n);
                        return Ok(response);
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {}
                    Ok(httparse::Status::Partial) => {
                        return Err(early(ForwardError::Protocol("response head too long")));
                    }
                    Err(_) => return Err(early(ForwardError::Protocol("bad response head"))),
                }
            }
            self.buf.reserve(HEAD_BUFFER / 2);
            match self.upstream.read_buf(self.buf).await {
                Ok(0) => {
                    return Err(DownloadError {
                        error: ForwardError::Io(std::io::ErrorKind::UnexpectedEof.into()),
                        before_head: true,
                        nothing_read: !read_any,
                        client: false,
                    });
                }
                Ok(_) => read_any = true,
                Err(err) => {
                    return Err(DownloadError {
                        error: ForwardError::Io(err),
                        before_head: true,
                        nothing_read: !read_any,
                        client: false,
                    });
                }
            }
        }
    }

    /// Passes the body on after the head in `down`; returns whether the
    /// upstream connection can be reused and what becomes of the client's.
    async fn body(
        &mut self,
        framing: Framing,
        reusable: bool,
    ) -> Result<(bool, Next), DownloadError> {
        let mut chunked = Chunked::default();
        let mut left = match framing {
            Framing::Length(n) => n,
            Framing::Empty => 0,
            _ => u64::MAX,
        };
        // The head goes with as much of the body as is here, in one write.
        let mut first = true;
        loop {
            let take = match framing {
                Framing::Empty => 0,
                Framing::Length(_) => left.min(self.buf.len() as u64) as usize,
                Framing::Chunked => chunked
                    .scan(self.buf)
                    .map_err(|_| cut(ForwardError::Protocol("bad chunked response body")))?,
                Framing::Close => self.buf.len(),
            };
            let result = if first {
                first = false;
                self.down.extend_from_slice(&self.buf[..take]);
                self.client.write_all(self.down).await
            } else {
                self.client.write_all(&self.buf[..take]).await
            };
            result.map_err(|_| client_gone())?;
            self.buf.advance(take);
            if let Framing::Length(_) = framing {
                left -= take as u64;
            }
            let done = match framing {
                Framing::Empty => true,
                Framing::Length(_) => left == 0,
                Framing::Chunked => chunked.done(),
                Framing::Close => false,
            };
            if done {
                self.client.flush().await.map_err(|_| client_gone())?;
                // Bytes past the end of the response: not to be trusted.
                let reusable = reusable && self.buf.is_empty();
                return Ok((reusable, Next::KeepAlive));
            }
            if self.buf.capacity() < BODY_BUFFER {
                self.buf.reserve(BODY_BUFFER - self.buf.len());
            }
            match self.upstream.read_buf(self.buf).await {
                Ok(0) if framing == Framing::Close => {
                    let _ = self.client.flush().await;
                    return Ok((false, Next::Close));
                }
                Ok(0) => {
                    return Err(cut(ForwardError::Io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                Ok(_) => {}
                Err(err) => return Err(cut(ForwardError::Io(err))),
            }
        }
    }
}

/// A failure before anything reached the client.
fn early(error: ForwardError) -> DownloadError {
    DownloadError {
        error,
        before_head: true,
        nothing_read: false,
        client: false,
    }
}

/// An upstream failure after the response head went to the client.
fn cut(error: ForwardError) -> DownloadError {
    DownloadError {
        error,
        before_head: false,
        nothing_read: false,
        client: false,
    }
}

/// The client went away (or broke its body) mid-exchange.
fn client_gone() -> DownloadError {
    DownloadError {
        error: ForwardError::Protocol("the client went away"),
        before_head: false,
        nothing_read: false,
        client: true,
    }
}
