//! The local-process e2e of the hosted topology (DESIGN.md), driven by the
//! chart itself. The chart is rendered with the values the add-on framework
//! passes in hosted mode (`ci/hosted-values.yaml` + `e2e/local/values.yaml`);
//! hosting-located manifests are applied to the hosting control plane and
//! managed-located ones to the managed control plane. There is no kubelet, so
//! each rendered Deployment's container command and args are run as a process
//! in its own network namespace ("pod"), with the env the Pod would get and a
//! token of the Deployment's own ServiceAccount, so the chart's RBAC is what
//! allows or refuses each call. Then, through those processes:
//!
//! 1. kubectl against the managed cluster through the apiserver relay;
//! 2. an HTTP Service on the managed cluster through the service relay
//!    (entry on the hosting side, exit as a pod of the managed cluster);
//! 3. cached reads through the read cache (skipped, saying so, while the
//!    binary has no `read-cache`; see [`READ_CACHE_REQUIRED`]);
//! 4. token rotations with no failed request;
//! 5. the add-on deleted: the cleanup Job's command, then the manifests,
//!    and nothing of ours is left on either cluster.
//!
//! A flag the chart passes that the binary does not accept fails step 0,
//! before anything runs (and `tests/chart.rs` shows the check catches one).

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use support::{
    ControlPlane, NetnsPod,
    agent::{agent_bin, http_get, raw_http},
    chart::{self, Rendered, args_of, chart_file, check_flags},
    echo::{EchoPod, echoed},
    repo_path, run_dir, shared, wait_for_sync, wait_until_sync,
};

/// Set to true once `agent read-cache` is merged: its step then fails
/// instead of being skipped when the subcommand is missing.
const READ_CACHE_REQUIRED: bool = true;

const DEADLINE: Duration = Duration::from_secs(90);
const HOSTING_NS: &str = "klusterlet-c1";
const MANAGED_NS: &str = "open-cluster-management-agent-addon";
const TARGET: &str = "cluster-relay-managed-kubeconfig";
const ADMIN_PORT: u16 = 9090;
const USER: &str = "Bearer the-users-own-token";

/// A rendered Deployment or Job, as the process that stands in for its Pod.
struct Workload {
    id: String,
    location: String,
    namespace: String,
    service_account: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Workload {
    fn from(object: &Rendered) -> anyhow::Result<Workload> {
        let namespace = object.namespace().context("namespaced")?.to_owned();
        let pod_name = format!("{}-0", object.name());
        let containers = object.containers();
        anyhow::ensure!(containers.len() == 1, "{}: one container", object.id());
        let container = containers[0];
        anyhow::ensure!(
            container["command"] == json!(["/agent"]),
            "{}: the image's binary is /agent",
            object.id()
        );
        let mut env = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().context("env name")?.to_owned();
            let value = match (
                &var["value"],
                var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Value::String(value), _) => value.clone(),
                (_, Some("metadata.name")) => pod_name.clone(),
                (_, Some("metadata.namespace")) => namespace.clone(),
                _ => bail!("{}: env {name} is not supported by this e2e", object.id()),
            };
            env.push((name, value));
        }
        Ok(Workload {
            id: object.id(),
            location: object.location.clone(),
            namespace,
            service_account: object.object["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .context("serviceAccountName")?
                .to_owned(),
            args: args_of(container),
            env,
        })
    }

    fn subcommand(&self) -> &str {
        &self.args[0]
    }

    /// `agent ARGS` with the Pod's env and its ServiceAccount's credentials
    /// for the cluster it runs on (what in-cluster config would give it).
    fn command(&self, plane: &ControlPlane) -> anyhow::Result<Command> {
        let kubeconfig = service_account_kubeconfig(plane, &self.namespace, &self.service_account)?;
        let mut cmd = Command::new(agent_bin());
        cmd.args(&self.args).env("KUBECONFIG", kubeconfig);
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        Ok(cmd)
    }
}

