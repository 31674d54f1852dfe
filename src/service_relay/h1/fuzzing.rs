//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`):
//! the exit relay's own HTTP/1.1 path, piece by piece, on bytes in memory.
//! Each function does what the connection loop does with the same bytes, so
//! a target exercises the real code, not a copy of it; none of this is an
//! API.

use std::{
    mem::MaybeUninit,
    pin::Pin,
    sync::atomic::AtomicBool,
    task::{Context, Poll},
    time::Instant,
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

pub use super::wire::{Framing, MAX_HEADERS};
use super::{Next, chunked::Chunked, download::Download, exchange, head_ends, wire};

/// Longest request head the own path reads before it hands over.
pub const MAX_HEAD: usize = super::MAX_HEAD;

/// What the exit relay's own path makes of a buffer a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestHead {
    /// No whole head yet: the loop reads on (or, past [`MAX_HEAD`], hands
    /// the connection to hyper).
    Incomplete,
    /// hyper serves this request and the rest of the connection.
    HandOver,
    /// Served here.
    Forward(Box<Forwarded>),
}

/// A request head the own path forwards.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// Bytes of the client's head, blank line included.
    pub head_len: usize,
    pub method: String,
    pub path: String,
    pub framing: Framing,
    pub close: bool,
    /// The routing headers as read (proto, namespace, service, port), and
    /// whether a relay credential came.
    pub routing: [Option<String>; 4],
    pub relay_authorization: Option<Vec<u8>>,
    /// The head as the Service gets it.
    pub upstream_head: Vec<u8>,
}

/// Whether the connection loop sees a whole head in `buf`.
pub fn head_complete(buf: &[u8]) -> bool {
    head_ends(buf)
}

/// Reads and rewrites a request head as the connection loop does, for the
/// Service at `authority`, from a client at 10.0.0.9.
pub fn request_head(buf: &[u8], authority: &str) -> RequestHead {
    if !head_ends(buf) {
        return RequestHead::Incomplete;
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return RequestHead::HandOver,
    };
    let Some(request) = wire::request(&parsed) else {
        return RequestHead::HandOver;
    };
    let mut upstream_head = Vec::new();
    request.write_upstream_head(
        authority,
        std::net::Ipv4Addr::new(10, 0, 0, 9).into(),
        &mut upstream_head,
    );
    let text = |v: Option<&str>| v.map(str::to_owned);
    RequestHead::Forward(Box::new(Forwarded {
        head_len,
        method: request.method.to_owned(),
        path: request.path.to_owned(),
        framing: request.framing,
        close: request.close,
        routing: [
            text(request.routing.proto),
            text(request.routing.namespace),
            text(request.routing.service),
            text(request.routing.port),
        ],
        relay_authorization: request.routing.relay_authorization.map(<[u8]>::to_vec),
        upstream_head,
    }))
}

/// A response head read from a Service, as the own path rewrites it.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseHead {
    Incomplete,
    /// httparse or the rewriter refused it: the client gets a 502.
    Refused,
    Rewritten {
        head_len: usize,
        code: u16,
        framing: Framing,
        reusable: bool,
        /// The head as the client gets it.
        client_head: Vec<u8>,
    },
}

/// Reads and rewrites a response head as the download does; `head` says the
/// request was a HEAD, `close` that the client connection closes after it.
pub fn response_head(buf: &[u8], head: bool, close: bool) -> ResponseHead {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ResponseHead::Incomplete,
        Err(_) => return ResponseHead::Refused,
    };
    let mut client_head = Vec::new();
    match wire::response(&parsed, head, close, &mut client_head) {
        Ok(response) => ResponseHead::Rewritten {
            head_len,
            code: response.code,
            framing: response.framing,
            reusable: response.reusable,
            client_head,
        },
        Err(_) => ResponseHead::Refused,
    }
}

/// The chunked scanner over `body` cut into pieces at `cuts` (offsets,
/// taken in order, out-of-range ones ignored): bytes of the body, data
/// bytes, whether it ended; `None` for bad framing.
pub fn chunked(body: &[u8], cuts: &[usize]) -> Option<(usize, u64, bool)> {
    let mut scanner = Chunked::default();
    let mut at = 0;
    let mut taken = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        if cut < at || cut > body.len() {
            continue;
        }
        taken += scanner.scan(&body[at..cut]).ok()?;
        at = cut;
        if scanner.done() {
            break;
        }
    }
    Some((taken, scanner.data, scanner.done()))
}

