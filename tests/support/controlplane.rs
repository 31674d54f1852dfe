//! Real control planes for integration tests: one etcd plus one
//! kube-apiserver (the current release; 1.20.2 under `make test-oldest`) per
//! [`ControlPlane`], made by `hack/controlplane.sh` (the single source of
//! truth for ports, certificates and flags) and run as
//! children of the test process, so a test can SIGKILL the apiserver and
//! start it again on the same port with the same data.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::procs::{self, repo_path};
use super::wait::wait_until_sync;

/// About 4 s is usual; a loaded CI machine starting several planes at once
/// needs more.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One etcd and one kube-apiserver bound to 127.0.0.1, with an admin
/// kubeconfig. Dropping it kills both and removes its directory.
pub struct ControlPlane {
    name: String,
    dir: PathBuf,
    port: u16,
    server: String,
    etcd: Mutex<Option<Child>>,
    apiserver: Mutex<Option<Child>>,
}

/// The control plane called `name` shared by all tests of this test binary:
/// started by the first caller, killed and removed when the binary exits.
/// Panics if it cannot be started.
pub fn shared(name: &str) -> &'static ControlPlane {
    type Slot = Mutex<Option<&'static ControlPlane>>;
    static SHARED: OnceLock<Mutex<HashMap<String, &'static Slot>>> = OnceLock::new();
    let slot: &'static Slot = SHARED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(name.to_owned())
        .or_insert_with(|| Box::leak(Box::default()));
    // Held while starting, so concurrent first callers start it once; other
    // names start in parallel.
    let mut started = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(plane) = *started {
        return plane;
    }
    let plane = ControlPlane::start(name)
        .unwrap_or_else(|err| panic!("cannot start the shared control plane {name}: {err:#}"));
    // Leaked on purpose: it lives until exit, where procs' hook cleans up.
    let plane: &'static ControlPlane = Box::leak(Box::new(plane));
    *started = Some(plane);
    plane
}

