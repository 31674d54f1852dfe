//! The election loop, after client-go's leaderelection: try to acquire the
//! Lease every retry period (jittered); once held, renew it every retry
//! period; when a renewal has not succeeded within the renew deadline, or
//! another holder shows up, publish the loss at once and go back to trying.
//! Every write replaces the Lease with the resourceVersion just read, so of
//! two candidates writing at once one gets 409 Conflict and stands down.

use std::time::SystemTime;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::{
    sync::watch,
    time::{Instant, sleep, sleep_until, timeout_at},
};
use tokio_util::sync::CancellationToken;

use super::{
    LeaderConfig, LeaderMetrics, random_u64,
    record::{self, Observation},
};

/// One try at holding the lease ended with …
enum Attempt {
    /// … this process holding it (acquired or renewed).
    Holding,
    /// … someone else holding a lease that has not lapsed.
    HeldBy(String),
    /// … someone else writing first (409 Conflict).
    Outraced,
}

/// Why a try did not tell who holds the lease.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("reading the Lease: {0}")]
    Get(#[source] kube::Error),
    #[error("creating the Lease: {0}")]
    Create(#[source] kube::Error),
    #[error("updating the Lease: {0}")]
    Replace(#[source] kube::Error),
    #[error("the apiserver did not answer in time")]
    Timeout,
}

/// Why this process stopped leading.
enum Ended {
    Stopped,
    Lost(String),
}

/// Publishes leadership to the receivers and the metrics, and takes it back
/// when dropped, so that an elector task that is aborted never leaves a
/// receiver reading `true`.
struct Publisher {
    tx: watch::Sender<bool>,
    metrics: LeaderMetrics,
    identity: String,
    lease: String,
}

impl Publisher {
    fn gain(&self) {
        self.tx.send_replace(true);
        self.metrics.is_leader.set(1);
        self.metrics
            .transitions
            .with_label_values(&["leader"])
            .inc();
        tracing::info!(identity = %self.identity, lease = %self.lease, "leader election: became the leader");
    }

    fn lose(&self, why: &str) {
        if !self.tx.send_replace(false) {
            return;
        }
        self.metrics.is_leader.set(0);
        self.metrics
            .transitions
            .with_label_values(&["follower"])
            .inc();
        tracing::info!(identity = %self.identity, lease = %self.lease, reason = why, "leader election: no longer the leader");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.lose("the elector stopped");
    }
}

/// The holder a retired candidate reports (see [`super::retire_candidates`]).
const RETIRED_HOLDER: &str = "the cleanup (candidates retired)";

/// The state of one candidate.
pub(super) struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    observation: Observation,
    publisher: Publisher,
    /// The holder last reported, so that standing by logs once per holder.
    reported_holder: Option<String>,
    /// The Lease was marked [`super::RETIRED_ANNOTATION`]: this process
    /// never tries again.
    retired: bool,
}

impl Elector {
    pub(super) fn new(
        client: kube::Client,
        config: LeaderConfig,
        metrics: LeaderMetrics,
        tx: watch::Sender<bool>,
    ) -> Self {
        let publisher = Publisher {
            tx,
            metrics,
            identity: config.identity.clone(),
            lease: format!("{}/{}", config.namespace, config.lease_name),
        };
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observation: Observation::default(),
            publisher,
            reported_holder: None,
            retired: false,
        }
    }

    /// Runs until `stop`; a leader then publishes `false` and releases the
    /// lease before returning.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        while let Some(renewed) = self.acquire(&stop).await {
            self.publisher.gain();
            match self.hold(renewed, &stop).await {
                Ended::Lost(why) => self.publisher.lose(&why),
                Ended::Stopped => {
                    self.publisher.lose("shutting down");
                    self.release().await;
                    return;
                }
            }
        }
    }

    /// Tries until the lease is held; returns when the successful try
    /// started, which is when the new term's renew deadline starts counting.
    async fn acquire(&mut self, stop: &CancellationToken) -> Option<Instant> {
        let retry = self.config.timings.retry_period();
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let started = Instant::now();
            match self
                .attempt(started + self.config.timings.renew_deadline())
                .await
            {
                Ok(Attempt::Holding) => {
                    self.reported_holder = None;
                    return Some(started);
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if self.reported_holder.as_ref() != Some(&holder) {
                        tracing::info!(identity = %self.config.identity, lease = %self.publisher.lease, %holder, "leader election: the lease is held by another process; standing by");
                        self.reported_holder = Some(holder);
                    }
                }
                Ok(Attempt::Outraced) => {
                    tracing::debug!(lease = %self.publisher.lease, "leader election: another candidate wrote the Lease first");
                }
                Err(err) => {
                    tracing::warn!(lease = %self.publisher.lease, error = %err, "leader election: cannot acquire the lease; retrying");
                }
            }
            // Jitter of up to a fifth keeps candidates from trying in lockstep.
            let jitter = retry.mul_f64((random_u64() % 1000) as f64 / 5000.0);
            tokio::select! {
                () = stop.cancelled() => return None,
                () = sleep(retry + jitter) => {}
            }
        }
    }

    /// Renews every retry period until the term ends. A term lasts while
    /// renewals keep succeeding within the renew deadline, counted from the
    /// start of the last successful one; since the renew deadline is shorter
    /// than the lease duration, this process stops leading before anyone
    /// else may take over.
    async fn hold(&mut self, mut renewed: Instant, stop: &CancellationToken) -> Ended {
        let timings = self.config.timings;
        loop {
            let deadline = renewed + timings.renew_deadline();
            let mut next = renewed + timings.retry_period();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ended::Stopped,
                    () = sleep_until(next.min(deadline)) => {}
                }
                let started = Instant::now();
                if started >= deadline {
                    return Ended::Lost(format!(
                        "not renewed within the renew deadline ({})",
                        humantime::format_duration(timings.renew_deadline())
                    ));
                }
                match self.attempt(deadline).await {
                    Ok(Attempt::Holding) => {
                        renewed = started;
                        break;
                    }
                    Ok(Attempt::HeldBy(holder)) => {
                        return Ended::Lost(format!("the lease is now held by {holder}"));
                    }
                    Ok(Attempt::Outraced) => {
                        tracing::warn!(lease = %self.publisher.lease, "leader election: renewal conflicted with another write; retrying");
                    }
                    Err(err) => {
                        tracing::warn!(lease = %self.publisher.lease, error = %err, "leader election: cannot renew the lease; retrying");
                    }
                }
                next = Instant::now() + timings.retry_period();
            }
        }
    }

    /// One read and, if the lease is free, lapsed or ours, one write; all of
    /// it abandoned at `deadline`. An abandoned write may still land: the
    /// next try then finds the lease ours and renews it.
    async fn attempt(&mut self, deadline: Instant) -> Result<Attempt, AttemptError> {
        timeout_at(deadline, self.try_acquire_or_renew())
            .await
            .unwrap_or(Err(AttemptError::Timeout))
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, AttemptError> {
        if self.retired {
            return Ok(Attempt::HeldBy(RETIRED_HOLDER.to_owned()));
        }
        let config = &self.config;
        let params = PostParams::default();
        let Some(mut lease) = self
            .api
            .get_opt(&config.lease_name)
            .await
            .map_err(AttemptError::Get)?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.lease_name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(record::claim(
                    None,
                    &config.identity,
                    config.timings.lease_duration(),
                    SystemTime::now(),
                )),
            };
            return match self.api.create(&params, &lease).await {
                Ok(created) => {
                    self.observation
                        .observe(&created.spec.unwrap_or_default(), Instant::now());
                    Ok(Attempt::Holding)
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Attempt::Outraced),
                Err(err) => Err(AttemptError::Create(err)),
            };
        };
        if lease
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(super::RETIRED_ANNOTATION))
        {
            tracing::info!(identity = %config.identity, lease = %self.publisher.lease, "leader election: the Lease is marked for cleanup; this process will not lead again");
            self.retired = true;
            return Ok(Attempt::HeldBy(RETIRED_HOLDER.to_owned()));
        }
        let read = lease.spec.take().unwrap_or_default();
        self.observation.observe(&read, Instant::now());
        if let Some(holder) = self.observation.live_holder_other_than(
            &config.identity,
            config.timings.lease_duration(),
            Instant::now(),
        ) {
            return Ok(Attempt::HeldBy(holder.to_owned()));
        }
        lease.spec = Some(record::claim(
            Some(&read),
            &config.identity,
            config.timings.lease_duration(),
            SystemTime::now(),
        ));
        // `lease` still carries the resourceVersion read above.
        match self.api.replace(&config.lease_name, &params, &lease).await {
            Ok(stored) => {
                self.observation
                    .observe(&stored.spec.unwrap_or_default(), Instant::now());
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Attempt::Outraced),
            Err(err) => Err(AttemptError::Replace(err)),
        }
    }

    /// Gives the lease up if the Lease still names this process, so that
    /// another candidate takes over without waiting for it to lapse. Bounded
    /// by the renew deadline; on failure the lease simply lapses.
    async fn release(&mut self) {
        let config = &self.config;
        let deadline = Instant::now() + config.timings.renew_deadline();
        let result = timeout_at(deadline, async {
            let Some(mut lease) = self
                .api
                .get_opt(&config.lease_name)
                .await
                .map_err(AttemptError::Get)?
            else {
                return Ok(false);
            };
            let read = lease.spec.take().unwrap_or_default();
            if read.holder_identity.as_deref() != Some(config.identity.as_str()) {
                return Ok(false);
            }
            lease.spec = Some(record::released(&read, SystemTime::now()));
            self.api
                .replace(&config.lease_name, &PostParams::default(), &lease)
                .await
                .map_err(AttemptError::Replace)?;
            Ok(true)
        })
        .await
        .unwrap_or(Err(AttemptError::Timeout));
        match result {
            Ok(true) => {
                tracing::info!(identity = %config.identity, lease = %self.publisher.lease, "leader election: released the lease");
            }
            Ok(false) => {
                tracing::info!(identity = %config.identity, lease = %self.publisher.lease, "leader election: the lease was no longer ours; nothing to release");
            }
            Err(err) => {
                tracing::warn!(identity = %config.identity, lease = %self.publisher.lease, error = %err, "leader election: cannot release the lease; it will lapse instead");
            }
        }
    }
}
