//! `agent delivery-forwarder --replay-dead-letters`: sends every hook's
//! dead letters again, oldest first, each fetched afresh from the forge
//! (which keeps deliveries for days, so the payload is not stored here).
//! A GUID already forwarded within `--dedup-window` (say, by a redelivery)
//! is not sent twice; each letter that lands, or that the forge no longer
//! has, is removed and the cursor stored at once, so a crash repeats at most
//! the one in flight. A transient refusal stops that hook's replay (the rest
//! wait for the next one); a permanent refusal keeps the letter with its new
//! reason and goes on to the next.
//!
//! It writes the cursors, so it must be the only writer: with
//! `--leader-elect` it seizes the forwarders' Lease first (they stand by
//! meanwhile and read the cursors afresh when they lead again); without,
//! stop the forwarder before running it.

use std::{fmt, time::SystemTime};

use super::{
    cursor::HookCursor,
    poll::{HookJob, Shared},
    retry::is_transient,
};

/// What one replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Sent again and taken by the target.
    pub replayed: usize,
    /// Not sent: the GUID was forwarded meanwhile.
    pub already_forwarded: usize,
    /// Removed: the forge no longer has the delivery.
    pub gone: usize,
    /// Still waiting (refused again, or not reached).
    pub left: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} replayed, {} already forwarded, {} gone from the forge, {} left",
            self.replayed, self.already_forwarded, self.gone, self.left
        )
    }
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, other: Self) {
        self.replayed += other.replayed;
        self.already_forwarded += other.already_forwarded;
        self.gone += other.gone;
        self.left += other.left;
    }
}

/// Replays one hook's dead letters.
pub async fn replay_hook(shared: &Shared, job: &HookJob) -> anyhow::Result<Report> {
    let key = job.source.cursor_key(job.hook_id);
    let label = job.label();
    let Some(mut cursor) = shared.store.load(&key).await? else {
        return Ok(Report::default());
    };
    let mut report = Report::default();
    let mut letters: Vec<_> = cursor.dead_letters.iter().cloned().collect();
    letters.sort_by_key(|letter| letter.id);
    for letter in letters {
        let remove = |cursor: &mut HookCursor| cursor.dead_letters.retain(|l| l.id != letter.id);
        if cursor.has_seen(&letter.guid) {
            tracing::info!(hook = %label, id = letter.id, guid = %letter.guid, "dead letter already forwarded (a redelivery); removed");
            remove(&mut cursor);
            report.already_forwarded += 1;
        } else {
            let detail = match shared
                .api
                .delivery(&job.source, job.hook_id, letter.id)
                .await
            {
                Ok(Some(detail)) => detail,
                Ok(None) => {
                    tracing::error!(hook = %label, id = letter.id, guid = %letter.guid, "the forge no longer has this dead letter (past its retention); removed, it cannot be sent");
                    remove(&mut cursor);
                    report.gone += 1;
                    shared.store.save(&key, &cursor).await?;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(hook = %label, id = letter.id, error = %err, "cannot fetch a dead letter; this hook's replay stops here");
                    break;
                }
            };
            match shared.sender.send(&job.target, &detail).await {
                Ok(()) => {
                    tracing::info!(hook = %label, id = letter.id, guid = %letter.guid, "dead letter replayed");
                    shared.metrics.delivery("replayed");
                    cursor.remember(&letter.guid, SystemTime::now(), shared.settings.dedup);
                    remove(&mut cursor);
                    report.replayed += 1;
                }
                Err(err) if is_transient(&err) => {
                    tracing::warn!(hook = %label, id = letter.id, error = %err, "the target refused a replay for now; this hook's replay stops here");
                    break;
                }
                Err(err) => {
                    tracing::error!(hook = %label, id = letter.id, error = %err, "the target refused a replay for good; the dead letter stays");
                    if let Some(kept) = cursor.dead_letters.iter_mut().find(|l| l.id == letter.id) {
                        kept.reason = format!("replay refused for good: {err}");
                    }
                }
            }
        }
        shared.store.save(&key, &cursor).await?;
    }
    report.left = cursor.dead_letters.len();
    shared.metrics.dead_letters(&label, report.left);
    Ok(report)
}
