//! The provisioner's loop: any change of the source or target Secret, of
//! leadership, or the next due time triggers one reconciliation. A
//! reconciliation ensures the identity on the managed cluster, decides from
//! the target Secret whether to replace it, and if so requests, verifies and
//! writes a new token. Failures keep the last good Secret and retry with
//! exponential backoff; every outcome goes to metrics, logs, `/readyz` and
//! the hub condition.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use tokio::{sync::watch, time::Instant};

use super::{
    Config, ProvisionError,
    hub::HubReporter,
    managed,
    metrics::ProvisionerMetrics,
    source::{self, SourceKubeconfig},
    target::{self, Decision, Reason},
};
use crate::{
    admin::ReadinessCheck,
    managed_kubeconfig::sha256_hex,
    secret_watch::{SecretState, Watched},
    shutdown::Shutdown,
};

const FIELD_MANAGER: &str = "cluster-relay-provisioner";
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// State kept between reconciliations.
pub struct Reconciler {
    config: Config,
    hosting: kube::Client,
    hub: Option<HubReporter>,
    metrics: ProvisionerMetrics,
    readiness: ReadinessCheck,
    /// The managed-cluster client for the source with this hash.
    managed: Option<(String, kube::Client)>,
    /// When the identity was last ensured, for the source with this hash.
    ensured: Option<(String, Instant)>,
    /// The target content last verified, and when.
    verified: Option<(String, Instant)>,
}

/// What a successful reconciliation found or did.
struct Outcome {
    expires: Timestamp,
    refresh_at: Timestamp,
    wrote: Option<Reason>,
}

impl Reconciler {
    pub fn new(
        config: Config,
        hosting: kube::Client,
        hub: Option<HubReporter>,
        metrics: ProvisionerMetrics,
        readiness: ReadinessCheck,
    ) -> Self {
        Self {
            config,
            hosting,
            hub,
            metrics,
            readiness,
            managed: None,
            ensured: None,
            verified: None,
        }
    }

