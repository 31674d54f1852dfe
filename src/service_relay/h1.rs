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
//!
//! Here: the connection loop, each request's plan (hand over, refuse, or
//! forward) and the relay's own answers. `exchange` forwards a request and
//! streams its body up, `download` brings the response back, `upstream`
//! keeps the connections to Services, `wire` reads and rewrites heads, and
//! `chunked` follows chunked bodies.

mod chunked;
mod download;
mod exchange;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod upstream;
mod wire;

use std::{mem::MaybeUninit, net::SocketAddr, time::Instant};

use bytes::{Buf as _, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use self::exchange::Exchange;
pub use self::upstream::Upstream;
use self::wire::{Framing, MAX_HEADERS};
use super::{
    exit::{Exit, origin},
    pool::Origin,
    target::Target,
};
use crate::{
    http_server::{Body, Connection, Handler},
    net::Stream,
};

/// Longest request or response head read here; a longer request goes to
/// hyper (which answers 431 past its own limit).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Buffer sizes: heads fit the first; bodies stream through up to the
/// second.
pub(super) const HEAD_BUFFER: usize = 8 * 1024;
pub(super) const BODY_BUFFER: usize = 64 * 1024;

/// What became of the client connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Ready for the next request.
    KeepAlive,
    Close,
}

/// A request admitted and rewritten, ready to go upstream.
pub(super) struct Forward {
    pub origin: Origin,
    pub framing: Framing,
    pub head: bool,
    pub idempotent: bool,
    pub close: bool,
    pub target: Target,
}

/// A response of the relay's own.
pub(super) struct Answer {
    pub response: Response<Body>,
    pub next: Next,
    /// To a HEAD request: no body.
    pub head: bool,
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

/// Whether `buf` holds a whole head: the blank line that ends it, found
/// without parsing. httparse ends a line at CRLF or a bare LF, so a head
/// ends at LF CRLF or LF LF (CRLF CRLF and CRLF LF among them).
fn head_ends(buf: &[u8]) -> bool {
    // A request without a body usually ends the buffer.
    buf.ends_with(b"\r\n\r\n")
        || memchr::memmem::find(buf, b"\n\r\n").is_some()
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
        idempotent: super::headers::is_idempotent(request.method),
        close: request.close,
        origin,
        target,
    })
}

/// Writes a response of the relay's own (small, whole) to the client.
pub(super) async fn answer(
    client: &mut Stream,
    answer: Answer,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::head_ends;

    /// A head httparse reads whole is seen as whole, however its lines
    /// end; before, one ending LF CRLF waited for the header timeout.
    #[test]
    fn a_head_ends_wherever_httparse_ends_it() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: h\n\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            b"GET / HTTP/1.1\r\nHost: h\n\r\n",
            b"GET / HTTP/1.1\n\r\n",
        ] {
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Request::new(&mut headers).parse(raw);
            assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == raw.len()));
            assert!(head_ends(raw), "{:?}", String::from_utf8_lossy(raw));
        }
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: h\r\n"));
    }
}
