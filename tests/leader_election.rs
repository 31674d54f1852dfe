//! Lease-based leader election (`cluster_relay::leader`) against a real
//! kube-apiserver: two candidates settle on exactly one leader that keeps
//! renewing; a killed leader's lease lapses and the other takes over; a
//! released lease is taken over; a leader whose Lease is taken by someone
//! else stands down and leaves the other holder alone while its lease is
//! fresh; a leader cut off from the apiserver stands down; a Lease marked
//! for cleanup retires its candidates, who do not make it again once it is
//! deleted. One shared control
//! plane (plus one of its own for the test that kills its apiserver); each
//! test has its own Lease.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_relay::leader::{LeaderConfig, LeaderMetrics, Leadership, Timings};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use prometheus::Registry;
use support::{shared, wait_until};
use tokio::sync::watch;

const NAMESPACE: &str = "default";
/// Generous: the machine may be busy with other tests' control planes.
const DEADLINE: Duration = Duration::from_secs(60);

fn timings() -> Timings {
    Timings::new(
        Duration::from_secs(3),
        Duration::from_secs(2),
        Duration::from_millis(500),
    )
    .expect("valid timings")
}

/// One candidate, as one replica would run it, with its own registry.
struct Candidate {
    identity: String,
    leadership: Leadership,
    leading: watch::Receiver<bool>,
    registry: Registry,
}

impl Candidate {
    fn start(client: &kube::Client, lease: &str, identity: &str) -> Self {
        let registry = Registry::new();
        let config = LeaderConfig {
            namespace: NAMESPACE.to_owned(),
            lease_name: lease.to_owned(),
            identity: identity.to_owned(),
            timings: timings(),
        };
        let leadership = Leadership::elect(client.clone(), config, LeaderMetrics::new(&registry));
        let leading = leadership.subscribe();
        Self {
            identity: identity.to_owned(),
            leadership,
            leading,
            registry,
        }
    }

    fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    fn metric(&self, name: &str, label: Option<&str>) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .filter(|metric| {
                label.is_none_or(|l| metric.get_label().iter().any(|p| p.value() == l))
            })
            // The field of the other kind reads 0.
            .map(|metric| metric.get_gauge().get_value() + metric.get_counter().get_value())
            .sum()
    }
}

async fn lease(api: &Api<Lease>, name: &str) -> LeaseSpec {
    api.get(name)
        .await
        .expect("the Lease can be read")
        .spec
        .unwrap_or_default()
}

async fn holder(api: &Api<Lease>, name: &str) -> Option<String> {
    lease(api, name).await.holder_identity
}

/// Waits until exactly one of `a` and `b` leads; returns (leader, other).
async fn elect(a: Candidate, b: Candidate) -> (Candidate, Candidate) {
    wait_until("exactly one leader", DEADLINE, || async {
        a.leads() != b.leads()
    })
    .await
    .expect("a leader is elected");
    if a.leads() { (a, b) } else { (b, a) }
}

