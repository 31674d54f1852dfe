//! The upstream layer every HTTP feature dials through (service relay, read
//! cache, webhook fan-out, delivery forwarder): kube-style service targets
//! and the `Cluster-Proxy-*` header names, finding a Service's addresses,
//! and the one pooled HTTP/1.1 client with its typed errors. Its TLS comes
//! from [`crate::tls`]. Features use it; it uses no feature.

pub mod directory;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod target;

use std::time::Duration;

use self::pool::PoolLimits;

/// The pool's bounds, flags of every subcommand that dials upstreams.
#[derive(Debug, Clone, Copy, clap::Args)]
#[command(next_help_heading = "Upstream connections")]
pub struct PoolArgs {
    /// Idle upstream connections kept per origin (scheme, host and port)
    /// for the next request; more are closed as they go idle. 0 keeps none.
    #[arg(
        long,
        env = "CLUSTER_RELAY_UPSTREAM_MAX_IDLE_PER_ORIGIN",
        default_value_t = 64
    )]
    pub upstream_max_idle_per_origin: usize,

    /// An idle upstream connection unused for this long is closed.
    #[arg(long, env = "CLUSTER_RELAY_UPSTREAM_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub upstream_idle_timeout: Duration,
}

/// A pool flag out of range.
#[derive(Debug, thiserror::Error)]
#[error("--upstream-idle-timeout must be above 0")]
pub struct PoolArgsError;

impl PoolArgs {
    /// The validated bounds.
    pub fn limits(&self) -> Result<PoolLimits, PoolArgsError> {
        if self.upstream_idle_timeout.is_zero() {
            return Err(PoolArgsError);
        }
        Ok(PoolLimits {
            max_idle_per_origin: self.upstream_max_idle_per_origin,
            idle_timeout: self.upstream_idle_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_timeout_of_zero_is_refused() {
        let mut args = PoolArgs {
            upstream_max_idle_per_origin: 0,
            upstream_idle_timeout: Duration::from_secs(90),
        };
        assert_eq!(args.limits().expect("valid").max_idle_per_origin, 0);
        args.upstream_idle_timeout = Duration::ZERO;
        assert_eq!(
            args.limits().expect_err("zero").to_string(),
            "--upstream-idle-timeout must be above 0"
        );
    }
}
