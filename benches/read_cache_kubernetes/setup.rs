//! What the bench puts on the control plane before measuring: a namespace
//! of ConfigMaps, a ServiceAccount for the caller (may get and list them
//! there) and one for the cache's own identity (may list and watch them,
//! for `--watch-resource configmaps`), their tokens, and the kubeconfig the
//! cache reads as its managed kubeconfig. Also the apiserver's count of
//! SelfSubjectAccessReviews, to show what authorization cost each run.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use bench_support::{
    controlplane::{ControlPlane, requests_total},
    procs,
};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::client::HttpClient;

/// Where the ConfigMaps and both ServiceAccounts live.
pub const NAMESPACE: &str = "bench";
/// The caller's ServiceAccount, the cache's, and one that may read the
/// apiserver's /metrics (read over the bench's own client, which is
/// quicker around every run than starting kubectl).
const CALLER: &str = "caller";
const CACHE: &str = "cache";
const METRICS: &str = "metrics";

/// Creates in flight at once: enough for etcd to batch its commits, few
/// enough not to queue in the apiserver's max-in-flight limit (400).
const CREATE_CONCURRENCY: usize = 32;
/// A generous bound on creating every ConfigMap (about 10 s is usual).
const CREATE_TIMEOUT: Duration = Duration::from_secs(180);

const RBAC: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: caller, namespace: bench}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cache, namespace: bench}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: configmap-reader, namespace: bench}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: caller, namespace: bench}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}
subjects: [{kind: ServiceAccount, name: caller, namespace: bench}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: read-cache-bench}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: read-cache-bench}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: read-cache-bench}
subjects: [{kind: ServiceAccount, name: cache, namespace: bench}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics, namespace: bench}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: read-cache-bench-metrics}
rules:
- nonResourceURLs: [/metrics]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: read-cache-bench-metrics}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: read-cache-bench-metrics}
subjects: [{kind: ServiceAccount, name: metrics, namespace: bench}]
"#;

/// The control plane, where to reach it, and the two identities.
pub struct Cluster {
    pub plane: ControlPlane,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    pub ca_pem: String,
    pub caller_token: String,
    metrics_token: String,
    /// The cache's managed kubeconfig (its own token).
    pub cache_kubeconfig: PathBuf,
    /// etcd and the apiserver, each leading its own process group, for
    /// their CPU per run.
    pub plane_groups: Vec<i32>,
}

impl Cluster {
    /// Applies the RBAC above and makes both tokens. `dir` is the one the
    /// plane was started in.
    pub fn prepare(plane: ControlPlane, dir: &Path) -> anyhow::Result<Cluster> {
        let server = plane_server(dir)?;
        let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).context("reading ca.crt")?;
        kubectl(&plane, &["apply", "-f", "-"], Some(RBAC.as_bytes()))?;
        let caller_token = token(&plane, CALLER)?;
        let cache_token = token(&plane, CACHE)?;
        let metrics_token = token(&plane, METRICS)?;
        let cache_kubeconfig = dir
            .parent()
            .context("the plane's directory has a parent")?
            .join("cache.kubeconfig");
        std::fs::write(
            &cache_kubeconfig,
            kubeconfig_with_token(&server, &ca_pem, &cache_token),
        )?;
        Ok(Cluster {
            plane,
            server,
            ca_pem,
            caller_token,
            metrics_token,
            cache_kubeconfig,
            plane_groups: plane_processes(dir),
        })
    }

    /// SelfSubjectAccessReviews the apiserver has answered since it started,
    /// from its `apiserver_request_total` counter.
    pub async fn access_reviews(&self, client: &HttpClient) -> anyhow::Result<u64> {
        let answer = client
            .get(
                &format!("{}/metrics", self.server),
                &[(
                    "authorization".to_owned(),
                    format!("Bearer {}", self.metrics_token),
                )],
            )
            .await?;
        if answer.status != http::StatusCode::OK {
            bail!("the apiserver's /metrics answered {}", answer.status);
        }
        requests_total(
            &String::from_utf8_lossy(&answer.body),
            "selfsubjectaccessreviews",
        )
    }
}

/// The apiserver's URL, from the `SERVER=` line `controlplane.sh prepare`
/// wrote (a plain URL, so `%q` left it unquoted).
fn plane_server(dir: &Path) -> anyhow::Result<String> {
    let env = std::fs::read_to_string(dir.join("env")).context("reading the plane's env")?;
    env.lines()
        .find_map(|line| line.strip_prefix("SERVER="))
        .map(|server| server.trim_matches('\'').to_owned())
        .context("no SERVER= in the plane's env")
}

/// etcd and the apiserver of the plane in `dir`: the processes whose
/// command line names `dir` and whose program is one of the two (kubectl
/// names `dir` too, but none runs now). The script `exec`s them, so each
/// is its process group's leader.
fn plane_processes(dir: &Path) -> Vec<i32> {
    let dir = dir.to_string_lossy();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            let program = cmdline.split('\0').next().unwrap_or_default();
            (program.ends_with("etcd") || program.contains("kube-apiserver"))
                && cmdline.contains(dir.as_ref())
        })
        .collect()
}