/// How a relayed response ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Downloaded {
    /// Whole: the code, whether the upstream connection can be reused,
    /// whether the client connection closes, and how many bytes were read
    /// past the response (the Service's later bytes are not: they come
    /// while the connection idles, and the pool checks for them).
    Relayed {
        code: u16,
        reusable: bool,
        close: bool,
        left: usize,
    },
    /// Nothing reached the client: it gets an error status.
    BeforeHead,
    /// Cut short after the head went to the client.
    Cut,
}

/// A peer that sends `bytes` in pieces ending at `cuts` (offsets, in
/// order; the others ignored), then closes.
struct Pieces<'a> {
    bytes: &'a [u8],
    at: usize,
    cuts: std::slice::Iter<'a, usize>,
}

impl<'a> Pieces<'a> {
    fn new(bytes: &'a [u8], cuts: &'a [usize]) -> Self {
        Self {
            bytes,
            at: 0,
            cuts: cuts.iter(),
        }
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let end = this
            .cuts
            .find(|&&cut| cut > this.at && cut < this.bytes.len())
            .copied()
            .unwrap_or(this.bytes.len());
        let n = (end - this.at).min(buf.remaining());
        buf.put_slice(&this.bytes[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Relays the response in `upstream` (all the Service ever sends before it
/// closes, read in pieces ending at `cuts`) to a client, as the download
/// does; returns the outcome and the bytes the client got.
pub fn download(upstream: &[u8], cuts: &[usize], head: bool, close: bool) -> (Downloaded, Vec<u8>) {
    let mut reader = Pieces::new(upstream, cuts);
    let mut buf = BytesMut::new();
    let mut client = Vec::new();
    let mut down = Vec::new();
    let sent_head = AtomicBool::new(false);
    let result = futures::executor::block_on(
        Download {
            upstream: &mut reader,
            buf: &mut buf,
            client: &mut client,
            down: &mut down,
            head,
            close,
            timeout: None,
            started: Instant::now(),
            sent_head: &sent_head,
        }
        .run(),
    );
    let outcome = match result {
        Ok(relayed) => Downloaded::Relayed {
            code: relayed.code.as_u16(),
            reusable: relayed.reusable,
            close: relayed.next == Next::Close,
            left: buf.len(),
        },
        Err(err) if err.before_head => Downloaded::BeforeHead,
        Err(_) => Downloaded::Cut,
    };
    (outcome, client)
}

/// How a request body went up.
#[derive(Debug, PartialEq, Eq)]
pub enum Uploaded {
    /// Whole; this many bytes of the client's were left for the next
    /// request.
    Whole {
        left: usize,
    },
    TooLarge,
    /// Bad chunked framing.
    Framing,
    /// The client's bytes ended first.
    Client,
}

/// Relays a request body of `framing` from `client` (everything the client
/// sends, read in pieces ending at `cuts`), as the exchange does, with
/// `limit` on chunked data; returns the outcome and the bytes the Service
/// got.
pub fn upload(
    client: &[u8],
    cuts: &[usize],
    framing: Framing,
    limit: Option<u64>,
) -> (Uploaded, Vec<u8>) {
    let mut reader = Pieces::new(client, cuts);
    let mut cbuf = BytesMut::new();
    let mut upstream = Vec::new();
    let result = futures::executor::block_on(exchange::upload(
        &mut reader,
        &mut cbuf,
        &mut upstream,
        framing,
        limit,
    ));
    let outcome = match result {
        Ok(()) => Uploaded::Whole {
            left: cbuf.len() + reader.left(),
        },
        Err(exchange::UploadError::TooLarge) => Uploaded::TooLarge,
        Err(exchange::UploadError::Framing) => Uploaded::Framing,
        Err(exchange::UploadError::Client | exchange::UploadError::Upstream(_)) => Uploaded::Client,
    };
    (outcome, upstream)
}
