//! The real control plane a bench's agent talks to (the exit relay reviews
//! its caller's token against it; the read cache lists through it): one etcd and one kube-apiserver made by `hack/controlplane.sh` (the single
//! source of truth for ports, certificates and flags), plus a ServiceAccount
//! `bench` in `default` and a token for it.
//!
//! `controlplane.sh up` would background etcd and the apiserver out of the
//! bench's reach; this runs the script's `exec-etcd` and `exec-apiserver`
//! steps as the bench's own children instead, so they share the guarantees
//! of every other child (killed on drop, on panic, and through
//! `PR_SET_PDEATHSIG` even when the bench is SIGKILLed). Dropping the guard
//! kills both and then runs `controlplane.sh down`, which removes the
//! directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procs::{self, Proc};

/// About 4 s is usual on an idle machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How often `controlplane.sh ready` (a bash and a curl) is tried.
const READY_POLL: Duration = Duration::from_millis(250);

/// The ServiceAccount the exit relay allows, as TokenReview names it.
pub const CALLER: &str = "system:serviceaccount:default:bench";

pub struct ControlPlane {
    dir: PathBuf,
    /// Killed before `down` runs, so `down` only removes the directory.
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
}

impl ControlPlane {
    /// Prepares `dir` (which must not exist yet), starts etcd and the
    /// apiserver and waits until the apiserver is ready and bootstrapped.
    pub fn start(dir: &Path) -> anyhow::Result<ControlPlane> {
        script(&["prepare", path_str(dir)?, "service-relay-bench"])?;
        // From here on Drop cleans up whatever was started.
        let mut plane = ControlPlane {
            dir: dir.to_path_buf(),
            etcd: None,
            apiserver: None,
        };
        plane.etcd = Some(plane.spawn("etcd", "exec-etcd", "etcd.log")?);
        plane.apiserver = Some(plane.spawn("kube-apiserver", "exec-apiserver", "apiserver.log")?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            procs::check_interrupted()?;
            for proc in plane.etcd.iter_mut().chain(plane.apiserver.iter_mut()) {
                proc.ensure_running()?;
            }
            if script_status(&["ready", path_str(dir)?])? {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the control plane was not ready within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(READY_POLL);
        }
        script(&["bootstrap", path_str(dir)?])?;
        Ok(plane)
    }

    /// The script writes the processes' output to these logs itself, and
    /// [`Proc`] quotes them if a process dies.
    fn spawn(&self, name: &str, step: &str, log: &str) -> anyhow::Result<Proc> {
        let mut command = procs::command("bash");
        command.arg(script_path()).arg(step).arg(&self.dir);
        Proc::spawn(name, command, None, Some(&self.dir.join(log)))
    }

    /// The admin kubeconfig (client certificate of system:masters).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Creates the ServiceAccount `default/bench` and returns a token for
    /// it, valid for an hour (`kubectl create token`, TokenRequest).
    pub fn caller_token(&self) -> anyhow::Result<String> {
        self.kubectl(&["create", "serviceaccount", "bench", "-n", "default"])?;
        let out = self.kubectl(&[
            "create",
            "token",
            "bench",
            "-n",
            "default",
            "--duration",
            "1h",
        ])?;
        let token = String::from_utf8(out.stdout)
            .context("kubectl create token printed non-UTF-8")?
            .trim()
            .to_owned();
        if token.is_empty() {
            bail!("kubectl create token printed nothing");
        }
        Ok(token)
    }

    /// TokenReviews the apiserver has answered since it started, from its
    /// `apiserver_request_total` counter.
    pub fn token_reviews(&self) -> anyhow::Result<u64> {
        let out = self.kubectl(&["get", "--raw", "/metrics"])?;
        requests_total(&String::from_utf8_lossy(&out.stdout), "tokenreviews")
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = procs::command("kubectl");
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=10s")
            .args(args);
        checked(command, &format!("kubectl {}", args[..2].join(" ")))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.apiserver.take());
        drop(self.etcd.take());
        // Bounded by the script: it gives up on a process after 30 s.
        if let Err(err) = script(&["down", &self.dir.to_string_lossy()]) {
            eprintln!("bench: control plane down: {err:#}");
        }
    }
}

/// The repository's script; this crate lives in `benches/support`.
fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/controlplane.sh")
}

fn script(args: &[&str]) -> anyhow::Result<Output> {
    let mut command = procs::command("bash");
    command.arg(script_path()).args(args);
    checked(command, &format!("controlplane.sh {}", args[0]))
}

/// Whether the script step succeeded (for `ready`, which fails until then).
fn script_status(args: &[&str]) -> anyhow::Result<bool> {
    let status = procs::command("bash")
        .arg(script_path())
        .args(args)
        .output()
        .context("running controlplane.sh")?
        .status;
    Ok(status.success())
}

/// Runs `command` to completion (each one bounds itself: the script's steps
/// have deadlines, kubectl a request timeout) and fails with its stderr.
fn checked(mut command: Command, what: &str) -> anyhow::Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The requests an apiserver has answered for `resource` since it started:
/// the sum of its `apiserver_request_total` samples in /metrics text.
pub fn requests_total(metrics: &str, resource: &str) -> anyhow::Result<u64> {
    let label = format!("resource=\"{resource}\"");
    let mut total = 0.0;
    for line in metrics.lines() {
        if line.starts_with("apiserver_request_total{")
            && line.contains(&label)
            && let Some(value) = line.rsplit(' ').next()
        {
            total += value
                .parse::<f64>()
                .with_context(|| format!("apiserver_request_total value {value:?}"))?;
        }
    }
    Ok(total as u64)
}
