//! Follows the managed cluster's kubeconfig, held in a file or in a Secret on
//! the hosting cluster, and publishes its current parsed state through a
//! `watch` channel. Components read the current value per use (a relay per
//! connection), so a change reaches new work without a restart and leaves
//! work under way alone. An update that cannot be used is reported and the
//! last good kubeconfig stays in force.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use kube::config::Kubeconfig;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use secrecy::SecretString;

use crate::{
    admin::{ReadinessCheck, register},
    kube_client::{KubeClientError, client_from_kubeconfig},
    secret_watch::{SecretRef, SecretState, parse_secret_ref, watch_secret},
};

/// Where the managed kubeconfig comes from.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Managed kubeconfig")]
pub struct ManagedKubeconfigArgs {
    /// Kubeconfig file of the managed cluster (e.g. a mounted Secret). Re-read
    /// every --managed-kubeconfig-poll-interval. Conflicts with
    /// --managed-kubeconfig-secret.
    #[arg(
        long,
        env = "CLUSTER_RELAY_MANAGED_KUBECONFIG",
        value_name = "PATH",
        conflicts_with = "managed_kubeconfig_secret"
    )]
    pub managed_kubeconfig: Option<PathBuf>,

    /// Secret on the hosting cluster that holds the managed kubeconfig, as
    /// NAMESPACE/NAME; read and watched through the API (--kubeconfig), never
    /// mounted.
    #[arg(long, env = "CLUSTER_RELAY_MANAGED_KUBECONFIG_SECRET", value_name = "NAMESPACE/NAME", value_parser = parse_secret_ref)]
    pub managed_kubeconfig_secret: Option<SecretRef>,

    /// Key in that Secret's data that holds the kubeconfig.
    #[arg(
        long,
        env = "CLUSTER_RELAY_MANAGED_KUBECONFIG_SECRET_KEY",
        default_value = "kubeconfig"
    )]
    pub managed_kubeconfig_secret_key: String,

    /// Context of the managed kubeconfig to use (default: its current-context).
    #[arg(long, env = "CLUSTER_RELAY_MANAGED_CONTEXT")]
    pub managed_context: Option<String>,

    /// How often a --managed-kubeconfig file is checked for changes.
    #[arg(
        long,
        env = "CLUSTER_RELAY_MANAGED_KUBECONFIG_POLL_INTERVAL",
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub managed_kubeconfig_poll_interval: Duration,
}

/// The source, validated: exactly one of file and Secret.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Secret { secret: SecretRef, key: String },
}

impl ManagedKubeconfigArgs {
    /// Checks that exactly one source is given.
    pub fn source(&self) -> Result<Source, String> {
        match (&self.managed_kubeconfig, &self.managed_kubeconfig_secret) {
            (Some(path), None) => Ok(Source::File(path.clone())),
            (None, Some(secret)) => Ok(Source::Secret {
                secret: secret.clone(),
                key: self.managed_kubeconfig_secret_key.clone(),
            }),
            (None, None) => {
                Err("one of --managed-kubeconfig or --managed-kubeconfig-secret is required".into())
            }
            (Some(_), Some(_)) => Err(
                "--managed-kubeconfig and --managed-kubeconfig-secret cannot be used together"
                    .into(),
            ),
        }
    }
}

impl ManagedKubeconfigArgs {
    /// Validates the source and starts following it: the whole start-up of
    /// a component that uses the managed kubeconfig. The hosting-cluster
    /// client is built only for a Secret source.
    pub async fn follow(
        &self,
        kube: &crate::kube_client::KubeArgs,
        readiness: &crate::admin::Readiness,
        registry: &Registry,
    ) -> anyhow::Result<Current> {
        let source = self.source().map_err(anyhow::Error::msg)?;
        let client = match source {
            Source::Secret { .. } => Some(kube.client().await?),
            Source::File(_) => None,
        };
        follow(
            source,
            self.managed_context.clone(),
            self.managed_kubeconfig_poll_interval,
            client,
            readiness.check("managed-kubeconfig"),
            FollowerMetrics::new(registry),
        )
        .await
    }
}

/// A host and port to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One parsed, usable state of the managed kubeconfig.
#[derive(Debug, Clone)]
pub struct ManagedKubeconfig {
    /// The whole kubeconfig, for components that build clients from it.
    pub kubeconfig: Kubeconfig,
    /// The context in use.
    pub context: String,
    /// The managed apiserver's URL, as written.
    pub server: http::Uri,
    /// Host and port of the server, the port defaulted by scheme.
    pub endpoint: Endpoint,
    /// SHA-256 of the source bytes, hex.
    pub hash: String,
}

