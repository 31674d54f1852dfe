//! The hosted topology on real clusters, as both e2es drive it
//! (`tests/e2e_local.rs` installs the chart by hand, `tests/e2e_ocm.rs`
//! through OCM): the names the chart gives things for managed cluster `c1`,
//! the echo Service on the managed cluster, clients standing in the hosting
//! cluster's network, and the checks both make through the relays.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use super::cluster::Cluster;
use super::echo::echoed;
use super::procs::{repo_path, run_dir};

/// The agent's namespace on the hosting cluster: the hosted klusterlet's,
/// which holds `external-managed-kubeconfig`.
pub const HOSTING_NS: &str = "klusterlet-c1";
/// The klusterlet's namespace for every add-on on the managed cluster.
pub const MANAGED_NS: &str = "open-cluster-management-agent-addon";
/// The Secret the provisioner writes on the hosting cluster.
pub const TARGET: &str = "cluster-relay-managed-kubeconfig";
/// The Authorization a client of the service relay sends; the echo pod must
/// see it.
pub const USER: &str = "Bearer the-users-own-token";
/// The echo Service on the managed cluster, as a service-proxy path.
pub const ECHO: &str = "/api/v1/namespaces/apps/services/http:echo:8080/proxy";

/// Runs `script` with `args`; the path it prints on its last line.
pub fn script_path(script: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let out = Command::new(repo_path(script))
        .args(args)
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "{script} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(
        stdout.lines().last().context("no path printed")?,
    ))
}

/// `hack/build-image.sh what`: the archive's path.
pub fn image(what: &str) -> anyhow::Result<PathBuf> {
    script_path("hack/build-image.sh", &[what])
}

/// Creates `ns` enforcing the restricted Pod Security Standard, so the real
/// admission plugin checks the pods' securityContext.
pub fn restricted_namespace(cluster: &Cluster, ns: &str) -> anyhow::Result<()> {
    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}},
    });
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], namespace.to_string().as_bytes())?;
    Ok(())
}

/// The echo Service on the managed cluster: a Deployment of the echo image
/// (tests/images/echo, imported into the node) and its Service, in
/// namespace `apps`.
pub fn start_echo(managed: &Cluster) -> anyhow::Result<()> {
    restricted_namespace(managed, "apps")?;
    let labels = json!({"app": "echo"});
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "echo", "namespace": "apps"},
         "spec": {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "echo", "image": "localhost/cluster-relay/echo:dev",
                    "imagePullPolicy": "Never", "args": ["-listen", ":8080"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]}},
                }]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "echo", "namespace": "apps"},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}},
    ]});
    managed.kubectl_with_stdin(&["apply", "-f", "-"], objects.to_string().as_bytes())?;
    Ok(())
}

/// The provisioned managed kubeconfig and its hash annotation.
pub fn provisioned(hosting: &Cluster) -> anyhow::Result<(String, String)> {
    let out = hosting.kubectl_ok(&["get", "secret", TARGET, "-n", HOSTING_NS, "-o", "json"])?;
    let secret: Value = serde_json::from_str(&out)?;
    let data = secret["data"]["kubeconfig"]
        .as_str()
        .context("data.kubeconfig")?;
    let kubeconfig = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data)?)?;
    let hash = secret["metadata"]["annotations"]["cluster-relay.io/kubeconfig-hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((kubeconfig, hash))
}

/// kubectl with `kubeconfig` (a path) through the apiserver relay at
/// `relay`, run in the hosting cluster's network.
pub fn kubectl_through(
    hosting: &Cluster,
    relay: SocketAddr,
    kubeconfig: &Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = hosting
        .in_node("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--server",
            &format!("https://{relay}"),
            "--tls-server-name",
            "kubernetes.default.svc",
            "--request-timeout=20s",
        ])
        .args(args)
        .env("KUBECACHEDIR", run_dir().join("kubecache-relay"))
        .output()?;
    if !out.status.success() {
        bail!(
            "kubectl {args:?} through the relay: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kubectl with the managed cluster's admin kubeconfig through the
/// apiserver relay (the Service named after the managed cluster) gets
/// [`MANAGED_NS`]; the relay's address and kubectl's answer.
pub fn kubectl_to_managed(
    hosting: &Cluster,
    managed: &Cluster,
) -> anyhow::Result<(SocketAddr, String)> {
    let relay = hosting.service_addr(HOSTING_NS, "c1")?;
    let out = kubectl_through(
        hosting,
        relay,
        &managed.kubeconfig_path(),
        &["get", "namespace", MANAGED_NS, "-o", "name"],
    )?;
    anyhow::ensure!(out.trim() == format!("namespace/{MANAGED_NS}"), "{out}");
    Ok((relay, out))
}

/// One HTTP/1.1 exchange from the cluster's network (use
/// `Connection: close`); the status and the body.
pub fn http_in(
    cluster: &Cluster,
    addr: SocketAddr,
    request: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = cluster.connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    super::agent::parse_response(&response)
}

/// GET `path` from the service-relay entry at `entry`, as [`USER`].
pub fn get_through_entry(
    hosting: &Cluster,
    entry: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    http_in(
        hosting,
        entry,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: entry\r\nConnection: close\r\nAuthorization: {USER}\r\n\r\n"
        ),
    )
}

/// The echo Service answers through the entry (→ the managed apiserver's
/// `services/proxy` → the exit relay) with the path asked for and the
/// caller's own Authorization.
pub fn echo_through_entry(hosting: &Cluster, entry: SocketAddr) -> anyhow::Result<()> {
    let (status, body) = get_through_entry(hosting, entry, &format!("{ECHO}/hello"))?;
    anyhow::ensure!(status == 200, "{status}: {body}");
    let (json, headers) = echoed(&body);
    anyhow::ensure!(json["path"] == "/hello", "{json}");
    anyhow::ensure!(
        headers.get("authorization") == Some(&vec![USER.to_owned()]),
        "{headers:?}"
    );
    Ok(())
}

/// Requests through both relays while the provisioner replaces the token
/// (set to every 10 s by the e2es' values) until it has done so twice; none
/// may fail. Each new kubeconfig is used at once, through the apiserver
/// relay, to reach the echo Service. Returns (replacements, requests).
pub fn rotations(
    hosting: &Cluster,
    relay: SocketAddr,
    entry: SocketAddr,
    first_hash: String,
) -> anyhow::Result<(usize, usize)> {
    let mut seen = BTreeSet::from([first_hash]);
    let (mut ok, mut failed) = (0, Vec::new());
    let started = Instant::now();
    let provisioned_path = run_dir().join("provisioned.kubeconfig");
    while seen.len() < 3 && started.elapsed() < Duration::from_secs(120) {
        let (kubeconfig, hash) = provisioned(hosting)?;
        if seen.insert(hash) {
            // A hosting-side client with the new kubeconfig, through the relay.
            std::fs::write(&provisioned_path, &kubeconfig)?;
            match kubectl_through(
                hosting,
                relay,
                &provisioned_path,
                &["get", "--raw", &format!("{ECHO}/new-token")],
            ) {
                Ok(_) => ok += 1,
                Err(err) => failed.push(format!("{err:#}")),
            }
        }
        match get_through_entry(hosting, entry, &format!("{ECHO}/rotation")) {
            Ok((200, _)) => ok += 1,
            Ok((status, body)) => failed.push(format!("{status}: {body}")),
            Err(err) => failed.push(format!("{err:#}")),
        }
    }
    anyhow::ensure!(
        seen.len() >= 3,
        "the token rotated only {} times",
        seen.len() - 1
    );
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
    Ok((seen.len() - 1, ok))
}
