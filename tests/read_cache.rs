//! `agent read-cache --profile kubernetes` in front of a real kube-apiserver
//! with RBAC. Shown: bodies through the cache equal the apiserver's, on miss
//! and on hit, for a matrix of reads; a caller who may not read something
//! gets exactly the apiserver's answer for it even after another caller
//! filled the cache; changes made elsewhere reach the cache (watched types
//! at once, others within the TTL) and writes through it are visible at
//! once; 100 identical misses make one upstream request; `--max-bytes`
//! holds.

mod support;

use std::{sync::OnceLock, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use support::{
    ControlPlane,
    agent::Agent,
    http_client::{Answer, HttpClient},
    run_dir, shared, wait_for,
};

const DEADLINE: Duration = Duration::from_secs(30);
const JSON: &str = "application/json";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// RBAC and objects every test here starts from: namespace `a` holds a
/// Secret and a ConfigMap both named `same`; reader-a may read (and patch)
/// both kinds there, reader-b may only get ConfigMaps by name; the cache's
/// own ServiceAccount may list and watch ConfigMaps (the watched type).
const SETUP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: rc}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader-a, namespace: rc}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader-b, namespace: rc}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cache, namespace: rc}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader-a, namespace: a}
rules:
- apiGroups: [""]
  resources: [secrets, configmaps, podtemplates]
  verbs: [get, list, watch, patch, update, create, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-a, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader-a}
subjects: [{kind: ServiceAccount, name: reader-a, namespace: rc}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: rc-reader-a}
rules:
- apiGroups: [""]
  resources: [namespaces, configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: rc-reader-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rc-reader-a}
subjects: [{kind: ServiceAccount, name: reader-a, namespace: rc}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader-b, namespace: a}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-b, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader-b}
subjects: [{kind: ServiceAccount, name: reader-b, namespace: rc}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: rc-cache}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: rc-cache}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rc-cache}
subjects: [{kind: ServiceAccount, name: cache, namespace: rc}]
---
apiVersion: v1
kind: Secret
metadata: {name: same, namespace: a}
stringData: {password: hunter2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: same, namespace: a, labels: {app: x}}
data: {greeting: hello}
"#;

/// One cache in front of one plane, with the callers' tokens.
struct Fixture {
    plane: &'static ControlPlane,
    cache: Agent,
    base: String,
    apiserver: String,
    client: HttpClient,
    token_a: String,
    token_b: String,
}

fn token(plane: &ControlPlane, account: &str) -> anyhow::Result<String> {
    let token = plane.kubectl_ok(&["create", "token", account, "-n", "rc", "--duration", "1h"])?;
    Ok(token.trim().to_owned())
}

/// A kubeconfig for `token` on `plane`, as the provisioner would write.
fn kubeconfig_with_token(plane: &ControlPlane, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(plane.ca_pem());
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: m, cluster: {{server: \"{}\", certificate-authority-data: {ca}}}}}]\n\
         contexts: [{{name: m, context: {{cluster: m, user: u}}}}]\nusers: [{{name: u, user: {{token: \"{token}\"}}}}]\n\
         current-context: m\n",
        plane.server()
    )
}

fn start(plane: &'static ControlPlane, extra: &[&str]) -> anyhow::Result<Fixture> {
    // One setup at a time: concurrent applies can race to create an object.
    static SETTING_UP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let one = SETTING_UP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    plane.kubectl_with_stdin(&["apply", "-f", "-"], SETUP.as_bytes())?;
    for i in 0..6 {
        let label = if i % 2 == 0 { "app=x" } else { "app=y" };
        let name = format!("cm-{i}");
        if plane
            .kubectl(&["get", "configmap", &name, "-n", "a"])
            .status
            .success()
        {
            continue;
        }
        plane.kubectl_ok(&[
            "create",
            "configmap",
            &name,
            "-n",
            "a",
            "--from-literal",
            &format!("n={i}"),
        ])?;
        plane.kubectl_ok(&["label", "configmap", &name, "-n", "a", label])?;
    }
    drop(one);
    let kubeconfig = run_dir().join(format!("read-cache-{}.kubeconfig", plane.name()));
    std::fs::write(
        &kubeconfig,
        kubeconfig_with_token(plane, &token(plane, "cache")?),
    )?;
    let kubeconfig = kubeconfig.to_str().expect("utf-8").to_owned();
    let mut args = vec![
        "read-cache",
        "--profile",
        "kubernetes",
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--managed-kubeconfig",
        &kubeconfig,
        "--watch-resource",
        "configmaps",
    ];
    args.extend_from_slice(extra);
    let cache = Agent::spawn(&args, &["cache"])?;
    Ok(Fixture {
        plane,
        base: format!("http://{}", cache.addr("cache")),
        cache,
        apiserver: plane.server(),
        client: HttpClient::new(&plane.ca_pem()),
        token_a: token(plane, "reader-a")?,
        token_b: token(plane, "reader-b")?,
    })
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        start(shared("read-cache"), &["--cache-ttl", "2s"])
            .unwrap_or_else(|err| panic!("cannot start the fixture: {err:#}"))
    })
}