impl ManagedKubeconfig {
    /// The cluster entry of the context in use.
    pub fn cluster(&self) -> Option<&kube::config::Cluster> {
        let name = self
            .kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == self.context)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.as_str())?;
        self.kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.cluster.as_ref())
    }

    /// The bearer token of the context's user, if it has an inline one.
    pub fn bearer_token(&self) -> Option<SecretString> {
        let user = self
            .kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == self.context)
            .and_then(|c| c.context.as_ref())
            .and_then(|c| c.user.clone())?;
        self.kubeconfig
            .auth_infos
            .iter()
            .find(|u| u.name == user)
            .and_then(|u| u.auth_info.as_ref())
            .and_then(|a| a.token.clone())
    }

    /// A client for the managed cluster as this kubeconfig describes it.
    /// Build one per use (or per change of [`Current`]) so that a rotated
    /// token is picked up.
    pub async fn client(&self, timeout: Duration) -> Result<kube::Client, KubeClientError> {
        client_from_kubeconfig(self.kubeconfig.clone(), Some(self.context.clone()), timeout).await
    }
}

/// Why a kubeconfig cannot be used. Never includes the kubeconfig's content.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not valid kubeconfig YAML: {0}")]
    Yaml(String),
    #[error("no context given (--managed-context) and no current-context set")]
    NoContext,
    #[error("context {0:?} not found")]
    MissingContext(String),
    #[error("cluster {0:?} (of the context) not found")]
    MissingCluster(String),
    #[error("cluster {0:?} has no server")]
    NoServer(String),
    #[error("server {0:?} is not a URL with scheme http or https and a host")]
    BadServer(String),
}

/// Parses kubeconfig bytes and resolves the server of `context` (or of the
/// current context).
pub fn parse(bytes: &[u8], context: Option<&str>) -> Result<ManagedKubeconfig, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|err| ParseError::Yaml(err.to_string()))?;
    // The YAML error text may quote the input; keep only its position.
    let kubeconfig =
        Kubeconfig::from_yaml(text).map_err(|err| ParseError::Yaml(redact_yaml_error(&err)))?;
    let context = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())
        .filter(|c| !c.is_empty())
        .ok_or(ParseError::NoContext)?;
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| ParseError::MissingContext(context.clone()))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| ParseError::MissingCluster(cluster_name.clone()))?;
    let server_text = cluster
        .server
        .clone()
        .ok_or_else(|| ParseError::NoServer(cluster_name.clone()))?;
    let server: http::Uri = server_text
        .parse()
        .map_err(|_| ParseError::BadServer(server_text.clone()))?;
    let default_port = match server.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => return Err(ParseError::BadServer(server_text)),
    };
    let host = server
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ParseError::BadServer(server_text.clone()))?;
    let endpoint = Endpoint {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: server.port_u16().unwrap_or(default_port),
    };
    Ok(ManagedKubeconfig {
        kubeconfig,
        context,
        server,
        endpoint,
        hash: sha256_hex(bytes),
    })
}

