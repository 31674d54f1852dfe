//! "Pods" without a kubelet: a process in its own network namespace
//! (`hack/netns-pod.sh`), registered on a real apiserver as a Running Pod
//! behind a selector-less Service whose Endpoints point at the Pod, so the
//! apiserver's `services/proxy` reaches the process by pod IP. The Kubernetes
//! objects (built in `pod_objects.rs`) are registered here, and only here,
//! with kubectl.
//!
//! All pods sit on one switched network with the host (see the script), so
//! a process in one pod reaches another pod by its pod IP, and the host
//! reaches every pod, without any IP forwarding. The reverse direction, a
//! process in the pod reaching a host apiserver on 127.0.0.1, is
//! [`NetnsPod::forward_host_port`] (see `forward.rs`).

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::ControlPlane;
use super::controlplane::kubectl_command;
use super::forward::Forwarder;
use super::pod_objects;
use super::procs::{self, repo_path};
use super::wait::wait_until_sync;

/// Names `hack/netns-pod.sh` gives the pod network's parts.
const POD_NETWORK_NODE: &str = "crp-node";
const POD_NETWORK_HOST_IF: &str = "crpnode";

/// A pod on one control plane: network namespace, veth pair to the pod
/// network's bridge, Pod, Service and Endpoints named after it. Dropping it kills its processes and deletes all
/// of them.
pub struct NetnsPod {
    /// The plane's kubeconfig and kubectl cache, for cleaning up in Drop.
    kubeconfig: PathBuf,
    kubecache: PathBuf,
    namespace: String,
    name: String,
    netns: String,
    pod_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    host_if: String,
    log: PathBuf,
    children: Mutex<Vec<Child>>,
    forwarders: Mutex<Vec<Forwarder>>,
}

impl NetnsPod {
    /// Makes the namespace and registers Pod `name` in `namespace` (created if
    /// missing), plus Service and Endpoints `name` with `ports` (each named
    /// `port-N`, port and target port N); without ports, only the Pod (a
    /// Service needs at least one port).
    pub fn create(
        plane: &ControlPlane,
        namespace: &str,
        name: &str,
        ports: &[u16],
    ) -> anyhow::Result<NetnsPod> {
        // In-process, creates run one at a time; the script's host check and
        // lock cover other processes.
        static CREATE: Mutex<()> = Mutex::new(());
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let netns = format!(
            "crt-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        procs::track_netns(&netns)?;
        let created = {
            let _one_at_a_time = CREATE.lock().unwrap_or_else(PoisonError::into_inner);
            Command::new(repo_path("hack/netns-pod.sh"))
                .args(["create", &netns])
                .stdin(Stdio::null())
                .output()
                .context("running hack/netns-pod.sh")?
        };
        if !created.status.success() {
            procs::delete_netns(&netns);
            bail!(
                "hack/netns-pod.sh create failed: {}",
                String::from_utf8_lossy(&created.stderr).trim()
            );
        }
        let out = String::from_utf8_lossy(&created.stdout);
        let field = |key: &str| -> anyhow::Result<&str> {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("netns-pod.sh printed no {key}"))
        };
        let ip = |key: &str| -> anyhow::Result<Ipv4Addr> {
            field(key)?
                .parse()
                .with_context(|| format!("netns-pod.sh printed a bad {key}"))
        };
        let pod = NetnsPod {
            kubeconfig: plane.kubeconfig_path(),
            kubecache: plane.dir().join("kubecache"),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            log: procs::run_dir()
                .join("netns")
                .join(&netns)
                .join("process.log"),
            netns,
            pod_ip: ip("POD_IP=")?,
            host_ip: ip("HOST_IP=")?,
            host_if: field("HOST_IF=")?.to_owned(),
            children: Mutex::new(Vec::new()),
            forwarders: Mutex::new(Vec::new()),
        };
        // From here on Drop undoes whatever was made.
        plane.ensure_namespace(namespace)?;
        pod.register(plane, ports)?;
        Ok(pod)
    }

