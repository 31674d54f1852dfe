//! Upstream bodies in the ETag profile: read into memory up to
//! `--max-object-bytes` so they can be stored and shared with coalesced
//! waiters, or, once they prove larger, streamed on with what was already
//! read put back in front.

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};

use super::client::FetchError;
use crate::http_server::{Body, BoxError};

/// A body read into memory, or the part read before it proved too large.
pub enum Buffered {
    Whole(Bytes),
    TooLarge(BytesMut, Incoming),
}

/// Reads `body` up to `limit` bytes.
pub async fn buffer(mut body: Incoming, limit: usize) -> Result<Buffered, FetchError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| FetchError::Body(err.to_string()))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Buffered::TooLarge(buf, body));
            }
        }
    }
    Ok(Buffered::Whole(buf.freeze()))
}

/// `prefix` followed by the rest of `body`, streamed.
pub fn chain(prefix: Bytes, body: Incoming) -> Body {
    let first = futures::stream::once(async move { Ok::<_, BoxError>(Frame::data(prefix)) });
    let rest = BodyStream::new(body).map(|frame| frame.map_err(|err| Box::new(err) as BoxError));
    BodyExt::boxed(StreamBody::new(first.chain(rest)))
}
