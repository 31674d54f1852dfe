//! The e2e of the hosted topology (DESIGN.md) on real clusters, driven by
//! the chart itself. Two clusters of the current Kubernetes, each with a
//! real node (`hack/cluster.sh`: controller-manager, scheduler, containerd,
//! kubelet, kube-proxy), run the agent's image (`hack/build-image.sh`). The
//! chart is rendered with the values the add-on framework passes in hosted
//! mode (`ci/hosted-values.yaml` + `e2e/local/values.yaml`); hosting-located
//! manifests are applied to the hosting cluster and managed-located ones to
//! the managed cluster, whose namespaces enforce the restricted Pod Security
//! Standard. Everything then runs as real pods: probes, securityContext,
//! projected ServiceAccount tokens, resources and termination are the
//! kubelet's. Clients stand where a hosting-side client would: in the
//! hosting cluster's network, reaching Services by their ClusterIPs.
//!
//! 1. kubectl against the managed cluster through the apiserver relay;
//! 2. the echo Service (a real pod) through entry → managed apiserver
//!    `services/proxy` → exit pod;
//! 3. cached reads through the read cache;
//! 4. token rotations with no failed request;
//! 5. the footprint: RSS of every hosting-side pod, idle and after a steady
//!    load through each relay, and the time from install to all Ready;
//! 6. the add-on deleted: the cleanup Job as a real Job, then the manifests;
//!    the namespace controller removes the managed namespace, and nothing of
//!    ours is left on either cluster.
//!
//! A flag the chart passes that the binary does not accept fails step 0,
//! before anything runs (and `tests/chart.rs` shows the check catches one).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use support::{
    Cluster,
    chart::{self, Rendered, args_of, chart_file, check_flags},
    hosted::{
        ECHO, HOSTING_NS, MANAGED_NS, TARGET, echo_through_entry, get_through_entry, http_in,
        image, kubectl_to_managed, provisioned, restricted_namespace, rotations, start_echo,
    },
    repo_path, shared_cluster, wait_for_sync, wait_until_sync,
};

const DEADLINE: Duration = Duration::from_secs(120);
const ADMIN_PORT: u16 = 9090;

#[test]
fn the_hosted_topology_on_real_clusters() {
    if let Err(err) = end_to_end() {
        panic!("{err:#}");
    }
}

