//! The leader-election flags and the validated configuration they make:
//! which Lease, as whom, and the three durations of client-go's elector,
//! checked against each other so that a leader always stops before anyone
//! else may start.

use std::time::Duration;

use clap::Args;

use super::random_u64;

/// Leader-election flags, for subcommands that may run as several replicas.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Leader election")]
pub struct LeaderArgs {
    /// Run as one of several replicas, only one of which works at a time: the
    /// holder of a Lease on the hosting cluster. Without it this process
    /// always works, so run one replica only. The variable takes
    /// true/false (also yes/no, 1/0).
    #[arg(
        long,
        env = "CLUSTER_RELAY_LEADER_ELECT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub leader_elect: bool,

    /// Name of the Lease (coordination.k8s.io/v1) the replicas compete for.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LEADER_ELECTION_LEASE_NAME",
        default_value = "cluster-relay-provisioner"
    )]
    pub leader_election_lease_name: String,

    /// Namespace of that Lease (default: the namespace this subcommand works
    /// in).
    #[arg(long, env = "CLUSTER_RELAY_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// This replica's name in the Lease; must differ between replicas.
    /// Default: $POD_NAME (or the host name) plus "_" and a random suffix.
    #[arg(long, env = "CLUSTER_RELAY_LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,

    /// How long other replicas wait, after they last saw the leader renew,
    /// before they take over. Longer means slower failover after a crash;
    /// shorter means more writes to the apiserver.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LEADER_ELECTION_LEASE_DURATION",
        default_value = "15s",
        value_parser = humantime::parse_duration
    )]
    pub leader_election_lease_duration: Duration,

    /// How long the leader keeps trying to renew before it stops working;
    /// must be shorter than --leader-election-lease-duration, so that it has
    /// stopped before anyone else may start.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LEADER_ELECTION_RENEW_DEADLINE",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub leader_election_renew_deadline: Duration,

    /// How often the leader renews and the others try to acquire; must be
    /// shorter than --leader-election-renew-deadline, so that a renewal can
    /// be retried before the deadline.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LEADER_ELECTION_RETRY_PERIOD",
        default_value = "2s",
        value_parser = humantime::parse_duration
    )]
    pub leader_election_retry_period: Duration,
}

/// A leader-election flag that cannot work; each names the flag(s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderConfigError {
    #[error("--leader-election-retry-period must be more than 0s")]
    ZeroRetryPeriod,
    #[error(
        "--leader-election-renew-deadline ({}) must be shorter than --leader-election-lease-duration ({})",
        humantime::format_duration(*renew_deadline),
        humantime::format_duration(*lease_duration)
    )]
    RenewDeadline {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "--leader-election-retry-period ({}) must be shorter than --leader-election-renew-deadline ({})",
        humantime::format_duration(*retry_period),
        humantime::format_duration(*renew_deadline)
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
    #[error("--{0} must not be empty")]
    Empty(&'static str),
}

/// The three durations of an election, checked against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

impl Timings {
    /// Checks that 0 < retry period < renew deadline < lease duration.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, LeaderConfigError> {
        if retry_period.is_zero() {
            return Err(LeaderConfigError::ZeroRetryPeriod);
        }
        if renew_deadline >= lease_duration {
            return Err(LeaderConfigError::RenewDeadline {
                renew_deadline,
                lease_duration,
            });
        }
        if retry_period >= renew_deadline {
            return Err(LeaderConfigError::RetryPeriod {
                retry_period,
                renew_deadline,
            });
        }
        Ok(Self {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    /// How long others wait for a silent leader before taking over.
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    /// How long a leader keeps trying to renew before it stands down.
    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// How often the leader renews and the others try to acquire.
    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }
}

/// What one elector competes for, and as whom.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Unique among the candidates.
    pub identity: String,
    pub timings: Timings,
}

impl LeaderArgs {
    /// The validated configuration, or `None` without `--leader-elect`.
    /// `default_namespace` is used when --leader-election-namespace is unset.
    pub fn config(
        &self,
        default_namespace: &str,
    ) -> Result<Option<LeaderConfig>, LeaderConfigError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let timings = Timings::new(
            self.leader_election_lease_duration,
            self.leader_election_renew_deadline,
            self.leader_election_retry_period,
        )?;
        let namespace = self
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| default_namespace.to_owned());
        let identity = self
            .leader_election_identity
            .clone()
            .unwrap_or_else(default_identity);
        for (flag, value) in [
            ("leader-election-namespace", &namespace),
            (
                "leader-election-lease-name",
                &self.leader_election_lease_name,
            ),
            ("leader-election-identity", &identity),
        ] {
            if value.is_empty() {
                return Err(LeaderConfigError::Empty(flag));
            }
        }
        Ok(Some(LeaderConfig {
            namespace,
            lease_name: self.leader_election_lease_name.clone(),
            identity,
            timings,
        }))
    }
}

