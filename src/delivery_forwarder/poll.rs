//! One hook's poll loop. Each round asks for the first page of deliveries
//! with the last ETag (a 304 means nothing new and costs no rate limit);
//! on a change it walks the pages, newest first, down to the cursor, and
//! queues what is above it oldest first. Then it forwards the queue in
//! order, fetching details a few ahead, and moves the cursor past each
//! delivery only once it was forwarded, found to be a duplicate (same GUID
//! forwarded within `--dedup-window`), or dead-lettered ([`super::retry`]:
//! refused for good, or still failing at `--retry-max-age`). A failure ends
//! the round: nothing behind it moves, and the delivery is tried again
//! after its backoff (polls go on meanwhile, so the queue stays current).

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{StreamExt as _, stream};
use http::Uri;
use tokio::{sync::Semaphore, time::Instant};

use super::{
    config::Source,
    cursor::{DeadLetter, DedupBounds, Failing, HookCursor, Store, unix_secs},
    forward::Sender,
    github::{Api, ApiError, Detail, Page, Summary},
    metrics::ForwarderMetrics,
    retry::{RetryPolicy, Verdict},
};
use crate::shutdown::Shutdown;

/// Settings from the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    pub per_page: u8,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub dedup: DedupBounds,
    pub max_dead_letters: usize,
    pub max_backlog: usize,
    pub backfill: Option<Duration>,
}

/// What every hook's loop shares.
pub struct Shared {
    pub api: Api,
    pub sender: Sender,
    pub store: Store,
    pub metrics: ForwarderMetrics,
    pub settings: Settings,
    /// Hooks polled at once.
    pub permits: Semaphore,
}

/// One resolved hook and where its deliveries go.
#[derive(Debug, Clone)]
pub struct HookJob {
    pub source: Source,
    pub hook_id: u64,
    pub target: Uri,
}

impl HookJob {
    /// The bounded label naming the hook in logs and metrics.
    pub fn label(&self) -> String {
        format!("{}#{}", self.source, self.hook_id)
    }
}

enum Walk {
    NotModified,
    Items {
        /// Newest first.
        items: Vec<Summary>,
        etag: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
enum WalkError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("more than --max-backlog ({0}) deliveries above the cursor")]
    Backlog(usize),
}

/// A hook's loop state.
pub struct HookLoop {
    job: HookJob,
    label: String,
    key: String,
    shared: Arc<Shared>,
    cursor: HookCursor,
    etag: Option<String>,
    /// Deliveries above the cursor, oldest first.
    pending: VecDeque<Summary>,
    /// No attempt at the head of the queue before this (its backoff).
    retry_at: Option<Instant>,
}

impl HookLoop {
    /// Loads the hook's cursor, or on first start sets it at the newest
    /// delivery (or `--backfill` back) and stores it.
    pub async fn start(job: HookJob, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let key = job.source.cursor_key(job.hook_id);
        let label = job.label();
        let stored = shared.store.load(&key).await?;
        let mut this = Self {
            job,
            label,
            key,
            shared,
            cursor: stored.clone().unwrap_or_default(),
            etag: None,
            pending: VecDeque::new(),
            retry_at: None,
        };
        this.shared
            .metrics
            .dead_letters(&this.label, this.cursor.dead_letters.len());
        if stored.is_some() {
            tracing::info!(hook = %this.label, last_id = this.cursor.last_id, "cursor loaded");
            return Ok(this);
        }
        let first = this
            .shared
            .api
            .deliveries(
                &this.job.source,
                this.job.hook_id,
                this.shared.settings.per_page,
                None,
                None,
            )
            .await?;
        let Page::Items { items, etag, .. } = first else {
            anyhow::bail!("the forge answered 304 to a request without If-None-Match");
        };
        if let Some(newest) = items.first() {
            this.cursor.last_id = newest.id;
            this.cursor.last_delivered_at = newest.delivered_at.clone();
        }
        this.etag = etag;
        if let Some(window) = this.shared.settings.backfill {
            let floor = SystemTime::now() - window;
            if let Walk::Items { items, .. } = this.walk(None, |s| s.at() < floor).await? {
                if let Some(oldest) = items.last() {
                    // Ids only grow: everything in the window is above it.
                    this.cursor.last_id = oldest.id.saturating_sub(1);
                    this.cursor.last_delivered_at = String::new();
                }
                this.pending = items.into_iter().rev().collect();
            }
        }
        this.shared.store.save(&this.key, &this.cursor).await?;
        tracing::info!(
            hook = %this.label,
            last_id = this.cursor.last_id,
            backfill = this.pending.len(),
            "first start: cursor set"
        );
        Ok(this)
    }