/// A kubeconfig for `namespace/account` on `plane`, with a token from the
/// TokenRequest API: that ServiceAccount's RBAC is all it can do.
fn service_account_kubeconfig(
    plane: &ControlPlane,
    namespace: &str,
    account: &str,
) -> anyhow::Result<PathBuf> {
    let token =
        plane.kubectl_ok(&["create", "token", account, "-n", namespace, "--duration=1h"])?;
    let ca = base64::engine::general_purpose::STANDARD.encode(plane.ca_pem());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority-data: \"{ca}\"}}}}]\n\
         users: [{{name: u, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
        plane.server(),
        token.trim()
    );
    let path = run_dir().join(format!("{}-{namespace}-{account}.kubeconfig", plane.name()));
    std::fs::write(&path, kubeconfig)?;
    Ok(path)
}

/// A workload running as a process in a pod; the pod goes on drop.
struct Running {
    pod: NetnsPod,
}

impl Running {
    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.pod.pod_ip(), port))
    }

    fn ip(&self) -> Ipv4Addr {
        self.pod.pod_ip()
    }
}

/// Runs `workload` as pod `<name>-0` of its location's plane. Processes in
/// it reach both apiservers at the addresses of their kubeconfigs.
fn run(
    workload: &Workload,
    hosting: &ControlPlane,
    managed: &ControlPlane,
) -> anyhow::Result<Running> {
    let plane = if workload.location == "managed" {
        managed
    } else {
        hosting
    };
    let name = format!("{}-0", workload.id.split('/').nth(1).unwrap_or("pod"));
    let pod = NetnsPod::create(plane, &workload.namespace, &name, &[])?;
    pod.forward_host_port(managed.port())?;
    if workload.location == "hosting" {
        pod.forward_host_port(hosting.port())?;
    }
    pod.spawn(workload.command(plane)?)?;
    Ok(Running { pod })
}

fn wait_ready(running: &Running, what: &str) -> anyhow::Result<()> {
    let addr = running.addr(ADMIN_PORT);
    wait_until_sync(&format!("{what} to be ready"), DEADLINE, || {
        http_get(addr, "/readyz").is_ok_and(|(status, _)| status == 200)
    })
    .with_context(|| format!("{what} log:\n{}", running.pod.log()))
}

/// The provisioned managed kubeconfig and its hash annotation.
fn provisioned(hosting: &ControlPlane) -> anyhow::Result<(String, String)> {
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

/// kubectl with `kubeconfig` (a path) through the apiserver relay at `relay`.
fn kubectl_through(
    relay: SocketAddr,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--server",
            &format!("https://{relay}"),
            "--tls-server-name",
            "kubernetes.default.svc",
        ])
        .args(["--request-timeout=20s"])
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

fn get_through_entry(entry: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: entry\r\nConnection: close\r\nAuthorization: {USER}\r\n\r\n"
    );
    raw_http(entry, request.as_bytes())
}

/// Endpoints for the chart's exit Service, pointing at the exit pod (what
/// the endpoints controller would do for its selector).
fn register_exit_endpoints(
    managed: &ControlPlane,
    exit: &Running,
    service: &Rendered,
) -> anyhow::Result<()> {
    let port = &service.object["spec"]["ports"][0];
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": service.name(), "namespace": MANAGED_NS},
        "subsets": [{
            "addresses": [{"ip": exit.ip().to_string(),
                "targetRef": {"kind": "Pod", "name": exit.pod.name(), "namespace": MANAGED_NS}}],
            "ports": [{"name": port["name"], "port": port["port"], "protocol": "TCP"}],
        }],
    });
    managed.kubectl_with_stdin(&["apply", "-f", "-"], endpoints.to_string().as_bytes())?;
    Ok(())
}

#[test]
fn the_hosted_topology_from_the_chart_end_to_end() {
    if let Err(err) = end_to_end() {
        panic!("{err:#}");
    }
}

