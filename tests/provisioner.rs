//! `agent provision-kubeconfig` against real hosting, managed and hub
//! control planes: the managed kubeconfig it writes works and is
//! RBAC-limited, tokens rotate without a 401 for a client following the
//! Secret, source changes are picked up, a deleted or edited target is
//! restored, an outage of the managed apiserver keeps the last good Secret
//! and is reported (metric, /readyz, hub condition) until it recovers by
//! itself, two replicas elect one writer, and --cleanup removes everything.

mod support;

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use cluster_relay::{
    admin::Readiness,
    managed_kubeconfig::{self, FollowerMetrics, Source, sha256_hex},
    secret_watch::SecretRef,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use secrecy::ExposeSecret;
use serde_json::Value;
use support::{
    ControlPlane,
    agent::{Agent, run_to_exit},
    shared, wait_for_sync, wait_until_sync,
};

const DEADLINE: Duration = Duration::from_secs(60);
const TARGET: &str = "cluster-relay-managed-kubeconfig";
const SOURCE: &str = "external-managed-kubeconfig";

/// Puts `kubeconfig` into the source Secret in `namespace` (create or update).
fn put_source(hosting: &ControlPlane, namespace: &str, kubeconfig: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).expect("write");
    let yaml = hosting
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            SOURCE,
            "-n",
            namespace,
            &format!("--from-file=kubeconfig={}", path.display()),
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .expect("render the Secret");
    hosting
        .kubectl_with_stdin(&["apply", "-f", "-"], yaml.as_bytes())
        .expect("apply the Secret");
}

/// The target Secret as JSON, if it exists.
fn target_secret(hosting: &ControlPlane, namespace: &str) -> Option<Value> {
    let out = hosting
        .kubectl_ok(&[
            "get",
            "secret",
            TARGET,
            "-n",
            namespace,
            "-o",
            "json",
            "--ignore-not-found",
        ])
        .expect("kubectl get");
    (!out.trim().is_empty()).then(|| serde_json::from_str(&out).expect("JSON"))
}

fn decoded_kubeconfig(secret: &Value) -> String {
    use base64::Engine as _;
    let data = secret["data"]["kubeconfig"]
        .as_str()
        .expect("data.kubeconfig");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64"),
    )
    .expect("utf-8")
}

fn annotation(secret: &Value, key: &str) -> String {
    secret["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits for the target Secret and returns its kubeconfig.
fn wait_for_target(hosting: &ControlPlane, namespace: &str) -> String {
    wait_for_sync("the target Secret", DEADLINE, || {
        target_secret(hosting, namespace)
            .map(|secret| decoded_kubeconfig(&secret))
            .ok_or_else(|| anyhow::anyhow!("not there yet"))
    })
    .expect("target Secret written")
}

/// kubectl with a kubeconfig given as text.
fn kubectl_as(kubeconfig: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).expect("write");
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&path)
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("kubectl runs")
}

