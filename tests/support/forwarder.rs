//! `agent delivery-forwarder` as a process for the forwarder's tests: a
//! work directory with its secret and token files, its command line against
//! the [`super::hook_forge`] stand-in, readiness, metrics and the cursor
//! file, and `--replay-dead-letters` run to its end.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use super::{agent::Agent, hook_forge::HookForge, hook_sink::Sink, run_dir, wait_until};

pub const SECRET: &str = "forwarded-secret";
pub const TOKEN: &str = "ghp_test";
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn workdir(name: &str) -> PathBuf {
    let dir = run_dir().join(format!("forwarder-{name}"));
    std::fs::create_dir_all(&dir).expect("a work directory");
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).expect("the secret file");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("the token file");
    dir
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The forwarder's command line with `rules` (YAML) and token auth unless
/// `extra` brings app flags.
pub fn forwarder_args(dir: &Path, forge: &HookForge, rules: &str, extra: &[&str]) -> Vec<String> {
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
pub fn spawn(dir: &Path, forge: &HookForge, rules: &str, extra: &[&str]) -> Agent {
    let args = forwarder_args(dir, forge, rules, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn(&args, &[]).expect("the forwarder starts")
}

/// Runs `agent delivery-forwarder --replay-dead-letters` with the
/// forwarder's flags to its end: (success, stdout, stderr).
pub async fn replay(
    dir: &Path,
    forge: &HookForge,
    rules: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = forwarder_args(dir, forge, rules, extra);
    args.push("--replay-dead-letters".into());
    tokio::task::spawn_blocking(move || {
        let output = Command::new(super::agent::agent_bin())
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

pub async fn ready(agent: &Agent) {
    wait_until("the forwarder ready", DEADLINE, || async {
        agent
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200)
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}\n{}", agent.logs()));
}

pub fn rules(repo: &str, hook: &str, target: &str) -> String {
    format!("rules:\n- repositories: [{repo}]\n  hook: {hook}\n  target: {target}\n")
}

pub fn metric(agent: &Agent, result: &str) -> f64 {
    agent.metric(&format!(
        "cluster_relay_delivery_forwarder_deliveries_total{{result=\"{result}\"}}"
    ))
}

pub fn cursor_file(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("cursors.json")).expect("a cursor file");
    let document: Value = serde_json::from_str(&text).expect("JSON");
    let (_, hook) = document
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("one hook");
    serde_json::from_str(hook.as_str().expect("a string")).expect("a cursor")
}

pub async fn wait_count(sink: &Sink, count: usize, agent: &Agent) {
    wait_until(
        &format!("{count} deliveries at the sink"),
        DEADLINE,
        || async { sink.received().len() >= count },
    )
    .await
    .unwrap_or_else(|err| panic!("{err:#}: got {:?}\n{}", sink.ids(), agent.logs()));
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
