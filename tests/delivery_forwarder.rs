//! `agent delivery-forwarder` as a process against the forge stand-in
//! (`support/hook_forge.rs`, GitHub's documented hook-deliveries API).
//! Shown: deliveries arrive once each, in order, with their event headers
//! and a signature `agent webhook-fanout` accepts; a redelivery is
//! forwarded once; older deliveries are left alone unless --backfill
//! reaches them; bad rules stop the start naming the field; a target that
//! is down moves nothing and then gets the backlog in order (across pages
//! walked by their Link headers), and one that stays down dead-letters
//! after --max-attempts; `kill -9` mid-batch loses nothing and repeats at
//! most the in-flight delivery (cursor in a ConfigMap on a real
//! kube-apiserver); a spent rate limit and a secondary limit are waited out
//! with no request before the forge allows it, and idle polls are 304s; as
//! a GitHub App, with installation tokens that expire every few seconds, no
//! request is ever refused; a wrong app key is refused by the stand-in and
//! keeps the forwarder unready.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use cluster_relay::webhook_fanout::signature::Verifier;
use serde_json::{Value, json};
use support::{
    agent::Agent,
    hook_forge::{ForgeConfig, HookForge},
    hook_sink::Sink,
    run_dir, shared, wait_until,
};

const SECRET: &str = "forwarded-secret";
const TOKEN: &str = "ghp_test";
const DEADLINE: Duration = Duration::from_secs(30);

fn workdir(name: &str) -> PathBuf {
    let dir = run_dir().join(format!("forwarder-{name}"));
    std::fs::create_dir_all(&dir).expect("a work directory");
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).expect("the secret file");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("the token file");
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The forwarder's command line with `rules` (YAML) and token auth unless
/// `extra` brings app flags.
fn forwarder_args(dir: &Path, forge: &HookForge, rules: &str, extra: &[&str]) -> Vec<String> {
    let config = dir.join("rules.yaml");
    std::fs::write(&config, rules).expect("the rules file");
    let (secret, token, cursor) = (
        dir.join("secret"),
        dir.join("token"),
        dir.join("cursors.json"),
    );
    let url = forge.url();
    let mut args = vec![
        "delivery-forwarder",
        "--config",
        path(&config),
        "--api-url",
        &url,
        "--secret-file",
        path(&secret),
        "--admin-addr",
        "127.0.0.1:0",
        "--poll-interval",
        "50ms",
        "--api-timeout",
        "5s",
        "--target-timeout",
        "5s",
    ];
    if !extra.contains(&"--app-id") {
        args.extend(["--token-file", path(&token)]);
    }
    if !extra.contains(&"--cursor-configmap") {
        args.extend(["--cursor-file", path(&cursor)]);
    }
    args.extend_from_slice(extra);
    args.into_iter().map(str::to_owned).collect()
}