impl Fixture {
    async fn wait_ready(&self) {
        wait_for("the cache to be ready", DEADLINE, || async {
            let (code, body) = self.cache.admin_get("/readyz")?;
            anyhow::ensure!(code == 200, "{body}");
            Ok(())
        })
        .await
        .expect("ready");
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    async fn via(&self, token: Option<&str>, path: &str, accept: &str) -> Answer {
        let auth = token.map(Self::bearer);
        let mut headers = vec![("accept", accept)];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        self.client
            .get(&format!("{}{path}", self.base), &headers)
            .await
            .expect("the cache answers")
    }

    async fn direct(&self, token: Option<&str>, path: &str, accept: &str) -> Answer {
        let auth = token.map(Self::bearer);
        let mut headers = vec![("accept", accept)];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        self.client
            .get(&format!("{}{path}", self.apiserver), &headers)
            .await
            .expect("the apiserver answers")
    }
}

/// Server-side Tables carry each object's age, computed when the response
/// is written; a cached Table shows the age at fill time. Everything else
/// must match byte for byte.
fn comparable(answer: &Answer, accept: &str) -> Bytes {
    if accept != TABLE || answer.status != StatusCode::OK {
        return answer.body.clone();
    }
    let mut table = answer.json();
    let age = table["columnDefinitions"]
        .as_array()
        .and_then(|columns| columns.iter().position(|c| c["name"] == "Age"));
    if let (Some(age), Some(rows)) = (age, table["rows"].as_array_mut()) {
        for row in rows {
            row["cells"][age] = Value::Null;
        }
    }
    Bytes::from(serde_json::to_vec(&table).expect("serializes"))
}

/// 1. For each read, through the cache on a miss and on a hit, the body is
/// the apiserver's. Its own plane, so no other test's writes move the
/// lists' resourceVersions between the two reads.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_through_the_cache_equal_the_apiservers() {
    let plane: &'static ControlPlane =
        Box::leak(Box::new(ControlPlane::start("rc-matrix").expect("a plane")));
    let f = start(plane, &["--cache-ttl", "1h"]).expect("fixture");
    f.wait_ready().await;
    let a = Some(f.token_a.as_str());

