//! The relay's accept loop and per-connection work: cap, dial the current
//! target, relay, time out when idle, and take part in shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{
    metrics::{DialError, RelayMetrics},
    pipe::{Activity, both_ways},
};
use crate::{
    managed_kubeconfig::{Current, Endpoint},
    shutdown::Shutdown,
};

/// The relay's limits, validated from the flags.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub connect_timeout: Duration,
    /// `None` disables the idle timeout.
    pub idle_timeout: Option<Duration>,
    pub max_connections: usize,
}

/// Accepts and relays connections until shutdown drains it, then waits for
/// open connections to finish, or until shutdown aborts them.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    current: Current,
    metrics: RelayMetrics,
    shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let tracker = TaskTracker::new();
    let config = Arc::new(config);
    loop {
        let (client, peer) = tokio::select! {
            _ = shutdown.draining() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    metrics.accept_errors.inc();
                    tracing::warn!(error = %err, "accept failed");
                    // Out of descriptors or memory: give closing connections a
                    // moment instead of spinning on the same error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.rejected.inc();
            tracing::debug!(%peer, max_connections = config.max_connections, "rejected: too many connections");
            drop(client);
            continue;
        };
        metrics.connections.inc();
        let target = current
            .borrow()
            .as_ref()
            .map(|kubeconfig| kubeconfig.endpoint.clone());
        let span = tracing::debug_span!("connection", %peer);
        tracker.spawn(
            relay(
                client,
                peer,
                target,
                config.clone(),
                metrics.clone(),
                shutdown.clone(),
                permit,
            )
            .instrument(span),
        );
    }
    drop(listener);
    tracker.close();
    tracing::info!(
        open = tracker.len(),
        "draining: no longer accepting connections"
    );
    tokio::select! {
        _ = tracker.wait() => tracing::info!("all connections closed"),
        _ = shutdown.aborted() => {
            tracing::warn!(open = tracker.len(), "closing the connections still open");
            tracker.wait().await;
        }
    }
}

async fn relay(
    client: TcpStream,
    peer: SocketAddr,
    target: Option<Endpoint>,
    config: Arc<RelayConfig>,
    metrics: RelayMetrics,
    shutdown: Shutdown,
    _permit: OwnedSemaphorePermit,
) {
    metrics.active.inc();
    let started = tokio::time::Instant::now();
    let outcome = relay_inner(client, target, &config, &metrics, &shutdown).await;
    metrics.active.dec();
    metrics.duration.observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(end) => tracing::debug!(%peer, end, "connection closed"),
        Err(err) => tracing::debug!(%peer, error = %err, "connection ended with an error"),
    }
}

async fn relay_inner(
    client: TcpStream,
    target: Option<Endpoint>,
    config: &RelayConfig,
    metrics: &RelayMetrics,
    shutdown: &Shutdown,
) -> std::io::Result<&'static str> {
    let Some(target) = target else {
        metrics.dial_error(DialError::NoTarget);
        tracing::warn!("no managed kubeconfig read yet; closing the connection");
        return Ok("no target");
    };
    let upstream = match dial(&target, config.connect_timeout).await {
        Ok(upstream) => upstream,
        Err(reason) => {
            metrics.dial_error(reason);
            tracing::warn!(%target, reason = reason.label(), "cannot reach the managed apiserver");
            return Ok("dial failed");
        }
    };
    // Small API requests and watch events should not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let activity = Activity::new();
    let idle = async {
        match config.idle_timeout {
            Some(timeout) => activity.idle_for(timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        relayed = both_ways(&client, &upstream, &metrics.bytes_to_upstream, &metrics.bytes_to_client, &activity) => {
            relayed.map(|()| "both sides closed")
        }
        _ = idle => Ok("idle timeout"),
        _ = shutdown.aborted() => Ok("shutdown"),
    }
}

async fn dial(target: &Endpoint, timeout: Duration) -> Result<TcpStream, DialError> {
    let addrs = match tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    {
        Err(_) => return Err(DialError::Timeout),
        Ok(Err(_)) => return Err(DialError::Resolve),
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
    };
    if addrs.is_empty() {
        return Err(DialError::Resolve);
    }
    let connect = async {
        let mut last = DialError::Other;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => {
                    last = match err.kind() {
                        std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset => DialError::Refused,
                        _ => DialError::Other,
                    }
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or(Err(DialError::Timeout))
}
