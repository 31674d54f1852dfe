//! Where each hook's cursor lives between runs: a ConfigMap on the hosting
//! cluster (`--cursor-configmap`) or a local file (`--cursor-file`). A
//! cursor is the id of the newest delivery the forwarder is done with
//! (forwarded, a duplicate, or dead-lettered); delivery ids only grow, so
//! everything above it is unseen. It also keeps the GUIDs forwarded within
//! `--dedup-window` (so a redelivery is forwarded once), the attempts spent
//! on the delivery at the head of the queue, and the dead letters waiting
//! for `--replay-dead-letters`.
//!
//! The whole document (one JSON value per hook) is written on every
//! change, by server-side apply or by an atomic file replace, so a `kill -9`
//! leaves either the old or the new cursor. A ConfigMap holds at most
//! 1 MiB: the GUIDs and dead letters are bounded by count as well
//! (`--dedup-max-entries`, `--max-dead-letters`).

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
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
    /// GUIDs forwarded lately with when (Unix seconds), oldest first.
    #[serde(default)]
    pub seen: VecDeque<Seen>,
    /// Attempts spent on the delivery after `last_id`, if it failed.
    #[serde(default)]
    pub failing: Option<Failing>,
    /// Dead letters waiting for a replay, oldest first.
    #[serde(default)]
    pub dead_letters: VecDeque<DeadLetter>,
    /// Every dead letter ever recorded for this hook.
    #[serde(default)]
    pub dead_lettered_total: u64,
}

/// A GUID forwarded at `at` (Unix seconds); stored as `[guid, at]`. A bare
/// GUID, as cursors written before the window was a time span hold, reads
/// as forwarded now, so it is kept one more window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SeenRepr", into = "(String, u64)")]
pub struct Seen {
    pub guid: String,
    pub at: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SeenRepr {
    Pair(String, u64),
    Bare(String),
}

impl From<SeenRepr> for Seen {
    fn from(repr: SeenRepr) -> Self {
        match repr {
            SeenRepr::Pair(guid, at) => Seen { guid, at },
            SeenRepr::Bare(guid) => Seen {
                guid,
                at: unix_secs(SystemTime::now()),
            },
        }
    }
}

impl From<Seen> for (String, u64) {
    fn from(seen: Seen) -> Self {
        (seen.guid, seen.at)
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failing {
    pub id: u64,
    pub attempts: u32,
    /// When the first of these attempts failed (Unix seconds).
    #[serde(default)]
    pub since: u64,
}

/// A delivery given up on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub reason: String,
    /// When it was dead-lettered (RFC 3339).
    pub at: String,
    /// When the forge recorded it (RFC 3339), as the forge wrote it.
    #[serde(default)]
    pub delivered_at: String,
}

/// How long and how many forwarded GUIDs are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupBounds {
    pub window: Duration,
    pub max_entries: usize,
}

impl HookCursor {
    /// Remembers `guid` as forwarded at `now`, forgetting what is older
    /// than the window or beyond the count; returns how many were forgotten
    /// early, because of the count, while still inside the window.
    pub fn remember(&mut self, guid: &str, now: SystemTime, bounds: DedupBounds) -> usize {
        let now = unix_secs(now);
        self.seen.push_back(Seen {
            guid: guid.to_owned(),
            at: now,
        });
        let oldest = now.saturating_sub(bounds.window.as_secs());
        let mut early = 0;
        while let Some(first) = self.seen.front() {
            let expired = first.at < oldest;
            if !expired && self.seen.len() <= bounds.max_entries {
                break;
            }
            early += usize::from(!expired);
            self.seen.pop_front();
        }
        early
    }

    pub fn has_seen(&self, guid: &str) -> bool {
        self.seen.iter().any(|seen| seen.guid == guid)
    }