/// Starts a provisioner for the source in `namespace` on `hosting`.
fn provisioner(
    hosting: &ControlPlane,
    namespace: &str,
    sa_namespace: &str,
    extra: &[&str],
) -> Agent {
    let kubeconfig = hosting.kubeconfig_path();
    let mut args = vec![
        "provision-kubeconfig",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
        "--namespace",
        namespace,
        "--service-account-namespace",
        sa_namespace,
        "--admin-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Agent::spawn(&args, &[]).expect("provisioner starts")
}

/// A ClusterRole that may read ConfigMaps (and not Secrets) on `managed`,
/// for `--cluster-role reader`. (The built-in `view` is an aggregated role,
/// empty without a controller-manager.)
const READER_ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: reader}\n\
    rules: [{apiGroups: [\"\"], resources: [configmaps], verbs: [get, list, watch]}]\n";

fn setup(namespace: &str, managed: &ControlPlane) -> &'static ControlPlane {
    // One apply at a time: two at once can both find the role missing, and
    // the second create then fails with AlreadyExists.
    static APPLY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    {
        let _one = APPLY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        managed
            .kubectl_with_stdin(&["apply", "-f", "-"], READER_ROLE.as_bytes())
            .expect("reader role");
    }
    let hosting = shared("hosting");
    hosting.ensure_namespace(namespace).expect("namespace");
    put_source(hosting, namespace, &managed.kubeconfig_yaml());
    hosting
}

#[test]
fn the_managed_kubeconfig_works_and_is_rbac_limited() {
    let managed = shared("managed");
    let hosting = setup("prov-basic", managed);
    let agent = provisioner(
        hosting,
        "prov-basic",
        "relay-basic",
        &["--cluster-role", "reader"],
    );
    let kubeconfig = wait_for_target(hosting, "prov-basic");

    let allowed = kubectl_as(&kubeconfig, &["get", "configmaps", "-n", "default"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let forbidden = kubectl_as(&kubeconfig, &["get", "secrets", "-n", "default"]);
    let stderr = String::from_utf8_lossy(&forbidden.stderr);
    assert!(!forbidden.status.success());
    assert!(stderr.contains("Forbidden"), "{stderr}");
    assert!(
        stderr.contains("system:serviceaccount:relay-basic:cluster-relay"),
        "{stderr}"
    );

    let secret = target_secret(hosting, "prov-basic").expect("target");
    assert_eq!(
        annotation(&secret, "cluster-relay.io/source-hash"),
        sha256_hex(managed.kubeconfig_yaml().as_bytes())
    );
    assert_eq!(
        annotation(&secret, "cluster-relay.io/kubeconfig-hash"),
        sha256_hex(kubeconfig.as_bytes())
    );
    let expires: k8s_openapi::jiff::Timestamp =
        annotation(&secret, "cluster-relay.io/token-expiration")
            .parse()
            .expect("RFC 3339 expiry");
    let lifetime = expires.duration_since(k8s_openapi::jiff::Timestamp::now());
    assert!(lifetime.as_hours() >= 23, "token lives {lifetime:?}");
    assert!(
        !kubeconfig.contains("client-certificate"),
        "the source's credentials leaked into the target"
    );

    wait_until_sync("/readyz to pass", DEADLINE, || {
        agent
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200)
    })
    .expect("ready");
    assert_eq!(
        agent.metric("cluster_relay_provisioner_writes_total{reason=\"missing\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("cluster_relay_provisioner_token_expiration_timestamp_seconds"),
        expires.as_second() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_without_a_401_for_a_client_following_the_secret() {
    let managed = shared("managed");
    let hosting = setup("prov-rotate", managed);
    let _agent = provisioner(
        hosting,
        "prov-rotate",
        "relay-rotate",
        &[
            "--cluster-role",
            "reader",
            "--token-expiration",
            "10m",
            "--refresh-before",
            "9m50s",
        ],
    );
    // The library piece the relays use to follow the managed kubeconfig.
    let registry = prometheus::Registry::new();
    let current = managed_kubeconfig::follow(
        Source::Secret {
            secret: SecretRef {
                namespace: "prov-rotate".into(),
                name: TARGET.into(),
            },
            key: "kubeconfig".into(),
        },
        None,
        Duration::from_secs(1),
        Some(hosting.client().await),
        Readiness::default().check("managed-kubeconfig"),
        FollowerMetrics::new(&registry),
    )
    .await
    .expect("follow");

    let mut tokens = BTreeSet::new();
    let (mut ok, mut unauthorized) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    while tokens.len() < 3 && tokio::time::Instant::now() < deadline {
        pace.tick().await;
        let Some(snapshot) = current.borrow().clone() else {
            continue;
        };
        let token = snapshot.bearer_token().expect("a token user");
        tokens.insert(sha256_hex(token.expose_secret().as_bytes()));
        let client = snapshot
            .client(Duration::from_secs(10))
            .await
            .expect("client");
        match Api::<ConfigMap>::namespaced(client, "default")
            .list(&Default::default())
            .await
        {
            Ok(_) => ok += 1,
            Err(kube::Error::Api(status)) if status.code == 401 => unauthorized += 1,
            Err(err) => panic!("unexpected error calling the managed apiserver: {err}"),
        }
    }
    assert!(
        tokens.len() >= 3,
        "saw {} tokens: the token was not replaced twice",
        tokens.len()
    );
    assert_eq!(
        unauthorized, 0,
        "{unauthorized} calls got 401 ({ok} succeeded)"
    );
    assert!(ok > 10);
}

#[test]
fn a_changed_source_is_picked_up_within_seconds() {
    let managed = shared("managed");
    let hosting = setup("prov-source", managed);
    let _agent = provisioner(
        hosting,
        "prov-source",
        "relay-source",
        &["--cluster-role", "reader"],
    );
    wait_for_target(hosting, "prov-source");

    // Switch the source from the admin client certificate to a bearer token
    // of another admin identity.
    managed
        .ensure_namespace("source-admins")
        .expect("namespace");
    managed
        .kubectl_ok(&[
            "create",
            "serviceaccount",
            "source-admin",
            "-n",
            "source-admins",
        ])
        .expect("sa");
    managed
        .kubectl_ok(&[
            "create",
            "clusterrolebinding",
            "source-admin",
            "--clusterrole",
            "cluster-admin",
            "--serviceaccount",
            "source-admins:source-admin",
        ])
        .expect("binding");
    let token = managed
        .kubectl_ok(&[
            "create",
            "token",
            "source-admin",
            "-n",
            "source-admins",
            "--duration",
            "1h",
        ])
        .expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, managed.ca_pem()).expect("ca");
    let path: PathBuf = dir.path().join("token.kubeconfig");
    let config = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&path)
            .arg("config")
            .args(args)
            .output()
            .expect("kubectl config");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    config(&[
        "set-cluster",
        "m",
        "--server",
        &managed.server(),
        "--embed-certs",
        "--certificate-authority",
        ca.to_str().expect("utf-8"),
    ]);
    config(&["set-credentials", "admin-token", "--token", token.trim()]);
    config(&[
        "set-context",
        "m",
        "--cluster",
        "m",
        "--user",
        "admin-token",
    ]);
    config(&["use-context", "m"]);
    let source = std::fs::read_to_string(&path).expect("read");
    put_source(hosting, "prov-source", &source);

    wait_until_sync(
        "the target to be made from the new source",
        Duration::from_secs(30),
        || {
            target_secret(hosting, "prov-source").is_some_and(|s| {
                annotation(&s, "cluster-relay.io/source-hash") == sha256_hex(source.as_bytes())
            })
        },
    )
    .expect("source change picked up");
    let kubeconfig = wait_for_target(hosting, "prov-source");
    assert!(
        kubectl_as(&kubeconfig, &["get", "configmaps", "-n", "default"])
            .status
            .success()
    );
}

#[test]
fn an_exec_plugin_source_is_refused_clearly() {
    let hosting = shared("hosting");
    hosting.ensure_namespace("prov-exec").expect("namespace");
    put_source(
        hosting,
        "prov-exec",
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         contexts: [{name: c, context: {cluster: k, user: u}}]\n\
         users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}}]\n",
    );
    let agent = provisioner(hosting, "prov-exec", "relay-exec", &[]);
    wait_until_sync("/readyz to explain the exec plugin", DEADLINE, || {
        agent
            .admin_get("/readyz")
            .is_ok_and(|(status, body)| status == 503 && body.contains("exec plugin"))
    })
    .expect("explained");
    assert!(agent.metric("cluster_relay_provisioner_errors_total{stage=\"source\"}") >= 1.0);
    assert!(target_secret(hosting, "prov-exec").is_none());
}

#[test]
fn a_deleted_or_edited_target_is_restored() {
    let managed = shared("managed");
    let hosting = setup("prov-restore", managed);
    let agent = provisioner(
        hosting,
        "prov-restore",
        "relay-restore",
        &["--cluster-role", "reader"],
    );
    wait_for_target(hosting, "prov-restore");

    hosting
        .kubectl_ok(&["delete", "secret", TARGET, "-n", "prov-restore"])
        .expect("delete");
    let restored = wait_for_target(hosting, "prov-restore");
    assert!(
        kubectl_as(&restored, &["get", "configmaps", "-n", "default"])
            .status
            .success()
    );

    // "ZWRpdGVk" is base64 for "edited".
    hosting
        .kubectl_ok(&[
            "patch",
            "secret",
            TARGET,
            "-n",
            "prov-restore",
            "--type=merge",
            "-p",
            r#"{"data":{"kubeconfig":"ZWRpdGVk"}}"#,
        ])
        .expect("edit");
    wait_until_sync("the edit to be undone", DEADLINE, || {
        target_secret(hosting, "prov-restore").is_some_and(|s| {
            let kubeconfig = decoded_kubeconfig(&s);
            kubeconfig != "edited"
                && annotation(&s, "cluster-relay.io/kubeconfig-hash")
                    == sha256_hex(kubeconfig.as_bytes())
        })
    })
    .expect("restored after the edit");
    assert!(agent.metric("cluster_relay_provisioner_writes_total{reason=\"missing\"}") >= 2.0);
    assert!(agent.metric("cluster_relay_provisioner_writes_total{reason=\"altered\"}") >= 1.0);
}

/// The hub: the ManagedClusterAddOn CRD and one add-on in `namespace`.
fn hub_with_addon(namespace: &str) -> &'static ControlPlane {
    let hub = shared("hub");
    hub.kubectl_with_stdin(
        &["apply", "-f", "-"],
        include_bytes!("fixtures/managedclusteraddon-crd.yaml"),
    )
    .expect("CRD");
    hub.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd/managedclusteraddons.addon.open-cluster-management.io",
    ])
    .expect("CRD established");
    hub.ensure_namespace(namespace).expect("namespace");
    let addon = format!(
        "apiVersion: addon.open-cluster-management.io/v1alpha1\nkind: ManagedClusterAddOn\n\
         metadata: {{name: cluster-relay, namespace: {namespace}}}\nspec: {{installNamespace: cluster-relay}}\n"
    );
    hub.kubectl_with_stdin(&["apply", "-f", "-"], addon.as_bytes())
        .expect("add-on");
    hub
}

