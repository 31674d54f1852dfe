//! The command line: global flags, one `Command` variant per subcommand (its
//! doc comment is the subcommand's help text), and the dispatch to each
//! component's `run`.

use clap::{Parser, Subcommand};

use crate::{apiserver_relay, shutdown::Shutdown, telemetry::LogArgs};

/// Relays for hosted-mode Kubernetes add-ons: the hosting cluster does the
/// relay work for a managed cluster that runs no agent of its own.
///
/// Every flag can also be set through the environment variable shown with it.
#[derive(Debug, Parser)]
#[command(name = "agent", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Raw TCP relay to the managed kube-apiserver.
    ///
    /// Clients speak TLS end to end with the managed kube-apiserver; the relay
    /// never terminates TLS. The target host:port is the `server` of the
    /// managed kubeconfig (a file or a Secret on the hosting cluster) and
    /// follows it when it changes: new connections go to the new target,
    /// established ones are left alone. Connections beyond
    /// --max-connections are closed at once and counted as rejected.
    ApiserverRelay(apiserver_relay::Args),
}

/// Runs a subcommand until it finishes or a shutdown signal ends it.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::ApiserverRelay(args) => {
            let shutdown = Shutdown::on_signals(args.shutdown.grace_period)?;
            apiserver_relay::run(args, shutdown).await
        }
    }
}