    /// Polls and forwards until shutdown starts.
    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            if shutdown.is_draining() {
                return;
            }
            {
                let shared = self.shared.clone();
                let Ok(_permit) = shared.permits.acquire().await else {
                    return;
                };
                self.round(&shutdown).await;
            }
            // A delivery waiting out a backoff shorter than the poll
            // interval is tried when its backoff ends.
            let mut wake = Instant::now() + self.shared.settings.poll_interval;
            if let Some(retry_at) = self.retry_at {
                wake = wake.min(retry_at);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.draining() => return,
            }
        }
    }

    /// Walks the pages, newest first, until `stop` holds for a delivery (it
    /// and older ones are left out) or the pages end.
    async fn walk(
        &self,
        etag: Option<&str>,
        stop: impl Fn(&Summary) -> bool,
    ) -> Result<Walk, WalkError> {
        let (source, hook, per_page) = (
            &self.job.source,
            self.job.hook_id,
            self.shared.settings.per_page,
        );
        let mut page = None::<String>;
        let mut found = Vec::new();
        let mut first_etag = None;
        loop {
            let answer = self
                .shared
                .api
                .deliveries(
                    source,
                    hook,
                    per_page,
                    page.as_deref(),
                    if page.is_none() { etag } else { None },
                )
                .await?;
            let Page::Items { items, next, etag } = answer else {
                return Ok(Walk::NotModified);
            };
            if page.is_none() {
                first_etag = etag;
            }
            let mut reached = false;
            for item in items {
                if stop(&item) {
                    reached = true;
                    break;
                }
                found.push(item);
            }
            if found.len() > self.shared.settings.max_backlog {
                return Err(WalkError::Backlog(self.shared.settings.max_backlog));
            }
            match next {
                Some(next) if !reached => page = Some(next),
                _ => break,
            }
        }
        Ok(Walk::Items {
            items: found,
            etag: first_etag,
        })
    }

    async fn round(&mut self, shutdown: &Shutdown) {
        let last_id = self.cursor.last_id;
        let etag = self.etag.clone();
        match self.walk(etag.as_deref(), |s| s.id <= last_id).await {
            Ok(Walk::NotModified) => self.shared.metrics.poll("not_modified"),
            Ok(Walk::Items { items, etag }) => {
                self.shared.metrics.poll("changed");
                self.pending = items.into_iter().rev().filter(|s| s.id > last_id).collect();
                self.etag = etag;
            }
            Err(err) => {
                let label = match &err {
                    WalkError::Api(err) => err.label(),
                    WalkError::Backlog(_) => "backlog_overflow",
                };
                self.shared.metrics.poll(label);
                tracing::warn!(hook = %self.label, error = %err, "poll failed");
                // A walk that did not finish leaves no ETag behind: a 304
                // next time would hide what it did not reach.
                self.etag = None;
            }
        }
        self.update_lag();
        if self.pending.is_empty() {
            return;
        }
        self.forward_pending(shutdown).await;
        self.update_lag();
    }

    fn update_lag(&self) {
        let lag = match self.pending.back() {
            Some(newest) => {
                let cursor_at = humantime::parse_rfc3339_weak(
                    self.cursor.last_delivered_at.trim_end_matches('Z'),
                )
                .unwrap_or_else(|_| self.pending.front().map_or(newest.at(), Summary::at));
                newest
                    .at()
                    .duration_since(cursor_at)
                    .unwrap_or_default()
                    .as_secs_f64()
            }
            None => 0.0,
        };
        self.shared.metrics.lag(&self.label, lag);
    }

    /// Forwards the queue in order until it is empty, a step fails, or
    /// shutdown starts. Details are fetched up to `--concurrency` ahead.
    async fn forward_pending(&mut self, shutdown: &Shutdown) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_at = None;
        // Which deliveries need no detail: GUIDs forwarded lately, and the
        // second and later of one GUID in this batch.
        let mut skip: HashSet<String> = self.cursor.seen.iter().map(|s| s.guid.clone()).collect();
        let plan: Vec<(Summary, bool)> = self
            .pending
            .iter()
            .map(|s| (s.clone(), !skip.insert(s.guid.clone())))
            .collect();
        let (api, source, hook) = (
            self.shared.api.clone(),
            self.job.source.clone(),
            self.job.hook_id,
        );
        let mut details = stream::iter(plan)
            .map(|(summary, skip)| {
                let (api, source) = (api.clone(), source.clone());
                async move {
                    let detail = if skip {
                        None
                    } else {
                        Some(api.delivery(&source, hook, summary.id).await)
                    };
                    (summary, detail)
                }
            })
            .buffered(self.shared.settings.concurrency);
        while let Some((summary, detail)) = details.next().await {
            if shutdown.is_draining() {
                return;
            }
            if self.cursor.has_seen(&summary.guid) {
                self.shared.metrics.delivery("duplicate");
                tracing::debug!(hook = %self.label, id = summary.id, guid = %summary.guid, "a redelivery of a forwarded delivery; skipped");
                if !self.advance(&summary).await {
                    return;
                }
                continue;
            }
            let detail = match detail {
                Some(detail) => detail,
                // Skipped as a duplicate in this batch, but its first copy
                // was not forwarded (dead-lettered): it needs its own detail.
                None => api.delivery(&source, hook, summary.id).await,
            };
            let detail: Detail = match detail {
                Ok(Some(detail)) => detail,
                Ok(None) => {
                    self.give_up(&summary, "the forge no longer has this delivery".into())
                        .await;
                    if !self.advance(&summary).await {
                        return;
                    }
                    continue;
                }
                Err(err) => {
                    tracing::warn!(hook = %self.label, id = summary.id, error = %err, "cannot fetch a delivery; retrying next round");
                    return;
                }
            };
            match self.shared.sender.send(&self.job.target, &detail).await {
                Ok(()) => {
                    self.shared.metrics.delivery("forwarded");
                    tracing::debug!(hook = %self.label, id = summary.id, guid = %summary.guid, event = %summary.event, "forwarded");
                    self.remember(&summary.guid);
                    if !self.advance(&summary).await {
                        return;
                    }
                }
                Err(err) => {
                    let now = SystemTime::now();
                    let (attempts, since) = match &self.cursor.failing {
                        Some(failing) if failing.id == summary.id => {
                            (failing.attempts.saturating_add(1), failing.since)
                        }
                        _ => (1, unix_secs(now)),
                    };
                    // The forge's record time; if unreadable, when the
                    // failures began, so the age limit still holds.
                    let recorded = summary
                        .recorded()
                        .unwrap_or_else(|| SystemTime::UNIX_EPOCH + Duration::from_secs(since));
                    match self
                        .shared
                        .settings
                        .retry
                        .judge(&err, attempts, recorded, now)
                    {
                        Verdict::GiveUp(reason) => {
                            self.give_up(&summary, reason).await;
                            if !self.advance(&summary).await {
                                return;
                            }
                        }
                        Verdict::RetryIn(pause) => {
                            self.shared.metrics.delivery("failed");
                            tracing::warn!(hook = %self.label, id = summary.id, attempts, retry_in = ?pause, error = %err, "forwarding failed; the cursor stays");
                            self.cursor.failing = Some(Failing {
                                id: summary.id,
                                attempts,
                                since,
                            });
                            self.retry_at = Some(Instant::now() + pause);
                            self.save().await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Remembers a forwarded GUID for the dedup window.
    fn remember(&mut self, guid: &str) {
        let early = self
            .cursor
            .remember(guid, SystemTime::now(), self.shared.settings.dedup);
        if early > 0 {
            self.shared.metrics.dedup_evicted(early);
            tracing::debug!(hook = %self.label, early, "GUIDs forgotten before --dedup-window ended (--dedup-max-entries)");
        }
    }

    async fn give_up(&mut self, summary: &Summary, reason: String) {
        self.shared.metrics.delivery("dead_lettered");
        tracing::error!(hook = %self.label, id = summary.id, guid = %summary.guid, reason = %reason, "delivery dead-lettered; agent delivery-forwarder --replay-dead-letters sends it again");
        let dropped = self.cursor.dead_letter(
            DeadLetter {
                id: summary.id,
                guid: summary.guid.clone(),
                event: summary.event.clone(),
                reason: reason.chars().take(300).collect(),
                at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                delivered_at: summary.delivered_at.clone(),
            },
            self.shared.settings.max_dead_letters,
        );
        for letter in dropped {
            self.shared.metrics.dead_letter_dropped();
            tracing::error!(hook = %self.label, id = letter.id, guid = %letter.guid, "more than --max-dead-letters: the oldest dead letter is dropped and cannot be replayed (the forge still has it until its retention ends)");
        }
        self.shared
            .metrics
            .dead_letters(&self.label, self.cursor.dead_letters.len());
    }

    /// Moves the cursor past `summary` and stores it; false when storing
    /// failed (the round stops so at most this step is repeated on a crash).
    async fn advance(&mut self, summary: &Summary) -> bool {
        self.cursor.last_id = summary.id;
        self.cursor.last_delivered_at = summary.delivered_at.clone();
        self.cursor.failing = None;
        if self.pending.front().is_some_and(|s| s.id == summary.id) {
            self.pending.pop_front();
        }
        self.save().await
    }

    async fn save(&mut self) -> bool {
        match self.shared.store.save(&self.key, &self.cursor).await {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(hook = %self.label, error = %err, "cannot store the cursor; stopping this round");
                false
            }
        }
    }
}
