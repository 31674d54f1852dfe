//! When a forward that did not land is tried again, and when it is given
//! up. A transient refusal (no connection, no answer in time, 5xx, 408,
//! 429) is retried with exponential backoff and jitter, capped by
//! `--retry-max-backoff`, until the delivery is `--retry-max-age` old,
//! counted from when the forge recorded it: the forge keeps each delivery
//! for days (3 on github.com, 7 on GitHub Enterprise Server), so a target
//! that is down for hours loses nothing. Any other refusal (another 4xx, a
//! redirect, a delivery that cannot be rebuilt) is final at once.

use std::time::{Duration, SystemTime};

use super::forward::SendError;

/// How the retries are spaced and when they stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The pause after the first failed attempt.
    pub initial: Duration,
    /// The longest pause between attempts.
    pub max: Duration,
    /// Give up this long after the forge recorded the delivery.
    pub max_age: Duration,
}

/// What to do after an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this pause; nothing behind it moves meanwhile.
    RetryIn(Duration),
    /// Dead-letter it, saying why.
    GiveUp(String),
}

/// Whether the target may take the delivery later.
pub fn is_transient(err: &SendError) -> bool {
    match err {
        SendError::Timeout(_) | SendError::Transport(_) => true,
        SendError::Status(status) => *status >= 500 || *status == 408 || *status == 429,
        SendError::Unreplayable(_) => false,
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (counted from 1): uniformly
    /// random between half and all of the exponential step, so deliveries
    /// of several hooks do not hit a target that comes back all at once.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let millis = u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(fastrand::u64(millis / 2..=millis))
    }

    /// The verdict on failed attempt `attempt` at a delivery the forge
    /// recorded at `recorded`, `now`.
    pub fn judge(
        &self,
        err: &SendError,
        attempt: u32,
        recorded: SystemTime,
        now: SystemTime,
    ) -> Verdict {
        if !is_transient(err) {
            return Verdict::GiveUp(format!("refused for good: {err}"));
        }
        let age = now.duration_since(recorded).unwrap_or_default();
        if age >= self.max_age {
            return Verdict::GiveUp(format!(
                "still failing {} after the forge recorded it (--retry-max-age {}), after {attempt} attempts; last: {err}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(self.max_age),
            ));
        }
        Verdict::RetryIn(self.backoff(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        max_age: Duration::from_secs(24 * 3600),
    };

    #[test]
    fn transient_answers_are_retried_and_other_refusals_are_final() {
        for err in [
            SendError::Status(500),
            SendError::Status(503),
            SendError::Status(408),
            SendError::Status(429),
            SendError::Timeout(Duration::from_secs(1)),
            SendError::Transport(crate::upstream::forward::ForwardError::Io(
                std::io::ErrorKind::ConnectionRefused.into(),
            )),
        ] {
            assert!(is_transient(&err), "{err}");
        }
        for err in [
            SendError::Status(400),
            SendError::Status(404),
            SendError::Status(422),
            SendError::Status(301),
            SendError::Unreplayable("bad header".into()),
        ] {
            assert!(!is_transient(&err), "{err}");
            let now = SystemTime::now();
            assert!(matches!(
                POLICY.judge(&err, 1, now, now),
                Verdict::GiveUp(why) if why.contains("refused for good")
            ));
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        for (attempt, step) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            for _ in 0..50 {
                let pause = POLICY.backoff(attempt);
                let step = Duration::from_secs(step);
                assert!(pause <= step && pause >= step / 2, "{attempt}: {pause:?}");
            }
        }
    }

    #[test]
    fn the_age_limit_counts_from_when_the_forge_recorded_it() {
        let recorded = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let err = SendError::Status(503);
        // Many attempts, but young: retried.
        let young = recorded + Duration::from_secs(3600);
        assert!(matches!(
            POLICY.judge(&err, 500, recorded, young),
            Verdict::RetryIn(_)
        ));
        // One attempt, but old: given up, naming the flag.
        let old = recorded + POLICY.max_age;
        match POLICY.judge(&err, 1, recorded, old) {
            Verdict::GiveUp(why) => assert!(why.contains("--retry-max-age 1day"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
