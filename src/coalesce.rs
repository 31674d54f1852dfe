//! Merges concurrent identical misses into one upstream fetch.
//!
//! The first caller for a key becomes the leader and runs its fetch; callers
//! that arrive while it runs wait and get a clone of the leader's value
//! without fetching. This is what keeps a burst of identical LISTs after an
//! eviction (or a cold start) from becoming a burst against the apiserver,
//! and a burst of requests with one relay token from becoming a burst of
//! TokenReviews when its cached verdict expires.
//!
//! Failure semantics: a value is shared only if the leader's fetch returns
//! `Ok`. If it returns `Err`, or its future is dropped (client gone, timeout),
//! the flight is abandoned: the leader alone gets its error, and the waiters
//! wake and race again, so exactly one of them becomes the new leader and the
//! others wait on it. Each caller runs its own fetch at most once, so with a
//! failing upstream N callers make at most N fetches, one at a time; callers
//! bound their total wait with their own timeout. Upstream answers that
//! should be shared even though they are failures (a 503, a 404) belong in
//! `V`, not in `Err`: `Err` means "nothing worth handing to others".

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Mutex, MutexGuard, PoisonError},
};

use tokio::sync::watch;

/// How a caller's value was obtained, for the `cache` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This caller ran the fetch (a miss).
    Leader,
    /// This caller received another caller's fetch result.
    Coalesced,
}

impl Role {
    /// Label value for metrics and the served-by header.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "miss",
            Role::Coalesced => "coalesced",
        }
    }
}

struct Flight<V> {
    /// Tells a leader's guard apart from a later flight for the same key.
    id: u64,
    /// `None` until the leader succeeds. Dropping the sender (by removing
    /// the flight) without a value is how waiters learn it was abandoned.
    tx: watch::Sender<Option<V>>,
}

struct Inner<K, V> {
    flights: HashMap<K, Flight<V>>,
    next_id: u64,
}

/// Single-flight lock keyed by `K`, sharing values of type `V` (typically
/// an `Arc` of a response, so clones are cheap).
pub struct Coalescer<K, V> {
    inner: Mutex<Inner<K, V>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                flights: HashMap::new(),
                next_id: 0,
            }),
        }
    }
}

/// What the map lookup made of a caller.
enum Joined<V> {
    Lead(u64),
    Wait(watch::Receiver<Option<V>>),
}

impl<K: Eq + Hash + Clone, V: Clone> Coalescer<K, V> {
    /// An empty coalescer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing done under the lock can panic, so a poisoned lock still
    /// guards a consistent map.
    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the value for `key`, running `fetch` only if no other caller
    /// is fetching it. `Err` comes only from this caller's own `fetch`.
    pub async fn get_or_fetch<F, Fut, E>(&self, key: K, fetch: F) -> Result<(V, Role), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        loop {
            let joined = {
                let mut inner = self.lock();
                match inner.flights.get(&key) {
                    Some(flight) => Joined::Wait(flight.tx.subscribe()),
                    None => {
                        inner.next_id += 1;
                        let id = inner.next_id;
                        let (tx, _) = watch::channel(None);
                        inner.flights.insert(key.clone(), Flight { id, tx });
                        Joined::Lead(id)
                    }
                }
            };
            match joined {
                Joined::Lead(id) => {
                    // The guard abandons the flight if this future is dropped
                    // mid-fetch or the fetch fails.
                    let guard = LeaderGuard {
                        coalescer: self,
                        key: Some(key),
                        id,
                    };
                    let value = fetch().await?;
                    guard.complete(value.clone());
                    return Ok((value, Role::Leader));
                }
                Joined::Wait(mut rx) => {
                    // Err means the sender was dropped without a value: the
                    // leader failed or was cancelled, so race to lead.
                    if let Ok(v) = rx.wait_for(Option::is_some).await
                        && let Some(value) = v.clone()
                    {
                        return Ok((value, Role::Coalesced));
                    }
                }
            }
        }
    }

    /// Keys with a fetch in progress; zero once every flight has finished.
    pub fn in_flight(&self) -> usize {
        self.lock().flights.len()
    }

    /// Callers waiting on the flight for `key`.
    #[cfg(test)]
    fn waiters(&self, key: &K) -> usize {
        self.lock()
            .flights
            .get(key)
            .map_or(0, |f| f.tx.receiver_count())
    }
}

/// Removes the leader's flight when it ends, however it ends.
struct LeaderGuard<'a, K: Eq + Hash, V> {
    coalescer: &'a Coalescer<K, V>,
    /// `None` once taken by `complete`, so `Drop` has nothing left to do.
    key: Option<K>,
    id: u64,
}

impl<K: Eq + Hash, V> LeaderGuard<'_, K, V> {
    fn take_flight(&mut self) -> Option<Flight<V>> {
        let key = self.key.take()?;
        let mut inner = self
            .coalescer
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only this leader's flight is ours to remove; the id check keeps a
        // later flight for the same key safe in case this one was replaced.
        match inner.flights.get(&key) {
            Some(f) if f.id == self.id => inner.flights.remove(&key),
            _ => None,
        }
    }

    /// Hands `value` to the waiters and retires the flight. The flight
    /// leaves the map first, so later callers start a new fetch (after the
    /// caller has stored this value, they hit the cache instead).
    fn complete(mut self, value: V) {
        if let Some(flight) = self.take_flight() {
            // `send_replace` succeeds even with no waiters.
            flight.tx.send_replace(Some(value));
        }
    }
}