impl ControlPlane {
    /// Prepares, starts and waits for a new control plane; `name` (lowercase
    /// letters, digits, '-') names its kubeconfig cluster and context.
    pub fn start(name: &str) -> anyhow::Result<ControlPlane> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("control plane name {name:?} must be lowercase letters, digits and '-'");
        }
        // Ports are free when `prepare` picks them but only taken when the
        // processes bind: a plane starting alongside may win one. Such a
        // start fails with the bind error in the log tail; try new ports.
        let mut attempt = 1;
        loop {
            match Self::start_once(name) {
                Err(err)
                    if attempt < 3 && format!("{err:#}").contains("address already in use") =>
                {
                    eprintln!("support: control plane {name}: port taken, retrying: {err:#}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(name: &str) -> anyhow::Result<ControlPlane> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = procs::run_dir().join(format!("{name}-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        script(&["prepare", path_str(&dir)?, name])?;
        let env = std::fs::read_to_string(dir.join("env")).context("reading the env file")?;
        let port = env
            .lines()
            .find_map(|l| l.strip_prefix("APISERVER_PORT="))
            .context("APISERVER_PORT is missing from the env file")?
            .parse()
            .context("APISERVER_PORT is not a port")?;
        let plane = ControlPlane {
            name: name.to_owned(),
            dir,
            port,
            server: format!("https://127.0.0.1:{port}"),
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
        };
        // From here on Drop cleans up whatever was started.
        *plane.etcd.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(plane.spawn("exec-etcd")?);
        plane.start_apiserver()?;
        script(&["bootstrap", path_str(&plane.dir)?])?;
        Ok(plane)
    }

    /// The name given to [`ControlPlane::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory: certificates, kubeconfig, etcd data, logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control plane of a whole cluster that `hack/cluster.sh` runs
    /// (see [`super::Cluster`]): its directory has the same `admin.kubeconfig`
    /// and `ca.crt`; no process is this value's to kill.
    pub(super) fn attached(name: &str, dir: PathBuf, server: String, port: u16) -> ControlPlane {
        ControlPlane {
            name: name.to_owned(),
            dir,
            port,
            server,
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
        }
    }

    /// The apiserver's port (on 127.0.0.1 for a plain control plane).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT` for a plain control
    /// plane, `https://NODE_IP:6443` for a cluster's.
    pub fn server(&self) -> String {
        self.server.clone()
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The admin kubeconfig's text.
    pub fn kubeconfig_yaml(&self) -> String {
        std::fs::read_to_string(self.kubeconfig_path())
            .expect("the kubeconfig exists while running")
    }

    /// The PEM of the CA that signed the apiserver's and the admin's certificates.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.crt")).expect("the CA exists while running")
    }

    /// The apiserver's log so far, for failure messages.
    pub fn apiserver_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default()
    }

    /// A kube client with the admin kubeconfig. Panics if it cannot be built.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            Kubeconfig::read_from(self.kubeconfig_path()).expect("the admin kubeconfig parses");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("the admin kubeconfig is a valid client config");
        kube::Client::try_from(config).expect("a client can be built from the admin kubeconfig")
    }

    /// Runs kubectl with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args)
            .output()
            .expect("kubectl is installed (hack/install-deps.sh checks)")
    }

    /// Runs kubectl with the admin kubeconfig; its stdout, or an error with
    /// its stderr if it failed.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args);
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl with the admin kubeconfig and `input` on its stdin (e.g.
    /// `create -f -`); its stdout, or an error with its stderr.
    pub fn kubectl_with_stdin(&self, args: &[&str], input: &[u8]) -> anyhow::Result<String> {
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from a thread: kubectl may fill its stdout pipe before
        // reading all its input.
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().context("waiting for kubectl")?;
        writer
            .join()
            .expect("the writer does not panic")
            .context("writing to kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl with the admin kubeconfig, as a command to add stdin to.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        kubectl_command(&self.kubeconfig_path(), &self.dir.join("kubecache"), args)
    }

    /// Creates `namespace` and its `default` ServiceAccount (which Pods need
    /// and which no controller-manager creates here), if missing.
    pub fn ensure_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        for args in [
            &["create", "namespace", namespace][..],
            &["create", "serviceaccount", "default", "-n", namespace][..],
        ] {
            let out = self.kubectl(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Concurrent tests may ensure the same namespace.
            if !out.status.success() && !stderr.contains("already exists") {
                bail!("kubectl {} failed: {}", args.join(" "), stderr.trim());
            }
        }
        Ok(())
    }

    /// SIGKILLs the apiserver and reaps it; etcd and the data stay.
    pub fn kill_apiserver(&self) {
        if let Some(mut child) = self
            .apiserver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            procs::kill(&mut child);
        }
    }

    /// Starts the apiserver (again: same port, same etcd data) and waits
    /// until `/readyz` answers ok.
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        let mut slot = self
            .apiserver
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            bail!("the apiserver of {} is already running", self.name);
        }
        *slot = Some(self.spawn("exec-apiserver")?);
        drop(slot);
        self.wait_ready()
    }

    fn spawn(&self, what: &str) -> anyhow::Result<Child> {
        // The script sends the process's output to DIR/<name>.log itself;
        // its own complaints before `exec` (a missing binary) go there too.
        let log = self
            .dir
            .join(format!("{}.log", what.trim_start_matches("exec-")));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(repo_path("hack/controlplane.sh"));
        cmd.arg(what)
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(log);
        procs::spawn(cmd)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let dir = path_str(&self.dir)?;
        let mut exited = None;
        let what = format!("the apiserver of {} to be ready", self.name);
        wait_until_sync(&what, READY_TIMEOUT, || {
            // A process that has exited will not become ready: stop waiting.
            for (label, slot) in [("etcd", &self.etcd), ("apiserver", &self.apiserver)] {
                let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    exited = Some(format!("{label} exited with {status}"));
                    return true;
                }
            }
            script(&["ready", dir]).is_ok()
        })
        .with_context(|| format!("log tail:\n{}", self.log_tail()))?;
        match exited {
            Some(why) => bail!("{why}; log tail:\n{}", self.log_tail()),
            None => Ok(()),
        }
    }

    fn log_tail(&self) -> String {
        let mut tail = String::new();
        for log in ["etcd.log", "apiserver.log"] {
            let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tail += &format!(
                "--- {log}\n{}\n",
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        tail
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for slot in [&self.apiserver, &self.etcd] {
            if let Some(mut child) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
                procs::kill(&mut child);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// kubectl with `kubeconfig`, a request timeout, and its own discovery cache
/// (caches are keyed by host:port, and ports come back in later runs with
/// other apiservers).
pub(super) fn kubectl_command(kubeconfig: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args)
        .env("KUBECACHEDIR", cache)
        .stdin(Stdio::null());
    cmd
}

/// Runs `hack/controlplane.sh ARGS`, failing with its stderr.
fn script(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(repo_path("hack/controlplane.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running hack/controlplane.sh")?;
    if !out.status.success() {
        bail!(
            "hack/controlplane.sh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
