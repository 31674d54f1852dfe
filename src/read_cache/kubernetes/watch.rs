//! The watches behind `--watch-resource`: one metadata-only watch per type,
//! with the cache's own identity (the managed kubeconfig), dropping cached
//! entries as objects change. A watch that restarts from a fresh list drops
//! every entry of its type, since changes may have been missed in between.
//! A new managed kubeconfig (a rotated token, another server) restarts the
//! watches with it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api,
    api::{DynamicObject, PartialObjectMeta},
    discovery::ApiResource,
    runtime::watcher,
};

use super::freshness::Freshness;
use crate::{
    admin::ReadinessCheck,
    managed_kubeconfig::Current,
    read_cache::{metrics::CacheMetrics, store::Store},
};

/// A `--watch-resource` value: `resource` (core group) or
/// `resource.group`, as kubectl writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedType {
    pub resource: String,
    pub group: String,
}

impl WatchedType {
    /// The key freshness and invalidation use.
    pub fn key(&self) -> String {
        super::attrs::type_key(&self.group, &self.resource)
    }
}

/// Parses `configmaps`, `deployments.apps`, `widgets.example.com`.
pub fn parse_watched(text: &str) -> Result<WatchedType, String> {
    let (resource, group) = text.split_once('.').unwrap_or((text, ""));
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    let group_ok = !text.contains('.')
        || valid(group)
            && !group.starts_with('.')
            && !group.ends_with('.')
            && !group.contains("..");
    if !valid(resource) || resource.contains('.') || !group_ok {
        return Err(format!(
            "{text:?} is not a resource as kubectl writes it (configmaps, deployments.apps)"
        ));
    }
    Ok(WatchedType {
        resource: resource.to_owned(),
        group: group.to_owned(),
    })
}

/// What the watches share.
pub struct Watches {
    pub current: Current,
    pub store: Arc<Store>,
    pub freshness: Arc<Freshness>,
    pub metrics: CacheMetrics,
    pub timeout: Duration,
    pub readiness: ReadinessCheck,
}

impl Watches {
    /// Starts one task per type; they run for the life of the process.
    pub fn spawn(self, types: Vec<WatchedType>) {
        if types.is_empty() {
            self.readiness
                .ready("no --watch-resource: every entry lives --cache-ttl");
            return;
        }
        self.readiness.not_ready("watches starting");
        let shared = Arc::new(self);
        for watched in types {
            tokio::spawn(shared.clone().supervise(watched));
        }
    }

    fn report(&self) {
        if self.freshness.all_synced() {
            self.readiness.ready("every watch in sync");
        } else {
            self.readiness.not_ready("a watch is not in sync");
        }
    }

    /// Runs the watch of one type again and again: with each new managed
    /// kubeconfig, and after each failure with a capped backoff.
    async fn supervise(self: Arc<Self>, watched: WatchedType) {
        let key = watched.key();
        let synced = self
            .freshness
            .synced_flag(&key)
            .expect("every watched type has a flag");
        let mut current = self.current.clone();
        let mut backoff = Duration::from_millis(250);
        loop {
            let kubeconfig = current.borrow_and_update().clone();
            let outcome = match kubeconfig {
                None => Err("no managed kubeconfig yet".to_owned()),
                Some(kubeconfig) => {
                    tokio::select! {
                        result = self.watch_once(&kubeconfig, &watched, &key, &synced) => result,
                        _ = current.changed() => Ok(()),
                    }
                }
            };
            synced.store(false, Ordering::Release);
            // Whatever was missed while out of sync must not be served.
            let dropped = self.freshness.changed(&self.store, &key, None, None);
            self.metrics.invalidated("resync", dropped);
            self.report();
            match outcome {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(err) => {
                    tracing::warn!(resource = %key, error = %err, "watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = current.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One watch until it fails; `Ok` never comes from here but keeps the
    /// select above simple.
    async fn watch_once(
        &self,
        kubeconfig: &crate::managed_kubeconfig::ManagedKubeconfig,
        watched: &WatchedType,
        key: &str,
        synced: &std::sync::atomic::AtomicBool,
    ) -> Result<(), String> {
        let client = kubeconfig
            .client(self.timeout)
            .await
            .map_err(|err| err.to_string())?;
        let resource = resolve(&client, watched).await?;
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource);
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            match event.map_err(|err| err.to_string())? {
                watcher::Event::Init => {
                    synced.store(false, Ordering::Release);
                    let dropped = self.freshness.changed(&self.store, key, None, None);
                    self.metrics.invalidated("resync", dropped);
                    self.report();
                }
                watcher::Event::InitApply(_) => {}
                watcher::Event::InitDone => {
                    // Anything filled during the list may predate it.
                    let dropped = self.freshness.changed(&self.store, key, None, None);
                    self.metrics.invalidated("resync", dropped);
                    synced.store(true, Ordering::Release);
                    tracing::info!(resource = %key, "watch in sync");
                    self.report();
                }
                watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                    self.object_changed(key, &object);
                }
            }
        }
        Err("the watch stream ended".into())
    }

    fn object_changed(&self, key: &str, object: &PartialObjectMeta<DynamicObject>) {
        let name = object.metadata.name.as_deref();
        // A namespace is its own namespace, as the request attributes read.
        let namespace = if key == "namespaces" {
            name
        } else {
            object.metadata.namespace.as_deref()
        };
        let dropped = self.freshness.changed(&self.store, key, namespace, name);
        self.metrics.invalidated("watch", dropped);
    }
}

/// Finds the served version of a type by discovery.
async fn resolve(client: &kube::Client, watched: &WatchedType) -> Result<ApiResource, String> {
    let group = kube::discovery::group(client, &watched.group)
        .await
        .map_err(|err| format!("discovering API group {:?}: {err}", watched.group))?;
    group
        .recommended_resources()
        .into_iter()
        .find(|(resource, _)| resource.plural == watched.resource)
        .map(|(resource, _)| resource)
        .ok_or_else(|| format!("the apiserver serves no resource {}", watched.key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_parse_like_kubectl() {
        assert_eq!(
            parse_watched("configmaps"),
            Ok(WatchedType {
                resource: "configmaps".into(),
                group: String::new()
            })
        );
        let t = parse_watched("widgets.example.com").expect("valid");
        assert_eq!(
            (t.resource.as_str(), t.group.as_str()),
            ("widgets", "example.com")
        );
        assert_eq!(t.key(), "widgets.example.com");
        for bad in ["", "ConfigMaps", "a b", "x."] {
            assert!(parse_watched(bad).is_err(), "{bad}");
        }
    }
}