fn end_to_end() -> anyhow::Result<()> {
    let (hosting, managed) = (shared("hosting"), shared("managed"));
    let objects = chart::render(
        &[
            chart_file("ci/hosted-values.yaml"),
            repo_path("e2e/local/values.yaml"),
        ],
        &Value::Null,
        MANAGED_NS,
    )?;
    let workloads: Vec<(Workload, &Rendered)> = objects
        .iter()
        .filter(|o| matches!(o.kind(), "Deployment" | "Job"))
        .map(|o| Workload::from(o).map(|w| (w, o)))
        .collect::<anyhow::Result<_>>()?;
    let read_cache_available = chart::accepted_flags("read-cache").is_ok();

    println!("== 0. every container's flags are ones the binary accepts");
    for (workload, _) in &workloads {
        if workload.subcommand() == "read-cache" && !read_cache_available && !READ_CACHE_REQUIRED {
            println!(
                "   SKIPPED {}: this binary has no `agent read-cache` yet",
                workload.id
            );
            continue;
        }
        check_flags(&workload.args).with_context(|| workload.id.clone())?;
    }

    println!("== the framework's part: the source Secret exists, the manifests are applied");
    for location in ["hosting", "managed"] {
        let mut ids: Vec<String> = objects
            .iter()
            .filter(|o| o.location == location)
            .map(Rendered::id)
            .collect();
        ids.sort();
        println!("   {location}: {}", ids.join(", "));
    }
    hosting.ensure_namespace(HOSTING_NS)?;
    hosting.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "external-managed-kubeconfig",
        "-n",
        HOSTING_NS,
        &format!(
            "--from-file=kubeconfig={}",
            managed.kubeconfig_path().display()
        ),
    ])?;
    let placed = |location: &str| -> Vec<&Rendered> {
        objects
            .iter()
            .filter(|o| o.location == location && o.hook.is_empty())
            .collect()
    };
    chart::apply(managed, &placed("managed"))?;
    managed.ensure_namespace(MANAGED_NS)?; // its default ServiceAccount, for the Pods
    chart::apply(hosting, &placed("hosting"))?;

    let find = |name: &str| {
        workloads
            .iter()
            .find(|(w, _)| w.id == format!("Deployment/cluster-relay-{name}"))
            .map(|(w, _)| w)
            .with_context(|| format!("no {name} Deployment rendered"))
    };

    println!("== the provisioner writes the managed kubeconfig");
    let provisioner = run(find("provisioner")?, hosting, managed)?;
    wait_ready(&provisioner, "the provisioner")?;
    let (_, first_hash) = wait_for_sync("the managed kubeconfig Secret", DEADLINE, || {
        provisioned(hosting)
    })?;
    println!(
        "   the given admin kubeconfig became {HOSTING_NS}/{TARGET}, whose only credential is a short-lived ServiceAccount token ({})",
        &first_hash[..12.min(first_hash.len())]
    );

    println!("== 1. kubectl through the apiserver relay");
    let apiserver_relay = run(find("apiserver-relay")?, hosting, managed)?;
    wait_ready(&apiserver_relay, "the apiserver relay")?;
    let relay = apiserver_relay.addr(6443);
    let out = kubectl_through(
        relay,
        &managed.kubeconfig_path(),
        &["get", "namespace", MANAGED_NS, "-o", "name"],
    )?;
    anyhow::ensure!(out.trim() == format!("namespace/{MANAGED_NS}"), "{out}");
    println!(
        "   kubectl --server https://{relay} get namespace {MANAGED_NS}: {} (TLS end to end with the managed apiserver)",
        out.trim()
    );

    println!("== 2. an HTTP Service of the managed cluster through the service relay");
    let _echo = EchoPod::start(managed, "apps", "echo", 8080, None)?;
    let exit = run(find("service-relay-exit")?, hosting, managed)?;
    let exit_service = objects
        .iter()
        .find(|o| o.kind() == "Service" && o.name() == "cluster-relay-service-relay")
        .context("no exit Service rendered")?;
    register_exit_endpoints(managed, &exit, exit_service)?;
    wait_ready(&exit, "the exit relay")?;
    let entry = run(find("service-relay-entry")?, hosting, managed)?;
    wait_ready(&entry, "the service-relay entry")?;
    let entry_addr = entry.addr(7444);
    let (status, body) = get_through_entry(
        entry_addr,
        "/api/v1/namespaces/apps/services/http:echo:8080/proxy/hello",
    )?;
    anyhow::ensure!(
        status == 200,
        "{status}: {body}\nexit log:\n{}",
        exit.pod.log()
    );
    let (json, headers) = echoed(&body);
    anyhow::ensure!(json["path"] == "/hello", "{json}");
    anyhow::ensure!(
        headers.get("authorization") == Some(&vec![USER.to_owned()]),
        "{headers:?}"
    );
    println!(
        "   GET http://{entry_addr}/api/v1/namespaces/apps/services/http:echo:8080/proxy/hello: 200 from the echo Service on the managed cluster, with the caller's own Authorization"
    );

    println!("== 3. cached reads through the read cache");
    cached_reads(&workloads, read_cache_available, hosting, managed)?;

    println!("== 4. the token rotates and no request fails");
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
                relay,
                &provisioned_path,
                &[
                    "get",
                    "--raw",
                    "/api/v1/namespaces/apps/services/http:echo:8080/proxy/new-token",
                ],
            ) {
                Ok(_) => ok += 1,
                Err(err) => failed.push(format!("{err:#}")),
            }
        }
        match get_through_entry(
            entry_addr,
            "/api/v1/namespaces/apps/services/echo:8080/proxy/rotation",
        ) {
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
    println!(
        "   the token was replaced {} times; {ok} requests through the relays meanwhile, none failed",
        seen.len() - 1
    );

    println!("== 5. the add-on is deleted: the cleanup Job's command, then the manifests");
    let (job, job_object) = workloads
        .iter()
        .find(|(w, _)| w.id.starts_with("Job/"))
        .context("no cleanup Job rendered")?;
    // The framework applies the pre-delete Job while everything else still
    // runs, and removes the rest once it has completed.
    chart::apply(hosting, &[job_object])?;
    let cleanup = run(job, hosting, managed)?;
    wait_until_sync("the cleanup Job's command to finish", DEADLINE, || {
        cleanup.pod.log().contains("cleanup done")
    })
    .with_context(|| format!("cleanup log:\n{}", cleanup.pod.log()))?;
    // The provisioner still runs, but has stood down: it would otherwise
    // write everything again before its Deployment goes.
    let (_, metrics) = http_get(provisioner.addr(ADMIN_PORT), "/metrics")?;
    anyhow::ensure!(
        metrics
            .lines()
            .any(|l| l == "cluster_relay_leader_election_is_leader 0"),
        "the provisioner still leads after the cleanup:\n{metrics}"
    );
    anyhow::ensure!(
        provisioned(hosting).is_err(),
        "the managed kubeconfig Secret was written again"
    );
    drop((cleanup, entry, exit, apiserver_relay, provisioner));
    chart::delete(
        hosting,
        &objects
            .iter()
            .filter(|o| o.location == "hosting")
            .collect::<Vec<_>>(),
    )?;
    chart::delete(managed, &placed("managed"))?;
    nothing_left(hosting, managed)?;
    println!(
        "   the cleanup Job's command stopped the provisioner's writes and removed what it made; with the manifests gone, nothing of ours is left on either cluster"
    );
    Ok(())
}