    fn register(&self, plane: &ControlPlane, ports: &[u16]) -> anyhow::Result<()> {
        let (ns, name) = (self.namespace.as_str(), self.name.as_str());
        let create = |object: Vec<u8>| plane.kubectl_with_stdin(&["create", "-f", "-"], &object);
        create(serde_json::to_vec(&pod_objects::pod(ns, name, ports))?)?;
        let status = pod_objects::running_status(self.pod_ip, self.host_ip);
        let patch = serde_json::json!({ "status": status }).to_string();
        plane.kubectl_ok(&[
            "-n",
            ns,
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])?;
        if ports.is_empty() {
            return Ok(());
        }
        create(serde_json::to_vec(&pod_objects::service(ns, name, ports))?)?;
        let endpoints = pod_objects::endpoints(ns, name, self.pod_ip, ports);
        create(serde_json::to_vec(&endpoints)?)?;
        let slice = pod_objects::endpoint_slice(ns, name, self.pod_ip, ports);
        match create(serde_json::to_vec(&slice)?) {
            // 1.20 serves discovery.k8s.io/v1beta1 only, and reads Endpoints.
            Err(err) if format!("{err:#}").contains("no matches for kind") => Ok(()),
            result => result.map(drop),
        }
    }

    /// The Pod's (and Service's, and Endpoints') name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The network namespace's name, for `ip netns exec`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The pod IP: a process in the pod listens here for the apiserver.
    pub fn pod_ip(&self) -> Ipv4Addr {
        self.pod_ip
    }

    /// The host's address on the pod network: every pod's default gateway,
    /// and the source address of connections from the host to pods.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The host's interface on the pod network (where `host_ip` sits).
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The interface index of this pod's port on the pod network's bridge
    /// (its veth's peer), to check that it goes with the pod.
    pub fn bridge_port(&self) -> anyhow::Result<u32> {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "-o", "link", "show", "type", "veth"])
            .output()?;
        // "2: crp0p@if7: <...": the peer's index follows "@if".
        let text = String::from_utf8_lossy(&out.stdout);
        let peer = text.split(['@', ':']).find_map(|w| w.strip_prefix("if"));
        peer.context("the pod has no veth")?
            .parse()
            .context("a bad peer index")
    }

    /// The apiserver path proxying to `port` of this pod's Service, plus `path`
    /// (which should start with '/').
    pub fn proxy_path(&self, port: u16, path: &str) -> String {
        format!(
            "/api/v1/namespaces/{}/services/http:{}:{port}/proxy{path}",
            self.namespace, self.name
        )
    }

    /// Runs `cmd` inside the pod (`ip netns exec`), with its program, args,
    /// env changes and working directory (not `env_clear`); stdout and stderr
    /// go to [`NetnsPod::log`]. Returns its pid.
    pub fn spawn(&self, cmd: Command) -> anyhow::Result<u32> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut wrapped = self.in_netns(&[], &cmd);
        wrapped.stdout(log.try_clone()?).stderr(log);
        // `ip netns exec` execs the program: the pid is the program's.
        let child = procs::spawn(wrapped)?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
        Ok(pid)
    }

    /// Runs `cmd` inside the pod to completion and returns its output: for
    /// one-shot clients (curl, `python3 -c`). After `timeout` it is killed
    /// (coreutils' `timeout`, so it also ends if the test process dies).
    pub fn run(&self, cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
        let limit = format!("{}", timeout.as_secs_f64());
        let mut wrapped = self.in_netns(&["timeout", "--kill-after=5", &limit], &cmd);
        wrapped
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?} in pod {}", self.name))
    }

    /// `cmd` (program, args, env changes, working directory; not
    /// `env_clear`) run by `ip netns exec` in this pod, after `prefix`.
    fn in_netns(&self, prefix: &[&str], cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.netns])
            .args(prefix)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// Output of the processes run with [`NetnsPod::spawn`] so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Makes the host's `127.0.0.1:port` reachable at `127.0.0.1:port` inside
    /// the pod, e.g. `plane.port()` so the admin kubeconfig works unchanged.
    pub fn forward_host_port(&self, port: u16) -> anyhow::Result<()> {
        let forwarder = Forwarder::start(&self.netns, port)?;
        self.forwarders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(forwarder);
        Ok(())
    }

    /// Waits until something in the pod accepts TCP connections on
    /// `pod_ip:port`, as the apiserver would connect.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::from((self.pod_ip, port));
        let what = format!("pod {} to listen on {addr}", self.name);
        wait_until_sync(&what, timeout, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        })
        .with_context(|| format!("pod log:\n{}", self.log()))
    }
}