fn end_to_end() -> anyhow::Result<()> {
    let (hosting, managed) = (shared_cluster("hosting", 0), shared_cluster("managed", 1));
    let (agent, echo) = (image("agent")?, image("echo")?);
    for cluster in [hosting, managed] {
        cluster.import(&agent)?;
        cluster.import(&echo)?;
    }
    println!("== two clusters, each with a real node");
    for cluster in [hosting, managed] {
        let version = cluster.kubectl_ok(&["version", "-o", "json"])?;
        let version: Value = serde_json::from_str(&version)?;
        let nodes = cluster.kubectl_ok(&["get", "nodes", "-o", "wide", "--no-headers"])?;
        println!(
            "   {}: Kubernetes {} at {}; node: {}",
            cluster.name(),
            version["serverVersion"]["gitVersion"]
                .as_str()
                .unwrap_or("?"),
            cluster.server(),
            nodes
                .split_whitespace()
                .take(6)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    let objects = chart::render(
        &[
            chart_file("ci/hosted-values.yaml"),
            repo_path("e2e/local/values.yaml"),
        ],
        &Value::Null,
        MANAGED_NS,
    )?;
    println!("== 0. every container's flags are ones the binary accepts");
    for object in objects
        .iter()
        .filter(|o| matches!(o.kind(), "Deployment" | "Job"))
    {
        for container in object.containers() {
            check_flags(&args_of(container)).with_context(|| object.id())?;
        }
    }

    println!("== the framework's part: the source Secret exists, the manifests are applied");
    for (cluster, ns) in [(hosting, HOSTING_NS), (managed, MANAGED_NS)] {
        restricted_namespace(cluster, ns)?;
    }
    // The managed cluster's admin kubeconfig: its server is the managed
    // node's address, which hosting-side pods reach.
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
    let installed = Instant::now();
    chart::apply(managed, &placed("managed"))?;
    chart::apply(hosting, &placed("hosting"))?;
    start_echo(managed)?;
    for (cluster, ns) in [
        (hosting, HOSTING_NS),
        (managed, MANAGED_NS),
        (managed, "apps"),
    ] {
        cluster.deployments_available(ns, DEADLINE)?;
    }
    let ready_after = installed.elapsed();
    println!(
        "   every Deployment Available {:.1} s after the manifests were applied",
        ready_after.as_secs_f64()
    );
    for cluster in [hosting, managed] {
        println!("   kubectl get pods -o wide -A on {}:", cluster.name());
        let pods = cluster.kubectl_ok(&["get", "pods", "-A", "-o", "wide"])?;
        for line in pods.lines() {
            println!("     {line}");
        }
    }

    println!("== the provisioner writes the managed kubeconfig");
    let (_, first_hash) = wait_for_sync("the managed kubeconfig Secret", DEADLINE, || {
        provisioned(hosting)
    })?;
    println!(
        "   the given admin kubeconfig became {HOSTING_NS}/{TARGET}, whose only credential is a short-lived ServiceAccount token ({})",
        &first_hash[..12.min(first_hash.len())]
    );

    println!("== 1. kubectl through the apiserver relay");
    let (relay, out) = kubectl_to_managed(hosting, managed)?;
    println!(
        "   from the hosting cluster's network, kubectl --server https://{relay} get namespace {MANAGED_NS}: {} (TLS end to end with the managed apiserver)",
        out.trim()
    );

    println!("== 2. the echo Service of the managed cluster through the service relay");
    let entry = hosting.service_addr(HOSTING_NS, "cluster-relay-service-relay-entry")?;
    echo_through_entry(hosting, entry)?;
    println!(
        "   GET http://{entry}{ECHO}/hello: 200 from the echo pod on the managed cluster, with the caller's own Authorization"
    );

    println!("== 3. cached reads through the read cache");
    let cache = hosting.service_addr(HOSTING_NS, "cluster-relay-read-cache")?;
    let read = cached_reads(hosting, managed, cache)?;

    println!("== 4. the token rotates and no request fails");
    let (replaced, requests) = rotations(hosting, relay, entry, first_hash)?;
    println!(
        "   the token was replaced {replaced} times; {requests} requests through the relays meanwhile, none failed"
    );

    println!("== 5. the footprint of one managed cluster on the hosting cluster");
    footprint(hosting, relay, entry, cache, &read)?;

    println!("== 6. the add-on is deleted: the cleanup Job, then the manifests");
    uninstall(hosting, managed, &objects)?;
    Ok(())
}

/// Step 3: a reader on the managed cluster reads a ConfigMap twice through
/// the cache; the second read is a hit; a caller without the right is
/// refused. Returns the reader's request, for the load of step 5.
fn cached_reads(hosting: &Cluster, managed: &Cluster, cache: SocketAddr) -> anyhow::Result<String> {
    managed.kubectl_ok(&["create", "namespace", "reads"])?;
    for args in [
        &[
            "create",
            "configmap",
            "cached",
            "-n",
            "reads",
            "--from-literal=k=v",
        ][..],
        &["create", "serviceaccount", "reader", "-n", "reads"],
        &[
            "create",
            "role",
            "reader",
            "-n",
            "reads",
            "--verb=get,list",
            "--resource=configmaps",
        ],
        &[
            "create",
            "rolebinding",
            "reader",
            "-n",
            "reads",
            "--role=reader",
            "--serviceaccount=reads:reader",
        ],
    ] {
        managed.kubectl_ok(args)?;
    }
    let token = managed.kubectl_ok(&["create", "token", "reader", "-n", "reads"])?;
    let request = format!(
        "GET /api/v1/namespaces/reads/configmaps/cached HTTP/1.1\r\nHost: cache\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    );
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let (status, body) = http_in(hosting, cache, &request)?;
        anyhow::ensure!(status == 200, "{status}: {body}");
        bodies.push(body);
    }
    anyhow::ensure!(bodies[0] == bodies[1], "the cached read differs");
    let hits = metric_sum(
        hosting,
        "read-cache",
        "cluster_relay_read_cache_requests_total{",
        r#"cache="fresh_hit""#,
    )?;
    anyhow::ensure!(hits >= 1.0, "no cache hit counted");
    let (status, _) = http_in(
        hosting,
        cache,
        &request.replace(token.trim(), "not-a-token"),
    )?;
    anyhow::ensure!(
        status == 401 || status == 403,
        "an unauthorized read got {status}"
    );
    println!(
        "   GET configmaps/cached via {cache} twice: 200, the second from the cache; a bad token: {status}"
    );
    Ok(request)
}

/// The pods of the chart's `component` on the hosting cluster: (name, IP, uid).
fn pods_of(hosting: &Cluster, component: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let out = hosting.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        HOSTING_NS,
        "-l",
        &format!("app.kubernetes.io/component={component}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.metadata.uid}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(str::to_owned);
            Some((f.next()?, f.next()?, f.next()?))
        })
        .collect())
}

