//! The e2e of the add-on as Open Cluster Management deploys it: OCM's own
//! hub controllers and klusterlet agents (`hack/build-ocm.sh`, from the
//! open-cluster-management.io/ocm module) and this repository's
//! addon-manager (the add-on framework with the chart embedded, hosted mode
//! enabled) put the chart on three real clusters (`hack/cluster.sh`):
//!
//! - `ocm-hub` (slot 2): the hub's CRDs; `registration controller`,
//!   `work manager` and `addon manager` run as processes against it, our
//!   addon-manager as a pod on its node, installed as the README says
//!   (`addon-manager/deploy/`);
//! - `hosting` (slot 0): joined as ManagedCluster `hosting` by a klusterlet
//!   agent in Default mode;
//! - `managed` (slot 1): joined as ManagedCluster `c1` by a klusterlet agent
//!   in Hosted mode, which runs against the hosting cluster with the
//!   managed cluster's kubeconfig (namespace `klusterlet-c1`, which also
//!   holds `external-managed-kubeconfig`).
//!
//! The agent's pods run on the hosting and managed clusters' real nodes.
//! Steps, each asserted on what OCM and the clusters report:
//! 1. the ManagedClusterAddOn (hosting-cluster annotation) makes the works
//!    for both clusters, OCM's work agents apply them, every Deployment is
//!    Available, the provisioner writes the managed kubeconfig and reports
//!    `ManagedKubeconfigReady` on the hub, and the add-on is Available;
//! 2. kubectl through the apiserver relay, the echo Service (a pod on the
//!    managed cluster) through the service relay; the provisioner replaces
//!    the token twice (every 10 s here) while requests go through both
//!    relays, and none fails;
//! 3. an AddOnDeploymentConfig (registry mirror, node selector, a
//!    customized variable) rolls out to the pods;
//! 4. the provisioner's leader keeps its Lease (holder, acquireTime,
//!    transitions) across three re-applies of the hosting work by the work
//!    agent, counted in its log: the klusterlets run with the resync period
//!    at 10 s (`--work-resync-interval`, hack/ocm/klusterlet: in OCM it is
//!    the variable `manifestcontroller.ResyncInterval`, 4 minutes);
//! 5. deleting the ManagedClusterAddOn runs the pre-delete Job on the
//!    hosting cluster and leaves nothing of ours on either cluster, while
//!    `open-cluster-management-agent-addon` and another add-on's object in
//!    it survive.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use support::{
    Cluster,
    hosted::{
        HOSTING_NS, MANAGED_NS, TARGET, echo_through_entry, image, kubectl_to_managed, provisioned,
        rotations, script_path, start_echo,
    },
    kill, repo_path, run_dir, shared_cluster, spawn, wait_for_sync, wait_until_sync,
};

const DEADLINE: Duration = Duration::from_secs(240);
const ADDON: &str = "cluster-relay";
const AGENT_IMAGE: &str = "localhost/cluster-relay/agent:dev";
const MIRROR_IMAGE: &str = "localhost/cluster-relay-mirror/agent:dev";
/// `hack/build-image.sh addon-manager`'s image, and the namespace
/// `addon-manager/deploy/` runs it in.
const MANAGER_IMAGE: &str = "localhost/cluster-relay/addon-manager:dev";
const MANAGER_NS: &str = "cluster-relay-addon";
/// The work agents' resync period in this test (OCM's default: 4 minutes).
const RESYNC: &str = "10s";
/// The hosting cluster's work, which the hosting klusterlet applies.
const HOSTING_WORK: &str = "addon-cluster-relay-deploy-hosting-c1-0";
const LEASE: &str = "cluster-relay-provisioner";

#[test]
fn the_add_on_deployed_by_ocm_in_hosted_mode() {
    if let Err(err) = end_to_end() {
        panic!("{err:#}");
    }
}

/// The OCM processes of this run; killed when it ends.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            kill(child);
        }
    }
}

fn log_path(name: &str) -> PathBuf {
    run_dir().join(format!("ocm-{name}.log"))
}