    /// Runs until shutdown starts draining.
    pub async fn run(
        mut self,
        mut source: watch::Receiver<Watched>,
        mut target: watch::Receiver<Watched>,
        mut leader: watch::Receiver<bool>,
        shutdown: Shutdown,
    ) {
        let mut due = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        loop {
            // A source change is acted on at once, even while backing off:
            // it may be the fix. Other triggers wait for the retry time.
            let urgent = tokio::select! {
                _ = shutdown.draining() => return,
                changed = source.changed() => { if changed.is_err() { return } true }
                changed = target.changed() => { if changed.is_err() { return } !failing }
                changed = leader.changed() => { if changed.is_err() { return } true }
                _ = tokio::time::sleep_until(due) => true,
            };
            if !urgent && Instant::now() < due {
                continue;
            }
            if !*leader.borrow_and_update() {
                self.readiness
                    .ready("standby: another replica holds the lease");
                due = Instant::now() + self.config.resync_interval;
                continue;
            }
            let source_now = source.borrow_and_update().clone();
            target.borrow_and_update();
            if matches!(source_now.state, SecretState::Pending) && source_now.error.is_none() {
                // The first listing is under way; its result is a trigger.
                due = Instant::now() + self.config.resync_interval;
                continue;
            }
            match self.reconcile(&source_now).await {
                Ok(outcome) => {
                    failing = false;
                    backoff = FIRST_BACKOFF;
                    due = self.next_due(&outcome);
                    self.succeeded(&outcome).await;
                }
                Err(err) => {
                    failing = true;
                    due = Instant::now() + backoff;
                    self.failed(&err, backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    fn next_due(&self, outcome: &Outcome) -> Instant {
        let until_refresh = outcome
            .refresh_at
            .duration_since(Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        Instant::now() + until_refresh.min(self.config.resync_interval)
    }

    async fn succeeded(&mut self, outcome: &Outcome) {
        self.metrics.refresh.with_label_values(&["success"]).inc();
        self.metrics
            .token_expiration
            .set(outcome.expires.as_second());
        self.metrics.last_success.set(Timestamp::now().as_second());
        if let Some(reason) = outcome.wrote {
            self.metrics
                .rewrites
                .with_label_values(&[reason.label()])
                .inc();
            tracing::info!(
                target_secret = %self.config.target,
                reason = reason.label(),
                expires = %outcome.expires,
                refresh_at = %outcome.refresh_at,
                "wrote the managed kubeconfig with a new token"
            );
        }
        let message = format!(
            "Secret {} holds a token of {}/{} valid until {}",
            self.config.target,
            self.config.identity.namespace,
            self.config.identity.name,
            outcome.expires
        );
        self.readiness.ready(message.clone());
        self.report(true, "KubeconfigProvisioned", &message).await;
    }

    async fn failed(&mut self, err: &ProvisionError, retry_in: Duration) {
        self.metrics.refresh.with_label_values(&["failure"]).inc();
        self.metrics
            .errors
            .with_label_values(&[err.metric_label()])
            .inc();
        tracing::warn!(error = %err, stage = err.metric_label(), retry_in = ?retry_in, "provisioning failed; the last good Secret stays");
        let message = format!("{err}; retrying in {}s", retry_in.as_secs());
        self.readiness.not_ready(message.clone());
        self.report(false, err.condition_reason(), &message).await;
    }

    async fn report(&mut self, ready: bool, reason: &str, message: &str) {
        let Some(hub) = self.hub.as_mut() else { return };
        let result = tokio::time::timeout(
            self.config.request_timeout,
            hub.report(ready, reason, message),
        )
        .await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(err)) => err.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        self.metrics.errors.with_label_values(&["hub"]).inc();
        tracing::warn!(error = %error, "cannot set the condition on the hub");
    }

    async fn reconcile(&mut self, source: &Watched) -> Result<Outcome, ProvisionError> {
        let bytes = match (&source.state, source.key(&self.config.source_key)) {
            (_, Some(bytes)) => bytes,
            (SecretState::Present(_), None) => {
                return Err(ProvisionError::SourceKey {
                    secret: self.config.source.to_string(),
                    key: self.config.source_key.clone(),
                });
            }
            _ => {
                return Err(ProvisionError::SourceMissing(
                    self.config.source.to_string(),
                ));
            }
        };
        let source = source::parse(bytes, self.config.source_context.as_deref())?;
        let managed = self.managed_client(&source).await?;
        let ensure_due = match &self.ensured {
            Some((hash, at)) => *hash != source.hash || at.elapsed() >= self.config.resync_interval,
            None => true,
        };
        if ensure_due {
            managed::ensure(&managed, &self.config.identity).await?;
            self.ensured = Some((source.hash.clone(), Instant::now()));
        }

        let secrets: Api<Secret> = Api::namespaced(self.hosting.clone(), &self.config.namespace);
        let current = secrets
            .get_opt(&self.config.target.name)
            .await
            .map_err(|source| ProvisionError::Hosting {
                action: "reading the target Secret",
                source,
            })?;
        let decision = target::decide(
            current.as_ref(),
            &self.config.target_key,
            &source.hash,
            Timestamp::now(),
            self.config.refresh_before,
        );
        let reason = match decision {
            Decision::Keep {
                expires,
                refresh_at,
            } => match self.check_current(current.as_ref()).await {
                Ok(()) => {
                    return Ok(Outcome {
                        expires,
                        refresh_at,
                        wrote: None,
                    });
                }
                Err(ProvisionError::Rejected) => {
                    tracing::warn!(
                        "the managed apiserver rejects the token in the target Secret; replacing it"
                    );
                    Reason::Rejected
                }
                Err(err) => return Err(err),
            },
            Decision::Refresh(reason) => reason,
        };
        self.write(&managed, &source, reason).await
    }

    /// Verifies the kubeconfig in the target Secret when it is new to us or
    /// was last verified a resync interval ago.
    async fn check_current(&mut self, current: Option<&Secret>) -> Result<(), ProvisionError> {
        let bytes = current
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(&self.config.target_key))
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let hash = sha256_hex(&bytes);
        if let Some((verified, at)) = &self.verified
            && *verified == hash
            && at.elapsed() < self.config.resync_interval
        {
            return Ok(());
        }
        // decide() has matched the content against the hash we wrote, so
        // this is our own kubeconfig.
        let text = String::from_utf8(bytes).map_err(|_| ProvisionError::Rejected)?;
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(&text).map_err(|_| ProvisionError::Rejected)?;
        managed::verify(
            kubeconfig,
            &self.config.identity,
            self.config.request_timeout,
        )
        .await?;
        self.verified = Some((hash, Instant::now()));
        Ok(())
    }

    async fn managed_client(
        &mut self,
        source: &SourceKubeconfig,
    ) -> Result<kube::Client, ProvisionError> {
        if let Some((hash, client)) = &self.managed
            && *hash == source.hash
        {
            return Ok(client.clone());
        }
        let client = source.client(self.config.request_timeout).await?;
        self.managed = Some((source.hash.clone(), client.clone()));
        // A new source may point elsewhere: ensure and verify again.
        self.ensured = None;
        self.verified = None;
        Ok(client)
    }

    /// Requests, verifies and writes a new token.
    async fn write(
        &mut self,
        managed: &kube::Client,
        source: &SourceKubeconfig,
        reason: Reason,
    ) -> Result<Outcome, ProvisionError> {
        let (token, expires) = managed::request_token(managed, &self.config.identity).await?;
        if expires <= Timestamp::now() {
            return Err(ProvisionError::Token(format!(
                "the apiserver issued a token already expired at {expires}"
            )));
        }
        let kubeconfig = target::build_kubeconfig(&source.cluster, &source.context, token);
        managed::verify(
            kubeconfig.clone(),
            &self.config.identity,
            self.config.request_timeout,
        )
        .await?;
        let yaml = target::to_yaml(&kubeconfig)
            .map_err(|err| ProvisionError::Token(format!("serializing: {err}")))?;
        let secret = target::secret(
            &self.config.namespace,
            &self.config.target.name,
            &self.config.target_key,
            &yaml,
            expires,
            &source.hash,
        );
        let secrets: Api<Secret> = Api::namespaced(self.hosting.clone(), &self.config.namespace);
        secrets
            .patch(
                &self.config.target.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|source| ProvisionError::Hosting {
                action: "writing the target Secret",
                source,
            })?;
        self.verified = Some((sha256_hex(yaml.as_bytes()), Instant::now()));
        let margin = k8s_openapi::jiff::SignedDuration::try_from(self.config.refresh_before)
            .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
        Ok(Outcome {
            expires,
            refresh_at: expires.checked_sub(margin).unwrap_or(Timestamp::MIN),
            wrote: Some(reason),
        })
    }
}