/// The ManagedKubeconfigReady condition's (status, reason).
fn hub_condition(hub: &ControlPlane, namespace: &str) -> Option<(String, String)> {
    let out = hub
        .kubectl_ok(&[
            "get",
            "managedclusteraddon",
            "cluster-relay",
            "-n",
            namespace,
            "-o",
            "json",
        ])
        .ok()?;
    let object: Value = serde_json::from_str(&out).ok()?;
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "ManagedKubeconfigReady")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

#[test]
fn a_managed_outage_keeps_the_last_good_secret_reports_it_and_recovers() {
    let managed = ControlPlane::start("outage").expect("control plane");
    let hosting = setup("prov-outage", &managed);
    let hub = hub_with_addon("c-outage");
    let hub_kubeconfig = hub.kubeconfig_path();
    let mut agent = provisioner(
        hosting,
        "prov-outage",
        "relay-outage",
        &[
            "--resync-interval",
            "1s",
            "--max-backoff",
            "2s",
            "--hub-kubeconfig",
            hub_kubeconfig.to_str().expect("utf-8"),
            "--addon-namespace",
            "c-outage",
        ],
    );
    let good = wait_for_target(hosting, "prov-outage");
    wait_until_sync("the hub condition to be True", DEADLINE, || {
        hub_condition(hub, "c-outage") == Some(("True".into(), "KubeconfigProvisioned".into()))
    })
    .expect("condition True");

    managed.kill_apiserver();
    wait_until_sync("the failure to show in /readyz", DEADLINE, || {
        agent
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 503)
    })
    .expect("not ready during the outage");
    wait_until_sync("the hub condition to turn False", DEADLINE, || {
        hub_condition(hub, "c-outage").is_some_and(|(status, _)| status == "False")
    })
    .expect("condition False");
    assert!(agent.metric("cluster_relay_provisioner_refresh_total{result=\"failure\"}") >= 1.0);
    let (_, detail) = agent.admin_get("/readyz").expect("readyz");
    assert!(detail.contains("retrying in"), "{detail}");
    assert_eq!(
        decoded_kubeconfig(&target_secret(hosting, "prov-outage").expect("still there")),
        good,
        "the last good Secret was replaced during the outage"
    );

    managed.start_apiserver().expect("apiserver back");
    wait_until_sync("recovery by itself", DEADLINE, || {
        agent
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200)
            && hub_condition(hub, "c-outage")
                == Some(("True".into(), "KubeconfigProvisioned".into()))
    })
    .expect("recovered");
    assert!(
        agent.is_running(),
        "the provisioner exited:\n{}",
        agent.logs()
    );
}