impl<K: Eq + Hash, V> Drop for LeaderGuard<'_, K, V> {
    fn drop(&mut self) {
        // Dropping the flight's sender wakes the waiters with "abandoned".
        drop(self.take_flight());
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use tokio::{sync::Notify, time::timeout};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Waits, with a deadline, until `n` callers wait on `key`.
    async fn until_waiters(c: &Coalescer<&'static str, u32>, key: &'static str, n: usize) {
        timeout(DEADLINE, async {
            while c.waiters(&key) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("waiters never arrived");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_identical_requests_fetch_once() {
        let c = Arc::new(Coalescer::<&'static str, u32>::new());
        let fetches = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (c, fetches, gate) = (c.clone(), fetches.clone(), gate.clone());
                tokio::spawn(async move {
                    c.get_or_fetch("pods", || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok::<_, ()>(42)
                    })
                    .await
                })
            })
            .collect();
        until_waiters(&c, "pods", 99).await;
        gate.notify_one();
        let mut coalesced = 0;
        for t in tasks {
            let (v, role) = timeout(DEADLINE, t).await.unwrap().unwrap().unwrap();
            assert_eq!(v, 42);
            coalesced += usize::from(role == Role::Coalesced);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(coalesced, 99);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_keys_fetch_separately() {
        let c = Coalescer::<&'static str, u32>::new();
        let fetches = AtomicUsize::new(0);
        let fetch = |v| {
            let fetches = &fetches;
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<_, ()>(v)
            }
        };
        let (a, b) = tokio::join!(c.get_or_fetch("a", fetch(1)), c.get_or_fetch("b", fetch(2)));
        assert_eq!(a, Ok((1, Role::Leader)));
        assert_eq!(b, Ok((2, Role::Leader)));
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn cancelled_leader_hands_over_to_a_waiter() {
        let c = Arc::new(Coalescer::<&'static str, u32>::new());
        let started = Arc::new(Notify::new());
        let leader = {
            let (c, started) = (c.clone(), started.clone());
            tokio::spawn(async move {
                c.get_or_fetch("k", || async move {
                    started.notify_one();
                    std::future::pending::<Result<u32, ()>>().await
                })
                .await
            })
        };
        timeout(DEADLINE, started.notified()).await.unwrap();

        // The new leader's fetch holds until the others have joined it, as a
        // real upstream round trip would.
        let retries = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (c, retries, gate) = (c.clone(), retries.clone(), gate.clone());
                tokio::spawn(async move {
                    c.get_or_fetch("k", || async move {
                        retries.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok::<_, ()>(7)
                    })
                    .await
                })
            })
            .collect();
        until_waiters(&c, "k", 5).await;

        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        // The abandoned flight is gone; the waiters regroup behind one of them.
        until_waiters(&c, "k", 4).await;
        gate.notify_one();
        let mut roles = Vec::new();
        for w in waiters {
            let (v, role) = timeout(DEADLINE, w)
                .await
                .expect("waiter hung")
                .unwrap()
                .unwrap();
            assert_eq!(v, 7);
            roles.push(role);
        }
        assert_eq!(retries.load(Ordering::SeqCst), 1);
        assert_eq!(roles.iter().filter(|r| **r == Role::Leader).count(), 1);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn failed_leader_keeps_its_error_and_a_waiter_retries() {
        let c = Arc::new(Coalescer::<&'static str, u32>::new());
        let gate = Arc::new(Notify::new());
        let leader = {
            let (c, gate) = (c.clone(), gate.clone());
            tokio::spawn(async move {
                c.get_or_fetch("k", || async move {
                    gate.notified().await;
                    Err::<u32, _>("upstream reset")
                })
                .await
            })
        };
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                // Wait until the leader's flight exists, so this one joins it.
                timeout(DEADLINE, async {
                    while c.in_flight() == 0 {
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .unwrap();
                c.get_or_fetch("k", || async { Ok::<_, &str>(9) }).await
            })
        };
        until_waiters(&c, "k", 1).await;
        gate.notify_one();
        assert_eq!(
            timeout(DEADLINE, leader).await.unwrap().unwrap(),
            Err("upstream reset")
        );
        assert_eq!(
            timeout(DEADLINE, waiter).await.unwrap().unwrap(),
            Ok((9, Role::Leader))
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn map_is_empty_after_many_keys() {
        let c = Coalescer::<u32, u32>::new();
        for i in 0..1000 {
            let got = c.get_or_fetch(i, || async move { Ok::<_, ()>(i) }).await;
            assert_eq!(got, Ok((i, Role::Leader)));
        }
        assert_eq!(c.in_flight(), 0);
        assert_eq!(Role::Leader.as_str(), "miss");
        assert_eq!(Role::Coalesced.as_str(), "coalesced");
    }
}