    let first_page = f
        .direct(a, "/api/v1/namespaces/a/configmaps?limit=2", JSON)
        .await;
    let token = first_page.json()["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_owned();
    let second_page = format!("/api/v1/namespaces/a/configmaps?limit=2&continue={token}");

    let mut matrix: Vec<(String, &str)> = Vec::new();
    for path in [
        "/api/v1/namespaces/a/configmaps/same",
        "/api/v1/namespaces/a/secrets/same",
        "/api/v1/namespaces/a/configmaps",
        "/api/v1/namespaces/a/configmaps?labelSelector=app%3Dx",
        "/api/v1/namespaces/a/configmaps?fieldSelector=metadata.name%3Dsame",
        "/api/v1/namespaces/a/configmaps?limit=2",
        &second_page,
        "/api/v1/configmaps?labelSelector=app%3Dy",
        "/api/v1/namespaces",
        "/api/v1/namespaces/a",
        "/api/v1/namespaces/a/secrets",
    ] {
        for accept in [JSON, TABLE, PROTOBUF] {
            matrix.push((path.to_owned(), accept));
        }
    }
    for path in ["/api/v1", "/apis", "/version"] {
        matrix.push((path.to_owned(), JSON));
    }

    for (path, accept) in &matrix {
        let direct = f.direct(a, path, accept).await;
        assert_eq!(
            direct.status,
            StatusCode::OK,
            "{path} {accept}: {}",
            direct.text()
        );
        let miss = f.via(a, path, accept).await;
        let hit = f.via(a, path, accept).await;
        assert_eq!(
            miss.header("cluster-relay-cache"),
            "miss",
            "{path} {accept}"
        );
        assert_eq!(
            hit.header("cluster-relay-cache"),
            "fresh_hit",
            "{path} {accept}"
        );
        for (how, answer) in [("miss", &miss), ("hit", &hit)] {
            assert_eq!(answer.status, direct.status, "{how} {path} {accept}");
            assert_eq!(
                answer.header("content-type"),
                direct.header("content-type"),
                "{how} {path} {accept}"
            );
            assert!(
                comparable(answer, accept) == comparable(&direct, accept),
                "{how} {path} {accept}: bodies differ:\ncache: {}\napiserver: {}",
                answer.text(),
                direct.text()
            );
        }
    }
    // Named GETs of different kinds never collide.
    let secret = f.via(a, "/api/v1/namespaces/a/secrets/same", JSON).await;
    let configmap = f.via(a, "/api/v1/namespaces/a/configmaps/same", JSON).await;
    assert_eq!(secret.json()["kind"], "Secret");
    assert_eq!(configmap.json()["kind"], "ConfigMap");
    println!("{} reads compared on miss and on hit", matrix.len());
}

/// 2. After A filled the cache, B gets exactly what the apiserver gives B.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_never_sees_what_the_apiserver_would_not_show_it() {
    let f = fixture();
    f.wait_ready().await;
    let paths = [
        "/api/v1/namespaces/a/secrets/same",
        "/api/v1/namespaces/a/secrets",
        "/api/v1/namespaces/a/configmaps/same",
        "/api/v1/namespaces/a/configmaps",
        "/api/v1/namespaces/a/configmaps?labelSelector=app%3Dx",
    ];
    for path in paths {
        let filled = f.via(Some(&f.token_a), path, JSON).await;
        assert_eq!(filled.status, StatusCode::OK, "A {path}: {}", filled.text());
        let again = f.via(Some(&f.token_a), path, JSON).await;
        assert!(
            matches!(again.header("cluster-relay-cache"), "fresh_hit" | "miss"),
            "A {path}"
        );
    }
    let bogus = "not-a-valid-token";
    for (who, token, expected_cached) in [
        ("B", Some(f.token_b.as_str()), vec![StatusCode::OK]),
        ("anonymous", None, vec![]),
        ("a bad token", Some(bogus), vec![]),
    ] {
        for path in paths {
            let direct = f.direct(token, path, JSON).await;
            let via = f.via(token, path, JSON).await;
            assert_eq!(via.status, direct.status, "{who} {path}: {}", via.text());
            assert_eq!(via.body, direct.body, "{who} {path}");
            if !expected_cached.contains(&direct.status) {
                assert_eq!(via.header("cluster-relay-cache"), "bypass", "{who} {path}");
            }
        }
    }
    // What B may and may not see, as the apiserver has it.
    let b = Some(f.token_b.as_str());
    assert_eq!(
        f.via(b, "/api/v1/namespaces/a/secrets/same", JSON)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        f.via(b, "/api/v1/namespaces/a/configmaps", JSON)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let named = f.via(b, "/api/v1/namespaces/a/configmaps/same", JSON).await;
    assert_eq!(named.json()["kind"], "ConfigMap");
    assert_eq!(
        f.via(Some(bogus), "/api/v1/namespaces/a/configmaps/same", JSON)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

fn data_of(answer: &Answer, key: &str) -> String {
    answer.json()["data"][key].as_str().unwrap_or("").to_owned()
}

/// 3. Changes made elsewhere reach the cache: a watched type (ConfigMaps)
/// within the watch's delivery, an unwatched one (Secrets) within the TTL;
/// a write through the cache is visible at once.
#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_the_cache() {
    let f = fixture();
    f.wait_ready().await;
    let a = Some(f.token_a.as_str());
    f.plane
        .kubectl_ok(&[
            "create",
            "configmap",
            "fresh",
            "-n",
            "a",
            "--from-literal",
            "v=1",
        ])
        .expect("configmap");
    f.plane
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "fresh",
            "-n",
            "a",
            "--from-literal",
            "v=1",
        ])
        .expect("secret");
    let cm = "/api/v1/namespaces/a/configmaps/fresh";
    let secret = "/api/v1/namespaces/a/secrets/fresh";
    // Served from the cache after a fill. Other tests of this binary change
    // ConfigMaps meanwhile, and a change of the type drops a fill that
    // raced it, so a hit may take more than one read.
    wait_for("the ConfigMap served from the cache", DEADLINE, || async {
        let answer = f.via(a, cm, JSON).await;
        assert_eq!(data_of(&answer, "v"), "1");
        let served = answer.header("cluster-relay-cache").to_owned();
        anyhow::ensure!(served == "fresh_hit", "served {served}");
        Ok(())
    })
    .await
    .expect("a fresh hit of the ConfigMap");
    assert_eq!(data_of(&f.via(a, secret, JSON).await, "v"), "MQ==");

