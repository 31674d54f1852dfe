//! The leader-election record kept in a Lease's spec, and what this process
//! has seen of it. Expiry is judged by this process's own clock, from the
//! moment it saw the record change (as client-go does), never by comparing
//! the holder's `renewTime` with the local wall clock: hosts' clocks may
//! disagree, but every process measures durations correctly on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::{
    api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use tokio::time::Instant;

/// The last record read or written, and when (local monotonic clock) it was
/// first seen in that form.
#[derive(Debug, Default)]
pub(super) struct Observation {
    seen: Option<(LeaseSpec, Instant)>,
}

impl Observation {
    /// Records `spec` as read at `now`. The clock restarts only when the
    /// record differs from the last one seen: a holder that stops renewing
    /// leaves the record as it was, and that is how its lease lapses.
    pub(super) fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        if self.seen.as_ref().map(|(seen, _)| seen) != Some(spec) {
            self.seen = Some((spec.clone(), now));
        }
    }

    /// The holder, when someone other than `identity` holds a lease that has
    /// not lapsed by `now`. The holder's own `leaseDurationSeconds` counts,
    /// as it is the promise the holder made; `fallback` covers a record
    /// without one.
    pub(super) fn live_holder_other_than(
        &self,
        identity: &str,
        fallback: Duration,
        now: Instant,
    ) -> Option<&str> {
        let (spec, seen_at) = self.seen.as_ref()?;
        let holder = spec
            .holder_identity
            .as_deref()
            .filter(|holder| !holder.is_empty() && *holder != identity)?;
        let duration = spec
            .lease_duration_seconds
            .and_then(|secs| u64::try_from(secs).ok())
            .filter(|secs| *secs > 0)
            .map_or(fallback, Duration::from_secs);
        (now < *seen_at + duration).then_some(holder)
    }
}

/// The record that makes `identity` the holder, given the one read (if any).
/// Renewing keeps the acquire time and transition count; taking over from
/// anyone else (nobody included) starts a new term and counts a transition.
pub(super) fn claim(
    old: Option<&LeaseSpec>,
    identity: &str,
    lease_duration: Duration,
    now: SystemTime,
) -> LeaseSpec {
    let now = micro_time(now);
    let (acquire_time, transitions) = match old {
        Some(old) if old.holder_identity.as_deref() == Some(identity) => (
            old.acquire_time.clone().unwrap_or_else(|| now.clone()),
            old.lease_transitions.unwrap_or(0),
        ),
        Some(old) => (
            now.clone(),
            old.lease_transitions.unwrap_or(0).saturating_add(1),
        ),
        None => (now.clone(), 0),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(whole_seconds(lease_duration)),
        acquire_time: Some(acquire_time),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        // Fields newer than the apiserver (preferredHolder, strategy) stay
        // as they were.
        ..old.cloned().unwrap_or_default()
    }
}

/// The record that gives the lease up: no holder, so the next candidate takes
/// it at once; the one-second duration (as client-go writes) also lets
/// candidates that only look at expiry move on quickly.
pub(super) fn released(old: &LeaseSpec, now: SystemTime) -> LeaseSpec {
    let now = micro_time(now);
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        ..old.clone()
    }
}

/// The lease duration as written in the Lease, rounded up so that others
/// never wait less than this process promised.
fn whole_seconds(duration: Duration) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn micro_time(now: SystemTime) -> MicroTime {
    let micros = now
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(3);

    fn held_by(holder: &str, renewed_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(3),
            renew_time: Some(MicroTime(
                Timestamp::from_second(renewed_secs).expect("valid second"),
            )),
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lapses_by_the_local_clock_only_while_unchanged() {
        let mut seen = Observation::default();
        let start = Instant::now();
        seen.observe(&held_by("a", 100), start);
        assert_eq!(seen.live_holder_other_than("b", LEASE, start), Some("a"));
        // The same record read again does not restart the clock …
        seen.observe(&held_by("a", 100), start + Duration::from_secs(2));
        assert_eq!(seen.live_holder_other_than("b", LEASE, start + LEASE), None);
        // … a renewal does, whatever its renewTime says about other clocks.
        seen.observe(&held_by("a", 1), start + Duration::from_secs(4));
        assert_eq!(
            seen.live_holder_other_than("b", LEASE, start + Duration::from_secs(6)),
            Some("a")
        );
        assert_eq!(
            seen.live_holder_other_than("a", LEASE, start + Duration::from_secs(6)),
            None
        );
    }

    #[test]
    fn nobody_and_the_holders_own_duration() {
        let now = Instant::now();
        let mut seen = Observation::default();
        seen.observe(
            &LeaseSpec {
                holder_identity: Some(String::new()),
                ..LeaseSpec::default()
            },
            now,
        );
        assert_eq!(seen.live_holder_other_than("b", LEASE, now), None);
        let mut long = held_by("a", 100);
        long.lease_duration_seconds = Some(60);
        seen.observe(&long, now);
        assert_eq!(
            seen.live_holder_other_than("b", LEASE, now + Duration::from_secs(30)),
            Some("a")
        );
    }

    #[test]
    fn transitions_count_changes_of_holder() {
        let now = SystemTime::now();
        let created = claim(None, "a", Duration::from_millis(2500), now);
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(3));
        assert_eq!(created.acquire_time, created.renew_time);

        let old = held_by("a", 100);
        let renewed = claim(Some(&old), "a", LEASE, now);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.holder_identity.as_deref(), Some("a"));
        assert_ne!(renewed.renew_time, old.renew_time);

        let taken = claim(Some(&old), "b", LEASE, now);
        assert_eq!(taken.lease_transitions, Some(5));
        assert_eq!(taken.acquire_time, taken.renew_time);

        let gone = released(&old, now);
        assert_eq!(gone.holder_identity, None);
        assert_eq!(gone.lease_transitions, Some(4));
        assert_eq!(
            claim(Some(&gone), "b", LEASE, now).lease_transitions,
            Some(5)
        );
    }
}
