//! Lifetime of everything a test binary starts outside itself: child
//! processes (etcd, kube-apiserver, pod processes), network namespaces, and
//! the per-run directory `/tmp/cluster-relay-tests/<pid>-<starttime>/`.
//!
//! - Children are forked by one long-lived thread with `PR_SET_PDEATHSIG`
//!   set to SIGKILL. The signal follows the death of the forking *thread*,
//!   and libtest ends a test's thread when the test ends, so forking from
//!   test threads would kill a shared control plane after its first test.
//!   With the spawner thread the children die with the process, however it
//!   ends (even SIGKILL).
//! - On a normal exit (all tests passed or some failed) an `atexit` hook
//!   kills the remaining children, deletes the network namespaces and removes
//!   the run directory; the values that own them are usually leaked statics
//!   (shared control planes) whose `Drop` never runs.
//! - Whole clusters (`hack/cluster.sh`, [`super::Cluster`]) run detached,
//!   in a cgroup of their own; the hook and the sweep take them down with
//!   `hack/cluster.sh down`, which kills whatever is in that cgroup.
//! - A run killed before its hook ran leaves its directory behind, with the
//!   names of its network namespaces under `netns/` and its clusters under
//!   `clusters/`; the next run sweeps every directory whose process is gone.

use std::collections::HashSet;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, mpsc};

use anyhow::Context as _;

const RUNS_ROOT: &str = "/tmp/cluster-relay-tests";

/// What the exit hook must still clean up.
#[derive(Default)]
struct Live {
    pids: HashSet<i32>,
    netns: HashSet<String>,
    clusters: HashSet<PathBuf>,
}

fn live() -> MutexGuard<'static, Live> {
    static LIVE: OnceLock<Mutex<Live>> = OnceLock::new();
    // A panicking test must not stop the others (or the exit hook) from
    // cleaning up, so poisoning is ignored: the sets stay consistent.
    LIVE.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A file of this repository, such as `hack/controlplane.sh`.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Field 22 of /proc/PID/stat: with the pid it names a process uniquely,
/// so a recycled pid is not mistaken for a live run.
fn start_time(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19).map(str::to_owned)
}

static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// This run's directory, created on first use; the first use also sweeps
/// leftovers of dead runs and installs the exit hook.
pub fn run_dir() -> &'static Path {
    RUN_DIR.get_or_init(|| {
        sweep_dead_runs();
        let pid = std::process::id().to_string();
        let st = start_time(&pid).expect("/proc/self/stat is readable");
        let dir = Path::new(RUNS_ROOT).join(format!("{pid}-{st}"));
        std::fs::create_dir_all(dir.join("netns")).expect("cannot create the run directory");
        // SAFETY: registers a plain function; it is called once, at exit.
        let rc = unsafe { libc::atexit(cleanup_at_exit) };
        assert_eq!(rc, 0, "atexit failed");
        dir
    })
}

fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(RUNS_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, st)) = name.split_once('-') else {
            continue;
        };
        if start_time(pid).as_deref() == Some(st) {
            continue; // a run in progress, maybe another test binary
        }
        if let Ok(clusters) = std::fs::read_dir(entry.path().join("clusters")) {
            for cluster in clusters.flatten() {
                down_cluster(&cluster.path());
            }
        }
        if let Ok(netns) = std::fs::read_dir(entry.path().join("netns")) {
            for ns in netns.flatten() {
                delete_netns(&ns.file_name().to_string_lossy());
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

extern "C" fn cleanup_at_exit() {
    // Unwinding out of an extern "C" function aborts; a failed cleanup must
    // not turn a test run into a crash.
    let _ = std::panic::catch_unwind(|| {
        let (pids, netns, clusters) = {
            let mut live = live();
            (
                std::mem::take(&mut live.pids),
                std::mem::take(&mut live.netns),
                std::mem::take(&mut live.clusters),
            )
        };
        for dir in &clusters {
            down_cluster(dir);
        }
        for &pid in &pids {
            // SAFETY: plain syscalls on pids this process spawned and has not
            // reaped (reaping removes them from the set).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &pids {
            // SAFETY: as above; waiting reaps the killed child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
        for ns in &netns {
            delete_netns(ns);
        }
        // Never `run_dir()` here: that would create a directory at exit.
        if let Some(dir) = RUN_DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from the spawner thread, with SIGKILL as its parent-death
/// signal, and tracks it until [`kill`] reaps it.
pub fn spawn(mut cmd: Command) -> anyhow::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    run_dir(); // installs the exit hook before there is anything to clean
    let what = format!("{cmd:?}");
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                // Lives as long as the process: the sender sits in a static.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: getpid is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the hook runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null());
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((cmd, reply_tx))
        .expect("the spawner thread never exits");
    let child = reply_rx
        .recv()
        .expect("the spawner thread always replies")
        .with_context(|| format!("spawning {what}"))?;
    live().pids.insert(child.id() as i32);
    Ok(child)
}

/// SIGKILLs a child from [`spawn`] (if it still runs) and reaps it.
pub fn kill(child: &mut Child) {
    let pid = child.id() as i32;
    let _ = child.kill();
    let _ = child.wait();
    live().pids.remove(&pid);
}

/// Records a network namespace so that it is deleted at exit, or by the next
/// run's sweep if this one is killed.
pub fn track_netns(name: &str) -> anyhow::Result<()> {
    let marker = run_dir().join("netns").join(name);
    std::fs::create_dir_all(&marker).with_context(|| format!("creating {}", marker.display()))?;
    live().netns.insert(name.to_owned());
    Ok(())
}

/// Records a cluster's directory (`hack/cluster.sh`) before it is made, so
/// that it is taken down at exit, or by the next run's sweep if this one is
/// killed.
pub fn track_cluster(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    live().clusters.insert(dir.to_owned());
    Ok(())
}

/// Stops everything of a cluster made by `hack/cluster.sh` and removes its
/// directory; forgets it.
pub fn down_cluster(dir: &Path) {
    match Command::new(repo_path("hack/cluster.sh"))
        .arg("down")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "support: taking down cluster {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("support: taking down cluster {}: {err}", dir.display()),
    }
    live().clusters.remove(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// Deletes a network namespace made by `hack/netns-pod.sh` (its processes,
/// its veth pair) and forgets it.
pub fn delete_netns(name: &str) {
    match Command::new(repo_path("hack/netns-pod.sh"))
        .args(["delete", name])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "support: deleting network namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("support: deleting network namespace {name}: {err}"),
    }
    live().netns.remove(name);
    if let Some(dir) = RUN_DIR.get() {
        let _ = std::fs::remove_dir_all(dir.join("netns").join(name));
    }
}