fn start(bin: &Path, name: &str, args: &[String]) -> anyhow::Result<(String, Child)> {
    let log = std::fs::File::create(log_path(name))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdout(log.try_clone()?).stderr(log);
    Ok((name.to_owned(), spawn(cmd)?))
}

fn tail(name: &str) -> String {
    let log = std::fs::read_to_string(log_path(name)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(15).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn apply(cluster: &Cluster, object: &Value) -> anyhow::Result<()> {
    cluster.kubectl_with_stdin(&["apply", "-f", "-"], object.to_string().as_bytes())?;
    Ok(())
}

fn get_json(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend(["-o", "json"]);
    Ok(serde_json::from_str(&cluster.kubectl_ok(&full)?)?)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn condition_true(object: &Value, kind: &str) -> bool {
    condition(object, kind).is_some_and(|c| c["status"] == "True")
}

/// OCM's hub controllers, as processes; our addon-manager as the README
/// installs it: `addon-manager/deploy/`, its image and the agent's set,
/// running as a pod on the hub's node from the image in `manager` (an
/// archive).
fn start_hub(hub: &Cluster, ocm: &Path, manager: &Path) -> anyhow::Result<Processes> {
    hub.import(manager)?;
    hub.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &ocm.join("crds/hub").display().to_string(),
    ])?;
    hub.ensure_namespace("open-cluster-management-hub")?;
    let kubeconfig = hub.kubeconfig_path().display().to_string();
    let common = |port: u16| {
        vec![
            format!("--kubeconfig={kubeconfig}"),
            "--namespace=open-cluster-management-hub".to_owned(),
            "--disable-leader-election".to_owned(),
            format!("--listen=127.0.0.1:{port}"),
        ]
    };
    let bin = ocm.join("bin");
    let mut procs = Processes(Vec::new());
    let mut args = vec!["controller".to_owned()];
    args.extend(common(18441));
    procs.0.push(start(
        &bin.join("registration"),
        "registration-controller",
        &args,
    )?);
    let mut args = vec!["manager".to_owned()];
    args.extend(common(18442));
    procs
        .0
        .push(start(&bin.join("work"), "work-manager", &args)?);
    let mut args = vec!["manager".to_owned()];
    args.extend(common(18443));
    procs
        .0
        .push(start(&bin.join("addon"), "addon-manager", &args)?);
    // The README's commands: the manifests, then the images.
    hub.kubectl_ok(&[
        "apply",
        "-f",
        &repo_path("addon-manager/deploy/").display().to_string(),
    ])?;
    let patch = json!([
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": MANAGER_IMAGE},
        {"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/args",
         "value": [format!("--agent-image={AGENT_IMAGE}")]},
    ]);
    hub.kubectl_ok(&[
        "patch",
        "-n",
        MANAGER_NS,
        "deployment",
        "cluster-relay-addon-manager",
        "--type=json",
        "-p",
        &patch.to_string(),
    ])?;
    hub.deployments_available(MANAGER_NS, DEADLINE)?;
    Ok(procs)
}

/// A klusterlet agent for `cluster` joining as `name`; with `managed`, in
/// hosted mode (it runs against `cluster`, the hosting cluster, and manages
/// `managed`).
fn start_klusterlet(
    hub: &Cluster,
    cluster: &Cluster,
    managed: Option<&Cluster>,
    name: &str,
    namespace: &str,
    port: u16,
) -> anyhow::Result<(String, Child)> {
    cluster.ensure_namespace(namespace)?;
    let spoke = managed.unwrap_or(cluster);
    spoke.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &ocm_dir()?.join("crds/klusterlet").display().to_string(),
    ])?;
    let dir = run_dir().join(format!("klusterlet-{name}"));
    std::fs::create_dir_all(&dir)?;
    let args = vec![
        "agent".to_owned(),
        format!("--kubeconfig={}", cluster.kubeconfig_path().display()),
        format!("--spoke-kubeconfig={}", spoke.kubeconfig_path().display()),
        format!("--spoke-cluster-name={name}"),
        format!("--agent-id={name}"),
        format!("--bootstrap-kubeconfig={}", hub.kubeconfig_path().display()),
        format!("--hub-kubeconfig-dir={}", dir.display()),
        // The work agent's hub connection; by default where the in-cluster
        // agent mounts the hub kubeconfig Secret.
        format!(
            "--workload-source-config={}",
            dir.join("kubeconfig").display()
        ),
        "--hub-kubeconfig-secret=hub-kubeconfig-secret".to_owned(),
        format!("--namespace={namespace}"),
        "--disable-leader-election".to_owned(),
        format!("--listen=127.0.0.1:{port}"),
        // Step 4: several resyncs within the test, and each one logged
        // ("Requeue manifestwork", at verbosity 2).
        format!("--work-resync-interval={RESYNC}"),
        "--v=2".to_owned(),
    ];
    // OCM's registration-operator with the resync period as a flag.
    let bin = ocm_dir()?.join("bin/klusterlet");
    start(&bin, &format!("klusterlet-{name}"), &args)
}

