//! `agent provision-kubeconfig`: turns the given admin kubeconfig of the
//! managed cluster (a Secret on the hosting cluster) into a managed
//! kubeconfig Secret holding a short-lived ServiceAccount token, and keeps it
//! valid: refreshed before expiry, when the source changes, and when the
//! target is missing or altered; never replaced by anything unverified.

mod hub;
mod managed;
mod metrics;
mod reconcile;
mod source;
mod target;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::DeleteParams};
use prometheus::Registry;

pub use self::{hub::HubArgs, managed::Identity};
use crate::{
    admin::{AdminArgs, AdminState, Readiness},
    kube_client::KubeArgs,
    leader::{LeaderArgs, Leadership},
    secret_watch::{SecretRef, watch_secret},
    shutdown::{Shutdown, ShutdownArgs},
};

/// Flags of `agent provision-kubeconfig`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Namespace on the hosting cluster of the source and target Secrets.
    /// Default: the namespace this pod runs in.
    #[arg(long, env = "CLUSTER_RELAY_NAMESPACE")]
    pub namespace: Option<String>,

    /// Secret holding the given (admin-ish) kubeconfig of the managed cluster.
    #[arg(
        long,
        env = "CLUSTER_RELAY_SOURCE_SECRET",
        default_value = "external-managed-kubeconfig"
    )]
    pub source_secret: String,

    /// Key of the kubeconfig in the source Secret.
    #[arg(
        long,
        env = "CLUSTER_RELAY_SOURCE_SECRET_KEY",
        default_value = "kubeconfig"
    )]
    pub source_secret_key: String,

    /// Context of the source kubeconfig to use (default: its current-context).
    #[arg(long, env = "CLUSTER_RELAY_SOURCE_CONTEXT")]
    pub source_context: Option<String>,

    /// Secret to write the managed kubeconfig (with the ServiceAccount token) to.
    #[arg(
        long,
        env = "CLUSTER_RELAY_TARGET_SECRET",
        default_value = "cluster-relay-managed-kubeconfig"
    )]
    pub target_secret: String,

    /// Key of the kubeconfig in the target Secret.
    #[arg(
        long,
        env = "CLUSTER_RELAY_TARGET_SECRET_KEY",
        default_value = "kubeconfig"
    )]
    pub target_secret_key: String,

    /// ServiceAccount on the managed cluster whose tokens the relays use.
    #[arg(
        long,
        env = "CLUSTER_RELAY_SERVICE_ACCOUNT",
        default_value = "cluster-relay"
    )]
    pub service_account: String,

    /// Namespace of that ServiceAccount on the managed cluster; created if
    /// missing (and then removed by --cleanup).
    #[arg(
        long,
        env = "CLUSTER_RELAY_SERVICE_ACCOUNT_NAMESPACE",
        default_value = "cluster-relay"
    )]
    pub service_account_namespace: String,

    /// Existing ClusterRole on the managed cluster to bind to the
    /// ServiceAccount, besides the provisioner's own role (services/proxy,
    /// tokenreviews, subjectaccessreviews). Repeat or separate with commas.
    #[arg(
        long = "cluster-role",
        env = "CLUSTER_RELAY_CLUSTER_ROLES",
        value_delimiter = ','
    )]
    pub cluster_roles: Vec<String>,

    /// Lifetime asked for each token (the apiserver's minimum is 10m).
    #[arg(long, env = "CLUSTER_RELAY_TOKEN_EXPIRATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub token_expiration: Duration,

    /// Audience of the tokens; repeat for several. Default: the apiserver's.
    #[arg(
        long = "token-audience",
        env = "CLUSTER_RELAY_TOKEN_AUDIENCES",
        value_delimiter = ','
    )]
    pub token_audiences: Vec<String>,

    /// Replace the token when it expires within this long. Default: a fifth
    /// of --token-expiration.
    #[arg(long, env = "CLUSTER_RELAY_REFRESH_BEFORE", value_parser = humantime::parse_duration)]
    pub refresh_before: Option<Duration>,

    /// Check everything again at least this often, whatever the watches say.
    #[arg(long, env = "CLUSTER_RELAY_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Timeout of each call to the managed cluster's and the hub's apiservers.
    #[arg(long, env = "CLUSTER_RELAY_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Longest wait between retries after failures (doubling from 1s).
    #[arg(long, env = "CLUSTER_RELAY_MAX_BACKOFF", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,

    /// Remove what the provisioner made (the target Secret, and the
    /// ServiceAccount, its RBAC and namespace on the managed cluster), then
    /// exit: for the add-on's pre-delete Job. Idempotent.
    #[arg(long, env = "CLUSTER_RELAY_CLEANUP")]
    pub cleanup: bool,

    /// With --cleanup: retry failures for this long, then log what is left
    /// and exit 0. A pre-delete Job that fails blocks the add-on's deletion
    /// until someone intervenes; one that gives up does not. Default: exit
    /// non-zero on the first failure.
    #[arg(long, env = "CLUSTER_RELAY_CLEANUP_GIVE_UP_AFTER", value_parser = humantime::parse_duration, requires = "cleanup")]
    pub cleanup_give_up_after: Option<Duration>,

    /// With --cleanup and --leader-elect: the ServiceAccount (in
    /// --namespace) to make the owner of the seized Lease, so that the
    /// Lease goes when the add-on's objects go (nothing renders it).
    #[arg(long, env = "CLUSTER_RELAY_CLEANUP_LEASE_OWNER", requires = "cleanup")]
    pub cleanup_lease_owner: Option<String>,

    #[command(flatten)]
    pub hub: HubArgs,

    #[command(flatten)]
    pub leader: LeaderArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// Why provisioning failed, by stage; maps to a metric label and a