fn now() -> MicroTime {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros();
    MicroTime(Timestamp::from_microsecond(micros as i64).expect("a valid time"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_elect_exactly_one_leader_that_keeps_renewing() {
    let client = shared("leader").client().await;
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = "exactly-one";
    let a = Candidate::start(&client, name, "replica-a");
    let b = Candidate::start(&client, name, "replica-b");

    // Every change either receiver publishes is checked, not only the
    // moments this test looks.
    let (mut wa, mut wb) = (a.leading.clone(), b.leading.clone());
    let both = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = wa.changed() => if changed.is_err() { return false },
                changed = wb.changed() => if changed.is_err() { return false },
            }
            if *wa.borrow() && *wb.borrow() {
                return true;
            }
        }
    });

    let (leader, follower) = elect(a, b).await;
    let mut renewed = lease(&api, name).await.renew_time;
    for round in 0..6 {
        wait_until("the leader to renew", DEADLINE, || async {
            lease(&api, name).await.renew_time > renewed
        })
        .await
        .expect("the leader renews");
        let spec = lease(&api, name).await;
        renewed = spec.renew_time;
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some(leader.identity.as_str()),
            "round {round}"
        );
        assert!(leader.leads(), "round {round}: the leader still leads");
        assert!(!follower.leads(), "round {round}: the follower does not");
    }
    assert_eq!(
        leader.metric("cluster_relay_leader_election_is_leader", None),
        1.0
    );
    assert_eq!(
        follower.metric("cluster_relay_leader_election_is_leader", None),
        0.0
    );
    assert_eq!(
        leader.metric(
            "cluster_relay_leader_election_transitions_total",
            Some("leader")
        ),
        1.0
    );
    assert!(!both.is_finished(), "both candidates led at once");
    both.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leaders_lease_lapses_and_the_other_takes_over() {
    let client = shared("leader").client().await;
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = "killed-leader";
    let a = Candidate::start(&client, name, "replica-a");
    let b = Candidate::start(&client, name, "replica-b");
    let (leader, survivor) = elect(a, b).await;
    let killed = leader.identity.clone();
    let transitions = lease(&api, name).await.lease_transitions.unwrap_or(0);

    // Dropping the handle aborts the task mid-flight, releasing nothing:
    // as far as the Lease can tell, the process died.
    drop(leader);
    assert_eq!(holder(&api, name).await.as_deref(), Some(killed.as_str()));

    wait_until("the survivor to take over", DEADLINE, || async {
        survivor.leads()
    })
    .await
    .expect("the survivor takes over once the lease lapses");
    let spec = lease(&api, name).await;
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(survivor.identity.as_str())
    );
    assert!(
        spec.lease_transitions.unwrap_or(0) > transitions,
        "leaseTransitions grew from {transitions}: {:?}",
        spec.lease_transitions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over() {
    let client = shared("leader").client().await;
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = "released";
    let a = Candidate::start(&client, name, "replica-a");
    let b = Candidate::start(&client, name, "replica-b");
    let (first, second) = elect(a, b).await;

    let leading = first.leading.clone();
    let released = first.identity.clone();
    first.leadership.release().await;
    assert!(!*leading.borrow(), "a released leader no longer leads");
    // The Lease names someone else (nobody, or the other replica already).
    assert_ne!(holder(&api, name).await.as_deref(), Some(released.as_str()));

    wait_until("the other replica to take over", DEADLINE, || async {
        second.leads()
    })
    .await
    .expect("the other replica takes over");
    assert_eq!(
        holder(&api, name).await.as_deref(),
        Some(second.identity.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stands_down_and_leaves_it_alone() {
    let client = shared("leader").client().await;
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = "taken";
    let candidate = Candidate::start(&client, name, "replica-a");
    wait_until("the candidate to lead", DEADLINE, || async {
        candidate.leads()
    })
    .await
    .expect("a lone candidate leads");

    // Someone else takes the Lease over. Its lease duration, longer than
    // the candidate's, is what the candidate must honour; it keeps this
    // margin even if this test's renewals are slowed down.
    let mut taken = support::wait_for("the intruder to take the Lease", DEADLINE, || async {
        let mut lease = api.get(name).await?;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some("intruder".to_owned());
        spec.lease_duration_seconds = Some(10);
        spec.acquire_time = Some(now());
        spec.renew_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        Ok(api.replace(name, &PostParams::default(), &lease).await?)
    })
    .await
    .expect("the Lease can be taken over");

    wait_until("the candidate to stand down", DEADLINE, || async {
        !candidate.leads()
    })
    .await
    .expect("the candidate publishes the loss");

    // The intruder renews from the object it last wrote: had the candidate
    // written in between, the resourceVersion would differ and this would
    // fail with a conflict. This paces the intruder like a real holder; it
    // does not synchronise with the candidate.
    let mut renew = tokio::time::interval(Duration::from_millis(500));
    for round in 0..12 {
        renew.tick().await;
        taken
            .spec
            .as_mut()
            .expect("the Lease has a spec")
            .renew_time = Some(now());
        taken = api
            .replace(name, &PostParams::default(), &taken)
            .await
            .unwrap_or_else(|err| panic!("round {round}: the candidate wrote the Lease: {err}"));
        assert!(!candidate.leads(), "round {round}: the candidate leads");
    }
    let transitions = taken
        .spec
        .as_ref()
        .and_then(|spec| spec.lease_transitions)
        .unwrap_or(0);

    // Once the intruder stops renewing, its lease lapses and the candidate
    // is back.
    wait_until("the candidate to lead again", DEADLINE, || async {
        candidate.leads()
    })
    .await
    .expect("the candidate takes the lapsed lease");
    let spec = lease(&api, name).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
    assert_eq!(spec.lease_transitions, Some(transitions + 1));
    for (to, times) in [("leader", 2.0), ("follower", 1.0)] {
        assert_eq!(
            candidate.metric("cluster_relay_leader_election_transitions_total", Some(to)),
            times,
            "transitions to {to}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_marked_for_cleanup_retires_candidates_for_good() {
    let client = shared("leader").client().await;
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = "retired";
    let candidate = Candidate::start(&client, name, "replica-a");
    wait_until("the candidate to lead", DEADLINE, || async {
        candidate.leads()
    })
    .await
    .expect("a lone candidate leads");
    let config = LeaderConfig {
        namespace: NAMESPACE.to_owned(),
        lease_name: name.to_owned(),
        identity: "cleanup".to_owned(),
        timings: timings(),
    };
    // The mark alone, before anyone seizes the Lease: the leader's next
    // renewal reads it and it stands down, though it still holds the Lease.
    cluster_relay::leader::retire_candidates(client.clone(), &config)
        .await
        .expect("the Lease can be marked");
    wait_until("the leader to retire", DEADLINE, || async {
        !candidate.leads()
    })
    .await
    .expect("the leader stands down");
    assert_eq!(holder(&api, name).await.as_deref(), Some("replica-a"));

    // The Lease goes (as with its owner, in the add-on's deletion) while
    // the candidate still runs: it does not make a new one. Paced at the
    // candidate's retry period, enough for several of its attempts.
    api.delete(name, &Default::default())
        .await
        .expect("the Lease can be deleted");
    let mut tick = tokio::time::interval(timings().retry_period());
    for round in 0..12 {
        tick.tick().await;
        assert!(
            api.get_opt(name).await.expect("a read").is_none(),
            "round {round}: the Lease was made again"
        );
        assert!(!candidate.leads(), "round {round}: the candidate leads");
    }
    // A candidate that never read the mark would: it takes the missing Lease.
    let fresh = Candidate::start(&client, name, "replica-b");
    wait_until("a fresh candidate to lead", DEADLINE, || async {
        fresh.leads()
    })
    .await
    .expect("a candidate that never saw the mark makes the Lease");
    assert!(!candidate.leads(), "the retired candidate leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_leading_until_it_can() {
    // Its own control plane, as this test takes the apiserver away.
    let plane = tokio::task::block_in_place(|| support::ControlPlane::start("leader-outage"))
        .expect("the control plane starts");
    let client = plane.client().await;
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = "outage";
    let candidate = Candidate::start(&client, name, "replica-a");
    wait_until("the candidate to lead", DEADLINE, || async {
        candidate.leads()
    })
    .await
    .expect("a lone candidate leads");
    let transitions = lease(&api, name).await.lease_transitions;

    plane.kill_apiserver();
    wait_until("the candidate to stand down", DEADLINE, || async {
        !candidate.leads()
    })
    .await
    .expect("a leader that cannot renew publishes the loss");

    tokio::task::block_in_place(|| plane.start_apiserver()).expect("the apiserver restarts");
    wait_until("the candidate to lead again", DEADLINE, || async {
        candidate.leads()
    })
    .await
    .expect("the candidate takes its lease back");
    let spec = lease(&api, name).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
    // The Lease still named it: a renewal, not a change of holder.
    assert_eq!(spec.lease_transitions, transitions);
}
