//! `agent apiserver-relay` in front of real kube-apiservers (tests/support
//! starts them): kubectl get, apply and watch through the relay, the target
//! apiserver killed and restarted, and the managed kubeconfig (file and
//! Secret) switched to another apiserver while an earlier watch goes on.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use support::{ControlPlane, agent::Agent, shared, wait_until_sync};

const DEADLINE: Duration = Duration::from_secs(60);

/// kubectl with `kubeconfig`'s credentials and CA, but connecting to the relay.
/// The apiserver's certificate is checked against its own name.
fn kubectl_via(relay: SocketAddr, kubeconfig: impl AsRef<Path>, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig.as_ref())
        .args([
            "--server",
            &format!("https://{relay}"),
            "--tls-server-name",
            "kubernetes.default.svc",
        ])
        .args(["--request-timeout", "20s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "kubectl failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn kubectl_ok(plane: &ControlPlane, args: &[&str]) -> String {
    plane
        .kubectl_ok(args)
        .expect("kubectl succeeds")
        .trim()
        .to_owned()
}

/// `kubectl ... -f -` with `input` on stdin, directly on `plane`.
fn kubectl_stdin(plane: &ControlPlane, args: &[&str], input: &str) -> String {
    let mut child = plane
        .kubectl_cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    stdout(&child.wait_with_output().expect("kubectl finishes"))
}

/// A relay following a kubeconfig file that starts out as `plane`'s.
fn relay_following_file(plane: &ControlPlane) -> (Agent, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("managed.kubeconfig");
    std::fs::copy(plane.kubeconfig_path(), &path).expect("copy kubeconfig");
    let agent = Agent::spawn(
        &[
            "apiserver-relay",
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--managed-kubeconfig",
            path.to_str().expect("utf-8"),
            "--managed-kubeconfig-poll-interval",
            "200ms",
        ],
        &["relay"],
    )
    .expect("relay starts");
    (agent, dir, path)
}

/// A `kubectl get --watch` whose output lines arrive on a channel.
struct Watch {
    child: Child,
    lines: Receiver<String>,
}

impl Watch {
    fn start(relay: SocketAddr, kubeconfig: impl AsRef<Path>, namespace: &str) -> Watch {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig.as_ref())
            .args([
                "--server",
                &format!("https://{relay}"),
                "--tls-server-name",
                "kubernetes.default.svc",
            ])
            .args([
                "get",
                "configmaps",
                "-n",
                namespace,
                "--watch",
                "-o",
                "name",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl runs");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watch { child, lines }
    }

    /// Waits for a line equal to `expected`, skipping others.
    fn expect(&self, expected: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return,
                Ok(_) => continue,
                Err(err) => panic!("watch did not print {expected:?}: {err}"),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create_configmap(plane: &ControlPlane, namespace: &str, name: &str) {
    kubectl_ok(
        plane,
        &[
            "create",
            "configmap",
            name,
            "-n",
            namespace,
            "--from-literal",
            "k=v",
        ],
    );
}

/// Whether a connection through the relay is closed without relaying.
fn closed_at_once(relay: SocketAddr) -> bool {
    let mut stream = TcpStream::connect(relay).expect("the relay accepts");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn kubectl_get_apply_and_watch_through_the_relay() {
    let managed = shared("managed");
    let (relay, _dir, _) = relay_following_file(managed);
    let addr = relay.addr("relay");
    let kubeconfig = &managed.kubeconfig_path();
    wait_until_sync("the relay to be ready", DEADLINE, || {
        relay
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200)
    })
    .expect("ready");

    assert_eq!(
        stdout(&kubectl_via(
            addr,
            kubeconfig,
            &["get", "namespace", "default", "-o", "name"]
        )),
        "namespace/default"
    );

    kubectl_ok(managed, &["create", "namespace", "relay-kubectl"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: relayed, namespace: relay-kubectl}\ndata: {greeting: hello}\n",
    )
    .expect("write manifest");
    let applied = stdout(&kubectl_via(
        addr,
        kubeconfig,
        &["apply", "-f", manifest.to_str().expect("utf-8")],
    ));
    assert_eq!(applied, "configmap/relayed created");
    assert_eq!(
        kubectl_ok(
            managed,
            &[
                "get",
                "configmap",
                "relayed",
                "-n",
                "relay-kubectl",
                "-o",
                "jsonpath={.data.greeting}"
            ]
        ),
        "hello"
    );

    let watch = Watch::start(addr, kubeconfig, "relay-kubectl");
    watch.expect("configmap/relayed");
    for name in ["w1", "w2", "w3"] {
        create_configmap(managed, "relay-kubectl", name);
        watch.expect(&format!("configmap/{name}"));
    }
    assert!(relay.metric("cluster_relay_apiserver_relay_connections_active") >= 1.0);
    assert!(
        relay.metric("cluster_relay_apiserver_relay_bytes_total{direction=\"to_client\"}") > 0.0
    );
}

#[test]
fn the_relay_survives_its_apiserver_being_killed() {
    let victim = ControlPlane::start("victim").expect("control plane starts");
    let (relay, _dir, _) = relay_following_file(&victim);
    let addr = relay.addr("relay");
    stdout(&kubectl_via(
        addr,
        victim.kubeconfig_path(),
        &["get", "namespaces"],
    ));

    victim.kill_apiserver();
    assert!(closed_at_once(addr));
    assert!(
        !kubectl_via(addr, victim.kubeconfig_path(), &["get", "namespaces"])
            .status
            .success()
    );
    assert!(
        relay.metric("cluster_relay_apiserver_relay_dial_errors_total{reason=\"refused\"}") >= 2.0
    );
    assert_eq!(relay.admin_get("/healthz").expect("healthz").0, 200);

    victim.start_apiserver().expect("apiserver restarts");
    wait_until_sync("kubectl through the relay to work again", DEADLINE, || {
        kubectl_via(
            addr,
            victim.kubeconfig_path(),
            &["get", "namespace", "default"],
        )
        .status
        .success()
    })
    .expect("recovered without restarting the relay");
}

#[test]
fn switching_the_kubeconfig_file_moves_new_connections_only() {
    let (first, second) = (shared("hosting"), shared("managed"));
    let (relay, _dir, path) = relay_following_file(first);
    let addr = relay.addr("relay");
    kubectl_ok(first, &["create", "namespace", "switch-file"]);
    let watch = Watch::start(addr, first.kubeconfig_path(), "switch-file");
    create_configmap(first, "switch-file", "before");
    watch.expect("configmap/before");

    let staged = path.with_extension("new");
    std::fs::copy(second.kubeconfig_path(), &staged).expect("copy");
    std::fs::rename(&staged, &path).expect("rename");
    // Each plane has its own CA: only the second one accepts its own
    // credentials, so success means the connection reached it.
    wait_until_sync(
        "new connections to reach the second apiserver",
        DEADLINE,
        || {
            kubectl_via(addr, second.kubeconfig_path(), &["get", "--raw", "/readyz"])
                .status
                .success()
        },
    )
    .expect("switched");
    assert!(
        !kubectl_via(addr, first.kubeconfig_path(), &["get", "--raw", "/readyz"])
            .status
            .success()
    );

    create_configmap(first, "switch-file", "after");
    watch.expect("configmap/after");
}

#[test]
fn switching_the_kubeconfig_secret_moves_new_connections_only() {
    let (hosting, managed) = (shared("hosting"), shared("managed"));
    kubectl_ok(hosting, &["create", "namespace", "switch-secret"]);
    let relay = Agent::spawn(
        &[
            "apiserver-relay",
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--kubeconfig",
            hosting.kubeconfig_path().to_str().expect("utf-8"),
            "--managed-kubeconfig-secret",
            "switch-secret/managed-kubeconfig",
        ],
        &["relay"],
    )
    .expect("relay starts");
    let addr = relay.addr("relay");

    // Not ready until the Secret exists.
    wait_until_sync("readiness to say the Secret is missing", DEADLINE, || {
        relay
            .admin_get("/readyz")
            .is_ok_and(|(status, body)| status == 503 && body.contains("not found"))
    })
    .expect("not ready without the Secret");
    let secret = |plane: &ControlPlane| {
        kubectl_ok(
            hosting,
            &[
                "create",
                "secret",
                "generic",
                "managed-kubeconfig",
                "-n",
                "switch-secret",
                "--from-file",
                &format!("kubeconfig={}", plane.kubeconfig_path().display()),
                "--dry-run=client",
                "-o",
                "yaml",
            ],
        )
    };
    kubectl_stdin(hosting, &["apply", "-f", "-"], &secret(hosting));
    wait_until_sync("the relay to be ready", DEADLINE, || {
        relay
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200)
    })
    .expect("ready once the Secret exists");

    let watch = Watch::start(addr, hosting.kubeconfig_path(), "switch-secret");
    create_configmap(hosting, "switch-secret", "before");
    watch.expect("configmap/before");

    kubectl_stdin(hosting, &["apply", "-f", "-"], &secret(managed));
    wait_until_sync(
        "new connections to reach the managed apiserver",
        DEADLINE,
        || {
            kubectl_via(
                addr,
                managed.kubeconfig_path(),
                &["get", "--raw", "/readyz"],
            )
            .status
            .success()
        },
    )
    .expect("switched");

    create_configmap(hosting, "switch-secret", "after");
    watch.expect("configmap/after");
}
