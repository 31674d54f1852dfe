//! `agent apiserver-relay`: a raw TCP relay to the managed kube-apiserver.
//! Clients keep TLS end to end with the apiserver; the relay only moves
//! bytes. The target comes from the managed kubeconfig and follows it.

mod metrics;
mod pipe;
mod server;

use std::{net::SocketAddr, time::Duration};

use prometheus::Registry;

pub use self::server::RelayConfig;
use crate::{
    admin::{self, AdminArgs, AdminState, Readiness},
    kube_client::KubeArgs,
    managed_kubeconfig::ManagedKubeconfigArgs,
    net,
    shutdown::{Shutdown, ShutdownArgs},
};

/// Flags of `agent apiserver-relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to accept client connections on.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LISTEN_ADDR",
        default_value = "0.0.0.0:6443"
    )]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub managed: ManagedKubeconfigArgs,

    /// Give up connecting to the managed apiserver (name lookup included)
    /// after this long.
    #[arg(long, env = "CLUSTER_RELAY_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Close a connection when no byte has moved either way for this long;
    /// `0s` never closes idle connections. Quiet watches count as idle, so
    /// keep it above the apiserver's watch timeout (--min-request-timeout,
    /// 30 min by default) unless clients reconnect on their own.
    #[arg(long, env = "CLUSTER_RELAY_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Most client connections relayed at once; further ones are closed at
    /// once and counted in ..._connections_rejected_total. Each connection
    /// uses two file descriptors.
    #[arg(long, env = "CLUSTER_RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// Runs the relay until `shutdown` drains and aborts it.
pub async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    // Checked first, so a missing source is the error a bare invocation gets.
    args.managed.source().map_err(anyhow::Error::msg)?;
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    let config = RelayConfig {
        connect_timeout: args.connect_timeout,
        idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
        max_connections: args.max_connections,
    };

    // Two descriptors a connection, plus room for the admin server, the
    // Kubernetes client and connections being rejected.
    let fds_needed = 2 * args.max_connections as u64 + 256;
    let fd_limit = net::raise_nofile_limit(fds_needed);
    if fd_limit < fds_needed {
        tracing::warn!(
            fd_limit,
            max_connections = args.max_connections,
            "the open-file limit is below what --max-connections needs; accepts will fail before the cap"
        );
    }

    let registry = Registry::new();
    let readiness = Readiness::default();
    let current = args
        .managed
        .follow(&args.kube, &readiness, &registry)
        .await?;
    let metrics = metrics::RelayMetrics::new(&registry);

    let _admin = admin::start(
        &args.admin,
        AdminState {
            registry,
            readiness,
            shutdown: shutdown.clone(),
        },
    )?;
    let listener = net::listen(args.listen_addr, "--listen-addr", "relay")?;
    server::serve(listener, config, current, metrics, shutdown).await;
    Ok(())
}
