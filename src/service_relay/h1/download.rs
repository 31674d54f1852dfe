//! A response read from a Service and passed to the client: interim heads
//! as they come, the final head rewritten, the body as it came.

use std::{
    mem::MaybeUninit,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    BODY_BUFFER, HEAD_BUFFER, MAX_HEAD, Next,
    chunked::Chunked,
    exchange::{DownloadError, Relayed, client_gone, cut, early, write_flush},
    wire::{self, Framing, MAX_HEADERS},
};
use crate::upstream::forward::ForwardError;

/// Reading a response from the upstream and passing it to the client.
pub(super) struct Download<'a, R, W> {
    pub upstream: &'a mut R,
    pub buf: &'a mut BytesMut,
    pub client: &'a mut W,
    pub down: &'a mut Vec<u8>,
    pub head: bool,
    pub close: bool,
    /// For the response head, from `started`; `None` when the caller
    /// keeps the time.
    pub timeout: Option<Duration>,
    pub started: Instant,
    pub sent_head: &'a AtomicBool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Download<'_, R, W> {
    /// Relays the response; returns its status, whether the upstream
    /// connection can be reused, and what becomes of the client's.
    pub async fn run(&mut self) -> Result<Relayed, DownloadError> {
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
