//! The durable queue: an embedded redb database in `--queue-dir`, written by
//! one thread that commits in groups (each commit is fsynced; many
//! deliveries share one). A delivery is acknowledged to the forge only after
//! the commit that holds it, with one pending record per backend; a record
//! goes when its backend has the delivery (or gives up for good), and the
//! delivery's body goes with its last record. On start, whatever is still
//! pending is handed back to be sent again: at least once across crashes.
//!
//! Delivery ids seen within `--dedup-window` are remembered, so a delivery
//! the forge sends again is acknowledged but not fanned out twice.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Delivery id → metadata (JSON).
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
/// Delivery id → body.
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
/// (backend, delivery id) → when the delivery was received (ms).
const PENDING: TableDefinition<(&str, &str), u64> = TableDefinition::new("pending");
/// Delivery id → when it was received (ms), for deduplication.
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// Backends registered at runtime: name → URL.
const BACKENDS: TableDefinition<&str, &str> = TableDefinition::new("backends");

/// Ops committed together at most.
const GROUP: usize = 512;

/// One accepted delivery.
#[derive(Debug)]
pub struct Delivery {
    pub id: String,
    /// The headers to send on (end-to-end ones, as received).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    /// Unix time in milliseconds.
    pub received_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    headers: Vec<(String, Vec<u8>)>,
    received_ms: u64,
}

/// What accepting a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Committed with a pending record per backend.
    New,
    /// Seen before within the dedup window: nothing queued.
    Duplicate,
}

/// A storage failure; the forge gets a 503 and sends again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("queue storage: {0}")]
pub struct JournalError(String);

impl<E: Into<redb::Error>> From<E> for JournalError {
    fn from(err: E) -> Self {
        JournalError(err.into().to_string())
    }
}

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;
/// Answers to send once a group's commit is known.
type Replies = Vec<Box<dyn FnOnce(Result<(), JournalError>)>>;

enum Op {
    Accept {
        delivery: Arc<Delivery>,
        backends: Vec<String>,
        reply: Reply<Accepted>,
    },
    /// A backend has the delivery, or never will.
    Done {
        backend: String,
        delivery: String,
    },
    /// Every backend is done with the delivery.
    Forget {
        delivery: String,
    },
    PutBackend {
        name: String,
        url: String,
        reply: Reply<()>,
    },
    DeleteBackend {
        name: String,
        reply: Reply<()>,
    },
    PruneSeen {
        before_ms: u64,
    },
}

/// What survived the last run.
pub struct Recovered {
    /// Deliveries with the backends still to get them.
    pub pending: Vec<(Arc<Delivery>, Vec<String>)>,
    /// Backends registered at runtime.
    pub backends: Vec<(String, String)>,
}