    /// Records a dead letter; past `keep` the oldest is dropped for good
    /// and returned, so the caller can say so.
    pub fn dead_letter(&mut self, letter: DeadLetter, keep: usize) -> Vec<DeadLetter> {
        self.dead_letters.push_back(letter);
        self.dead_lettered_total += 1;
        let mut dropped = Vec::new();
        while self.dead_letters.len() > keep {
            dropped.extend(self.dead_letters.pop_front());
        }
        dropped
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
    namespace: String,
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
        let backend = Backend::File(path);
        let document = backend.read().await?;
        Ok(Self {
            backend,
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
        let backend = Backend::ConfigMap(Box::new(ConfigMapBackend {
            api: KubeApi::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            timeout,
        }));
        let document = backend.read().await?;
        Ok(Self {
            backend,
            document: Mutex::new(document),
        })
    }

    /// Reads the stored document again, dropping what this process held:
    /// after another replica (or `--replay-dead-letters`) has written it,
    /// before this one writes again.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let fresh = self.backend.read().await?;
        *self.document.lock().await = fresh;
        Ok(())
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
                let ConfigMapBackend {
                    api, name, timeout, ..
                } = &**backend;
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

impl Backend {
    /// The whole stored document (empty when nothing is stored yet).
    async fn read(&self) -> Result<BTreeMap<String, String>, StoreError> {
        match self {
            Backend::File(path) => match tokio::fs::read(path).await {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
                    key: path.display().to_string(),
                    err: err.to_string(),
                }),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
                Err(err) => Err(StoreError::Io(format!("{}: {err}", path.display()))),
            },
            Backend::ConfigMap(backend) => {
                let ConfigMapBackend {
                    api,
                    namespace,
                    name,
                    timeout,
                } = &**backend;
                let found = tokio::time::timeout(*timeout, api.get_opt(name))
                    .await
                    .map_err(|_| {
                        StoreError::Io(format!("reading ConfigMap {namespace}/{name}: timed out"))
                    })?
                    .map_err(|err| {
                        StoreError::Io(format!("reading ConfigMap {namespace}/{name}: {err}"))
                    })?;
                Ok(found
                    .and_then(|cm| cm.data)
                    .unwrap_or_default()
                    .into_iter()
                    .collect())
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
        let bounds = DedupBounds {
            window: Duration::from_secs(3600),
            max_entries: 2,
        };
        let now = SystemTime::now();
        for guid in ["a", "b", "c"] {
            cursor.remember(guid, now, bounds);
        }
        let letter = |guid: &str| DeadLetter {
            id: 41,
            guid: guid.into(),
            event: "push".into(),
            reason: "422".into(),
            at: "now".into(),
            delivered_at: String::new(),
        };
        assert!(cursor.dead_letter(letter("y"), 1).is_empty());
        assert_eq!(cursor.dead_letter(letter("z"), 1), vec![letter("y")]);
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
        assert_eq!(loaded.dead_lettered_total, 2);
        assert_eq!(loaded.dead_letters, [letter("z")]);
        assert!(again.load("org.o.2").await.expect("reads").is_some());
    }

    #[test]
    fn guids_are_forgotten_after_the_window_or_past_the_count() {
        let bounds = DedupBounds {
            window: Duration::from_secs(100),
            max_entries: 3,
        };
        let start = UNIX_EPOCH + Duration::from_secs(10_000);
        let mut cursor = HookCursor::default();
        assert_eq!(cursor.remember("a", start, bounds), 0);
        assert_eq!(
            cursor.remember("b", start + Duration::from_secs(50), bounds),
            0
        );
        // "a" is 101 s old: out of the window, not forgotten early.
        assert_eq!(
            cursor.remember("c", start + Duration::from_secs(101), bounds),
            0
        );
        assert!(!cursor.has_seen("a") && cursor.has_seen("b"));
        assert_eq!(
            cursor.remember("d", start + Duration::from_secs(102), bounds),
            0
        );
        // Inside the window but past the count: "b" goes early.
        assert_eq!(
            cursor.remember("e", start + Duration::from_secs(103), bounds),
            1
        );
        let kept: Vec<&str> = cursor.seen.iter().map(|s| s.guid.as_str()).collect();
        assert_eq!(kept, ["c", "d", "e"]);
    }

    #[test]
    fn cursors_written_with_a_count_window_still_read() {
        let old: HookCursor =
            serde_json::from_str(r#"{"last_id": 7, "seen": ["g1", "g2"], "dead_letters": [{"id": 5, "guid": "g0", "event": "push", "reason": "x", "at": "t"}]}"#)
                .expect("an old cursor reads");
        assert!(old.has_seen("g1") && old.has_seen("g2"));
        assert!(old.seen[0].at > 0, "read as forwarded now");
        let text = serde_json::to_string(&old).expect("serialises");
        assert!(text.contains(r#"["g1","#), "{text}");
        let again: HookCursor = serde_json::from_str(&text).expect("reads back");
        assert_eq!(again, old);
    }
}
