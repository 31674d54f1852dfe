//! Bounded in-memory storage for cached responses, with LRU eviction.
//!
//! The bound is in bytes (body + headers + a fixed per-entry overhead), not
//! entries, because one LIST of a large collection can outweigh thousands of
//! named GETs. Freshness is not judged here: entries carry what the policy
//! layer needs (deadline, validators) and the store only keeps and evicts.
//!
//! Layout: a `HashMap` from key to entry plus a `BTreeMap` from a use tick to
//! key, so the least recently used entry is the first in the ordering index.
//! Every `get`/`insert` is O(log n); only `remove_where` scans, because
//! invalidation has to look at every entry anyway.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::key::CacheKey;

/// Bytes charged per entry on top of body and headers: map and index nodes,
/// the key, the `Arc` and the struct itself. An estimate, so that many tiny
/// entries still count against the bound.
pub const ENTRY_OVERHEAD: usize = 256;

/// Bytes charged per header on top of name and value, as HPACK does
/// (RFC 7541 §4.1) for the `HeaderMap` bookkeeping.
const HEADER_OVERHEAD: usize = 32;

/// Freshness facts the policy layer records when it stores a response.
#[derive(Clone, Debug)]
pub struct Freshness {
    /// Served without asking upstream until this instant.
    pub fresh_until: Instant,
    /// `ETag` of the stored response, for `If-None-Match`.
    pub etag: Option<HeaderValue>,
    /// `Last-Modified` of the stored response, for `If-Modified-Since`.
    pub last_modified: Option<HeaderValue>,
}

/// One stored response, filled in by the caller.
#[derive(Clone, Debug)]
pub struct CachedResponse {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream headers as they will be served.
    pub headers: HeaderMap,
    /// Upstream body.
    pub body: Bytes,
    /// When the response was received, for `Age`.
    pub stored_at: Instant,
    /// Freshness deadline and validators.
    pub freshness: Freshness,
    /// Upstream path the entry answers, so writes and watch events can
    /// invalidate by prefix with [`Store::remove_where`].
    pub path: String,
}

impl CachedResponse {
    /// Bytes this entry counts against the store's bound.
    pub fn charged_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + HEADER_OVERHEAD)
            .sum();
        ENTRY_OVERHEAD + self.body.len() + headers + self.path.len()
    }
}

/// What [`Store::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored under a key that had no entry.
    New,
    /// Stored, replacing the previous entry for the key.
    Replaced,
    /// Larger than the whole bound, so not stored; any previous entry for
    /// the key was removed, since the caller meant to supersede it.
    TooLarge,
}

struct Slot {
    response: Arc<CachedResponse>,
    size: usize,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheKey, Slot>,
    /// Use tick → key; the first entry is the least recently used.
    order: BTreeMap<u64, CacheKey>,
    /// Monotonic, so ticks are unique; u64 cannot wrap in practice.
    next_tick: u64,
    bytes: usize,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn take(&mut self, key: &CacheKey) -> Option<Slot> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.tick);
        self.bytes -= slot.size;
        Some(slot)
    }
}

/// A thread-safe, byte-bounded LRU store of responses keyed by [`CacheKey`].
pub struct Store {
    max_bytes: usize,
    inner: Mutex<Inner>,
    insertions: AtomicU64,
    evictions: AtomicU64,
    rejections: AtomicU64,
}