/// The handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    ops: mpsc::Sender<Op>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Journal {
    /// Opens (or creates) the queue in `dir` and starts the writer.
    pub fn open(dir: &Path) -> Result<(Journal, Recovered), JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| JournalError(format!("{}: {err}", dir.display())))?;
        let db = Database::create(dir.join("queue.redb"))?;
        {
            // Tables exist from the first start on, so reads never miss one.
            let txn = db.begin_write()?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(BODIES)?;
            txn.open_table(PENDING)?;
            txn.open_table(SEEN)?;
            txn.open_table(BACKENDS)?;
            txn.commit()?;
        }
        let recovered = recover(&db)?;
        let (ops, rx) = mpsc::channel(4096);
        let writer = std::thread::Builder::new()
            .name("fanout-journal".into())
            .spawn(move || writer(db, rx))
            .map_err(|err| JournalError(err.to_string()))?;
        Ok((
            Journal {
                ops,
                writer: Arc::new(std::sync::Mutex::new(Some(writer))),
            },
            recovered,
        ))
    }

    /// Commits what is queued and closes the database. Call it on the last
    /// handle: the writer stops when no handle can send any more.
    pub fn close(self) {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(self.ops);
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| JournalError("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| JournalError("the writer has stopped".into()))?
    }

    /// Queues `delivery` for `backends`, durably, unless seen before.
    pub async fn accept(
        &self,
        delivery: Arc<Delivery>,
        backends: Vec<String>,
    ) -> Result<Accepted, JournalError> {
        self.call(|reply| Op::Accept {
            delivery,
            backends,
            reply,
        })
        .await
    }

    /// Records that `backend` is done with `delivery` (committed with the
    /// next group; losing it in a crash only means one more send).
    pub async fn done(&self, backend: &str, delivery: &str) {
        let _ = self
            .ops
            .send(Op::Done {
                backend: backend.to_owned(),
                delivery: delivery.to_owned(),
            })
            .await;
    }

    /// Drops a delivery whose every backend is done.
    pub async fn forget(&self, delivery: &str) {
        let _ = self
            .ops
            .send(Op::Forget {
                delivery: delivery.to_owned(),
            })
            .await;
    }

    /// Persists a runtime backend.
    pub async fn put_backend(&self, name: &str, url: &str) -> Result<(), JournalError> {
        let (name, url) = (name.to_owned(), url.to_owned());
        self.call(|reply| Op::PutBackend { name, url, reply }).await
    }

    /// Removes a runtime backend and its pending records.
    pub async fn delete_backend(&self, name: &str) -> Result<(), JournalError> {
        let name = name.to_owned();
        self.call(|reply| Op::DeleteBackend { name, reply }).await
    }

    /// Forgets delivery ids received before `before_ms`.
    pub async fn prune_seen(&self, before_ms: u64) {
        let _ = self.ops.send(Op::PruneSeen { before_ms }).await;
    }
}

fn recover(db: &Database) -> Result<Recovered, JournalError> {
    let txn = db.begin_read()?;
    let deliveries = txn.open_table(DELIVERIES)?;
    let bodies = txn.open_table(BODIES)?;
    let pending = txn.open_table(PENDING)?;
    let mut by_delivery: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for entry in pending.iter()? {
        let (key, _) = entry?;
        let (backend, delivery) = key.value();
        by_delivery
            .entry(delivery.to_owned())
            .or_default()
            .push(backend.to_owned());
    }
    let mut out = Vec::new();
    for (id, backends) in by_delivery {
        let Some(meta) = deliveries.get(id.as_str())? else {
            continue;
        };
        let meta: Meta = serde_json::from_slice(meta.value())
            .map_err(|err| JournalError(format!("delivery {id}: {err}")))?;
        let body = bodies
            .get(id.as_str())?
            .map(|b| Bytes::copy_from_slice(b.value()))
            .unwrap_or_default();
        out.push((
            Arc::new(Delivery {
                id,
                headers: meta.headers,
                body,
                received_ms: meta.received_ms,
            }),
            backends,
        ));
    }
    // Oldest first, so the backlog drains in arrival order.
    out.sort_by_key(|(d, _)| d.received_ms);
    let backends = txn
        .open_table(BACKENDS)?
        .iter()?
        .map(|entry| {
            let (name, url) = entry?;
            Ok((name.value().to_owned(), url.value().to_owned()))
        })
        .collect::<Result<_, JournalError>>()?;
    Ok(Recovered {
        pending: out,
        backends,
    })
}

/// The writer: takes what is queued, applies it in one transaction, commits
/// (fsync), then answers everyone in the group.
fn writer(db: Database, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let mut replies: Replies = Vec::new();
        let result = apply(&db, group, &mut replies);
        if let Err(err) = &result {
            tracing::error!(error = %err, "queue commit failed");
        }
        for reply in replies {
            reply(result.clone());
        }
    }
}