/// condition reason.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("source Secret {0} not found")]
    SourceMissing(String),
    #[error("cannot watch the source Secret {secret}: {error}")]
    SourceUnavailable { secret: String, error: String },
    #[error("source Secret {secret} has no key {key:?}")]
    SourceKey { secret: String, key: String },
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("managed cluster: {action}: {source}")]
    Managed {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("token request: {0}")]
    Token(String),
    #[error("kubeconfig failed verification: {0}")]
    Verify(String),
    #[error("the managed apiserver rejects the token (401)")]
    Rejected,
    #[error("hosting cluster: {action}: {source}")]
    Hosting {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl ProvisionError {
    /// The `stage` label of `cluster_relay_provisioner_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProvisionError::SourceMissing(_)
            | ProvisionError::SourceUnavailable { .. }
            | ProvisionError::SourceKey { .. }
            | ProvisionError::Source(_) => "source",
            ProvisionError::Managed { .. } => "managed",
            ProvisionError::Token(_) => "token",
            ProvisionError::Verify(_) | ProvisionError::Rejected => "verify",
            ProvisionError::Hosting { .. } => "hosting",
        }
    }

    /// The reason of the hub condition.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            ProvisionError::SourceMissing(_)
            | ProvisionError::SourceUnavailable { .. }
            | ProvisionError::SourceKey { .. } => "SourceKubeconfigMissing",
            ProvisionError::Source(_) => "SourceKubeconfigInvalid",
            ProvisionError::Managed { .. } => "ManagedClusterUnavailable",
            ProvisionError::Token(_) => "TokenRequestFailed",
            ProvisionError::Verify(_) | ProvisionError::Rejected => "TokenVerificationFailed",
            ProvisionError::Hosting { .. } => "TargetSecretWriteFailed",
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub source: SecretRef,
    pub source_key: String,
    pub source_context: Option<String>,
    pub target: SecretRef,
    pub target_key: String,
    pub identity: Identity,
    pub refresh_before: Duration,
    pub resync_interval: Duration,
    pub request_timeout: Duration,
    pub max_backoff: Duration,
}

const IN_CLUSTER_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// The TokenRequest API refuses shorter lifetimes.
const MIN_TOKEN_EXPIRATION: Duration = Duration::from_secs(600);

