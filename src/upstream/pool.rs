//! Upstream connections of every component: TCP, or TLS over it for
//! https, kept alive in a bounded pool of idle connections per origin (the
//! bounds are flags, [`super::PoolArgs`]).
//!
//! A lean stand-in for hyper-util's legacy client, which cost the relay more
//! per request than the rest of its work together. The pool holds whatever
//! connection type its user speaks HTTP/1.1 over: a hyper `SendRequest`
//! (taken back as soon as the response head is in, idle again once hyper's
//! connection task has finished the response), or the exit relay's own
//! connections (taken back when the response has ended). No task per
//! request, no connector future built when a pooled connection exists.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use http::uri::Authority;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::directory::Directory;
use crate::net::Stream;

/// How many idle connections the pool keeps, and for how long (from the
/// flags, [`super::PoolArgs`]).
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Idle connections kept per origin; more are closed when they go idle.
    pub max_idle_per_origin: usize,
    /// An idle connection unused for this long is closed (checked a third
    /// as often, by the reaper). Above zero.
    pub idle_timeout: Duration,
}

// The flags' defaults, for tests; the flags are the one source otherwise.
#[cfg(test)]
impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_idle_per_origin: 64,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Where a connection goes: scheme and authority (host and port).
#[derive(Debug, Clone)]
pub struct Origin {
    pub https: bool,
    pub authority: Authority,
}

// As a pool key, the authority compares and hashes as its bytes: the
// case-insensitive `Hash` of `Authority` goes a byte at a time, which showed
// in the profile. Names that differ only in case get pools of their own.
impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.https == other.https && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Origin {}

impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        self.authority.as_str().hash(state);
    }
}

impl Origin {
    /// The port the authority names, or the scheme's default.
    fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.https { 443 } else { 80 })
    }
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("locating {0}: {1}")]
    Lookup(String, String),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("connecting to {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("{0} is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP/1.1 handshake with {0}: {1}")]
    Handshake(String, hyper::Error),
}

/// What a pooled connection says of itself when it is looked for.
pub enum IdleState {
    /// Can take a request now.
    Ready,
    /// Still finishing its last response; may be ready later.
    Busy,
    /// Closed: drop it.
    Closed,
}

/// A connection the pool can hold.
pub trait Pooled: Send + 'static {
    fn idle_state(&self) -> IdleState;
}

/// How the pool connects.
#[derive(Clone)]
pub struct Connector {
    pub tls: Arc<ClientConfig>,
    /// Verify https servers as this name instead of the origin's host.
    pub server_name: Option<ServerName<'static>>,
    pub directory: Directory,
    pub connect_timeout: Duration,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

struct Inner<C> {
    connector: Connector,
    limits: PoolLimits,
    idle: Mutex<HashMap<Origin, Vec<Idle<C>>>>,
    /// Whether the task that closes long-idle connections runs.
    reaping: std::sync::atomic::AtomicBool,
}

/// A pool of upstream connections; cheap to clone.
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Pooled> Pool<C> {
    pub fn new(connector: Connector, limits: PoolLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                limits,
                idle: Mutex::new(HashMap::new()),
                reaping: false.into(),
            }),
        }
    }

    /// An idle pooled connection to `origin` that can take a request now.
    /// Most recently used first: its buffers are warm, and the least used
    /// ones are left for the reaper when fewer are needed. One still
    /// finishing its last response (a long body) stays, and the caller
    /// opens a new connection rather than wait for it.
    pub fn idle(&self, origin: &Origin) -> Option<C> {
        let mut idle = self.inner.idle.lock().expect("pool lock");
        let list = idle.get_mut(origin)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            match list[i].conn.idle_state() {
                IdleState::Ready => return Some(list.remove(i).conn),
                IdleState::Closed => drop(list.remove(i)),
                IdleState::Busy => {}
            }
        }
        None
    }

    /// Takes a connection back once it can serve another request (or,
    /// for hyper, will when its response has ended).
    pub fn put(&self, origin: &Origin, conn: C) {
        if matches!(conn.idle_state(), IdleState::Closed) {
            return;
        }
        let mut idle = self.inner.idle.lock().expect("pool lock");
        // Found without cloning the key but the first time: an origin's
        // list stays in the map when it empties, until the reaper runs.
        let list = match idle.get_mut(origin) {
            Some(list) => list,
            None => idle.entry(origin.clone()).or_default(),
        };
        if list.len() >= self.inner.limits.max_idle_per_origin {
            // Dropping it closes the connection (once it is idle).
            return;
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        self.start_reaper();
    }

    /// How this pool connects.
    pub fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// Starts, once, the task that closes connections idle for too long,
    /// so a burst to an origin that then goes quiet does not hold its
    /// connections forever. It ends when the pool is dropped.
    fn start_reaper(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Inner<C>> = Arc::downgrade(&self.inner);
        // `interval` takes no zero period; the flag is checked above zero.
        let idle_timeout = self.inner.limits.idle_timeout.max(Duration::from_millis(3));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(idle_timeout / 3);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let mut idle = inner.idle.lock().expect("pool lock");
                for list in idle.values_mut() {
                    list.retain(|e| {
                        !matches!(e.conn.idle_state(), IdleState::Closed)
                            && e.since.elapsed() < idle_timeout
                    });
                }
                idle.retain(|_, list| !list.is_empty());
            }
        });
    }
}

impl Connector {
    /// Connects to `origin`: resolve, TCP (within the connect timeout),
    /// then TLS for https.
    pub async fn connect(&self, origin: &Origin) -> Result<Stream, ConnectError> {
        let host = origin.authority.host();
        let tcp = connect_tcp(self, host, origin.port()).await?;
        if !origin.https {
            return Ok(Stream::Plain(tcp));
        }
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                // An IPv6 literal comes in brackets.
                let bare = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                ServerName::try_from(bare.to_owned())
                    .map_err(|_| ConnectError::ServerName(bare.to_owned()))?
            }
        };
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|err| ConnectError::Tls(host.to_owned(), err))?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

/// TCP to the first address of `host` that answers; the connect timeout is
/// shared out among the addresses, as hyper-util's connector does.
async fn connect_tcp(
    connector: &Connector,
    host: &str,
    port: u16,
) -> Result<TcpStream, ConnectError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addresses = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => connector
            .directory
            .addresses(bare)
            .await
            .map_err(|err| ConnectError::Lookup(host.to_owned(), err.to_string()))?,
    };
    if addresses.is_empty() {
        return Err(ConnectError::NoAddress(host.to_owned()));
    }
    let each = connector.connect_timeout / u32::try_from(addresses.len()).unwrap_or(u32::MAX);
    let mut last = None;
    for ip in addresses {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(each, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Request heads are small writes; do not hold them back.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(err)) => last = Some(ConnectError::Tcp(addr, err)),
            Err(_) => last = Some(ConnectError::Timeout(addr)),
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::NoAddress(host.to_owned())))
}
