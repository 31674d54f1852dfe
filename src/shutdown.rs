//! One shutdown protocol for every subcommand: the first SIGTERM or SIGINT
//! starts draining (stop accepting, `/readyz` turns 503, let work finish);
//! a second signal, or the end of the grace period, aborts what is left.

use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The grace period flag, shared by every long-running subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Shutdown")]
pub struct ShutdownArgs {
    /// How long in-flight work may take to finish after the first SIGTERM or
    /// SIGINT; a second signal cuts it short. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(
        long = "shutdown-grace-period",
        env = "CLUSTER_RELAY_SHUTDOWN_GRACE_PERIOD",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub grace_period: Duration,
}

/// The two stages of shutdown as cancellation tokens; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    drain: CancellationToken,
    abort: CancellationToken,
}

impl Shutdown {
    /// A shutdown that only [`Shutdown::drain`] and [`Shutdown::abort`]
    /// trigger; once draining starts, abort follows after `grace`.
    /// Must be called inside a Tokio runtime.
    pub fn new(grace: Duration) -> Self {
        let shutdown = Self {
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
        };
        let deadline = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = deadline.drain.cancelled() => {}
                _ = deadline.abort.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(grace) => {
                    tracing::warn!(grace_period = ?grace, "grace period over, aborting what is left");
                    deadline.abort.cancel();
                }
                _ = deadline.abort.cancelled() => {}
            }
        });
        shutdown
    }

    /// Like [`Shutdown::new`], and also driven by SIGTERM and SIGINT.
    pub fn on_signals(grace: Duration) -> std::io::Result<Self> {
        let shutdown = Self::new(grace);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let signals = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!(grace_period = ?grace, "signal received, draining; a second signal aborts");
            signals.drain();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal received, aborting");
            signals.abort();
        });
        Ok(shutdown)
    }

    /// Starts draining.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Aborts at once (and counts as draining too).
    pub fn abort(&self) {
        self.drain.cancel();
        self.abort.cancel();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves when draining starts.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    /// Resolves when draining starts; owns what it needs, so a connection
    /// can keep one across requests and poll it cheaply.
    pub fn draining_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.drain.clone().cancelled_owned()
    }

    /// Resolves when in-flight work must be abandoned.
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_turns_into_abort_after_the_grace_period() {
        let shutdown = Shutdown::new(Duration::from_secs(30));
        shutdown.drain();
        assert!(shutdown.is_draining());
        let started = tokio::time::Instant::now();
        shutdown.aborted().await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn abort_without_drain_is_also_draining() {
        let shutdown = Shutdown::new(Duration::from_secs(30));
        shutdown.abort();
        assert!(shutdown.is_draining());
        shutdown.aborted().await;
    }
}