/// Step 3, the read cache: skipped with the reason printed while the binary
/// has no `read-cache` (unless [`READ_CACHE_REQUIRED`]).
fn cached_reads(
    workloads: &[(Workload, &Rendered)],
    available: bool,
    hosting: &ControlPlane,
    managed: &ControlPlane,
) -> anyhow::Result<()> {
    if !available {
        anyhow::ensure!(
            !READ_CACHE_REQUIRED,
            "READ_CACHE_REQUIRED but `agent read-cache --help` fails"
        );
        println!(
            "   SKIPPED: `agent read-cache --help` fails: the read cache is not in this binary yet"
        );
        return Ok(());
    }
    let workload = workloads
        .iter()
        .map(|(w, _)| w)
        .find(|w| w.subcommand() == "read-cache")
        .context("no read-cache Deployment rendered")?;
    let cache = run(workload, hosting, managed)?;
    wait_ready(&cache, "the read cache")?;
    // A reader on the managed cluster, with a token the cache authorizes.
    managed.ensure_namespace("reads")?;
    managed.kubectl_ok(&[
        "create",
        "configmap",
        "cached",
        "-n",
        "reads",
        "--from-literal=k=v",
    ])?;
    managed.kubectl_ok(&["create", "serviceaccount", "reader", "-n", "reads"])?;
    managed.kubectl_ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "reads",
        "--verb=get,list",
        "--resource=configmaps",
    ])?;
    managed.kubectl_ok(&[
        "create",
        "rolebinding",
        "reader",
        "-n",
        "reads",
        "--role=reader",
        "--serviceaccount=reads:reader",
    ])?;
    let token = managed.kubectl_ok(&["create", "token", "reader", "-n", "reads"])?;
    let request = format!(
        "GET /api/v1/namespaces/reads/configmaps/cached HTTP/1.1\r\nHost: cache\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    );
    let addr = cache.addr(7445);
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let (status, body) = raw_http(addr, request.as_bytes())?;
        anyhow::ensure!(status == 200, "{status}: {body}\nlog:\n{}", cache.pod.log());
        bodies.push(body);
    }
    anyhow::ensure!(bodies[0] == bodies[1], "the cached read differs");
    let (_, metrics) = http_get(cache.addr(ADMIN_PORT), "/metrics")?;
    anyhow::ensure!(
        metrics.lines().any(
            |l| l.starts_with("cluster_relay_read_cache_requests_total{")
                && l.contains(r#"cache="fresh_hit""#)
                && !l.ends_with(" 0")
        ),
        "no cache hit counted:\n{metrics}"
    );
    // A caller without the right is refused, cached or not.
    let (status, _) = raw_http(
        addr,
        request.replace(token.trim(), "not-a-token").as_bytes(),
    )?;
    anyhow::ensure!(
        status == 401 || status == 403,
        "an unauthorized read got {status}"
    );
    println!("   GET configmaps/cached via {addr} twice: 200, the second from the cache");
    Ok(())
}