impl Args {
    /// Checks the flags and fills in defaults.
    pub fn config(&self) -> anyhow::Result<Config> {
        let namespace = match &self.namespace {
            Some(namespace) => namespace.clone(),
            None => std::fs::read_to_string(IN_CLUSTER_NAMESPACE)
                .map(|text| text.trim().to_owned())
                .map_err(|_| {
                    anyhow::anyhow!("--namespace is required when not running in a pod")
                })?,
        };
        if self.token_expiration < MIN_TOKEN_EXPIRATION {
            anyhow::bail!(
                "--token-expiration must be at least 10m (the TokenRequest API's minimum)"
            );
        }
        let refresh_before = self.refresh_before.unwrap_or(self.token_expiration / 5);
        if refresh_before.is_zero() || refresh_before >= self.token_expiration {
            anyhow::bail!("--refresh-before must be above 0 and below --token-expiration");
        }
        if self.resync_interval.is_zero() {
            anyhow::bail!("--resync-interval must be above 0");
        }
        if self.hub.hub_kubeconfig.is_some() && self.hub.addon_namespace.is_none() {
            anyhow::bail!(
                "--hub-kubeconfig needs --addon-namespace (the managed cluster's name on the hub)"
            );
        }
        if self.source_secret == self.target_secret {
            anyhow::bail!("--source-secret and --target-secret must differ");
        }
        let secret = |name: &str| SecretRef {
            namespace: namespace.clone(),
            name: name.to_owned(),
        };
        Ok(Config {
            source: secret(&self.source_secret),
            source_key: self.source_secret_key.clone(),
            source_context: self.source_context.clone(),
            target: secret(&self.target_secret),
            target_key: self.target_secret_key.clone(),
            identity: Identity {
                namespace: self.service_account_namespace.clone(),
                name: self.service_account.clone(),
                cluster_roles: self
                    .cluster_roles
                    .iter()
                    .filter(|r| !r.is_empty())
                    .cloned()
                    .collect(),
                audiences: self.token_audiences.clone(),
                expiration: self.token_expiration,
            },
            namespace,
            refresh_before,
            resync_interval: self.resync_interval,
            request_timeout: self.request_timeout,
            max_backoff: self.max_backoff,
        })
    }
}

/// Runs the provisioner (or, with `--cleanup`, removes what it made).
pub async fn run(args: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let config = args.config()?;
    // Validates the leader-election flags before anything is touched.
    let lease = args
        .leader
        .config(&config.namespace)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let hosting = args.kube.client().await?;
    if args.cleanup {
        let plan = CleanupPlan {
            lease,
            lease_owner: args.cleanup_lease_owner.clone(),
            give_up_after: args.cleanup_give_up_after,
        };
        return cleanup_until(&config, hosting, plan).await;
    }
    let hub = match &args.hub.hub_kubeconfig {
        Some(path) => {
            let hub_args = KubeArgs {
                kubeconfig: Some(path.clone()),
                context: None,
            };
            let client = hub_args
                .client()
                .await
                .map_err(|err| anyhow::anyhow!("--hub-kubeconfig: {err}"))?;
            let namespace = args
                .hub
                .addon_namespace
                .as_deref()
                .expect("validated with --hub-kubeconfig");
            Some(hub::HubReporter::new(
                client,
                namespace,
                &args.hub.addon_name,
            ))
        }
        None => None,
    };

    let registry = Registry::new();
    let readiness = Readiness::default();
    let metrics = metrics::ProvisionerMetrics::new(&registry);
    let leadership =
        Leadership::from_args(&args.leader, &config.namespace, hosting.clone(), &registry)
            .map_err(|err| anyhow::anyhow!("{err}"))?;
    let _admin = crate::admin::start(
        &args.admin,
        AdminState {
            registry,
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
        },
    )?;
    let source = watch_secret(hosting.clone(), config.source.clone());
    let target = watch_secret(hosting.clone(), config.target.clone());
    let reconciler = reconcile::Reconciler::new(
        config,
        hosting,
        hub,
        metrics,
        readiness.check("provisioner"),
    );
    reconciler
        .run(source, target, leadership.subscribe(), shutdown)
        .await;
    // The writer has stopped: hand the lease over at once.
    leadership.release().await;
    Ok(())
}

/// How long `--cleanup` holds the Lease: replicas still running stay idle
/// for this long, enough for the add-on framework or Helm to remove their
/// Deployment after the pre-delete Job.
const CLEANUP_LEASE_HOLD: std::time::Duration = std::time::Duration::from_secs(3600);

/// What `--cleanup` does besides removing: the Lease to seize and its
/// owner, and how long to retry.
struct CleanupPlan {
    lease: Option<crate::leader::LeaderConfig>,
    lease_owner: Option<String>,
    give_up_after: Option<Duration>,
}