/// The last lines of our addon-manager's log, for failure messages.
fn manager_log(hub: &Cluster) -> String {
    hub.kubectl_ok(&[
        "logs",
        "-n",
        MANAGER_NS,
        "deployment/cluster-relay-addon-manager",
        "--tail=30",
    ])
    .unwrap_or_default()
}

fn ocm_dir() -> anyhow::Result<PathBuf> {
    script_path("hack/build-ocm.sh", &[])
}

/// The hub accepts cluster `name`: its CSR approved, hubAcceptsClient set;
/// then waits for the ManagedCluster to be Available.
fn accept(hub: &Cluster, name: &str, klusterlet: &str) -> anyhow::Result<()> {
    wait_until_sync(
        &format!("ManagedCluster {name} to be Available"),
        DEADLINE,
        || {
            let csrs = get_json(
                hub,
                &[
                    "csr",
                    "-l",
                    &format!("open-cluster-management.io/cluster-name={name}"),
                ],
            )
            .unwrap_or(Value::Null);
            for csr in csrs["items"].as_array().into_iter().flatten() {
                if csr["status"]["conditions"].is_null() {
                    let csr_name = csr["metadata"]["name"].as_str().unwrap_or_default();
                    let _ = hub.kubectl_ok(&["certificate", "approve", csr_name]);
                }
            }
            let _ = hub.kubectl_ok(&[
                "patch",
                "managedcluster",
                name,
                "--type=merge",
                "-p",
                r#"{"spec":{"hubAcceptsClient":true}}"#,
            ]);
            get_json(hub, &["managedcluster", name])
                .is_ok_and(|mc| condition_true(&mc, "ManagedClusterConditionAvailable"))
        },
    )
    .with_context(|| tail(klusterlet))
}

fn addon(hub: &Cluster) -> anyhow::Result<Value> {
    get_json(hub, &["managedclusteraddon", ADDON, "-n", "c1"])
}

