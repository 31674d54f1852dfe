//! How long an apiserver response stays servable, and dropping it when the
//! data behind it changes.
//!
//! Types named by `--watch-resource` are watched (metadata only, with the
//! cache's own identity from the managed kubeconfig): every change drops
//! the entries it could affect (the object's named GETs, and every list of
//! its type in its namespace or across namespaces), and while the watch is
//! in sync their entries live up to `--watched-ttl`. Other types live
//! `--cache-ttl`. Writes through the cache drop what they touch at once.
//!
//! A fill that raced a change must not store the old bytes after the change
//! dropped the entry: each type has a generation, bumped on every change,
//! and a fill stores only if the generation it started with still holds.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::attrs::{Attributes, attributes, type_key};
use crate::read_cache::store::Store;

/// Freshness state shared by the request path and the watches.
pub struct Freshness {
    ttl: Duration,
    watched_ttl: Duration,
    /// Watched types and whether their watch is in sync.
    watched: HashMap<String, Arc<AtomicBool>>,
    generations: Mutex<HashMap<String, u64>>,
}

impl Freshness {
    /// `watched` are the type keys (`resource` or `resource.group`) that
    /// watches keep current.
    pub fn new(ttl: Duration, watched_ttl: Duration, watched: &[String]) -> Self {
        Self {
            ttl,
            watched_ttl,
            watched: watched
                .iter()
                .map(|t| (t.clone(), Arc::new(AtomicBool::new(false))))
                .collect(),
            generations: Mutex::default(),
        }
    }

    /// The flag a type's watch sets while it is in sync.
    pub fn synced_flag(&self, type_key: &str) -> Option<Arc<AtomicBool>> {
        self.watched.get(type_key).cloned()
    }

    /// Whether every watch is in sync.
    pub fn all_synced(&self) -> bool {
        self.watched.values().all(|s| s.load(Ordering::Acquire))
    }

    /// How long an entry of `type_key` (`None` for a non-resource path)
    /// may be served from now.
    pub fn lifetime(&self, type_key: Option<&str>) -> Duration {
        match type_key.and_then(|t| self.watched.get(t)) {
            Some(synced) if synced.load(Ordering::Acquire) => self.watched_ttl,
            _ => self.ttl,
        }
    }

    /// The current generation of a type.
    pub fn generation(&self, type_key: &str) -> u64 {
        *self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(type_key)
            .unwrap_or(&0)
    }

    fn bump(&self, type_key: &str) {
        *self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(type_key.to_owned())
            .or_default() += 1;
    }

    /// Drops every entry a change to object `name` in `namespace` of type
    /// `type_key` could affect (`name: None`: any object of that
    /// namespace, as after a deletecollection; `namespace: None` and
    /// `name: None`: every entry of the type). Returns how many.
    pub fn changed(
        &self,
        store: &Store,
        type_key_: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> usize {
        self.bump(type_key_);
        let resource = type_key_.split('.').next().unwrap_or(type_key_);
        let needle = format!("/{resource}");
        store.remove_where(|_, entry| {
            // Cheap test first: most entries are of other types.
            if !entry.path.contains(&needle) {
                return false;
            }
            let Ok(uri) = entry.path.parse() else {
                return true;
            };
            let Some(Attributes::Resource(r)) = attributes(&http::Method::GET, &uri) else {
                return false;
            };
            if type_key(&r.group, &r.resource) != type_key_ {
                return false;
            }
            let same_namespace = match (namespace, r.namespace.as_deref()) {
                (None, _) | (_, None) => true,
                (Some(changed), Some(entry)) => changed == entry,
            };
            let same_object = match (name, r.name.as_deref()) {
                (None, _) | (_, None) => true,
                (Some(changed), Some(entry)) => changed == entry,
            };
            same_namespace && same_object
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode, Uri};
    use tokio::time::Instant;

    use super::*;
    use crate::read_cache::{
        key::KeySpec,
        store::{CachedResponse, Freshness as EntryFreshness},
    };

    fn fill(store: &Store, path: &str) {
        let uri: Uri = path.parse().expect("uri");
        let key = KeySpec::default().key(&Method::GET, "https://k", &uri, &HeaderMap::new(), b"");
        store.insert(
            key,
            CachedResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"{}"),
                stored_at: Instant::now(),
                freshness: EntryFreshness {
                    fresh_until: Instant::now() + Duration::from_secs(60),
                    etag: None,
                    last_modified: None,
                },
                path: path.to_owned(),
            },
        );
    }

    fn left(store: &Store, paths: &[&str]) -> Vec<String> {
        let mut kept = Vec::new();
        for path in paths {
            let uri: Uri = path.parse().expect("uri");
            let key =
                KeySpec::default().key(&Method::GET, "https://k", &uri, &HeaderMap::new(), b"");
            if store.get(&key).is_some() {
                kept.push((*path).to_owned());
            }
        }
        kept
    }

    #[test]
    fn a_change_drops_its_object_and_the_lists_that_hold_it() {
        let store = Store::new(1 << 20);
        let paths = [
            "/api/v1/namespaces/a/configmaps/x",
            "/api/v1/namespaces/a/configmaps/y",
            "/api/v1/namespaces/a/configmaps",
            "/api/v1/namespaces/b/configmaps",
            "/api/v1/configmaps",
            "/api/v1/namespaces/a/secrets/x",
            "/apis/apps/v1/namespaces/a/deployments/x",
        ];
        for path in paths {
            fill(&store, path);
        }
        let freshness = Freshness::new(Duration::from_secs(1), Duration::from_secs(60), &[]);
        let before = freshness.generation("configmaps");
        assert_eq!(
            freshness.changed(&store, "configmaps", Some("a"), Some("x")),
            3
        );
        assert!(freshness.generation("configmaps") > before);
        assert_eq!(
            left(&store, &paths),
            [
                "/api/v1/namespaces/a/configmaps/y",
                "/api/v1/namespaces/b/configmaps",
                "/api/v1/namespaces/a/secrets/x",
                "/apis/apps/v1/namespaces/a/deployments/x",
            ]
        );
        assert_eq!(freshness.changed(&store, "deployments.apps", None, None), 1);
    }

    #[test]
    fn watched_types_live_longer_only_while_in_sync() {
        let freshness = Freshness::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            &["configmaps".to_owned()],
        );
        assert_eq!(
            freshness.lifetime(Some("configmaps")),
            Duration::from_secs(1)
        );
        assert!(!freshness.all_synced());
        freshness
            .synced_flag("configmaps")
            .expect("watched")
            .store(true, Ordering::Release);
        assert_eq!(
            freshness.lifetime(Some("configmaps")),
            Duration::from_secs(60)
        );
        assert_eq!(freshness.lifetime(Some("secrets")), Duration::from_secs(1));
        assert_eq!(freshness.lifetime(None), Duration::from_secs(1));
        assert!(freshness.all_synced());
    }
}
