//! Moves bytes both ways between two TCP sockets until both sides are done.
//!
//! Each direction waits for readiness before it borrows a buffer from a
//! shared pool and returns it as soon as the socket has nothing more to
//! read, so an idle connection holds no buffer: ten thousand idle watches
//! cost sockets and small task states, not 10,000 × 2 buffers.
//! End of stream on one side becomes a write shutdown (FIN) on the other,
//! so half-closed conversations complete.

use std::{
    io,
    net::Shutdown,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus::IntCounter;
use tokio::{net::TcpStream, time::Instant};

/// Size of one copy buffer. Larger than a loopback segment (64 KiB) so bulk
/// transfers take few system calls.
const BUFFER_SIZE: usize = 128 * 1024;
/// Free buffers kept for reuse; more are freed.
const POOL_LIMIT: usize = 256;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn take_buffer() -> Box<[u8]> {
    let reused = POOL.lock().expect("pool lock is never poisoned").pop();
    reused.unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

fn give_buffer(buffer: Box<[u8]>) {
    let mut pool = POOL.lock().expect("pool lock is never poisoned");
    if pool.len() < POOL_LIMIT {
        pool.push(buffer);
    }
}

/// When bytes last moved on a connection, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.last() + timeout;
            tokio::time::sleep_until(deadline).await;
            if self.last() + timeout <= Instant::now() {
                return;
            }
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Relays both directions until each has seen end of stream, or until the
/// first error (then the caller drops both sockets).
pub async fn both_ways(
    client: &TcpStream,
    upstream: &TcpStream,
    to_upstream: &IntCounter,
    to_client: &IntCounter,
    activity: &Activity,
) -> io::Result<()> {
    tokio::try_join!(
        one_way(client, upstream, to_upstream, activity),
        one_way(upstream, client, to_client, activity),
    )?;
    Ok(())
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    bytes: &IntCounter,
    activity: &Activity,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let mut buffer = take_buffer();
        let result = drain_readable(src, dst, &mut buffer, bytes, activity).await;
        give_buffer(buffer);
        match result? {
            Flow::WouldBlock => continue,
            Flow::Eof => {
                // Pass the half-close on. If the peer is already gone the
                // other direction reports it.
                let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                return Ok(());
            }
        }
    }
}

enum Flow {
    WouldBlock,
    Eof,
}

async fn drain_readable(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: &mut [u8],
    bytes: &IntCounter,
    activity: &Activity,
) -> io::Result<Flow> {
    loop {
        match src.try_read(buffer) {
            Ok(0) => return Ok(Flow::Eof),
            Ok(n) => {
                activity.touch();
                write_all(dst, &buffer[..n]).await?;
                bytes.inc_by(n as u64);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Flow::WouldBlock),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connect = TcpStream::connect(listener.local_addr().expect("addr"));
        let (a, b) = tokio::join!(connect, listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn half_close_passes_through_and_the_reply_arrives() {
        // client <-> (relay_client | relay_upstream) <-> server
        let (mut client, relay_client) = pair().await;
        let (relay_upstream, mut server) = pair().await;
        let up = IntCounter::new("up", "up").expect("metric");
        let down = IntCounter::new("down", "down").expect("metric");
        let activity = Activity::new();
        let relay = both_ways(&relay_client, &relay_upstream, &up, &down, &activity);
        let peers = async {
            client.write_all(b"question").await.expect("write");
            client.shutdown().await.expect("shutdown");
            let mut asked = Vec::new();
            server
                .read_to_end(&mut asked)
                .await
                .expect("server reads to EOF");
            let reply = vec![7u8; 3 * BUFFER_SIZE + 11];
            server.write_all(&reply).await.expect("reply");
            server.shutdown().await.expect("server shutdown");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("client reads");
            (asked, got, reply)
        };
        let (relayed, (asked, got, reply)) = tokio::join!(relay, peers);
        relayed.expect("relay ends cleanly");
        assert_eq!(asked, b"question");
        assert_eq!(got, reply);
        assert_eq!(up.get(), 8);
        assert_eq!(down.get(), reply.len() as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_resolves_only_after_quiet_time() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(6)).await;
        activity.touch();
        let started = Instant::now();
        activity.idle_for(timeout).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
