//! Where each hook's cursor lives between runs: a ConfigMap on the hosting
//! cluster (`--cursor-configmap`) or a local file (`--cursor-file`). A
//! cursor is the id of the newest delivery the forwarder is done with
//! (forwarded, a duplicate, or dead-lettered); delivery ids only grow, so
//! everything above it is unseen. It also keeps the GUIDs recently
//! forwarded (so a redelivery is forwarded once), the attempts spent on the
//! delivery at the head of the queue, and the last dead letters.
//!
//! The whole document (one JSON value per hook) is written on every
//! change, by server-side apply or by an atomic file replace, so a `kill -9`
//! leaves either the old or the new cursor.

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    time::Duration,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api as KubeApi, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

const FIELD_MANAGER: &str = "cluster-relay-delivery-forwarder";

/// One hook's progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HookCursor {
    /// The newest delivery id done with; 0 before any.
    pub last_id: u64,
    /// Its `delivered_at`, for the lag gauge.
    #[serde(default)]
    pub last_delivered_at: String,
    /// GUIDs forwarded lately, oldest first, at most `--dedup-size`.
    #[serde(default)]
    pub seen: VecDeque<String>,
    /// Attempts spent on the delivery after `last_id`, if it failed.
    #[serde(default)]
    pub failing: Option<Failing>,
    /// The latest dead letters, oldest first, at most `--max-dead-letters`.
    #[serde(default)]
    pub dead_letters: VecDeque<DeadLetter>,
    /// Every dead letter ever recorded for this hook.
    #[serde(default)]
    pub dead_lettered_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failing {
    pub id: u64,
    pub attempts: u32,
}

/// A delivery given up on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub reason: String,
    pub at: String,
}

impl HookCursor {
    /// Remembers `guid` as forwarded, forgetting the oldest past `keep`.
    pub fn remember(&mut self, guid: &str, keep: usize) {
        self.seen.push_back(guid.to_owned());
        while self.seen.len() > keep {
            self.seen.pop_front();
        }
    }

    pub fn has_seen(&self, guid: &str) -> bool {
        self.seen.iter().any(|seen| seen == guid)
    }

    pub fn dead_letter(&mut self, letter: DeadLetter, keep: usize) {
        self.dead_letters.push_back(letter);
        self.dead_lettered_total += 1;
        while self.dead_letters.len() > keep {
            self.dead_letters.pop_front();
        }
    }
}

/// Why a cursor could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(String),
    #[error("the stored cursor {key} is not readable: {err}")]
    Corrupt { key: String, err: String },
}

enum Backend {
    File(PathBuf),
    ConfigMap(Box<ConfigMapBackend>),
}

struct ConfigMapBackend {
    api: KubeApi<ConfigMap>,
    name: String,
    timeout: Duration,
}

/// The cursors of every hook; writes are serialised.
pub struct Store {
    backend: Backend,
    document: Mutex<BTreeMap<String, String>>,
}

impl Store {
    /// A store in a local file, read now.
    pub async fn file(path: PathBuf) -> Result<Self, StoreError> {
        let document = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
                key: path.display().to_string(),
                err: err.to_string(),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(StoreError::Io(format!("{}: {err}", path.display()))),
        };
        Ok(Self {
            backend: Backend::File(path),
            document: Mutex::new(document),
        })
    }

    /// A store in ConfigMap `namespace/name`, read now.
    pub async fn config_map(
        client: kube::Client,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let api: KubeApi<ConfigMap> = KubeApi::namespaced(client, namespace);
        let found = tokio::time::timeout(timeout, api.get_opt(name))
            .await
            .map_err(|_| {
                StoreError::Io(format!("reading ConfigMap {namespace}/{name}: timed out"))
            })?
            .map_err(|err| {
                StoreError::Io(format!("reading ConfigMap {namespace}/{name}: {err}"))
            })?;
        let document = found
            .and_then(|cm| cm.data)
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(Self {
            backend: Backend::ConfigMap(Box::new(ConfigMapBackend {
                api,
                name: name.to_owned(),
                timeout,
            })),
            document: Mutex::new(document),
        })
    }

    /// The stored cursor of `key`, if any.
    pub async fn load(&self, key: &str) -> Result<Option<HookCursor>, StoreError> {
        let document = self.document.lock().await;
        document
            .get(key)
            .map(|text| {
                serde_json::from_str(text).map_err(|err| StoreError::Corrupt {
                    key: key.to_owned(),
                    err: err.to_string(),
                })
            })
            .transpose()
    }

    /// Stores the cursor of `key` durably. On failure the in-memory
    /// document keeps the new value and the next save writes it too.
    pub async fn save(&self, key: &str, cursor: &HookCursor) -> Result<(), StoreError> {
        let text = serde_json::to_string(cursor).expect("a cursor serialises");
        let mut document = self.document.lock().await;
        document.insert(key.to_owned(), text);
        match &self.backend {
            Backend::File(path) => write_file(path, &document).await,
            Backend::ConfigMap(backend) => {
                let ConfigMapBackend { api, name, timeout } = &**backend;
                // Apply the whole document: this manager owns every key, so
                // a key left out would be deleted.
                let body = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "cluster-relay"}},
                    "data": &*document,
                });
                let params = PatchParams::apply(FIELD_MANAGER).force();
                tokio::time::timeout(*timeout, api.patch(name, &params, &Patch::Apply(&body)))
                    .await
                    .map_err(|_| StoreError::Io(format!("writing ConfigMap {name}: timed out")))?
                    .map_err(|err| StoreError::Io(format!("writing ConfigMap {name}: {err}")))?;
                Ok(())
            }
        }
    }
}

async fn write_file(path: &PathBuf, document: &BTreeMap<String, String>) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(document).expect("a document serialises");
    let temp = path.with_extension("tmp");
    let io = |err: std::io::Error| StoreError::Io(format!("{}: {err}", path.display()));
    // Write, flush to disk, then rename over the old file: a crash at any
    // point leaves one whole document.
    let file = tokio::fs::File::create(&temp).await.map_err(io)?;
    let mut file = file.into_std().await;
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        file.write_all(&bytes)?;
        file.sync_all()
    })
    .await
    .map_err(|err| StoreError::Io(err.to_string()))?
    .map_err(io)?;
    tokio::fs::rename(&temp, path).await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_store_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("cursors.json");
        let store = Store::file(path.clone()).await.expect("opens");
        assert_eq!(store.load("repo.o.r.1").await.expect("reads"), None);
        let mut cursor = HookCursor {
            last_id: 42,
            ..Default::default()
        };
        for guid in ["a", "b", "c"] {
            cursor.remember(guid, 2);
        }
        cursor.dead_letter(
            DeadLetter {
                id: 41,
                guid: "z".into(),
                event: "push".into(),
                reason: "503".into(),
                at: "now".into(),
            },
            1,
        );
        store.save("repo.o.r.1", &cursor).await.expect("writes");
        store
            .save("org.o.2", &HookCursor::default())
            .await
            .expect("writes");
        let again = Store::file(path).await.expect("reopens");
        let loaded = again
            .load("repo.o.r.1")
            .await
            .expect("reads")
            .expect("present");
        assert_eq!(loaded, cursor);
        assert!(loaded.has_seen("c") && !loaded.has_seen("a"));
        assert_eq!(loaded.dead_lettered_total, 1);
        assert!(again.load("org.o.2").await.expect("reads").is_some());
    }
}