/// Nothing the chart or the provisioner made is left on either plane
/// (namespaces aside: without a controller-manager they stay Terminating).
fn nothing_left(hosting: &ControlPlane, managed: &ControlPlane) -> anyhow::Result<()> {
    let kinds = "deployments,services,serviceaccounts,roles,rolebindings,secrets,leases,jobs";
    let left = |plane: &ControlPlane, namespace: &str| -> anyhow::Result<Vec<String>> {
        let out = plane.kubectl_ok(&["get", kinds, "-n", namespace, "-o", "name"])?;
        Ok(out
            .lines()
            .filter(|l| !l.ends_with("/default") && !l.ends_with("/external-managed-kubeconfig"))
            .map(str::to_owned)
            .collect())
    };
    let cluster_wide = |plane: &ControlPlane| -> anyhow::Result<Vec<String>> {
        let out = plane.kubectl_ok(&["get", "clusterroles,clusterrolebindings", "-o", "name"])?;
        Ok(out
            .lines()
            .filter(|l| l.contains("cluster-relay"))
            .map(str::to_owned)
            .collect())
    };
    wait_for_sync(
        "nothing of ours to be left",
        Duration::from_secs(30),
        || {
            let mut all = left(hosting, HOSTING_NS)?;
            all.extend(left(managed, MANAGED_NS)?);
            all.extend(cluster_wide(managed)?);
            if all.is_empty() {
                Ok(())
            } else {
                bail!("left: {all:?}")
            }
        },
    )
}