    // Changed directly on the apiserver by another client.
    let changed = std::time::Instant::now();
    f.plane
        .kubectl_ok(&[
            "patch",
            "configmap",
            "fresh",
            "-n",
            "a",
            "-p",
            r#"{"data":{"v":"2"}}"#,
        ])
        .expect("patch");
    f.plane
        .kubectl_ok(&[
            "patch",
            "secret",
            "fresh",
            "-n",
            "a",
            "-p",
            r#"{"data":{"v":"Mg=="}}"#,
        ])
        .expect("patch");
    wait_for(
        "the watched ConfigMap's change in the cache",
        DEADLINE,
        || async {
            let v = data_of(&f.via(a, cm, JSON).await, "v");
            anyhow::ensure!(v == "2", "still {v}");
            Ok(())
        },
    )
    .await
    .expect("watch");
    println!("watched change visible after {:?}", changed.elapsed());
    wait_for(
        "the unwatched Secret's change in the cache",
        DEADLINE,
        || async {
            let v = data_of(&f.via(a, secret, JSON).await, "v");
            anyhow::ensure!(v == "Mg==", "still {v}");
            Ok(())
        },
    )
    .await
    .expect("ttl");
    println!(
        "unwatched change visible after {:?} (TTL 2s)",
        changed.elapsed()
    );

    // A list holding the object follows too, and is then served from the
    // cache (a hit may take more than one read, as above); every read
    // holds the new value.
    let list = "/api/v1/namespaces/a/configmaps?fieldSelector=metadata.name%3Dfresh";
    wait_for("the list served from the cache", DEADLINE, || async {
        let answer = f.via(a, list, JSON).await;
        assert_eq!(answer.json()["items"][0]["data"]["v"], "2");
        let served = answer.header("cluster-relay-cache").to_owned();
        anyhow::ensure!(served == "fresh_hit", "served {served}");
        Ok(())
    })
    .await
    .expect("a fresh hit of the list");