#[test]
fn cleanup_leaves_nothing_behind_twice_in_a_row() {
    let managed = shared("managed");
    let hosting = setup("prov-cleanup", managed);
    let agent = provisioner(
        hosting,
        "prov-cleanup",
        "relay-cleanup",
        &["--cluster-role", "reader"],
    );
    wait_for_target(hosting, "prov-cleanup");
    drop(agent);

    let hosting_kubeconfig = hosting.kubeconfig_path();
    let args = [
        "provision-kubeconfig",
        "--cleanup",
        "--kubeconfig",
        hosting_kubeconfig.to_str().expect("utf-8"),
        "--namespace",
        "prov-cleanup",
        "--service-account-namespace",
        "relay-cleanup",
        "--cluster-role",
        "reader",
    ];
    for round in 1..=2 {
        let (status, stderr) = run_to_exit(&args);
        assert!(status.success(), "cleanup round {round} failed:\n{stderr}");
        assert!(target_secret(hosting, "prov-cleanup").is_none());
        for (kind, name) in [
            ("clusterrole", "cluster-relay:relay-cleanup:cluster-relay"),
            (
                "clusterrolebinding",
                "cluster-relay:relay-cleanup:cluster-relay:reader",
            ),
            (
                "clusterrolebinding",
                "cluster-relay:relay-cleanup:cluster-relay:cluster-relay:relay-cleanup:cluster-relay",
            ),
        ] {
            let out = managed
                .kubectl_ok(&["get", kind, name, "--ignore-not-found", "-o", "name"])
                .expect("get");
            assert!(
                out.trim().is_empty(),
                "round {round}: {kind} {name} left behind"
            );
        }
        let out = managed
            .kubectl_ok(&[
                "get",
                "serviceaccount",
                "cluster-relay",
                "-n",
                "relay-cleanup",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .expect("get");
        assert!(
            out.trim().is_empty(),
            "round {round}: the ServiceAccount is left behind"
        );
        // Without a controller-manager a deleted namespace stays Terminating.
        let out = managed
            .kubectl_ok(&[
                "get",
                "namespace",
                "relay-cleanup",
                "--ignore-not-found",
                "-o",
                "json",
            ])
            .expect("get");
        if !out.trim().is_empty() {
            let namespace: Value = serde_json::from_str(&out).expect("JSON");
            assert!(
                namespace["metadata"]["deletionTimestamp"].is_string(),
                "round {round}: the namespace is not being deleted"
            );
        }
    }
}

#[test]
fn bad_flags_exit_with_one_line_naming_them() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--namespace", "x", "--token-expiration", "5m"],
            "--token-expiration",
        ),
        (
            &[
                "--namespace",
                "x",
                "--token-expiration",
                "30m",
                "--refresh-before",
                "1h",
            ],
            "--refresh-before",
        ),
        (&[], "--namespace is required"),
        (
            &["--namespace", "x", "--hub-kubeconfig", "/tmp/hub"],
            "--addon-namespace",
        ),
        (
            &[
                "--namespace",
                "x",
                "--source-secret",
                "same",
                "--target-secret",
                "same",
            ],
            "--target-secret",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["provision-kubeconfig", "--admin-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (status, stderr) = run_to_exit(&args);
        assert!(!status.success(), "{args:?} succeeded");
        let last = stderr.lines().next_back().unwrap_or_default();
        assert!(
            last.starts_with("agent: ") && last.contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

fn lease_holder(hosting: &ControlPlane, namespace: &str) -> String {
    hosting
        .kubectl_ok(&[
            "get",
            "lease",
            "cluster-relay-provisioner",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
            "--ignore-not-found",
        ])
        .unwrap_or_default()
}

#[test]
fn two_replicas_elect_one_writer_and_the_other_takes_over() {
    let managed = shared("managed");
    let hosting = setup("prov-leader", managed);
    let replica = |identity: &str| {
        provisioner(
            hosting,
            "prov-leader",
            "relay-leader",
            &[
                "--cluster-role",
                "reader",
                "--leader-elect",
                "--leader-election-identity",
                identity,
                "--leader-election-lease-duration",
                "4s",
                "--leader-election-renew-deadline",
                "3s",
                "--leader-election-retry-period",
                "500ms",
            ],
        )
    };
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    wait_for_target(hosting, "prov-leader");
    let is_leader = "cluster_relay_leader_election_is_leader";
    wait_until_sync("exactly one leader", DEADLINE, || {
        a.metric(is_leader) + b.metric(is_leader) == 1.0
    })
    .expect("one leader");
    let holder = lease_holder(hosting, "prov-leader");
    let (leader, follower, follower_id) = match holder.as_str() {
        "replica-a" => (a, b, "replica-b"),
        "replica-b" => (b, a, "replica-a"),
        other => panic!("unexpected lease holder {other:?}"),
    };
    let writes = "cluster_relay_provisioner_writes_total{reason=\"missing\"}";
    assert_eq!(leader.metric(writes), 1.0);
    assert_eq!(follower.metric(writes), 0.0, "the follower wrote too");
    let (_, detail) = follower.admin_get("/readyz").expect("readyz");
    assert!(detail.contains("standby"), "{detail}");

    // kill -9 the leader: no release, the lease has to lapse.
    drop(leader);
    wait_until_sync("the other replica to take over", DEADLINE, || {
        lease_holder(hosting, "prov-leader") == follower_id && follower.metric(is_leader) == 1.0
    })
    .expect("taken over");
    hosting
        .kubectl_ok(&["delete", "secret", TARGET, "-n", "prov-leader"])
        .expect("delete");
    wait_for_target(hosting, "prov-leader");
    assert_eq!(follower.metric(writes), 1.0, "the new leader did not write");
}
