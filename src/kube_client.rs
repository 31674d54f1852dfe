//! The hosting-cluster client flags (`--kubeconfig`, `--context`) and the
//! client they build, falling back to `$KUBECONFIG`, `~/.kube/config` or the
//! in-cluster service account, as kubectl does.

use std::path::PathBuf;

use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Flags for the Kubernetes client of the cluster the agent runs in.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Hosting cluster")]
pub struct KubeArgs {
    /// Kubeconfig for the hosting cluster (the one this agent runs on).
    /// Without it: $KUBECONFIG, ~/.kube/config, then the in-cluster service
    /// account.
    #[arg(long, env = "CLUSTER_RELAY_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Context to use from that kubeconfig (default: its current context).
    #[arg(long, env = "CLUSTER_RELAY_CONTEXT")]
    pub context: Option<String>,
}

/// Why a client could not be built; each names the flag to look at.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("--kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("--context {context:?}: {source}")]
    Context {
        context: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no usable kubeconfig or in-cluster config (set --kubeconfig): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("unusable kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
}

impl KubeArgs {
    /// Builds the client. Fails fast on an unreadable or invalid kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, KubeClientError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| KubeClientError::Read {
                        path: path.clone(),
                        source,
                    })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|source| KubeClientError::Read {
                        path: path.clone(),
                        source,
                    })?
            }
            (None, Some(context)) => {
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|source| KubeClientError::Context {
                        context: context.clone(),
                        source,
                    })?
            }
            (None, None) => kube::Config::infer()
                .await
                .map_err(KubeClientError::Infer)?,
        };
        kube::Client::try_from(config).map_err(KubeClientError::Client)
    }
}

/// A client from a kubeconfig value, with every connect, read and write
/// bounded by `timeout`. Files it refers to are read now.
pub async fn client_from_kubeconfig(
    kubeconfig: Kubeconfig,
    context: Option<String>,
    timeout: std::time::Duration,
) -> Result<kube::Client, KubeClientError> {
    let options = KubeConfigOptions {
        context,
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(KubeClientError::Kubeconfig)?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    kube::Client::try_from(config).map_err(KubeClientError::Client)
}