/// $POD_NAME or the host name, plus a random suffix: two processes on one
/// host, or a restarted container, must not share an identity, or one would
/// renew the other's lease.
fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "cluster-relay".to_owned());
    format!("{base}_{:016x}", random_u64())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        leader: LeaderArgs,
    }

    fn parse(args: &[&str]) -> LeaderArgs {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .expect("the flags parse")
            .leader
    }

    #[test]
    fn defaults_are_client_gos() {
        let args = parse(&["--leader-elect"]);
        let config = args
            .config("c1")
            .expect("defaults are valid")
            .expect("--leader-elect is on");
        assert_eq!(config.namespace, "c1");
        assert_eq!(config.lease_name, "cluster-relay-provisioner");
        assert_eq!(
            config.timings,
            Timings::new(
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
            .expect("valid")
        );
        assert!(config.identity.contains('_'));
        let other = args.config("c1").expect("valid").expect("on");
        assert_ne!(config.identity, other.identity);
        assert!(parse(&[]).config("c1").expect("valid").is_none());
    }

    #[test]
    fn renew_deadline_must_be_below_the_lease_duration() {
        let args = parse(&[
            "--leader-elect",
            "--leader-election-lease-duration=10s",
            "--leader-election-renew-deadline=10s",
        ]);
        let err = args.config("c1").expect_err("renew deadline too long");
        assert_eq!(
            err.to_string(),
            "--leader-election-renew-deadline (10s) must be shorter than --leader-election-lease-duration (10s)"
        );
    }

    #[test]
    fn retry_period_must_be_below_the_renew_deadline() {
        let args = parse(&[
            "--leader-elect",
            "--leader-election-renew-deadline=2s",
            "--leader-election-retry-period=3s",
        ]);
        let err = args.config("c1").expect_err("retry period too long");
        assert_eq!(
            err.to_string(),
            "--leader-election-retry-period (3s) must be shorter than --leader-election-renew-deadline (2s)"
        );
        let zero = parse(&["--leader-elect", "--leader-election-retry-period=0s"]);
        assert!(
            zero.config("c1")
                .expect_err("zero retry period")
                .to_string()
                .contains("--leader-election-retry-period")
        );
    }

    #[test]
    fn empty_names_are_refused_by_flag() {
        let args = parse(&["--leader-elect", "--leader-election-identity="]);
        assert_eq!(
            args.config("c1").expect_err("empty identity").to_string(),
            "--leader-election-identity must not be empty"
        );
        let args = parse(&["--leader-elect"]);
        assert_eq!(
            args.config("").expect_err("no namespace").to_string(),
            "--leader-election-namespace must not be empty"
        );
    }

    #[test]
    fn explicit_flags_win() {
        let args = parse(&[
            "--leader-elect",
            "--leader-election-namespace=elsewhere",
            "--leader-election-lease-name=mine",
            "--leader-election-identity=replica-a",
        ]);
        let config = args.config("c1").expect("valid").expect("on");
        assert_eq!(
            (
                config.namespace.as_str(),
                config.lease_name.as_str(),
                config.identity.as_str()
            ),
            ("elsewhere", "mine", "replica-a")
        );
    }
}