fn apply(db: &Database, group: Vec<Op>, replies: &mut Replies) -> Result<(), JournalError> {
    let txn = db.begin_write()?;
    {
        let mut deliveries = txn.open_table(DELIVERIES)?;
        let mut bodies = txn.open_table(BODIES)?;
        let mut pending = txn.open_table(PENDING)?;
        let mut seen = txn.open_table(SEEN)?;
        let mut backends = txn.open_table(BACKENDS)?;
        for op in group {
            match op {
                Op::Accept {
                    delivery,
                    backends: targets,
                    reply,
                } => {
                    let outcome = if seen.get(delivery.id.as_str())?.is_some() {
                        Accepted::Duplicate
                    } else {
                        seen.insert(delivery.id.as_str(), delivery.received_ms)?;
                        if !targets.is_empty() {
                            let meta = serde_json::to_vec(&Meta {
                                headers: delivery.headers.clone(),
                                received_ms: delivery.received_ms,
                            })
                            .map_err(|err| JournalError(err.to_string()))?;
                            deliveries.insert(delivery.id.as_str(), meta.as_slice())?;
                            bodies.insert(delivery.id.as_str(), delivery.body.as_ref())?;
                            for backend in &targets {
                                pending.insert(
                                    (backend.as_str(), delivery.id.as_str()),
                                    delivery.received_ms,
                                )?;
                            }
                        }
                        Accepted::New
                    };
                    replies.push(Box::new(move |result| {
                        let _ = reply.send(result.map(|()| outcome));
                    }));
                }
                Op::Done { backend, delivery } => {
                    pending.remove((backend.as_str(), delivery.as_str()))?;
                }
                Op::Forget { delivery } => {
                    deliveries.remove(delivery.as_str())?;
                    bodies.remove(delivery.as_str())?;
                }
                Op::PutBackend { name, url, reply } => {
                    backends.insert(name.as_str(), url.as_str())?;
                    replies.push(Box::new(move |result| {
                        let _ = reply.send(result);
                    }));
                }
                Op::DeleteBackend { name, reply } => {
                    backends.remove(name.as_str())?;
                    pending.retain(|(backend, _), _| backend != name)?;
                    replies.push(Box::new(move |result| {
                        let _ = reply.send(result);
                    }));
                }
                Op::PruneSeen { before_ms } => {
                    seen.retain(|_, at| at >= before_ms)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> Arc<Delivery> {
        Arc::new(Delivery {
            id: id.to_owned(),
            headers: vec![("x-github-event".into(), b"push".to_vec())],
            body: Bytes::from_static(b"{}"),
            received_ms: now_ms(),
        })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pending_survives_a_reopen_and_done_records_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (journal, recovered) = Journal::open(dir.path()).expect("opens");
            assert!(recovered.pending.is_empty());
            let two = vec!["a".to_owned(), "b".to_owned()];
            assert_eq!(
                journal
                    .accept(delivery("d1"), two.clone())
                    .await
                    .expect("ok"),
                Accepted::New
            );
            assert_eq!(
                journal
                    .accept(delivery("d2"), two.clone())
                    .await
                    .expect("ok"),
                Accepted::New
            );
            assert_eq!(
                journal.accept(delivery("d1"), two).await.expect("ok"),
                Accepted::Duplicate
            );
            journal.done("a", "d1").await;
            journal
                .put_backend("dyn", "http://127.0.0.1:1/")
                .await
                .expect("put");
            // A synchronous op after the fire-and-forget ones: all committed.
            journal
                .put_backend("dyn2", "http://127.0.0.1:2/")
                .await
                .expect("put");
            journal.delete_backend("dyn2").await.expect("delete");
            tokio::task::block_in_place(|| journal.close());
        }
        let (_, recovered) = Journal::open(dir.path()).expect("reopens");
        let pending: Vec<(String, Vec<String>)> = recovered
            .pending
            .iter()
            .map(|(d, b)| (d.id.clone(), b.clone()))
            .collect();
        assert_eq!(
            pending,
            [
                ("d1".to_owned(), vec!["b".to_owned()]),
                ("d2".to_owned(), vec!["a".to_owned(), "b".to_owned()])
            ]
        );
        assert_eq!(recovered.pending[0].0.headers[0].1, b"push");
        assert_eq!(
            recovered.backends,
            [("dyn".to_owned(), "http://127.0.0.1:1/".to_owned())]
        );
    }
}