impl Store {
    /// An empty store holding at most `max_bytes` charged bytes.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::default(),
            insertions: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
        }
    }

    /// Operations never panic while holding the lock, so a poisoned lock
    /// only means a panic elsewhere in the holder's thread; the data is
    /// still consistent and the cache should keep serving.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `key`, marking it most recently used.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let mut inner = self.lock();
        let tick = inner.tick();
        let slot = inner.entries.get_mut(key)?;
        let old = std::mem::replace(&mut slot.tick, tick);
        let response = Arc::clone(&slot.response);
        inner.order.remove(&old);
        inner.order.insert(tick, key.clone());
        Some(response)
    }

    /// Stores `response` under `key`, evicting least recently used entries
    /// until it fits.
    pub fn insert(&self, key: CacheKey, response: CachedResponse) -> Inserted {
        let size = response.charged_bytes();
        let mut inner = self.lock();
        let replaced = inner.take(&key).is_some();
        if size > self.max_bytes {
            self.rejections.fetch_add(1, Ordering::Relaxed);
            return Inserted::TooLarge;
        }
        while inner.bytes + size > self.max_bytes {
            let Some((_, lru)) = inner.order.pop_first() else {
                break;
            };
            if let Some(slot) = inner.entries.remove(&lru) {
                inner.bytes -= slot.size;
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        let tick = inner.tick();
        inner.order.insert(tick, key.clone());
        inner.entries.insert(
            key,
            Slot {
                response: Arc::new(response),
                size,
                tick,
            },
        );
        inner.bytes += size;
        self.insertions.fetch_add(1, Ordering::Relaxed);
        if replaced {
            Inserted::Replaced
        } else {
            Inserted::New
        }
    }

    /// Removes and returns the entry for `key`.
    pub fn remove(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.lock().take(key).map(|slot| slot.response)
    }

    /// Removes every entry for which `predicate` holds (for example, every
    /// `path` under a prefix a write touched); returns how many.
    pub fn remove_where(
        &self,
        mut predicate: impl FnMut(&CacheKey, &CachedResponse) -> bool,
    ) -> usize {
        let mut inner = self.lock();
        let doomed: Vec<CacheKey> = inner
            .entries
            .iter()
            .filter(|(k, slot)| predicate(k, &slot.response))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &doomed {
            inner.take(key);
        }
        doomed.len()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Charged bytes currently held; never above [`Store::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Responses stored so far (new or replacing).
    pub fn insertions(&self) -> u64 {
        self.insertions.load(Ordering::Relaxed)
    }

    /// Entries evicted to make room so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Responses refused for being larger than the whole bound so far.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, Method, Uri};

    use super::*;
    use crate::read_cache::key::KeySpec;

    fn key(i: usize) -> CacheKey {
        let uri: Uri = format!("/api/v1/namespaces/n/configmaps/c{i}")
            .parse()
            .unwrap();
        KeySpec::default().key(&Method::GET, "https://up", &uri, &HeaderMap::new(), b"")
    }

    fn response(path: &str, body_len: usize) -> CachedResponse {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        );
        CachedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(vec![b'x'; body_len]),
            stored_at: now,
            freshness: Freshness {
                fresh_until: now,
                etag: Some(HeaderValue::from_static("\"v1\"")),
                last_modified: None,
            },
            path: path.to_owned(),
        }
    }

    /// Size of `response(path, body_len)` as charged.
    fn charged(path: &str, body_len: usize) -> usize {
        response(path, body_len).charged_bytes()
    }

    #[test]
    fn byte_bound_holds_under_random_inserts() {
        let max = 64 * 1024;
        let store = Store::new(max);
        // xorshift: deterministic sizes without a rand dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 20_000) as usize;
            let outcome = store.insert(key(i), response("/p", len));
            assert_eq!(outcome, Inserted::New);
            assert!(
                store.bytes() <= max,
                "{} > {max} after insert {i}",
                store.bytes()
            );
            assert!(
                store.get(&key(i)).is_some(),
                "fitting entry {i} must be stored"
            );
        }
        assert_eq!(store.insertions(), 2000);
        assert!(store.evictions() > 0);
        assert_eq!(store.insertions() - store.evictions(), store.len() as u64);
        let sum: usize = (0..2000)
            .filter_map(|i| store.get(&key(i)))
            .map(|r| r.charged_bytes())
            .sum();
        assert_eq!(sum, store.bytes());
    }

    #[test]
    fn recently_read_entries_survive_eviction() {
        let one = charged("/p", 100);
        let store = Store::new(3 * one);
        store.insert(key(0), response("/p", 100));
        store.insert(key(1), response("/p", 100));
        store.insert(key(2), response("/p", 100));
        // Reading 0 makes 1 the least recently used.
        assert!(store.get(&key(0)).is_some());
        store.insert(key(3), response("/p", 100));
        assert!(store.get(&key(1)).is_none());
        assert!(store.get(&key(0)).is_some());
        assert!(store.get(&key(2)).is_some());
        assert!(store.get(&key(3)).is_some());
        assert_eq!(store.evictions(), 1);

        // A big entry evicts as many of the oldest as it needs: 0 then 2.
        store.insert(key(4), response("/p", 100 + one));
        assert_eq!(store.len(), 2);
        assert!(store.get(&key(3)).is_some());
        assert!(store.get(&key(4)).is_some());
        assert!(store.bytes() <= store.max_bytes());
    }

    #[test]
    fn oversized_entries_are_rejected() {
        let store = Store::new(charged("/p", 1000));
        assert_eq!(store.insert(key(0), response("/p", 1000)), Inserted::New);
        assert_eq!(
            store.insert(key(1), response("/p", 1001)),
            Inserted::TooLarge
        );
        assert!(store.get(&key(1)).is_none());
        // Rejection evicts nothing it would not have needed.
        assert!(store.get(&key(0)).is_some());
        assert_eq!(store.rejections(), 1);
        assert_eq!(store.evictions(), 0);

        // An oversized replacement drops the stale entry it supersedes.
        assert_eq!(
            store.insert(key(0), response("/p", 5000)),
            Inserted::TooLarge
        );
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn replace_adjusts_bytes() {
        let store = Store::new(1 << 20);
        assert_eq!(store.insert(key(0), response("/p", 1000)), Inserted::New);
        assert_eq!(store.bytes(), charged("/p", 1000));
        assert_eq!(store.insert(key(0), response("/p", 10)), Inserted::Replaced);
        assert_eq!(store.bytes(), charged("/p", 10));
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(&key(0)).map(|r| r.body.len()), Some(10));
        assert!(store.remove(&key(0)).is_some());
        assert!(store.remove(&key(0)).is_none());
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn remove_where_invalidates_by_path_prefix() {
        let store = Store::new(1 << 20);
        let paths = [
            "/api/v1/namespaces/a/pods",
            "/api/v1/namespaces/a/pods/p1",
            "/api/v1/namespaces/a/configmaps/c",
            "/api/v1/namespaces/b/pods/p1",
        ];
        for (i, p) in paths.iter().enumerate() {
            store.insert(key(i), response(p, 10));
        }
        let removed = store.remove_where(|_, r| r.path.starts_with("/api/v1/namespaces/a/pods"));
        assert_eq!(removed, 2);
        assert_eq!(store.len(), 2);
        assert!(store.get(&key(0)).is_none() && store.get(&key(1)).is_none());
        assert!(store.get(&key(2)).is_some() && store.get(&key(3)).is_some());
        assert_eq!(store.bytes(), charged(paths[2], 10) + charged(paths[3], 10));
        // Removing everything leaves nothing charged.
        assert_eq!(store.remove_where(|_, _| true), 2);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn concurrent_use_keeps_the_bound() {
        let store = Arc::new(Store::new(32 * 1024));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let k = key(t * 1000 + i % 50);
                        store.insert(k.clone(), response("/p", (i * 37) % 3000));
                        store.get(&k);
                        assert!(store.bytes() <= store.max_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(store.bytes() <= store.max_bytes());
        let sum: usize = (0..8)
            .flat_map(|t| (0..50).map(move |i| key(t * 1000 + i)))
            .filter_map(|k| store.get(&k))
            .map(|r| r.charged_bytes())
            .sum();
        assert_eq!(sum, store.bytes());
    }
}
