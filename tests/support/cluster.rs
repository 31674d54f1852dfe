//! Whole clusters with a real node (`hack/cluster.sh`): the current
//! Kubernetes' control plane with controller-manager and scheduler, and a
//! node of containerd, kubelet and kube-proxy in the network namespace
//! `crn-NAME`. Pods are real: the kubelet runs them from images imported
//! into the node's containerd.
//!
//! The host reaches each apiserver at its node's address; pods and Service
//! IPs are reached from inside the node, as a client in that cluster's
//! network would: [`Cluster::connect`] opens a TCP connection from the
//! node's namespace, [`Cluster::in_node`] runs a command there.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::ops::Deref;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::controlplane::ControlPlane;
use super::procs::{self, repo_path};
use super::wait::wait_until_sync;

/// One cluster with one node; dropping it (or the test binary's exit, or
/// the next run's sweep if this one is killed) stops everything of it.
pub struct Cluster {
    plane: ControlPlane,
    netns: String,
    node_ip: String,
}

impl Deref for Cluster {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        &self.plane
    }
}

/// The cluster `name` shared by all tests of this test binary, with node
/// addresses from slot `index` (0-2; see `hack/cluster.sh`). Panics if it
/// cannot be started.
pub fn shared_cluster(name: &str, index: u8) -> &'static Cluster {
    static SHARED: OnceLock<Mutex<Vec<(String, &'static Cluster)>>> = OnceLock::new();
    let mut all = SHARED
        .get_or_init(|| {
            hold_clusters_lock();
            Default::default()
        })
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some((_, cluster)) = all.iter().find(|(n, _)| n == name) {
        return cluster;
    }
    let cluster = Cluster::start(name, index)
        .unwrap_or_else(|err| panic!("cannot start the cluster {name}: {err:#}"));
    // Leaked on purpose: procs' exit hook takes it down.
    let cluster: &'static Cluster = Box::leak(Box::new(cluster));
    all.push((name.to_owned(), cluster));
    cluster
}

/// The cluster names, netns and addresses are machine-wide, so two test
/// binaries (or two checkouts) using clusters at once would take each
/// other's down. The first one to want a cluster holds this lock until it
/// exits; the others wait for it here.
fn hold_clusters_lock() {
    let path = Path::new("/run/cluster-relay-clusters.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "waiting for {}: another test run has the clusters",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            panic!(
                "cannot lock {}: {}",
                path.display(),
                io::Error::last_os_error()
            );
        }
    }
    // Held until the process exits, which releases it even when killed.
    std::mem::forget(file);
}

impl Cluster {
    /// Makes and starts cluster `name` and waits until its Node is Ready.
    pub fn start(name: &str, index: u8) -> anyhow::Result<Cluster> {
        let dir = procs::run_dir().join("clusters").join(name);
        procs::track_cluster(&dir)?;
        let out = Command::new(repo_path("hack/cluster.sh"))
            .arg("up")
            .arg(&dir)
            .args([name, &index.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("running hack/cluster.sh up")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            procs::down_cluster(&dir);
            bail!("hack/cluster.sh up {name} failed: {err}");
        }
        let env = String::from_utf8_lossy(&out.stdout).into_owned();
        let var = |key: &str| -> anyhow::Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .with_context(|| format!("{key} is missing from {name}'s env"))
        };
        let node_ip = var("NODE_IP")?;
        Ok(Cluster {
            plane: ControlPlane::attached(name, dir, var("SERVER")?, 6443),
            netns: var("NETNS")?,
            node_ip,
        })
    }

    /// The node's address (also the apiserver's, on port 6443).
    pub fn node_ip(&self) -> &str {
        &self.node_ip
    }

    /// Imports an OCI archive (from `hack/build-image.sh`) into the node.
    pub fn import(&self, archive: &Path) -> anyhow::Result<()> {
        let out = Command::new(repo_path("hack/cluster.sh"))
            .arg("import")
            .arg(self.dir())
            .arg(archive)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "importing {}: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `program ARGS` in the node's network namespace (and nothing else of
    /// the node's: the host's files and mounts).
    pub fn in_node(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// A TCP connection to `addr` (a pod or Service IP) made from the node.
    pub fn connect(&self, addr: SocketAddr) -> anyhow::Result<TcpStream> {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || -> io::Result<TcpStream> {
            let ns = File::open(&path)?;
            // SAFETY: setns on a valid namespace fd changes only this
            // short-lived thread's network namespace; the socket it makes
            // stays in that namespace wherever it is used from.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .join()
        .expect("the connect thread does not panic")
        .with_context(|| format!("connecting to {addr} from the node {}", self.netns))
    }

    /// Waits up to `deadline` until `ns` has Deployments and every one is
    /// Available; the pods, events and the kubelet's last lines on failure.
    pub fn deployments_available(&self, ns: &str, deadline: Duration) -> anyhow::Result<()> {
        wait_until_sync(
            &format!("the Deployments in {}/{ns} to be Available", self.name()),
            deadline,
            || {
                self.kubectl_ok(&["get", "deployments", "-n", ns, "-o", "name"])
                    .is_ok_and(|out| !out.trim().is_empty())
                    && self
                        .kubectl_ok(&[
                            "wait",
                            "-n",
                            ns,
                            "deployments",
                            "--all",
                            "--for=condition=Available",
                            "--timeout=5s",
                        ])
                        .is_ok()
            },
        )
        .with_context(|| {
            let pods = self
                .kubectl_ok(&["get", "pods", "-n", ns, "-o", "wide"])
                .unwrap_or_default();
            let events = self
                .kubectl_ok(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"])
                .unwrap_or_default();
            let kubelet = self.log("kubelet");
            let tail: Vec<&str> = kubelet.lines().rev().take(20).collect();
            format!(
                "pods:\n{pods}\nevents:\n{events}\nkubelet:\n{}",
                tail.join("\n")
            )
        })
    }

    /// The ClusterIP and first port of Service `ns/name`.
    pub fn service_addr(&self, ns: &str, name: &str) -> anyhow::Result<SocketAddr> {
        let out = self.kubectl_ok(&[
            "get",
            "service",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.ports[0].port}",
        ])?;
        let (ip, port) = out.split_once(' ').context("clusterIP and port")?;
        Ok(SocketAddr::from((
            ip.parse::<Ipv4Addr>().context("a ClusterIP")?,
            port.trim().parse::<u16>().context("a port")?,
        )))
    }

    /// The log of one of the cluster's processes (`kubelet`, `apiserver`,
    /// `containerd`, ...), for failure messages.
    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir().join(format!("{what}.log"))).unwrap_or_default()
    }

    /// The directory of the pod with `uid` in the node's memory cgroup.
    pub fn pod_cgroup(&self, uid: &str) -> Option<PathBuf> {
        let root = Path::new("/sys/fs/cgroup/memory").join(&self.netns);
        let name = format!("pod{uid}");
        find_dir(&root, &name, 3)
    }
}

fn find_dir(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name().to_string_lossy() == name {
            return Some(path);
        }
        if depth > 0
            && let Some(found) = find_dir(&path, name, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

impl Drop for Cluster {
    fn drop(&mut self) {
        procs::down_cluster(self.dir());
    }
}