/// The sum of the samples of `metric` (a name and `{`) whose labels contain
/// `label`, over the admin ports of `component`'s pods.
fn metric_sum(
    hosting: &Cluster,
    component: &str,
    metric: &str,
    label: &str,
) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for (_, ip, _) in pods_of(hosting, component)? {
        let addr = SocketAddr::from((ip.parse::<Ipv4Addr>()?, ADMIN_PORT));
        let (_, body) = http_in(hosting, addr, "GET /metrics HTTP/1.0\r\n\r\n")?;
        sum += body
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

/// Memory of the agent process of the pod with `uid`, read from its cgroup
/// on the node, in KiB.
struct Memory {
    /// Resident pages, the binary's shared with other pods of the image.
    rss: u64,
    /// Peak resident set (VmHWM).
    peak: u64,
    /// Proportional share: pages shared with N processes count 1/N.
    pss: u64,
    /// Resident pages of its own (heap, stacks), which every further pod adds.
    anon: u64,
}

fn agent_memory(hosting: &Cluster, uid: &str) -> anyhow::Result<Memory> {
    let dir = hosting
        .pod_cgroup(uid)
        .with_context(|| format!("no cgroup for pod {uid}"))?;
    let mut pids = Vec::new();
    collect_procs(&dir, &mut pids);
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if !status.lines().any(|l| l == "Name:\tagent") {
            continue; // the pause process
        }
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
                .with_context(|| format!("{name} of process {pid}"))
        };
        return Ok(Memory {
            rss: field(&status, "VmRSS:")?,
            peak: field(&status, "VmHWM:")?,
            pss: field(&rollup, "Pss:")?,
            anon: field(&status, "RssAnon:")?,
        });
    }
    bail!("no agent process in {}", dir.display())
}

fn collect_procs(dir: &std::path::Path, pids: &mut Vec<String>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().map(str::to_owned));
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            collect_procs(&entry.path(), pids);
        }
    }
}

/// Step 5: RSS of every hosting-side pod idle, then peak RSS after a steady,
/// bounded load through each relay (the apiserver relay, the entry, the
/// read cache), from four clients at once.
fn footprint(
    hosting: &Cluster,
    relay: SocketAddr,
    entry: SocketAddr,
    cache: SocketAddr,
    read: &str,
) -> anyhow::Result<()> {
    let components = [
        "provisioner",
        "apiserver-relay",
        "service-relay-entry",
        "read-cache",
    ];
    let mut pods = Vec::new();
    for component in components {
        for (name, _, uid) in pods_of(hosting, component)? {
            pods.push((component, name, uid));
        }
    }
    let idle: Vec<Memory> = pods
        .iter()
        .map(|(_, _, uid)| agent_memory(hosting, uid))
        .collect::<anyhow::Result<_>>()?;

    const REQUESTS: usize = 250;
    let started = Instant::now();
    let failures = std::thread::scope(|s| {
        let mut workers = Vec::new();
        for client in 0..4 {
            workers.push(s.spawn(move || -> usize {
                let mut failed = 0;
                for i in 0..REQUESTS {
                    let result = match client {
                        0 | 1 => get_through_entry(hosting, entry, &format!("{ECHO}/load/{i}")),
                        2 => http_in(hosting, cache, read),
                        // TLS through the apiserver relay: the apiserver's
                        // answer to an anonymous /version.
                        _ => tls_version_through(hosting, relay),
                    };
                    if !matches!(result, Ok((200, _))) {
                        failed += 1;
                    }
                }
                failed
            }));
        }
        workers
            .into_iter()
            .map(|w| w.join().expect("a load worker does not panic"))
            .sum::<usize>()
    });
    let elapsed = started.elapsed();
    anyhow::ensure!(failures == 0, "{failures} requests of the load failed");
    println!(
        "   {} requests in {:.1} s (4 clients: 2 via the entry, 1 via the read cache, 1 via the apiserver relay), none failed",
        4 * REQUESTS,
        elapsed.as_secs_f64()
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "   {:<20} {:>9} {:>9} {:>9} {:>15}",
        "idle, hosting side", "RSS", "PSS", "own", "peak RSS (load)"
    );
    let (mut rss, mut pss, mut anon) = (0, 0, 0);
    for ((component, _, uid), idle) in pods.iter().zip(&idle) {
        let peak = agent_memory(hosting, uid)?.peak;
        println!(
            "   {component:<20} {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB {:>11.1} MiB",
            mib(idle.rss),
            mib(idle.pss),
            mib(idle.anon),
            mib(peak)
        );
        rss += idle.rss;
        pss += idle.pss;
        anon += idle.anon;
    }
    println!(
        "   {:<20} {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB   (target: RSS under 32 MiB)",
        "all of them",
        mib(rss),
        mib(pss),
        mib(anon)
    );
    println!(
        "   (RSS counts the image's binary in every pod; the node holds it once: PSS is the real total, 'own' what one more managed cluster adds)"
    );
    Ok(())
}

