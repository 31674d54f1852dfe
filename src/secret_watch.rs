//! Watches one named Secret through the API and publishes its current state
//! on a `watch` channel: not listed yet, missing, or present. Used wherever
//! a component follows a Secret (the managed kubeconfig, the provisioner's
//! source and target) so they share one way of doing it. Watch failures are
//! retried with backoff and reported alongside the last known state.

use std::{fmt, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;

/// A Secret's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Parses `NAMESPACE/NAME` (for flags).
pub fn parse_secret_ref(value: &str) -> Result<SecretRef, String> {
    match value.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(SecretRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {value:?}")),
    }
}

/// What is known about the Secret.
#[derive(Debug, Clone, Default)]
pub enum SecretState {
    /// The first listing has not completed.
    #[default]
    Pending,
    Missing,
    Present(Arc<Secret>),
}

/// The state and, while the watch is failing, why.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub state: SecretState,
    pub error: Option<String>,
}

impl Watched {
    /// The bytes under `key`, when the Secret is there and has it.
    pub fn key(&self, key: &str) -> Option<&[u8]> {
        match &self.state {
            SecretState::Present(secret) => secret
                .data
                .as_ref()?
                .get(key)
                .map(|bytes| bytes.0.as_slice()),
            _ => None,
        }
    }
}

/// Starts watching; the task ends when every receiver is gone.
pub fn watch_secret(client: kube::Client, secret: SecretRef) -> watch::Receiver<Watched> {
    let (tx, rx) = watch::channel(Watched::default());
    tokio::spawn(run(client, secret, tx));
    rx
}

async fn run(client: kube::Client, secret: SecretRef, tx: watch::Sender<Watched>) {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret.name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed: Option<Arc<Secret>> = None;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tx.closed() => return,
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(obj)) => listed = Some(Arc::new(obj)),
            Ok(watcher::Event::InitDone) => {
                let state = match listed.take() {
                    Some(obj) => SecretState::Present(obj),
                    None => SecretState::Missing,
                };
                tx.send_replace(Watched { state, error: None });
            }
            Ok(watcher::Event::Apply(obj)) => {
                tx.send_replace(Watched {
                    state: SecretState::Present(Arc::new(obj)),
                    error: None,
                });
            }
            Ok(watcher::Event::Delete(_)) => {
                tx.send_replace(Watched {
                    state: SecretState::Missing,
                    error: None,
                });
            }
            Err(err) => {
                tracing::warn!(secret = %secret, error = %err, "watching the Secret failed; retrying");
                tx.send_modify(|watched| watched.error = Some(err.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_need_namespace_and_name() {
        assert_eq!(
            parse_secret_ref("ns/name"),
            Ok(SecretRef {
                namespace: "ns".into(),
                name: "name".into()
            })
        );
        assert!(parse_secret_ref("name").is_err());
        assert!(parse_secret_ref("/name").is_err());
        assert!(parse_secret_ref("a/b/c").is_err());
    }
}
