//! `agent delivery-forwarder` when the target refuses, against the forge
//! stand-in (`support/hook_forge.rs`) and a target that refuses by rule.
//! Shown: a target down for longer than the old `--max-attempts` polls
//! allowed loses nothing and keeps order; a delivery still refused at
//! `--retry-max-age` is dead-lettered; a permanent 4xx dead-letters at once
//! and `--replay-dead-letters` delivers it once; removed flags name their
//! replacement; with `--leader-elect` (a Lease and the cursor ConfigMap on a
//! real kube-apiserver) two replicas forward every delivery once through a
//! `kill -9` of the leader, and a replay takes the Lease from a running
//! forwarder and gives it back.

mod support;

use serde_json::{Value, json};
use support::{
    agent::Agent,
    forwarder::{
        DEADLINE, cursor_file, metric, path, ready, replay, rules, spawn, wait_count, workdir,
    },
    hook_forge::{ForgeConfig, HookForge},
    hook_sink::Sink,
    shared, wait_until,
};

/// 2b. The issue's case: the target answers 503 for longer than the old
/// `--max-attempts 10` polls allowed. Nothing is dead-lettered; every
/// attempt meanwhile is at the oldest delivery (nothing overtakes it), and
/// once the target is back everything arrives once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_down_longer_than_max_attempts_polls_loses_nothing_and_keeps_order() {
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/outage", "https://relay.invalid/hook");
    let dir = workdir("outage");
    let sink = Sink::start().await;
    sink.answer_with(|_| 503);
    let forwarder = spawn(
        &dir,
        &forge,
        &rules("octo/outage", &format!("{{id: {hook}}}"), &sink.url()),
        &[
            "--retry-initial-backoff",
            "20ms",
            "--retry-max-backoff",
            "100ms",
        ],
    );
    ready(&forwarder).await;
    let guids: Vec<String> = (0..5)
        .map(|n| forge.deliver(hook, "push", json!({"n": n})).1)
        .collect();
    wait_until("25 refused attempts", DEADLINE, || async {
        sink.refused().len() >= 25
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    assert!(
        sink.refused().iter().all(|id| *id == guids[0]),
        "only the oldest is tried while it fails: {:?}",
        sink.refused()
    );
    assert_eq!(metric(&forwarder, "dead_lettered"), 0.0);
    assert!(metric(&forwarder, "failed") >= 25.0);

    sink.take_all();
    wait_count(&sink, 5, &forwarder).await;
    assert_eq!(sink.ids(), guids, "each once, oldest first");
    assert_eq!(metric(&forwarder, "dead_lettered"), 0.0);
    assert_eq!(metric(&forwarder, "forwarded"), 5.0);
}

/// 2c. A transient refusal that lasts past --retry-max-age (from when the
/// forge recorded the delivery) dead-letters it, naming the flag; what
/// comes after it then flows.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_still_refused_at_its_max_age_is_dead_lettered() {
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/aged", "https://relay.invalid/hook");
    let dir = workdir("aged");
    let sink = Sink::start().await;
    sink.answer_with(|_| 502);
    let forwarder = spawn(
        &dir,
        &forge,
        &rules("octo/aged", &format!("{{id: {hook}}}"), &sink.url()),
        &["--retry-max-age", "2s", "--retry-initial-backoff", "100ms"],
    );
    ready(&forwarder).await;
    let (_, old) = forge.deliver(hook, "push", json!({"n": 0}));
    // Counted first, then written to the cursor: wait for both.
    wait_until("a dead letter in the cursor", DEADLINE, || async {
        metric(&forwarder, "dead_lettered") >= 1.0
            && dir.join("cursors.json").exists()
            && cursor_file(&dir)["dead_letters"][0]["guid"] == old.as_str()
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    let cursor = cursor_file(&dir);
    let reason = cursor["dead_letters"][0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("--retry-max-age 2s") && reason.contains("502"),
        "{reason}"
    );
    assert!(sink.refused().len() >= 2, "retried before giving up");

    sink.take_all();
    let (_, next) = forge.deliver(hook, "push", json!({"n": 1}));
    sink.wait_for_id(&next, DEADLINE)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    assert_eq!(sink.ids(), [next]);
}

/// 2d. A permanent refusal (422) dead-letters at once, without a retry,
/// and the deliveries behind it flow; `/readyz` and a gauge show it
/// waiting. `--replay-dead-letters` sends it once the target takes it,
/// and only once: a second replay, and a redelivery of the same GUID
/// afterwards, send nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_refusal_dead_letters_and_a_replay_delivers_it_once() {
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/perm", "https://relay.invalid/hook");
    let dir = workdir("perm");
    let sink = Sink::start().await;
    let rules = rules("octo/perm", &format!("{{id: {hook}}}"), &sink.url());
    let mut forwarder = spawn(&dir, &forge, &rules, &[]);
    ready(&forwarder).await;
    let sent: Vec<(u64, String)> = (0..3)
        .map(|n| forge.deliver(hook, "push", json!({"n": n})))
        .collect();
    let refused = sent[1].1.clone();
    sink.answer_with(move |got| {
        if got.header("x-github-delivery") == refused {
            422
        } else {
            200
        }
    });
    wait_count(&sink, 2, &forwarder).await;
    assert_eq!(sink.ids(), [sent[0].1.clone(), sent[2].1.clone()]);
    assert_eq!(sink.refused(), [sent[1].1.clone()], "no retry of a 422");
    assert_eq!(metric(&forwarder, "dead_lettered"), 1.0);
    let gauge =
        format!("cluster_relay_delivery_forwarder_dead_letters{{hook=\"octo/perm#{hook}\"}}");
    assert_eq!(forwarder.metric(&gauge), 1.0);
    let (status, body) = forwarder.admin_get("/readyz").expect("an answer");
    assert_eq!(status, 200, "a dead letter does not make it unready");
    assert!(body.contains("[+]dead-letters: 1 waiting"), "{body}");
    let cursor = cursor_file(&dir);
    assert!(
        cursor["dead_letters"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused for good") && r.contains("422")),
        "{cursor}"
    );

    // Without --leader-elect the replay is run with the forwarder stopped.
    forwarder.signal(libc::SIGTERM);
    forwarder.wait_exit(DEADLINE).expect("stops");
    sink.take_all();
    let (ok, stdout, stderr) = replay(&dir, &forge, &rules, &[]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 replayed") && stdout.contains("0 left"),
        "{stdout}"
    );
    let wanted = [sent[0].1.clone(), sent[2].1.clone(), sent[1].1.clone()];
    assert_eq!(sink.ids(), wanted);
    assert_eq!(cursor_file(&dir)["dead_letters"], json!([]));
    let (ok, stdout, stderr) = replay(&dir, &forge, &rules, &[]).await;
    assert!(ok && stdout.contains("0 replayed"), "{stdout}\n{stderr}");
    assert_eq!(sink.ids(), wanted, "a second replay sends nothing");

    // A redelivery of the replayed GUID is a duplicate.
    forge.redeliver(hook, sent[1].0);
    let forwarder = spawn(&dir, &forge, &rules, &[]);
    ready(&forwarder).await;
    let (_, marker) = forge.deliver(hook, "ping", json!({}));
    sink.wait_for_id(&marker, DEADLINE)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    let mut wanted = wanted.to_vec();
    wanted.push(marker);
    assert_eq!(sink.ids(), wanted);
    assert_eq!(metric(&forwarder, "duplicate"), 1.0);
    assert_eq!(forwarder.metric(&gauge), 0.0);
}

/// 2e. Flags that were removed stop the start with what replaced them.
#[test]
fn removed_flags_exit_naming_their_replacement() {
    let dir = workdir("removed");
    for (flag, replacement) in [
        ("--max-attempts=10", "--retry-max-age"),
        ("--dedup-size=100", "--dedup-window"),
    ] {
        let (status, stderr) = support::agent::run_to_exit(&[
            "delivery-forwarder",
            "--config",
            path(&dir.join("rules.yaml")),
            flag,
        ]);
        assert!(!status.success());
        assert!(stderr.contains(replacement), "{flag}: {stderr}");
    }
}

/// 3b. Two replicas with `--leader-elect` (a Lease and the cursor
/// ConfigMap on a real kube-apiserver): only the leader forwards; `kill -9`
/// it mid-batch and the other takes over. Every delivery arrives, first
/// arrivals in order, and at most the one in flight at the kill twice.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_one_killed_forward_every_delivery_once() {
    let plane = shared("hosting");
    let kubeconfig = plane.kubeconfig_path();
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/pair", "https://relay.invalid/hook");
    let sink = Sink::start().await;
    let rules = rules("octo/pair", &format!("{{id: {hook}}}"), &sink.url());
    let flags = [
        "--per-page",
        "7",
        "--cursor-configmap",
        "default/delivery-forwarder-pair",
        "--kubeconfig",
        path(&kubeconfig),
        "--leader-elect",
        "--leader-election-lease-name",
        "delivery-forwarder-pair",
        "--leader-election-lease-duration",
        "3s",
        "--leader-election-renew-deadline",
        "2s",
        "--leader-election-retry-period",
        "250ms",
    ];
    let mut replicas = vec![
        spawn(&workdir("pair-a"), &forge, &rules, &flags),
        spawn(&workdir("pair-b"), &forge, &rules, &flags),
    ];
    for replica in &replicas {
        ready(replica).await;
    }
    let is_leader = |agent: &Agent| agent.metric("cluster_relay_leader_election_is_leader") == 1.0;
    wait_until("a leader", DEADLINE, || async {
        replicas.iter().filter(|r| is_leader(r)).count() == 1
    })
    .await
    .expect("one replica leads");
    let leader = replicas.iter().position(is_leader).expect("a leader");
    let follower = 1 - leader;
    let (_, base) = forge.deliver(hook, "ping", json!({}));
    sink.wait_for_id(&base, DEADLINE)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", replicas[leader].logs()));
    let guids: Vec<String> = (0..40)
        .map(|n| forge.deliver(hook, "push", json!({"n": n})).1)
        .collect();
    wait_count(&sink, 9, &replicas[leader]).await;
    assert_eq!(
        metric(&replicas[follower], "forwarded"),
        0.0,
        "the follower forwards nothing while the leader lives"
    );
    replicas[leader].signal(libc::SIGKILL);
    replicas[leader].wait_exit(DEADLINE).expect("killed");
    let before_takeover: Vec<String> = sink.ids().into_iter().skip(1).collect();
    assert!(before_takeover.len() < guids.len(), "killed mid-batch");

    let survivor = &replicas[follower];
    wait_until("every delivery after the takeover", DEADLINE, || async {
        guids.iter().all(|g| sink.ids().contains(g))
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}\n{}", survivor.logs()));
    assert!(is_leader(survivor));
    let ids: Vec<String> = sink.ids().into_iter().skip(1).collect();
    let mut first: Vec<String> = Vec::new();
    for id in &ids {
        if !first.contains(id) {
            first.push(id.clone());
        }
    }
    assert_eq!(first, guids, "every delivery, in order");
    let repeated = ids.len() - guids.len();
    assert!(repeated <= 1, "{repeated} repeated: {ids:?}");
    if repeated == 1 {
        assert_eq!(
            ids[before_takeover.len()],
            *before_takeover.last().expect("some arrived"),
            "only the delivery in flight at the kill is repeated"
        );
    }
}

/// 3c. `--replay-dead-letters` with `--leader-elect` while the forwarder
/// runs: it takes the Lease (the forwarder stands by), replays, gives the
/// Lease back; the forwarder leads again from the cursors as the replay
/// left them, so the dead letter does not come back and nothing is sent
/// twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_takes_the_lease_from_a_running_forwarder_and_gives_it_back() {
    let plane = shared("hosting");
    let kubeconfig = plane.kubeconfig_path();
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/seize", "https://relay.invalid/hook");
    let sink = Sink::start().await;
    let rules = rules("octo/seize", &format!("{{id: {hook}}}"), &sink.url());
    let flags = [
        "--cursor-configmap",
        "default/delivery-forwarder-seize",
        "--kubeconfig",
        path(&kubeconfig),
        "--leader-elect",
        "--leader-election-lease-name",
        "delivery-forwarder-seize",
        "--leader-election-lease-duration",
        "3s",
        "--leader-election-renew-deadline",
        "2s",
        "--leader-election-retry-period",
        "250ms",
    ];
    let dir = workdir("seize");
    let forwarder = spawn(&dir, &forge, &rules, &flags);
    ready(&forwarder).await;
    wait_until("the forwarder leads", DEADLINE, || async {
        forwarder.metric("cluster_relay_leader_election_is_leader") == 1.0
    })
    .await
    .expect("leads");
    // A first start takes what the forge already has as history (no
    // backfill here): deliver only once the cursor is set and saved.
    wait_until("the first poll to set the cursor", DEADLINE, || async {
        plane
            .kubectl(&[
                "get",
                "configmap",
                "delivery-forwarder-seize",
                "-n",
                "default",
            ])
            .status
            .success()
    })
    .await
    .expect("the cursor is saved");
    // The refusal is set before the delivery exists, so it cannot slip
    // through first; the refused one is told apart by its payload.
    sink.answer_with(|got| {
        let payload: serde_json::Value = serde_json::from_slice(&got.body).unwrap_or_default();
        if payload["n"] == 0 { 400 } else { 200 }
    });
    let (_, refused) = forge.deliver(hook, "push", json!({"n": 0}));
    let (_, after) = forge.deliver(hook, "push", json!({"n": 1}));
    sink.wait_for_id(&after, DEADLINE)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    assert_eq!(metric(&forwarder, "dead_lettered"), 1.0);

    sink.take_all();
    let (ok, stdout, stderr) = replay(&workdir("seize-replay"), &forge, &rules, &flags).await;
    assert!(ok && stdout.contains("1 replayed"), "{stdout}\n{stderr}");
    assert_eq!(sink.ids(), [after.clone(), refused.clone()]);

    // The forwarder leads again and forwards what came meanwhile; the
    // cursor it stores keeps the replay's work.
    let (_, marker) = forge.deliver(hook, "ping", json!({}));
    sink.wait_for_id(&marker, DEADLINE)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    assert_eq!(sink.ids(), [after, refused, marker]);
    assert!(
        forwarder.metric(r#"cluster_relay_leader_election_transitions_total{to="follower"}"#)
            >= 1.0,
        "the forwarder stood by during the replay"
    );
    let stored = plane
        .kubectl_ok(&[
            "get",
            "configmap",
            "-n",
            "default",
            "delivery-forwarder-seize",
            "-o",
            "json",
        ])
        .expect("the ConfigMap");
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    let cursor: Value = serde_json::from_str(
        stored["data"][format!("repo.octo.seize.{hook}")]
            .as_str()
            .expect("the hook's cursor"),
    )
    .expect("a cursor");
    assert_eq!(cursor["dead_letters"], json!([]), "{cursor}");
    assert_eq!(
        forwarder.metric(&format!(
            "cluster_relay_delivery_forwarder_dead_letters{{hook=\"octo/seize#{hook}\"}}"
        )),
        0.0
    );
}