    // Writes through the cache: visible at the very next read.
    let auth = format!("Bearer {}", f.token_a);
    for (path, body) in [
        (cm, r#"{"data":{"v":"3"}}"#),
        (secret, r#"{"data":{"v":"Mw=="}}"#),
    ] {
        let patched = f
            .client
            .send(
                Method::PATCH,
                &format!("{}{path}", f.base),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/merge-patch+json"),
                ],
                Some(Bytes::from_static(body.as_bytes())),
            )
            .await
            .expect("patch through the cache");
        assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
        assert_eq!(patched.header("cluster-relay-cache"), "bypass");
    }
    let read = f.via(a, cm, JSON).await;
    assert_eq!(
        (
            data_of(&read, "v").as_str(),
            read.header("cluster-relay-cache")
        ),
        ("3", "miss")
    );
    assert_eq!(data_of(&f.via(a, secret, JSON).await, "v"), "Mw==");
    assert_eq!(
        f.via(a, list, JSON).await.json()["items"][0]["data"]["v"],
        "3"
    );

    // A delete made elsewhere.
    f.plane
        .kubectl_ok(&["delete", "configmap", "fresh", "-n", "a"])
        .expect("delete");
    wait_for("the deletion in the cache", DEADLINE, || async {
        let status = f.via(a, cm, JSON).await.status;
        anyhow::ensure!(status == StatusCode::NOT_FOUND, "still {status}");
        Ok(())
    })
    .await
    .expect("deleted");
    assert!(
        f.cache
            .metric(r#"cluster_relay_read_cache_invalidations_total{cause="watch"}"#)
            >= 2.0
    );
    assert!(
        f.cache
            .metric(r#"cluster_relay_read_cache_invalidations_total{cause="write"}"#)
            >= 2.0
    );
}

/// The apiserver's count of LISTs of a resource so far.
fn apiserver_lists(plane: &ControlPlane, resource: &str) -> f64 {
    let metrics = plane
        .kubectl_ok(&["get", "--raw", "/metrics"])
        .expect("apiserver metrics");
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{")
                && line.contains(&format!("resource=\"{resource}\""))
                && line.contains("verb=\"LIST\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// 4. 100 concurrent identical misses make one upstream request.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_identical_misses_make_one_upstream_request() {
    let f = fixture();
    f.wait_ready().await;
    let path = "/api/v1/namespaces/a/podtemplates";
    let before = apiserver_lists(f.plane, "podtemplates");
    let requests = (0..100).map(|_| f.via(Some(&f.token_a), path, JSON));
    let answers = futures::future::join_all(requests).await;
    let after = apiserver_lists(f.plane, "podtemplates");
    let count = |how: &str| {
        answers
            .iter()
            .filter(|a| a.header("cluster-relay-cache") == how)
            .count()
    };
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(after - before, 1.0, "LISTs the apiserver served");
    assert_eq!(count("miss"), 1);
    assert_eq!(count("coalesced") + count("fresh_hit"), 99);
    println!(
        "100 identical requests: 1 miss, {} coalesced, {} fresh hits, 1 upstream LIST",
        count("coalesced"),
        count("fresh_hit")
    );
}

/// 5. `--max-bytes` holds under a bounded stream of distinct keys.
#[tokio::test(flavor = "multi_thread")]
async fn max_bytes_holds_under_many_distinct_keys() {
    let shared_fixture = fixture();
    let f = start(
        shared_fixture.plane,
        &["--max-bytes", "128Ki", "--max-object-bytes", "16Ki"],
    )
    .expect("a small cache");
    f.wait_ready().await;
    let max = 128.0 * 1024.0;
    for i in 0..600 {
        let path = format!("/api/v1/namespaces/a/configmaps?labelSelector=key%3Dv{i}");
        let answer = f.via(Some(&f.token_a), &path, JSON).await;
        assert_eq!(answer.status, StatusCode::OK);
        if i % 50 == 0 {
            let held = f.cache.metric("cluster_relay_read_cache_store_bytes");
            assert!(held <= max, "held {held} bytes after {i} keys");
        }
    }
    let held = f.cache.metric("cluster_relay_read_cache_store_bytes");
    let entries = f.cache.metric("cluster_relay_read_cache_store_entries");
    let evicted = f
        .cache
        .metric("cluster_relay_read_cache_store_evictions_total");
    assert!(held <= max && held > max / 2.0, "held {held}");
    assert!(
        evicted > 0.0 && entries < 600.0,
        "{entries} entries, {evicted} evicted"
    );
    println!(
        "600 distinct keys: {held} bytes held in {entries} entries (bound {max}), {evicted} evicted"
    );
}

/// kubectl itself, pointed at the cache (HTTPS: Go clients send a bearer
/// token only over TLS) with a user's token: discovery and reads work
/// through it and come back as the apiserver gives them.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_reads_through_the_cache() {
    let shared_fixture = fixture();
    let tls = support::TlsFiles::generate(&[], &["127.0.0.1".parse().expect("an IP")])
        .expect("certificates");
    let (cert, key) = (
        tls.cert_path.to_str().expect("utf-8"),
        tls.key_path.to_str().expect("utf-8"),
    );
    let f = start(
        shared_fixture.plane,
        &["--tls-cert-file", cert, "--tls-key-file", key],
    )
    .expect("a cache serving TLS");
    f.wait_ready().await;
    let server = f.base.replace("http://", "https://");
    let cache_dir = run_dir().join("kubectl-via-cache");
    let ca = tls.ca_pem_path.to_str().expect("utf-8");
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .args(["--server", &server, "--certificate-authority", ca])
            .args(["--token", &f.token_a, "--request-timeout=20s"])
            .args(args)
            .env("KUBECACHEDIR", &cache_dir)
            .env("KUBECONFIG", "/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let args = [
        "get",
        "configmap",
        "same",
        "-n",
        "a",
        "-o",
        "jsonpath={.data.greeting}",
    ];
    for _ in 0..2 {
        assert_eq!(kubectl(&args), "hello");
    }
    let listed = kubectl(&["get", "configmaps", "-n", "a", "-l", "app=x", "-o", "name"]);
    assert!(listed.lines().any(|l| l == "configmap/same"), "{listed}");
    assert!(
        f.cache.metric(
            r#"cluster_relay_read_cache_requests_total{cache="fresh_hit",code="200",method="GET",profile="kubernetes"}"#
        ) >= 1.0
    );
}