/// A TLS handshake through the apiserver relay and GET /version, by curl in
/// the hosting cluster's network (the relay is TCP: TLS is the apiserver's).
fn tls_version_through(hosting: &Cluster, relay: SocketAddr) -> anyhow::Result<(u16, String)> {
    let out = hosting
        .in_node("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("https://{relay}/version"))
        .output()?;
    let code = String::from_utf8_lossy(&out.stdout).trim().parse::<u16>()?;
    Ok((code, String::new()))
}

/// Step 6: the framework applies the pre-delete Job while everything else
/// still runs, waits for it to complete, then removes the rest.
fn uninstall(hosting: &Cluster, managed: &Cluster, objects: &[Rendered]) -> anyhow::Result<()> {
    let job = objects
        .iter()
        .find(|o| o.kind() == "Job")
        .context("no cleanup Job rendered")?;
    chart::apply(hosting, &[job])?;
    wait_until_sync("the cleanup Job to complete", DEADLINE, || {
        hosting
            .kubectl_ok(&[
                "wait",
                "-n",
                HOSTING_NS,
                &format!("job/{}", job.name()),
                "--for=condition=Complete",
                "--timeout=5s",
            ])
            .is_ok()
    })
    .with_context(|| {
        hosting
            .kubectl_ok(&["logs", "-n", HOSTING_NS, &format!("job/{}", job.name())])
            .unwrap_or_default()
    })?;
    // The provisioner still runs, but has stood down: it would otherwise
    // write everything again before its Deployment goes.
    let leads = metric_sum(
        hosting,
        "provisioner",
        "cluster_relay_leader_election_is_leader",
        "",
    )?;
    anyhow::ensure!(
        leads == 0.0,
        "the provisioner still leads after the cleanup"
    );
    anyhow::ensure!(
        provisioned(hosting).is_err(),
        "the managed kubeconfig Secret was written again"
    );
    let (hosting_objects, managed_objects): (Vec<&Rendered>, Vec<&Rendered>) =
        objects.iter().partition(|o| o.location == "hosting");
    chart::delete(hosting, &hosting_objects)?;
    chart::delete(managed, &managed_objects)?;
    nothing_left(hosting, managed)?;
    println!(
        "   the cleanup Job ran to Complete, stopped the provisioner's writes and removed what it made; with the manifests gone, the namespace controller removed {MANAGED_NS} and nothing of ours is left on either cluster"
    );
    Ok(())
}

/// Nothing the chart or the provisioner made is left: no pod or object in
/// the hosting namespace but the given Secret, no managed namespace, no
/// cluster-wide RBAC of ours.
fn nothing_left(hosting: &Cluster, managed: &Cluster) -> anyhow::Result<()> {
    let kinds = "pods,deployments,replicasets,jobs,services,serviceaccounts,roles,rolebindings,secrets,leases,configmaps";
    wait_for_sync("nothing of ours to be left", DEADLINE, || {
        let out = hosting.kubectl_ok(&["get", kinds, "-n", HOSTING_NS, "-o", "name"])?;
        let mut left: Vec<String> = out
            .lines()
            .filter(|l| {
                !l.ends_with("/default")
                    && !l.ends_with("/external-managed-kubeconfig")
                    && !l.ends_with("/kube-root-ca.crt")
            })
            .map(str::to_owned)
            .collect();
        let ns = managed.kubectl(&["get", "namespace", MANAGED_NS, "-o", "name"]);
        if ns.status.success() {
            left.push(format!("namespace/{MANAGED_NS} (still terminating)"));
        }
        for cluster in [hosting, managed] {
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
