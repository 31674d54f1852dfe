//! Lease-based leader election on the hosting cluster, so that of several
//! replicas of a writer (`agent provision-kubeconfig --leader-elect`) exactly
//! one writes at a time. kube-rs has none; this follows the semantics of
//! client-go's `leaderelection` package (see `leader/elector.rs`).
//!
//! A caller gets a [`Leadership`] and reads `true`/`false` from its
//! [`watch::Receiver`]; without `--leader-elect` the receiver is always
//! `true`, so the caller's code is the same either way. On graceful shutdown
//! the caller stops its own writes first and then calls
//! [`Leadership::release`], which hands the lease over at once instead of
//! letting it lapse.

mod config;
mod elector;
mod record;

use std::{
    hash::{BuildHasher, Hasher},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use self::config::{LeaderArgs, LeaderConfig, LeaderConfigError, Timings};
use crate::admin::register;

/// Not cryptographic; only needs to differ between processes and calls.
fn random_u64() -> u64 {
    // RandomState is seeded from the OS per process; the time and pid keep
    // successive calls apart.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// The election's metrics.
#[derive(Debug, Clone)]
pub struct LeaderMetrics {
    is_leader: IntGauge,
    transitions: IntCounterVec,
}

impl LeaderMetrics {
    /// Registers the metrics on `registry`; once per registry.
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            is_leader: register(
                registry,
                IntGauge::new(
                    "cluster_relay_leader_election_is_leader",
                    "1 while this process holds the leader-election lease (or runs without --leader-elect), else 0.",
                )
                .expect("valid metric"),
            ),
            transitions: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_leader_election_transitions_total",
                        "Times this process became the leader (to=leader) or stopped being it (to=follower).",
                    ),
                    &["to"],
                )
                .expect("valid metric"),
            ),
        };
        // Both series exist from the start, so a rate over them is defined.
        for to in ["leader", "follower"] {
            metrics.transitions.with_label_values(&[to]);
        }
        metrics
    }
}

/// Whether this process may work: a running elector, or the constant answer
/// for a single replica. Dropping it stops the elector at once without
/// releasing the lease, as if the process had died; the lease then lapses.
#[derive(Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Always(watch::Sender<bool>),
    Elected {
        stop: CancellationToken,
        task: JoinHandle<()>,
    },
}

impl Leadership {
    /// Always the leader, for a process run without `--leader-elect`.
    pub fn always() -> Self {
        let (tx, leading) = watch::channel(true);
        Self {
            leading,
            mode: Mode::Always(tx),
        }
    }

    /// Starts an elector task for `config`; not the leader until it has
    /// acquired the lease. Must be called inside a Tokio runtime.
    pub fn elect(client: kube::Client, config: LeaderConfig, metrics: LeaderMetrics) -> Self {
        let (tx, leading) = watch::channel(false);
        metrics.is_leader.set(0);
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(elector::Elector::new(client, config, metrics, tx).run(stop.clone()));
        Self {
            leading,
            mode: Mode::Elected { stop, task },
        }
    }

    /// [`Leadership::elect`] with `--leader-elect`, else [`Leadership::always`];
    /// metrics go on `registry` either way.
    pub fn from_args(
        args: &LeaderArgs,
        default_namespace: &str,
        client: kube::Client,
        registry: &Registry,
    ) -> Result<Self, LeaderConfigError> {
        let config = args.config(default_namespace)?;
        let metrics = LeaderMetrics::new(registry);
        Ok(match config {
            Some(config) => Self::elect(client, config, metrics),
            None => {
                metrics.is_leader.set(1);
                Self::always()
            }
        })
    }

    /// A receiver of leadership: `true` while this process may work. It
    /// turns `false` as soon as the lease is lost, before anyone else can
    /// acquire it, so check it before each write.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Whether this process is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Stops the election: receivers read `false`, and a leader then gives
    /// the lease up so that another replica takes over at once. Call it
    /// after the work guarded by leadership has stopped (e.g. once
    /// `Shutdown::draining` has stopped the writer). Takes at most about the
    /// renew deadline.
    pub async fn release(mut self) {
        match &mut self.mode {
            Mode::Always(tx) => {
                tx.send_replace(false);
            }
            Mode::Elected { stop, task } => {
                stop.cancel();
                if let Err(err) = task.await {
                    tracing::warn!(error = %err, "leader election: the elector task failed");
                }
            }
        }
    }
}