fn end_to_end() -> anyhow::Result<()> {
    let ocm = ocm_dir()?;
    let manager = image("addon-manager")?;
    let (agent, echo) = (image("agent")?, image("echo")?);
    let hub = shared_cluster("ocm-hub", 2);
    let (hosting, managed) = (shared_cluster("hosting", 0), shared_cluster("managed", 1));
    for cluster in [hosting, managed] {
        cluster.import(&agent)?;
    }
    managed.import(&echo)?;
    // The registry mirror of step 3: the same image under another name.
    let sock = hosting.dir().join("containerd/containerd.sock");
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&sock)
        .args([
            "-n",
            "k8s.io",
            "images",
            "tag",
            "--force",
            AGENT_IMAGE,
            MIRROR_IMAGE,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ctr images tag: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    println!("== OCM: the hub's controllers, the hosting cluster joined, c1 joined in Hosted mode");
    let mut procs = start_hub(hub, &ocm, &manager)?;
    procs.0.push(start_klusterlet(
        hub,
        hosting,
        None,
        "hosting",
        "open-cluster-management-agent",
        18451,
    )?);
    procs.0.push(start_klusterlet(
        hub,
        hosting,
        Some(managed),
        "c1",
        HOSTING_NS,
        18452,
    )?);
    accept(hub, "hosting", "klusterlet-hosting")?;
    accept(hub, "c1", "klusterlet-c1")?;
    // The klusterlet's namespace for every add-on on the managed cluster,
    // with another add-on's object in it: both must outlive ours.
    managed.ensure_namespace(MANAGED_NS)?;
    apply(
        managed,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "another-addon", "namespace": MANAGED_NS},
            "data": {"owner": "another add-on"}}),
    )?;
    start_echo(managed)?;
    // What a hosted klusterlet's installer leaves on the hosting cluster:
    // the managed cluster's admin kubeconfig.
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

    println!("== 1. enabling the add-on for c1, hosted by the hosting cluster");
    apply(hub, &deployment_config(&[]))?;
    apply(
        hub,
        &json!({"apiVersion": "addon.open-cluster-management.io/v1alpha1",
            "kind": "ManagedClusterAddOn",
            "metadata": {"name": ADDON, "namespace": "c1", "annotations": {
                "addon.open-cluster-management.io/hosting-cluster-name": "hosting"}},
            "spec": {"configs": [{"group": "addon.open-cluster-management.io",
                "resource": "addondeploymentconfigs", "namespace": "c1", "name": ADDON}]}}),
    )?;
    wait_until_sync("the works for both clusters", DEADLINE, || {
        hub.kubectl_ok(&["get", "manifestwork", "-n", "hosting", "-o", "name"])
            .is_ok_and(|o| o.contains("addon-cluster-relay-deploy-hosting-c1-0"))
            && hub
                .kubectl_ok(&["get", "manifestwork", "-n", "c1", "-o", "name"])
                .is_ok_and(|o| o.contains("addon-cluster-relay-deploy-0"))
    })
    .with_context(|| manager_log(hub))?;
    hosting.deployments_available(HOSTING_NS, DEADLINE)?;
    managed.deployments_available(MANAGED_NS, DEADLINE)?;
    wait_until_sync("the managed kubeconfig Secret", DEADLINE, || {
        hosting
            .kubectl_ok(&["get", "secret", TARGET, "-n", HOSTING_NS])
            .is_ok()
    })?;
    wait_until_sync(
        "ManagedKubeconfigReady and Available on the hub",
        DEADLINE,
        || {
            addon(hub).is_ok_and(|a| {
                condition_true(&a, "ManagedKubeconfigReady") && condition_true(&a, "Available")
            })
        },
    )
    .with_context(|| format!("{:#}", addon(hub).unwrap_or_default()))?;
    println!(
        "   works applied by OCM's work agents, pods Available, ManagedKubeconfigReady, Available"
    );

    println!("== 2. kubectl through the apiserver relay, echo through the service relay");
    let (relay, out) = kubectl_to_managed(hosting, managed)?;
    managed.deployments_available("apps", DEADLINE)?;
    let entry = hosting.service_addr(HOSTING_NS, "cluster-relay-service-relay-entry")?;
    echo_through_entry(hosting, entry)?;
    println!(
        "   kubectl --server https://{relay} get namespace {MANAGED_NS}: {}; the echo pod on c1 answered through http://{entry}, with the caller's own Authorization",
        out.trim()
    );
    let (_, first_hash) = provisioned(hosting)?;
    let (replaced, requests) = rotations(hosting, relay, entry, first_hash)?;
    println!(
        "   the token was replaced {replaced} times; {requests} requests through the relays meanwhile, none failed"
    );

    println!("== 3. an AddOnDeploymentConfig change rolls out");
    hosting.kubectl_ok(&["label", "node", "--all", "cluster-relay=yes", "--overwrite"])?;
    apply(
        hub,
        &deployment_config(&[("logLevel", "debug")])
            .as_object()
            .cloned()
            .map(|mut c| {
                c["spec"]["nodePlacement"] = json!({"nodeSelector": {"cluster-relay": "yes"}});
                c["spec"]["registries"] = json!([{"source": "localhost/cluster-relay",
                "mirror": "localhost/cluster-relay-mirror"}]);
                Value::Object(c)
            })
            .context("an object")?,
    )?;
    wait_until_sync("the configuration to roll out", DEADLINE, || {
        get_json(
            hosting,
            &["deployment", "cluster-relay-provisioner", "-n", HOSTING_NS],
        )
        .is_ok_and(|d| {
            let pod = &d["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            pod["nodeSelector"]["cluster-relay"] == "yes"
                && container["image"] == MIRROR_IMAGE
                && container["args"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "--log-level=debug"))
        })
    })?;
    hosting.deployments_available(HOSTING_NS, DEADLINE)?;

    println!("== 4. the provisioner keeps its Lease across work-agent resyncs");
    let held = wait_for_sync(
        "a current provisioner pod to hold the Lease",
        DEADLINE,
        || leader(hosting),
    )?;
    let before = reapplies();
    let watched = Instant::now();
    wait_until_sync(
        &format!("three re-applies of {HOSTING_WORK} (resync every {RESYNC})"),
        DEADLINE,
        || reapplies() >= before + 3,
    )
    .with_context(|| tail("klusterlet-hosting"))?;
    let now = lease(hosting)?;
    for field in ["holderIdentity", "acquireTime", "leaseTransitions"] {
        anyhow::ensure!(
            now["spec"][field] == held["spec"][field],
            "the Lease's {field} changed across the resyncs: {} -> {}\nReplicaSets:\n{}\nwhat the work agent changed:\n{}",
            held["spec"][field],
            now["spec"][field],
            hosting
                .kubectl_ok(&["get", "replicasets", "-n", HOSTING_NS, "-o", "wide"])
                .unwrap_or_default(),
            updates_logged()
        );
    }
    anyhow::ensure!(
        now["spec"]["renewTime"] != held["spec"]["renewTime"],
        "the leader stopped renewing: {now:#}"
    );
    println!(
        "   {} re-applies of the hosting work in {:.0} s; the Lease kept its holder, acquireTime and {} transitions, and was renewed",
        reapplies() - before,
        watched.elapsed().as_secs_f64(),
        now["spec"]["leaseTransitions"]
    );

    println!("== 5. deleting the add-on: the pre-delete Job, then nothing of ours");
    hub.kubectl_ok(&[
        "delete",
        "managedclusteraddon",
        ADDON,
        "-n",
        "c1",
        "--wait=false",
    ])?;
    wait_until_sync("the ManagedClusterAddOn to go", DEADLINE, || {
        !hub.kubectl(&["get", "managedclusteraddon", ADDON, "-n", "c1"])
            .status
            .success()
    })
    .with_context(|| {
        format!(
            "{:#}\n{}",
            addon(hub).unwrap_or_default(),
            hosting
                .kubectl_ok(&["get", "jobs,pods", "-n", HOSTING_NS])
                .unwrap_or_default()
        )
    })?;
    nothing_left(hosting, managed)?;
    let other = get_json(managed, &["configmap", "another-addon", "-n", MANAGED_NS])?;
    anyhow::ensure!(other["data"]["owner"] == "another add-on");
    println!(
        "   the Job ran, nothing of ours is left; {MANAGED_NS} and another add-on's object remain"
    );
    drop(procs);
    Ok(())
}