fn redact_yaml_error(err: &kube::config::KubeconfigError) -> String {
    let text = err.to_string();
    // serde errors read "...: <message> at line L column C"; the message can
    // echo a scalar from the document, which might be a credential.
    match text.rfind(" at line ") {
        Some(pos) => format!("syntax error{}", &text[pos..]),
        None => "syntax error".to_owned(),
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The current managed kubeconfig; `None` until one has been read.
pub type Current = watch::Receiver<Option<Arc<ManagedKubeconfig>>>;

/// Counts what the follower did.
#[derive(Debug, Clone)]
pub struct FollowerMetrics {
    reloads: IntCounterVec,
    last_applied: IntGauge,
}

impl FollowerMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            reloads: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_relay_managed_kubeconfig_reloads_total",
                        "Changes of the managed kubeconfig seen, by result (applied, invalid, unavailable).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            last_applied: register(
                registry,
                IntGauge::new(
                    "cluster_relay_managed_kubeconfig_last_applied_timestamp_seconds",
                    "When the managed kubeconfig in use was last replaced (Unix time).",
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// Publishes what the source says to the channel, tracking what was seen so
/// that each distinct content or failure is reported once.
struct Publisher {
    tx: watch::Sender<Option<Arc<ManagedKubeconfig>>>,
    context: Option<String>,
    source: String,
    readiness: ReadinessCheck,
    metrics: FollowerMetrics,
    last_seen: Option<String>,
}

impl Publisher {
    fn offer(&mut self, bytes: &[u8]) {
        let hash = sha256_hex(bytes);
        if self.last_seen.as_deref() == Some(hash.as_str()) {
            return;
        }
        self.last_seen = Some(hash);
        match parse(bytes, self.context.as_deref()) {
            Ok(parsed) => {
                tracing::info!(source = %self.source, server = %parsed.server, context = %parsed.context, "managed kubeconfig applied");
                self.readiness.ready(format!("server {}", parsed.server));
                self.metrics.reloads.with_label_values(&["applied"]).inc();
                self.metrics.last_applied.set(unix_now());
                self.tx.send_replace(Some(Arc::new(parsed)));
            }
            Err(err) => self.unusable("invalid", &err.to_string()),
        }
    }

    fn unusable(&mut self, result: &'static str, why: &str) {
        self.metrics.reloads.with_label_values(&[result]).inc();
        if self.tx.borrow().is_some() {
            tracing::warn!(source = %self.source, error = why, "managed kubeconfig unusable; keeping the last good one");
            self.readiness
                .ready(format!("last good kubeconfig in use; latest: {why}"));
        } else {
            tracing::warn!(source = %self.source, error = why, "managed kubeconfig unusable");
            self.readiness.not_ready(format!("{}: {why}", self.source));
        }
    }

    fn unavailable(&mut self, why: String) {
        if self.last_seen.as_deref() != Some(why.as_str()) {
            self.last_seen = Some(why.clone());
            self.unusable("unavailable", &why);
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Starts following the source. A file is read once before this returns, so
/// a missing or invalid file fails start-up; a Secret may appear later.
pub async fn follow(
    source: Source,
    context: Option<String>,
    poll_interval: Duration,
    client: Option<kube::Client>,
    readiness: ReadinessCheck,
    metrics: FollowerMetrics,
) -> anyhow::Result<Current> {
    let (tx, rx) = watch::channel(None);
    let mut publisher = Publisher {
        tx,
        context: context.clone(),
        source: String::new(),
        readiness,
        metrics,
        last_seen: None,
    };
    match source {
        Source::File(path) => {
            publisher.source = path.display().to_string();
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|err| anyhow::anyhow!("--managed-kubeconfig {}: {err}", path.display()))?;
            parse(&bytes, context.as_deref())
                .map_err(|err| anyhow::anyhow!("--managed-kubeconfig {}: {err}", path.display()))?;
            publisher.offer(&bytes);
            tokio::spawn(follow_file(path, poll_interval, publisher));
        }
        Source::Secret { secret, key } => {
            let client = client.ok_or_else(|| {
                anyhow::anyhow!("--managed-kubeconfig-secret needs a hosting-cluster client")
            })?;
            publisher.source = format!("Secret {secret} key {key}");
            publisher
                .readiness
                .not_ready(format!("waiting for Secret {secret}"));
            tokio::spawn(follow_secret(client, secret, key, publisher));
        }
    }
    Ok(rx)
}

async fn follow_file(path: PathBuf, poll_interval: Duration, mut publisher: Publisher) {
    let mut tick = tokio::time::interval(poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if publisher.tx.is_closed() {
            return;
        }
        match tokio::fs::read(&path).await {
            Ok(bytes) => publisher.offer(&bytes),
            Err(err) => publisher.unavailable(format!("cannot read: {err}")),
        }
    }
}

async fn follow_secret(
    client: kube::Client,
    secret: SecretRef,
    key: String,
    mut publisher: Publisher,
) {
    let mut watched = watch_secret(client, secret.clone());
    while watched.changed().await.is_ok() {
        if publisher.tx.is_closed() {
            return;
        }
        let now = watched.borrow_and_update().clone();
        if let Some(bytes) = now.key(&key) {
            publisher.offer(bytes);
            continue;
        }
        match (&now.state, &now.error) {
            (SecretState::Pending, Some(err)) => {
                publisher.unavailable(format!("watching Secret {secret}: {err}"))
            }
            (SecretState::Pending, None) => {}
            (SecretState::Missing, _) => {
                publisher.unavailable(format!("Secret {secret} not found"))
            }
            (SecretState::Present(_), _) => {
                publisher.unavailable(format!("Secret {secret} has no key {key:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://10.0.0.1"}
- name: b
  cluster: {server: "http://[fd00::1]:8080"}
contexts:
- name: ca
  context: {cluster: a, user: u}
- name: cb
  context: {cluster: b, user: u}
current-context: ca
users:
- name: u
  user: {token: secret-token-value}
"#;

    #[test]
    fn server_port_defaults_by_scheme() {
        let parsed = parse(KUBECONFIG.as_bytes(), None).expect("parses");
        assert_eq!(parsed.context, "ca");
        assert_eq!(parsed.endpoint.to_string(), "10.0.0.1:443");
        let parsed = parse(KUBECONFIG.as_bytes(), Some("cb")).expect("parses");
        assert_eq!(parsed.endpoint.host, "fd00::1");
        assert_eq!(parsed.endpoint.to_string(), "[fd00::1]:8080");
    }

    #[test]
    fn errors_name_what_is_missing() {
        let err = parse(KUBECONFIG.as_bytes(), Some("nope")).unwrap_err();
        assert_eq!(err.to_string(), "context \"nope\" not found");
        let no_current = KUBECONFIG.replace("current-context: ca", "");
        assert!(matches!(
            parse(no_current.as_bytes(), None),
            Err(ParseError::NoContext)
        ));
        let bad_scheme = KUBECONFIG.replace("https://10.0.0.1", "ftp://10.0.0.1");
        assert!(matches!(
            parse(bad_scheme.as_bytes(), None),
            Err(ParseError::BadServer(_))
        ));
    }

    #[test]
    fn yaml_errors_do_not_echo_the_document() {
        let broken = "users:\n- name: u\n  user: {token: secret-token-value\n";
        let err = parse(broken.as_bytes(), None).unwrap_err().to_string();
        assert!(!err.contains("secret-token-value"), "{err}");
    }
}