fn token(plane: &ControlPlane, account: &str) -> anyhow::Result<String> {
    let out = kubectl(
        plane,
        &[
            "create",
            "token",
            account,
            "-n",
            NAMESPACE,
            "--duration",
            "1h",
        ],
        None,
    )?;
    let token = String::from_utf8(out.stdout)
        .context("kubectl create token printed non-UTF-8")?
        .trim()
        .to_owned();
    if token.is_empty() {
        bail!("kubectl create token printed nothing");
    }
    Ok(token)
}

/// A kubeconfig for `token`, as the provisioner would write the managed
/// kubeconfig.
fn kubeconfig_with_token(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: m, cluster: {{server: \"{server}\", certificate-authority-data: {ca}}}}}]\n\
         contexts: [{{name: m, context: {{cluster: m, user: u}}}}]\n\
         users: [{{name: u, user: {{token: \"{token}\"}}}}]\n\
         current-context: m\n"
    )
}

/// Runs kubectl with the admin kubeconfig, `stdin` written to it if given.
/// Bounded by kubectl's request timeout.
fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    let what = format!("kubectl {}", args[..2.min(args.len())].join(" "));
    let mut command = procs::command("kubectl");
    command
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .arg("--request-timeout=20s")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().with_context(|| format!("running {what}"))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)?;
        // Dropped here: kubectl reads to the end of its input.
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Creates `count` ConfigMaps `cm-00000`, `cm-00001`, … in [`NAMESPACE`]
/// with the admin identity, [`CREATE_CONCURRENCY`] at a time. Returns the
/// bytes of their `data`, for the report.
pub async fn create_configmaps(plane: &ControlPlane, count: usize) -> anyhow::Result<usize> {
    let kubeconfig = Kubeconfig::read_from(plane.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("the admin kubeconfig")?;
    let client = kube::Client::try_from(config)?;
    let api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
    let params = PostParams {
        field_manager: Some("read-cache-bench".to_owned()),
        ..PostParams::default()
    };
    let data_bytes: usize = (0..count).map(|i| data_bytes(&configmap(i))).sum();
    let creates = futures::stream::iter(0..count)
        .map(|i| {
            let (api, params) = (&api, &params);
            async move {
                api.create(params, &configmap(i))
                    .await
                    .with_context(|| format!("creating ConfigMap {i}"))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) });
    tokio::time::timeout(CREATE_TIMEOUT, creates)
        .await
        .with_context(|| format!("creating {count} ConfigMaps took over {CREATE_TIMEOUT:?}"))??;
    Ok(data_bytes)
}

fn data_bytes(cm: &ConfigMap) -> usize {
    cm.data
        .iter()
        .flatten()
        .map(|(key, value)| key.len() + value.len())
        .sum()
}

/// ConfigMap `i`: three keys of about 100 to 300 bytes, like an app's
/// settings, an endpoint and a small JSON document, different in each.
fn configmap(i: usize) -> ConfigMap {
    // A small LCG, so the bytes vary between ConfigMaps but not between
    // runs.
    let mut state = (i as u64).wrapping_mul(6364136223846793005) ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let team = ["payments", "search", "checkout", "identity", "storage"][next(5) as usize];
    let settings = format!(
        "server:\n  port: {}\n  readTimeout: {}s\n  writeTimeout: {}s\nlog:\n  level: {}\n  format: json\n\
         cache:\n  size: {}Mi\n  ttl: {}m\nfeatures:\n  newCheckout: {}\n  betaSearch: {}\n\
         retry:\n  attempts: {}\n  backoff: {}ms\n",
        8000 + next(1000),
        5 + next(55),
        5 + next(55),
        ["info", "debug", "warn"][next(3) as usize],
        16 << next(5),
        1 + next(59),
        next(2) == 1,
        next(2) == 1,
        1 + next(5),
        100 * (1 + next(20)),
    );
    let endpoint = format!(
        "https://{team}-{i:05}.{NAMESPACE}.svc.cluster.local:{}/api/v{}/items?region=eu-west-{}",
        8443 + next(100),
        1 + next(3),
        1 + next(3)
    );
    let labels = format!(
        "{{\"team\":\"{team}\",\"tier\":\"{}\",\"owner\":\"{team}-oncall@example.com\",\
         \"costCenter\":\"cc-{:04}\",\"revision\":{}}}",
        ["frontend", "backend", "batch"][next(3) as usize],
        next(10_000),
        next(1_000)
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("cm-{i:05}")),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(
                [
                    ("app".to_owned(), format!("{team}-{}", i % 50)),
                    ("team".to_owned(), team.to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("settings.yaml".to_owned(), settings),
                ("endpoint".to_owned(), endpoint),
                ("labels.json".to_owned(), labels),
            ]
            .into(),
        ),
        ..ConfigMap::default()
    }
}