/// Longest pause between two cleanup attempts.
const CLEANUP_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `--cleanup`, retried until `give_up_after` (if set), after which the
/// failure is logged and the run succeeds: the framework waits for the Job
/// to complete before it deletes the add-on, and a failed Job never does.
async fn cleanup_until(
    config: &Config,
    hosting: kube::Client,
    mut plan: CleanupPlan,
) -> anyhow::Result<()> {
    let deadline = plan
        .give_up_after
        .map(|after| tokio::time::Instant::now() + after);
    let mut backoff = Duration::from_secs(1);
    loop {
        let err = match cleanup(config, hosting.clone(), &mut plan).await {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let Some(deadline) = deadline else {
            return Err(err);
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            tracing::error!(
                error = %format!("{err:#}"),
                service_account = %config.identity.name,
                namespace = %config.identity.namespace,
                "cleanup gave up: what it could not remove stays (the relay identity and its RBAC on the managed cluster); exiting 0 so that the add-on's deletion goes on"
            );
            return Ok(());
        }
        tracing::warn!(error = %format!("{err:#}"), retry_in = %humantime::format_duration(backoff), "cleanup failed; retrying");
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(CLEANUP_MAX_BACKOFF);
    }
}

/// `--cleanup`: the target Secret on the hosting cluster, then what was made
/// on the managed cluster (through the source kubeconfig).
///
/// The pre-delete Job runs while the provisioner still does, which would
/// write everything again. With leader election the cleanup first marks
/// the Lease so that replicas retire (and never make it again once it is
/// gone), seizes it for [`CLEANUP_LEASE_HOLD`] and waits out the renew
/// deadline, after which no replica writes. The Lease stays, held; with
/// `--cleanup-lease-owner` it is owned by the provisioner's ServiceAccount
/// and goes with it. Seizing happens once (`plan.lease` is taken).
async fn cleanup(
    config: &Config,
    hosting: kube::Client,
    plan: &mut CleanupPlan,
) -> anyhow::Result<()> {
    if let Some(lease) = plan.lease.as_ref() {
        // Replicas still running when the Lease goes (with its owner)
        // must not make a new one that would outlive the release.
        crate::leader::retire_candidates(hosting.clone(), lease)
            .await
            .map_err(|err| {
                anyhow::anyhow!(
                    "marking the Lease {}/{} for cleanup: {err}",
                    lease.namespace,
                    lease.lease_name
                )
            })?;
        crate::leader::seize(hosting.clone(), lease, CLEANUP_LEASE_HOLD)
            .await
            .map_err(|err| {
                anyhow::anyhow!(
                    "seizing the Lease {}/{}: {err}",
                    lease.namespace,
                    lease.lease_name
                )
            })?;
        if let Some(owner) = &plan.lease_owner {
            crate::leader::own_by_service_account(hosting.clone(), lease, owner)
                .await
                .map_err(|err| {
                    anyhow::anyhow!(
                        "making ServiceAccount {owner} the owner of the Lease {}: {err}",
                        lease.lease_name
                    )
                })?;
        }
        let wait = lease.timings.renew_deadline();
        tracing::info!(
            lease = %lease.lease_name,
            wait = %humantime::format_duration(wait),
            "holding the leader-election Lease; waiting out the renew deadline so that no replica writes"
        );
        // A lease protocol's fence: a leader that has not renewed within
        // its renew deadline has stopped writing.
        tokio::time::sleep(wait).await;
        plan.lease = None;
    }
    let secrets: Api<Secret> = Api::namespaced(hosting, &config.namespace);
    let removed_target = match secrets
        .delete(&config.target.name, &DeleteParams::default())
        .await
    {
        Ok(_) => 1,
        Err(kube::Error::Api(status)) if status.code == 404 => 0,
        Err(err) => anyhow::bail!("deleting the target Secret {}: {err}", config.target),
    };
    let source = secrets
        .get_opt(&config.source.name)
        .await
        .map_err(|err| anyhow::anyhow!("reading the source Secret {}: {err}", config.source))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot clean up the managed cluster: source Secret {} not found",
                config.source
            )
        })?;
    let bytes = source
        .data
        .as_ref()
        .and_then(|data| data.get(&config.source_key))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "source Secret {} has no key {:?}",
                config.source,
                config.source_key
            )
        })?;
    let source = source::parse(&bytes.0, config.source_context.as_deref())?;
    let managed = source.client(config.request_timeout).await?;
    let removed = managed::cleanup(&managed, &config.identity).await?;
    tracing::info!(
        target_secret = %config.target,
        deleted_on_hosting = removed_target,
        deleted_on_managed = removed,
        "cleanup done; nothing of ours is left"
    );
    Ok(())
}
