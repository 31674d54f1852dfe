//! The exit relay's connections to Services for its own path: TCP or TLS
//! with what was read from them and not used, in the shared pool.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::HEAD_BUFFER;
use crate::{
    net::Stream,
    service_relay::{
        forward::{ForwardError, Limits},
        pool::{Connector, IdleState, Origin, Pool, Pooled},
    },
};

/// A pooled connection idle for longer is checked for a close from the
/// upstream before it is used.
const CHECK_IDLE_AFTER: Duration = Duration::from_millis(50);

/// A connection to an upstream, with what was read from it and not used.
pub struct Conn {
    pub io: Stream,
    pub buf: BytesMut,
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
    pub response_timeout: Duration,
    pub max_body_bytes: Option<u64>,
}

impl Upstream {
    pub fn new(connector: Connector, limits: Limits) -> Self {
        Self {
            pool: Pool::new(connector, limits.pool),
            response_timeout: limits.response_timeout,
            max_body_bytes: limits.max_body_bytes,
        }
    }

    /// A pooled connection to `origin` that is still open, if any.
    pub fn idle(&self, origin: &Origin) -> Option<Conn> {
        while let Some(conn) = self.pool.idle(origin) {
            if conn.alive() {
                return Some(conn);
            }
        }
        None
    }

    pub async fn connect(&self, origin: &Origin) -> Result<Conn, ForwardError> {
        let io = Box::pin(self.pool.connector().connect(origin)).await?;
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(HEAD_BUFFER),
            idle_since: Instant::now(),
        })
    }

    /// Takes back a connection idle since `since` (a time already read,
    /// to spare a clock read per request).
    pub fn put(&self, origin: &Origin, mut conn: Conn, since: Instant) {
        conn.idle_since = since;
        self.pool.put(origin, conn);
    }
}
