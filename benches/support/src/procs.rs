//! The processes a bench starts (the agent, its peers, iperf3, wrk, the
//! hold server) and what it reads about processes from /proc.
//!
//! Every child leads its own process group, so one kill also ends what it
//! forked (socat forks a process per connection), and has
//! `PR_SET_PDEATHSIG` set, so it dies with the bench even when the bench is
//! killed without unwinding. That signal follows the death of the *thread*
//! that forked, so the bench spawns children from its main thread only.

use std::{
    collections::HashSet,
    fs,
    net::{Ipv4Addr, TcpListener},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, ExitStatus, Stdio},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Process groups the bench started, so [`OtherLoad`] can leave them out.
/// Never pruned: pids are not reused within one three-minute run.
static OURS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C and SIGTERM into an error at the bench's next wait, so it
/// unwinds through its guards (children killed, temporary directory
/// removed) instead of dying where it stands. The children lead their own
/// process groups, so a terminal's Ctrl-C does not reach them directly.
pub fn handle_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// Fails once Ctrl-C or SIGTERM has arrived.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A child process, killed together with its process group on drop.
pub struct Proc {
    name: String,
    child: Child,
    /// Set once reaped: from then on the pid may belong to someone else.
    exited: Option<ExitStatus>,
    log: Option<PathBuf>,
}

impl Proc {
    /// Starts `command` restricted to `cpus` (any CPU when `None`), with its
    /// stdout and stderr appended to `log` when given (quoted if it dies).
    pub fn spawn(
        name: &str,
        mut command: Command,
        cpus: Option<&[usize]>,
        log: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        if let Some(log) = log {
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        let mask = cpus.map(cpu_set);
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        command.process_group(0);
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe system calls on values copied before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The bench may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if let Some(mask) = &mask
                    && libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), mask) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        OURS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child.id() as i32);
        Ok(Proc {
            name: name.to_owned(),
            child,
            exited: None,
            log: log.map(Path::to_path_buf),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The child's stdin and stdout, when they were piped.
    pub fn take_pipes(&mut self) -> (Option<ChildStdin>, Option<ChildStdout>) {
        (self.child.stdin.take(), self.child.stdout.take())
    }

    /// Fails, quoting the end of the log, if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        match self.exited {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status}){}", self.name, self.log_tail()),
        }
    }

    /// Waits for the process to exit by itself until `deadline`.
    pub fn wait_until(&mut self, deadline: Instant) -> anyhow::Result<ExitStatus> {
        loop {
            if let Some(status) = self.exited {
                return Ok(status);
            }
            check_interrupted()?;
            self.exited = self.child.try_wait()?;
            if self.exited.is_none() {
                if Instant::now() >= deadline {
                    bail!("{} still running at its deadline", self.name);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The last lines of the log, to explain an early death.
    pub fn log_tail(&self) -> String {
        let Some(text) = self
            .log
            .as_ref()
            .and_then(|log| fs::read_to_string(log).ok())
        else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
        format!("; its last output:\n  {tail}")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        // Unreaped, the leader keeps its pid and so the group id ours.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET checks the index against the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// A command with a closed stdin, so no child waits on the terminal.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.stdin(Stdio::null());
    command
}

/// Where `program` is on PATH, if anywhere.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// A loopback port that was free a moment ago, for peers that cannot report
/// the port they bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Polls `ready` every few milliseconds until it holds or `timeout` passes.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether something listens on 127.0.0.1:`port`, from /proc/net/tcp rather
/// than a probe connection, which iperf3 would take for a client.
pub fn is_listening(port: u16) -> anyhow::Result<bool> {
    let table = fs::read_to_string("/proc/net/tcp")?;
    let local = format!("0100007F:{port:04X}");
    Ok(table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(local.as_str()) && fields.nth(1) == Some("0A")
    }))
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS:")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("VmRSS is a number of kB")
}

/// Threads of `pid`.
pub fn threads(pid: i32) -> anyhow::Result<u64> {
    status_field(pid, "Threads:")?
        .parse()
        .context("Threads is a number")
}

fn status_field(pid: i32, key: &str) -> anyhow::Result<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|value| value.trim().to_owned())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: i32) -> anyhow::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The hard limit on open files, after raising the soft limit to it: the
/// bench itself holds one end of every idle connection.
pub fn raise_nofile() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(limit.rlim_max)
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One line of /proc/PID/stat: process group and CPU ticks, children
/// reaped so far included, so socat's finished per-connection forks count.
struct Stat {
    pgrp: i32,
    ticks: u64,
    kernel_thread: bool,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; it ends at the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split(' ').collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    const PF_KTHREAD: u64 = 0x0020_0000;
    Some(Stat {
        pgrp: fields.get(2)?.parse().ok()?,
        ticks: field(14)? + field(15)? + field(16)? + field(17)?,
        kernel_thread: field(9)? & PF_KTHREAD != 0,
    })
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU ticks of every process in process group `pgid`.
pub fn group_ticks(pgid: i32) -> u64 {
    all_pids()
        .into_iter()
        .filter_map(stat)
        .filter(|stat| stat.pgrp == pgid)
        .map(|stat| stat.ticks)
        .sum()
}

/// CPU used by processes that are not the bench's, over an interval: the
/// two cores are shared with whatever else runs on the machine (builds,
/// test suites), and a figure taken while they ran is worth less.
///
/// With tick-based accounting every busy tick in /proc/stat is charged to
/// exactly one task, so other = machine busy − the bench and its process
/// groups − kernel threads. Kernel threads are left out because ksoftirqd
/// may be carrying the bench's own loopback traffic. Unlike summing other
/// processes, this also counts the short-lived ones (compiler runs) and
/// never counts a child's whole life when its parent reaps it.
pub struct OtherLoad {
    started: Instant,
    busy: u64,
    accounted: u64,
}

impl OtherLoad {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            busy: machine_busy(),
            accounted: ours_and_kernel(),
        }
    }

    /// Percent of the whole machine (all cores) used by other processes
    /// since `start`.
    pub fn percent(&self) -> f64 {
        let busy = machine_busy().saturating_sub(self.busy);
        let accounted = ours_and_kernel().saturating_sub(self.accounted);
        let available =
            self.started.elapsed().as_secs_f64() * clock_ticks_per_second() * cpus() as f64;
        100.0 * busy.saturating_sub(accounted) as f64 / available.max(1.0)
    }
}