/// How many times the hosting klusterlet's work agent has reconciled the
/// hosting work, each time applying every object of it: its log line at
/// the end of every successful reconcile.
fn reapplies() -> usize {
    std::fs::read_to_string(log_path("klusterlet-hosting"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"Requeue manifestwork\"") && l.contains(HOSTING_WORK))
        .count()
}

/// The hosting work agent's log lines for objects it changed.
fn updates_logged() -> String {
    std::fs::read_to_string(log_path("klusterlet-hosting"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"Updated resource\"") || l.contains("\"Created resource"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn lease(hosting: &Cluster) -> anyhow::Result<Value> {
    get_json(hosting, &["lease", LEASE, "-n", HOSTING_NS])
}

/// The provisioner's Lease, once it is held by a provisioner pod that is
/// not going away and no old pod is left (after step 3's rollout).
fn leader(hosting: &Cluster) -> anyhow::Result<Value> {
    let pods = get_json(
        hosting,
        &[
            "pods",
            "-n",
            HOSTING_NS,
            "-l",
            "app.kubernetes.io/component=provisioner",
        ],
    )?;
    let pods = pods["items"].as_array().context("items")?;
    if pods
        .iter()
        .any(|p| !p["metadata"]["deletionTimestamp"].is_null())
    {
        bail!("an old provisioner pod is still terminating");
    }
    // Every replica is of the newest ReplicaSet: no old pod could still
    // hold the Lease and hand it over later.
    hosting
        .kubectl_ok(&[
            "rollout",
            "status",
            "-n",
            HOSTING_NS,
            "deployment/cluster-relay-provisioner",
            "--timeout=5s",
        ])
        .context("the provisioner's rollout")?;
    let lease = lease(hosting)?;
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    let current = pods.iter().filter_map(|p| p["metadata"]["name"].as_str());
    if !current
        .clone()
        .any(|name| holder.starts_with(&format!("{name}_")))
    {
        bail!(
            "held by {holder:?}, not by one of {:?}",
            current.collect::<Vec<_>>()
        );
    }
    Ok(lease)
}

/// The AddOnDeploymentConfig `c1/cluster-relay` with `variables` besides
/// the ones every run needs.
fn deployment_config(variables: &[(&str, &str)]) -> Value {
    // The shortest token the apiserver issues, replaced 10 s after issue
    // (step 2 sees it rotate); no DNS on the test clusters: the exit relay
    // resolves Services through the API. Nested values go in the
    // customized variable "values", a JSON object.
    let mut vars = vec![json!({"name": "values",
        "value": r#"{"provisioner": {"tokenExpiration": "10m", "refreshBefore": "9m50s"}, "serviceRelay": {"exit": {"resolution": "endpoints"}}}"#})];
    vars.extend(
        variables
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v})),
    );
    json!({"apiVersion": "addon.open-cluster-management.io/v1alpha1",
        "kind": "AddOnDeploymentConfig",
        "metadata": {"name": ADDON, "namespace": "c1"},
        "spec": {"customizedVariables": vars}})
}

/// Nothing of ours on either cluster: no object in the hosting namespace but
/// what the klusterlet keeps there, nothing of ours in the managed
/// namespace, no cluster-wide RBAC of ours.
fn nothing_left(hosting: &Cluster, managed: &Cluster) -> anyhow::Result<()> {
    let kinds = "deployments,jobs,services,serviceaccounts,roles,rolebindings,secrets,leases";
    wait_for_sync("nothing of ours to be left", DEADLINE, || {
        let mut left = Vec::new();
        for (cluster, ns) in [(hosting, HOSTING_NS), (managed, MANAGED_NS)] {
            let out = cluster.kubectl_ok(&["get", kinds, "-n", ns, "-o", "name"])?;
            left.extend(
                out.lines()
                    .filter(|l| l.contains("cluster-relay") || l.ends_with("/c1"))
                    .map(|l| format!("{}: {l}", cluster.name())),
            );
            let out =
                cluster.kubectl_ok(&["get", "clusterroles,clusterrolebindings", "-o", "name"])?;
            left.extend(
                out.lines()
                    .filter(|l| l.contains("cluster-relay"))
                    .map(|l| format!("{}: {l}", cluster.name())),
            );
        }
        if left.is_empty() {
            Ok(())
        } else {
            bail!("left: {left:?}")
        }
    })
}
