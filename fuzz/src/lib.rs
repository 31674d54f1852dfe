//! What the fuzz targets share: hyper's HTTP/1.1 server, the path the exit
//! relay falls back to, run over bytes in memory, as the reference the own
//! path is held to.

use std::{cell::RefCell, convert::Infallible};

use http_body_util::BodyExt as _;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt as _, sync::mpsc};

/// The first request hyper's server read from a stream of bytes.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The decoded body, or `Err` when hyper gave up on it.
    pub body: Result<Vec<u8>, String>,
    /// The target of the request that came next on the connection, if any.
    pub next: Option<String>,
}

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime without I/O drivers builds"),
    );
}

/// Serves `bytes` (everything the client sends, then its write side
/// closes) with hyper's HTTP/1.1 server as the exit relay configures it;
/// `None` when hyper refused the first request.
pub fn hyper_request(bytes: &[u8]) -> Option<Seen> {
    RUNTIME.with(|runtime| runtime.borrow().block_on(serve(bytes.to_vec())))
}

async fn serve(bytes: Vec<u8>) -> Option<Seen> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (sender, mut seen) = mpsc::unbounded_channel();
    let service = service_fn(move |request: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|collected| collected.to_bytes().to_vec())
                .map_err(|err| err.to_string());
            let _ = sender.send(Seen {
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                    .collect(),
                body,
                next: None,
            });
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        }
    });
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let writer = async move {
        let _ = client_write.write_all(&bytes).await;
        let _ = client_write.shutdown().await;
    };
    // What hyper answers is read and dropped, so it never blocks.
    let reader = async move {
        let _ = tokio::io::copy(&mut client_read, &mut tokio::io::sink()).await;
    };
    // Half-close: the client's end of input must not cut short what
    // hyper read before it (pipelined requests).
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let _ = tokio::join!(writer, reader, connection);
    let mut first = seen.try_recv().ok()?;
    first.next = seen.try_recv().ok().map(|next| next.target);
    Some(first)
}