/// Busy ticks of all CPUs: user, nice, system, irq and softirq.
fn machine_busy() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum()
}

/// Ticks of the bench (its reaped children included), of its children's
/// process groups, and of kernel threads.
fn ours_and_kernel() -> u64 {
    let ours: HashSet<i32> = OURS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(pid, stat)| *pid == me || stat.kernel_thread || ours.contains(&stat.pgrp))
        .map(|(_, stat)| stat.ticks)
        .sum()
}

/// Waits until an agent started with `--log-format json` (logging to `log`)
/// has logged the addresses its `relay` and `admin` listeners bound.
pub fn agent_addrs(
    proc: &mut Proc,
    log: &std::path::Path,
    timeout: std::time::Duration,
) -> anyhow::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    agent_listener_addrs(proc, log, "relay", timeout)
}

/// The addresses of the agent's `listener` (as it names it in its
/// "listening" line: relay, cache, webhook) and of its admin server.
pub fn agent_listener_addrs(
    proc: &mut Proc,
    log: &std::path::Path,
    listener: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    let (mut addr, mut admin) = (None, None);
    wait_for("the agent's listening lines", timeout, || {
        proc.ensure_running()?;
        for line in std::fs::read_to_string(log)?.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["message"] != "listening" {
                continue;
            }
            let bound = event["addr"].as_str().and_then(|a| a.parse().ok());
            match event["listener"].as_str() {
                Some("admin") => admin = bound,
                Some(name) if name == listener => addr = bound,
                _ => {}
            }
        }
        Ok(addr.is_some() && admin.is_some())
    })?;
    Ok((addr.expect("waited for"), admin.expect("waited for")))
}

/// A bench's `main`: `cargo bench` passes `--bench` and gets the full run;
/// without it (`cargo test --all-targets` runs every target) the bench makes
/// a short smoke run of the same steps. Interrupts kill what the bench
/// started; an error is printed as `NAME bench: …` and fails the run.
pub fn bench_main(name: &str, run: impl FnOnce(bool) -> anyhow::Result<()>) -> ExitCode {
    let full = std::env::args().skip(1).any(|arg| arg == "--bench");
    handle_interrupts();
    match run(full) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name} bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a bench's title says of the run.
pub fn run_kind(full: bool) -> &'static str {
    if full {
        "full run"
    } else {
        "smoke run: pass --bench for real figures"
    }
}

/// A bench's temporary directory, `<prefix><pid>-<random>`, once those of
/// killed runs are gone. Keep it the last local to drop, after every
/// process writing into it.
pub fn work_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    sweep_dead_runs(prefix);
    Ok(tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir()?)
}

/// Removes temporary directories named `<prefix><pid>-…` whose process is
/// gone: what a bench that was killed left behind.
fn sweep_dead_runs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| pid.parse::<u32>().is_ok())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
