//! `agent delivery-forwarder` as a process against the forge stand-in
//! (`support/hook_forge.rs`, GitHub's documented hook-deliveries API).
//! Shown: deliveries arrive once each, in order, with their event headers
//! and a signature `agent webhook-fanout` accepts; a redelivery is
//! forwarded once; older deliveries are left alone unless --backfill
//! reaches them; bad rules stop the start naming the field; a target that
//! is down moves nothing and then gets the backlog in order (across pages
//! walked by their Link headers); `kill -9` mid-batch loses nothing and repeats at
//! most the in-flight delivery (cursor in a ConfigMap on a real
//! kube-apiserver); a spent rate limit and a secondary limit are waited out
//! with no request before the forge allows it, and idle polls are 304s; as
//! a GitHub App, with installation tokens that expire every few seconds, no
//! request is ever refused; a wrong app key is refused by the stand-in and
//! keeps the forwarder unready. Retries, dead letters, replays and leader
//! election: `delivery_forwarder_retry.rs`.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use cluster_relay::signature::Verifier;
use serde_json::{Value, json};
use support::{
    agent::Agent,
    forwarder::{
        DEADLINE, SECRET, cursor_file, free_port, metric, path, ready, rules, spawn, wait_count,
        workdir,
    },
    hook_forge::{ForgeConfig, HookForge},
    hook_sink::Sink,
    shared, wait_until,
};

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
        .args([
            "rsa",
            "-in",
            path(&key),
            "-RSAPublicKey_out",
            "-out",
            path(&public),
        ])
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
