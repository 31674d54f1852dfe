//! Waiting on a condition with a deadline, the tests' only way to synchronise
//! with other processes: every wait is bounded in time and, when it gives up,
//! says what it was waiting for (and the last error seen, if any).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};

/// Pauses between polls grow from this …
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// … up to this, so a slow condition is not hammered but a fast one is seen
/// quickly.
const MAX_PAUSE: Duration = Duration::from_millis(200);

fn next_pause(pause: Duration, deadline: Instant) -> Option<Duration> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(pause.min(left))
}

/// Polls `cond` until it returns true; fails after `timeout` with an error
/// naming `what`.
pub fn wait_until_sync(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    wait_for_sync(what, timeout, || {
        if cond() {
            Ok(())
        } else {
            Err(anyhow!("the condition was still false"))
        }
    })
}

/// Calls `attempt` until it returns `Ok`, which is returned; fails after
/// `timeout` with an error naming `what` and carrying the last error.
pub fn wait_for_sync<T>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let err = match attempt() {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        match next_pause(pause, deadline) {
            Some(p) => std::thread::sleep(p),
            None => return Err(err).with_context(|| timed_out(what, timeout)),
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Async [`wait_until_sync`]: polls `cond` until it resolves to true.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = cond();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err(anyhow!("the condition was still false"))
            }
        }
    })
    .await
}

/// Async [`wait_for_sync`]: awaits `attempt()` until it returns `Ok`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        // An attempt that hangs must not outlive the deadline either.
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match tokio::time::timeout(left.max(FIRST_PAUSE), attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err,
            Err(_) => anyhow!("the last attempt did not finish before the deadline"),
        };
        match next_pause(pause, deadline) {
            Some(p) => tokio::time::sleep(p).await,
            None => return Err(err).with_context(|| timed_out(what, timeout)),
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

fn timed_out(what: &str, timeout: Duration) -> String {
    format!("timed out after {timeout:?} waiting for {what}")
}