impl Drop for NetnsPod {
    fn drop(&mut self) {
        for mut child in self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            procs::kill(&mut child);
        }
        // Their sockets would keep the namespace alive after its deletion.
        self.forwarders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        procs::delete_netns(&self.netns);
        let objects = [
            format!("pod/{}", self.name),
            format!("service/{}", self.name),
            format!("endpoints/{}", self.name),
            format!("endpointslices.discovery.k8s.io/{}", self.name),
        ];
        // No kubelet confirms a graceful deletion, so the Pod goes at once.
        let mut args = vec!["-n", &self.namespace, "delete"];
        args.extend(objects.iter().map(String::as_str));
        args.extend([
            "--ignore-not-found",
            "--wait=false",
            "--grace-period=0",
            "--force",
        ]);
        let out = kubectl_command(&self.kubeconfig, &self.kubecache, &args).output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "support: deleting pod {}/{}: {}",
                self.namespace,
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => eprintln!(
                "support: deleting pod {}/{}: {err}",
                self.namespace, self.name
            ),
        }
    }
}

/// The host's own network state, which pods must never change, as text to
/// compare before and after: host-wide IPv4 sysctls, the address and
/// forwarding setting of the default route's interface (eth0 here), and all
/// routes except the pod network's own (which comes and goes with pods).
pub fn host_network_state() -> anyhow::Result<String> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(args[0]).args(&args[1..]).output()?;
        anyhow::ensure!(out.status.success(), "{args:?}: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let default = run(&["ip", "-4", "route", "show", "default"])?;
    let words = default.split_whitespace();
    let uplink = words.skip_while(|w| *w != "dev").nth(1);
    let uplink = uplink.context("the host has no default route")?;
    let mut state = run(&["sysctl", "net.ipv4.ip_forward"])?;
    for key in ["all.forwarding", "default.forwarding", "all.rp_filter"] {
        state += &run(&["sysctl", &format!("net.ipv4.conf.{key}")])?;
    }
    state += &run(&["sysctl", &format!("net.ipv4.conf.{uplink}.forwarding")])?;
    // Brief: without address lifetimes, which count down.
    state += &run(&["ip", "-br", "addr", "show", "dev", uplink])?;
    // Only the host's own routes (uplink and loopback): the pod network's
    // come and go with the pods of tests running alongside, and while its
    // interface is being made it may show under a temporary kernel name.
    let routes = run(&["ip", "route", "show", "table", "all"])?;
    let own = [format!(" dev {uplink} "), " dev lo ".to_owned()];
    for route in routes
        .lines()
        .filter(|r| own.iter().any(|dev| format!("{r} ").contains(dev.as_str())))
    {
        state += route;
        state.push('\n');
    }
    Ok(state)
}

/// Indexes of the interfaces in the pod network's node namespace
/// (`crp-node` of `hack/netns-pod.sh`): its bridge and every pod's port on
/// it; empty once no pod is left.
pub fn pod_network_ports() -> Vec<u32> {
    let out = Command::new("ip")
        .args(["-n", POD_NETWORK_NODE, "-o", "link", "show"])
        .output();
    let out = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect()
}