/// Takes the lease for `hold` whoever holds it now, for a process that must
/// stop every replica from writing without stopping the replicas: the
/// pre-delete cleanup, which runs while the provisioner's Deployment still
/// does. A leader that reads the Lease next (within its retry period) finds
/// a live holder other than itself and stops; one that cannot read it stops
/// at its renew deadline. So once `config`'s renew deadline has passed after
/// this returns, no replica that uses the same timings is writing, and none
/// takes over until `hold` has passed. Creates the Lease if it is missing.
pub async fn seize(
    client: kube::Client,
    config: &LeaderConfig,
    hold: std::time::Duration,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, ObjectMeta, PostParams};

    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let params = PostParams::default();
    // Renewals conflict at most once per retry period: a few tries suffice.
    let mut tries = 0;
    loop {
        tries += 1;
        let result = match api.get_opt(&config.lease_name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(config.lease_name.clone()),
                        namespace: Some(config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(record::claim(
                        None,
                        &config.identity,
                        hold,
                        SystemTime::now(),
                    )),
                };
                api.create(&params, &lease).await.map(drop)
            }
            Some(mut lease) => {
                let read = lease.spec.take().unwrap_or_default();
                lease.spec = Some(record::claim(
                    Some(&read),
                    &config.identity,
                    hold,
                    SystemTime::now(),
                ));
                // Carries the resourceVersion read: a renewal in between
                // conflicts, and the loop reads again.
                api.replace(&config.lease_name, &params, &lease)
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() && tries < 10 => continue,
            Err(err) => return Err(err),
        }
    }
}

/// The annotation [`retire_candidates`] puts on a Lease: every candidate
/// that reads it stops trying for good (until its process restarts), and
/// so never creates the Lease again once it is deleted.
pub const RETIRED_ANNOTATION: &str = "cluster-relay.io/candidates-retired";

/// Marks the Lease so that every candidate that reads it retires: for the
/// pre-delete cleanup, after [`seize`]. A Lease seized but not marked is
/// taken again, as a new Lease, by a replica still running when the Lease
/// goes (with its owner) before the replica does; the new one would outlive
/// the release. Idempotent; retries conflicts with renewals.
pub async fn retire_candidates(
    client: kube::Client,
    config: &LeaderConfig,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, PostParams};

    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut tries = 0;
    loop {
        tries += 1;
        let mut lease = api.get(&config.lease_name).await?;
        let annotations = lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        if annotations.contains_key(RETIRED_ANNOTATION) {
            return Ok(());
        }
        annotations.insert(RETIRED_ANNOTATION.into(), "true".into());
        match api
            .replace(&config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() && tries < 10 => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Makes ServiceAccount `owner` (in the Lease's namespace) an owner of the
/// Lease, so that the garbage collector deletes the Lease with it. For a
/// Lease nothing renders: the provisioner's, which the cleanup seizes and
/// leaves held. Idempotent; retries conflicts with renewals.
pub async fn own_by_service_account(
    client: kube::Client,
    config: &LeaderConfig,
    owner: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::{Api, PostParams};

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &config.namespace);
    let account = accounts.get(owner).await?;
    let uid = account.metadata.uid.unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut tries = 0;
    loop {
        tries += 1;
        let mut lease = api.get(&config.lease_name).await?;
        let refs = lease.metadata.owner_references.get_or_insert_with(Vec::new);
        if refs.iter().any(|r| r.uid == uid) {
            return Ok(());
        }
        refs.push(OwnerReference {
            api_version: "v1".into(),
            kind: "ServiceAccount".into(),
            name: owner.into(),
            uid: uid.clone(),
            ..OwnerReference::default()
        });
        match api
            .replace(&config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() && tries < 10 => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Gives up a Lease taken with [`seize`], if it still names
/// `config.identity`, so that a replica takes over at once rather than after
/// the hold. Returns whether it was still held.
pub async fn unseize(client: kube::Client, config: &LeaderConfig) -> Result<bool, kube::Error> {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, PostParams};

    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
        return Ok(false);
    };
    let read = lease.spec.take().unwrap_or_default();
    if read.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(false);
    }
    lease.spec = Some(record::released(&read, SystemTime::now()));
    // Carries the resourceVersion read: a takeover in between conflicts,
    // and then the lease is not ours to give.
    api.replace(&config.lease_name, &PostParams::default(), &lease)
        .await?;
    Ok(true)
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Mode::Elected { task, .. } = &self.mode {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn always_leads_until_released() {
        let leadership = Leadership::always();
        let mut leading = leadership.subscribe();
        assert!(*leading.borrow_and_update());
        leadership.release().await;
        leading.changed().await.expect("release publishes");
        assert!(!*leading.borrow());
    }
}