/// Starts the forwarder (see [`forwarder_args`]).
fn spawn(dir: &Path, forge: &HookForge, rules: &str, extra: &[&str]) -> Agent {
    let args = forwarder_args(dir, forge, rules, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn(&args, &[]).expect("the forwarder starts")
}

/// Runs `agent delivery-forwarder --replay-dead-letters` with the
/// forwarder's flags to its end: (success, stdout, stderr).
async fn replay(
    dir: &Path,
    forge: &HookForge,
    rules: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = forwarder_args(dir, forge, rules, extra);
    args.push("--replay-dead-letters".into());
    tokio::task::spawn_blocking(move || {
        let output = Command::new(support::agent::agent_bin())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("agent runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("the replay ran")
}

async fn ready(agent: &Agent) {
    wait_until("the forwarder ready", DEADLINE, || async {
        agent
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200)
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}\n{}", agent.logs()));
}

fn rules(repo: &str, hook: &str, target: &str) -> String {
    format!("rules:\n- repositories: [{repo}]\n  hook: {hook}\n  target: {target}\n")
}

fn metric(agent: &Agent, result: &str) -> f64 {
    agent.metric(&format!(
        "cluster_relay_delivery_forwarder_deliveries_total{{result=\"{result}\"}}"
    ))
}

fn cursor_file(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("cursors.json")).expect("a cursor file");
    let document: Value = serde_json::from_str(&text).expect("JSON");
    let (_, hook) = document
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("one hook");
    serde_json::from_str(hook.as_str().expect("a string")).expect("a cursor")
}

async fn wait_count(sink: &Sink, count: usize, agent: &Agent) {
    wait_until(
        &format!("{count} deliveries at the sink"),
        DEADLINE,
        || async { sink.received().len() >= count },
    )
    .await
    .unwrap_or_else(|err| panic!("{err:#}: got {:?}\n{}", sink.ids(), agent.logs()));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// 1. Forge → forwarder → `agent webhook-fanout` → backend: each delivery
/// once, in order, with its original headers and a fresh signature the
/// fan-out (and the test) verify; what existed before the first start is
/// not forwarded; a redelivery (same GUID) is forwarded once; the hook is
/// found by its config URL.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_reach_the_fanouts_backends_once_in_order_and_verified() {
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/hello", "https://relay.invalid/hook");
    let (_, old_guid) = forge.deliver(hook, "push", json!({"before": "start"}));
    let dir = workdir("chain");
    let sink = Sink::start().await;
    let fanout = Agent::spawn(
        &[
            "webhook-fanout",
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--secret-file",
            path(&dir.join("secret")),
            "--queue-dir",
            path(&dir.join("queue")),
            "--backend",
            &sink.url(),
        ],
        &["webhook"],
    )
    .expect("the fan-out starts");
    let target = format!("http://{}/", fanout.addr("webhook"));
    let forwarder = spawn(
        &dir,
        &forge,
        &rules("octo/hello", "{url: 'https://relay.invalid/hook'}", &target),
        &[],
    );
    ready(&forwarder).await;

    let mut sent = Vec::new();
    for n in 0..5 {
        let event = if n % 2 == 0 { "push" } else { "pull_request" };
        let (id, guid) = forge.deliver(hook, event, json!({"n": n, "action": "opened"}));
        sent.push((id, guid, event));
    }
    forge.redeliver(hook, sent[1].0);
    let (_, marker) = forge.deliver(hook, "ping", json!({"zen": "last"}));
    sink.wait_for_id(&marker, DEADLINE)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));

    let mut wanted: Vec<String> = sent.iter().map(|(_, guid, _)| guid.clone()).collect();
    wanted.push(marker);
    assert_eq!(sink.ids(), wanted, "once each, oldest first, nothing older");
    assert!(!sink.ids().contains(&old_guid));
    let verifier = Verifier::new(SECRET.as_bytes().to_vec(), false);
    for (n, (got, (_, guid, event))) in sink.received().iter().zip(&sent).enumerate() {
        assert_eq!(got.header("x-github-delivery"), guid);
        assert_eq!(got.header("x-github-event"), *event);
        assert_eq!(got.header("x-github-hook-id"), hook.to_string());
        assert_eq!(got.header("content-type"), "application/json");
        assert_eq!(verifier.verify(&got.headers, &got.body), Ok(()));
        let body: Value = serde_json::from_slice(&got.body).expect("JSON");
        assert_eq!(body["n"], n);
    }
    assert_eq!(metric(&forwarder, "forwarded"), 6.0);
    assert_eq!(metric(&forwarder, "duplicate"), 1.0);
    // The fan-out never saw the redelivery: the forwarder dropped it.
    assert_eq!(
        fanout.metric(r#"cluster_relay_webhook_fanout_inbound_total{result="duplicate"}"#),
        0.0
    );
    assert_eq!(
        fanout.metric(r#"cluster_relay_webhook_fanout_inbound_total{result="bad_signature"}"#),
        0.0
    );
}

/// 2. The target is down: deliveries fail, the cursor stays put; when it
/// comes up the backlog drains in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_down_target_moves_nothing_and_then_drains_the_backlog_in_order() {
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/down", "https://relay.invalid/hook");
    let dir = workdir("down");
    let port = free_port();
    let target = format!("http://127.0.0.1:{port}/hook");
    let forwarder = spawn(
        &dir,
        &forge,
        &rules("octo/down", &format!("{{id: {hook}}}"), &target),
        // Small pages: the backlog spans several, walked by their Link.
        &["--per-page", "2"],
    );
    ready(&forwarder).await;
    let start = cursor_file(&dir)["last_id"].as_u64().expect("a cursor");
    let guids: Vec<String> = (0..4)
        .map(|n| forge.deliver(hook, "push", json!({"n": n})).1)
        .collect();
    wait_until("three failed attempts", DEADLINE, || async {
        metric(&forwarder, "failed") >= 3.0
    })
    .await
    .expect("attempts fail");
    let cursor = cursor_file(&dir);
    assert_eq!(cursor["last_id"].as_u64(), Some(start), "nothing advanced");
    assert!(cursor["failing"]["attempts"].as_u64() >= Some(1));
    assert_eq!(metric(&forwarder, "forwarded"), 0.0);

    let sink = Sink::start_on(port, true).await;
    wait_count(&sink, 4, &forwarder).await;
    assert_eq!(sink.ids(), guids);
    wait_until("the cursor past the backlog", DEADLINE, || async {
        cursor_file(&dir)["failing"].is_null()
            && cursor_file(&dir)["last_id"].as_u64() > Some(start + 3)
    })
    .await
    .expect("the cursor moves");
    assert_eq!(metric(&forwarder, "dead_lettered"), 0.0);
}

/// 1b. `--backfill`: a first start also forwards what is inside the
/// window, oldest first, across pages.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_forwards_the_window_on_first_start() {
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("orgs/octo-org", "https://relay.invalid/hook");
    let guids: Vec<String> = (0..5)
        .map(|n| forge.deliver(hook, "push", json!({"n": n})).1)
        .collect();
    let dir = workdir("backfill");
    let sink = Sink::start().await;
    let forwarder = spawn(
        &dir,
        &forge,
        &format!(
            "rules:\n- organizations: [octo-org]\n  hook: {{id: {hook}}}\n  target: {}\n",
            sink.url()
        ),
        &["--backfill", "1h", "--per-page", "2"],
    );
    ready(&forwarder).await;
    wait_count(&sink, 5, &forwarder).await;
    assert_eq!(sink.ids(), guids);
}

/// 1c. Bad rules stop the start with a message naming the flag, the rule
/// and the field.
#[test]
fn bad_rules_exit_naming_the_flag_rule_and_field() {
    let dir = workdir("bad-rules");
    let config = dir.join("rules.yaml");
    std::fs::write(
        &config,
        "rules:\n- repositories: [octo/a]\n  hook: {id: 1}\n  target: 'ftp://x/'\n",
    )
    .expect("the rules file");
    let (status, stderr) = support::agent::run_to_exit(&[
        "delivery-forwarder",
        "--config",
        path(&config),
        "--token-file",
        path(&dir.join("token")),
        "--secret-file",
        path(&dir.join("secret")),
        "--cursor-file",
        path(&dir.join("cursors.json")),
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("--config") && stderr.contains("rules[0].target"),
        "{stderr}"
    );
}

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
    wait_until("a dead letter", DEADLINE, || async {
        metric(&forwarder, "dead_lettered") >= 1.0
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    let cursor = cursor_file(&dir);
    assert_eq!(cursor["dead_letters"][0]["guid"], old.as_str());
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

/// 3. `kill -9` mid-batch, cursor in a ConfigMap on a real apiserver:
/// after a restart every delivery has arrived, first arrivals in order,
/// and at most the one in flight at the kill arrived twice.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_batch_loses_nothing_and_repeats_at_most_the_in_flight_one() {
    let plane = shared("hosting");
    let kubeconfig = plane.kubeconfig_path();
    let forge = HookForge::start(ForgeConfig::default()).await;
    let hook = forge.add_hook("repos/octo/kill", "https://relay.invalid/hook");
    let dir = workdir("kill");
    let sink = Sink::start().await;
    let rules = rules("octo/kill", &format!("{{id: {hook}}}"), &sink.url());
    let flags = [
        "--per-page",
        "7",
        "--cursor-configmap",
        "default/delivery-forwarder-kill",
        "--kubeconfig",
        path(&kubeconfig),
    ];
    let mut forwarder = spawn(&dir, &forge, &rules, &flags);
    ready(&forwarder).await;
    let guids: Vec<String> = (0..40)
        .map(|n| forge.deliver(hook, "push", json!({"n": n})).1)
        .collect();
    wait_count(&sink, 8, &forwarder).await;
    forwarder.signal(libc::SIGKILL);
    forwarder.wait_exit(DEADLINE).expect("killed");
    let before_restart = sink.ids();
    assert!(before_restart.len() < guids.len(), "killed mid-batch");

    let forwarder = spawn(&dir, &forge, &rules, &flags);
    ready(&forwarder).await;
    wait_until("every delivery", DEADLINE, || async {
        guids.iter().all(|g| sink.ids().contains(g))
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}\n{}", forwarder.logs()));
    let ids = sink.ids();
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
            ids[before_restart.len()],
            *before_restart.last().expect("some arrived"),
            "only the delivery in flight at the kill is repeated"
        );
    }
    let stored = plane
        .kubectl_ok(&[
            "get",
            "configmap",
            "-n",
            "default",
            "delivery-forwarder-kill",
            "-o",
            "json",
        ])
        .expect("the ConfigMap");
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    let key = format!("repo.octo.kill.{hook}");
    let cursor: Value =
        serde_json::from_str(stored["data"][&key].as_str().expect("the hook's cursor"))
            .expect("a cursor");
    // `seen` holds [guid, forwarded at] pairs, oldest first.
    assert_eq!(
        cursor["seen"]
            .as_array()
            .and_then(|s| s.last())
            .map(|e| &e[0]),
        Some(&Value::String(guids[39].clone()))
    );
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

/// 4. A small budget: once the forge says it is spent the forwarder sends
/// nothing until the reset, nor during a secondary limit's Retry-After;
/// everything still arrives in order, and idle polls are free 304s.
#[tokio::test(flavor = "multi_thread")]
async fn a_spent_rate_limit_is_waited_out_and_idle_polls_are_304() {
    let forge = HookForge::start(ForgeConfig {
        budget: 8,
        window: Duration::from_secs(3),
        ..ForgeConfig::default()
    })
    .await;
    let hook = forge.add_hook("repos/octo/limit", "https://relay.invalid/hook");
    let dir = workdir("limit");
    let sink = Sink::start().await;
    // One request at a time, so none is already on its way when the
    // answer that spends the budget comes back.
    let forwarder = spawn(
        &dir,
        &forge,
        &rules("octo/limit", &format!("{{id: {hook}}}"), &sink.url()),
        &["--concurrency", "1"],
    );
    ready(&forwarder).await;
    let mut guids: Vec<String> = (0..12)
        .map(|n| forge.deliver(hook, "push", json!({"n": n})).1)
        .collect();
    wait_count(&sink, 12, &forwarder).await;
    assert!(
        forge.quiet_windows().iter().any(|w| w.2 == "primary"),
        "the budget was spent at least once"
    );
    forge.secondary_limit(1, 2);
    guids.push(forge.deliver(hook, "push", json!({"n": 12})).1);
    wait_count(&sink, 13, &forwarder).await;
    assert_eq!(sink.ids(), guids);

    // Idle: only 304s, which cost nothing.
    let used = forge.units_used();
    let seen = forge.log().len();
    wait_until("five idle polls", DEADLINE, || async {
        forge.log().len() >= seen + 5
    })
    .await
    .expect("polls go on");
    let idle: Vec<u16> = forge.log()[seen..].iter().map(|l| l.status).collect();
    assert!(idle.iter().all(|s| *s == 304), "{idle:?}");
    assert_eq!(forge.units_used(), used, "304s spend no budget");

    let log = forge.log();
    let windows = forge.quiet_windows();
    assert!(windows.iter().any(|w| w.2 == "secondary"));
    for (from, until, why) in &windows {
        let inside: Vec<_> = log
            .iter()
            .filter(|l| l.at > *from && l.at < *until)
            .collect();
        assert!(
            inside.is_empty(),
            "requests during the {why} window {from:?}..{until:?}: {inside:?}"
        );
    }
    assert!(
        forwarder.metric(r#"cluster_relay_delivery_forwarder_polls_total{result="not_modified"}"#)
            > 0.0
    );
}

fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    // PKCS#1, the form GitHub hands out app keys in.
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out", path(&key), "2048"])
        .output()
        .expect("openssl runs");
    assert!(status.status.success(), "{status:?}");
    let status = Command::new("openssl")
        .args(["rsa", "-in", path(&key), "-pubout", "-out", path(&public)])
        .output()
        .expect("openssl runs");
    assert!(status.status.success(), "{status:?}");
    (
        key,
        std::fs::read_to_string(public).expect("the public key"),
    )
}

/// 5. As a GitHub App: the stand-in verifies the JWT with the app's public
/// key and issues installation tokens that expire after 3 s; renewed 2 s
/// before expiry, no request is ever refused. A wrong key is refused and
/// the forwarder stays unready.
#[tokio::test(flavor = "multi_thread")]
async fn app_tokens_are_renewed_before_they_expire_without_a_failed_poll() {
    let dir = workdir("app");
    let (key, public) = keypair(&dir, "app");
    let forge = HookForge::start(ForgeConfig {
        token: None,
        app: Some(("4242".into(), public)),
        token_ttl: Duration::from_secs(3),
        ..ForgeConfig::default()
    })
    .await;
    let hook = forge.add_hook("orgs/octo-org", "https://relay.invalid/org-hook");
    let sink = Sink::start().await;
    let rules = format!(
        "rules:\n- organizations: [octo-org]\n  hook: {{url: 'https://relay.invalid/org-hook'}}\n  target: {}\n",
        sink.url()
    );
    let forwarder = spawn(
        &dir,
        &forge,
        &rules,
        &[
            "--app-id",
            "4242",
            "--app-private-key-file",
            path(&key),
            "--token-refresh-before",
            "2s",
        ],
    );
    ready(&forwarder).await;
    let mut guids = Vec::new();
    for n in 0..3 {
        let issued = forge.tokens_issued();
        let (_, guid) = forge.deliver(hook, "push", json!({"n": n}));
        guids.push(guid);
        wait_count(&sink, guids.len(), &forwarder).await;
        wait_until("a renewed token", DEADLINE, || async {
            forge.tokens_issued() > issued
        })
        .await
        .expect("tokens renewed");
    }
    assert_eq!(sink.ids(), guids);
    assert!(forge.tokens_issued() >= 3);
    let refused: Vec<_> = forge
        .log()
        .into_iter()
        .filter(|l| l.status == 401)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(forge.jwt_rejected(), 0);
    let failed =
        forwarder.metric(r#"cluster_relay_delivery_forwarder_polls_total{result="error"}"#);
    assert_eq!(failed, 0.0);

    // The wrong key: refused by the stand-in, never ready.
    let other = workdir("app-wrong");
    let (wrong, _) = keypair(&other, "wrong");
    let impostor = spawn(
        &other,
        &forge,
        &rules,
        &["--app-id", "4242", "--app-private-key-file", path(&wrong)],
    );
    wait_until("the stand-in refusing the JWT", DEADLINE, || async {
        forge.jwt_rejected() > 0
    })
    .await
    .expect("refused");
    let (status, body) = impostor.admin_get("/readyz").expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-]hooks"), "{body}");
}
