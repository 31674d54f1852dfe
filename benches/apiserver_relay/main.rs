//! Side-by-side benchmark of `agent apiserver-relay` against direct loopback,
//! haproxy and socat, all on this machine in one run:
//!
//! 1. bulk throughput, one iperf3 stream each way ([`throughput`]);
//! 2. connect + first-byte latency ([`latency`]);
//! 3. resident memory holding ~10,000 idle connections ([`idle`]);
//!
//! then a summary against the team's targets. It prints figures and asserts
//! none: performance is judged by reading them next to the peers'.
//!
//! `cargo bench --bench apiserver_relay` passes `--bench` and gets the full
//! run (about two and a half minutes). Without it, as `cargo test
//! --all-targets` runs every target, it makes a short smoke run of the same
//! steps so the suite keeps the bench working without spending minutes.
//!
//! Section names after `--` run only those sections, e.g.
//! `cargo bench --bench apiserver_relay -- latency idle`.
//!
//! `APISERVER_RELAY_BENCH_CPUS=split` pins the iperf3 client and server to
//! CPU 0 and the proxy to CPU 1; by default the scheduler places everything
//! on the two cores, as it would in production.

mod idle;
mod latency;
mod peers;
mod summary;
mod throughput;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::bail;
use bench_support::{procs, report};

use crate::peers::Tools;

/// The sections, in the order they run; naming some runs only those.
const SECTIONS: [&str; 3] = ["throughput", "latency", "idle"];
const CPUS_VAR: &str = "APISERVER_RELAY_BENCH_CPUS";

/// Which CPUs the iperf3 ends and the proxies may run on.
pub struct Cpus {
    endpoints: Option<Vec<usize>>,
    proxy: Option<Vec<usize>>,
}

impl Cpus {
    fn from_env() -> anyhow::Result<Self> {
        match std::env::var(CPUS_VAR).as_deref() {
            Err(_) | Ok("" | "shared") => Ok(Self {
                endpoints: None,
                proxy: None,
            }),
            Ok("split") if procs::cpus() >= 2 => Ok(Self {
                endpoints: Some(vec![0]),
                proxy: Some(vec![1]),
            }),
            Ok(other) => {
                bail!("{CPUS_VAR}={other:?}: expected `shared` or `split` (needs two CPUs)")
            }
        }
    }

    pub fn endpoints(&self) -> Option<&[usize]> {
        self.endpoints.as_deref()
    }

    pub fn proxy(&self) -> Option<&[usize]> {
        self.proxy.as_deref()
    }

    fn describe(&self) -> &'static str {
        match self.proxy {
            None => "shared: no pinning, the scheduler places every process on any core",
            Some(_) => {
                "split: iperf3 client and server pinned to CPU 0, the proxies to CPU 1 \
                 (so haproxy and the relay's runtime each start one thread)"
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(idle::HOLD_SERVER_ARG) {
        return idle::hold_server_main();
    }
    // Like libtest's filters (`cargo bench --bench apiserver_relay --
    // latency`): a section runs if its name contains one of them, and
    // filters that match nothing run nothing, so `cargo test -- foo` passes.
    let only: Vec<String> = args
        .into_iter()
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    procs::bench_main("apiserver_relay", |full| run(full, &only))
}

fn run(full: bool, only: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    let fd_limit = procs::raise_nofile()?;
    let cpus = Cpus::from_env()?;
    let tools = Tools::find();
    let dir = procs::work_dir(DIR_PREFIX)?;
    let (throughput_params, latency_params, idle_params) = if full {
        (
            throughput::Params {
                seconds: 5,
                rounds: 3,
                reverse: true,
            },
            latency::Params {
                connections: 2000,
                budget: Duration::from_secs(30),
            },
            idle::Params { target: 10_000 },
        )
    } else {
        (
            throughput::Params {
                seconds: 1,
                rounds: 1,
                reverse: false,
            },
            latency::Params {
                connections: 50,
                budget: Duration::from_secs(5),
            },
            idle::Params { target: 200 },
        )
    };

    println!(
        "# agent apiserver-relay vs direct loopback, haproxy and socat ({})",
        procs::run_kind(full)
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "  {} cores, Linux {}, open-file limit {fd_limit} (hard); agent: {}",
        procs::cpus(),
        kernel.trim(),
        env!("CARGO_BIN_EXE_agent"),
    );
    println!("  CPU placement ({CPUS_VAR}): {}", cpus.describe());
    for line in tools.describe() {
        println!("  {line}");
    }
    let mut failed = Vec::new();

    let wanted = |name: &str| only.is_empty() || only.iter().any(|f| name.contains(f.as_str()));
    if !SECTIONS.iter().any(|name| wanted(name)) {
        println!("  no section matches {only:?}; the sections are {SECTIONS:?}");
        return Ok(());
    }

    let throughput = if wanted("throughput") {
        report::heading(&format!(
            "1. bulk throughput: iperf3, one stream, {} s per run, {} round(s) round-robin, median",
            throughput_params.seconds, throughput_params.rounds
        ));
        section(
            &mut failed,
            "throughput",
            throughput::run(dir.path(), &tools, &throughput_params, &cpus),
        )
        .flatten()
    } else {
        None
    };
    procs::check_interrupted()?;
    let latency = if wanted("latency") {
        report::heading(&format!(
            "2. connect + first byte: {} sequential connections per config, blocks of 100 round-robin",
            latency_params.connections
        ));
        section(
            &mut failed,
            "latency",
            latency::run(dir.path(), &tools, &latency_params, &cpus),
        )
    } else {
        None
    };
    procs::check_interrupted()?;
    let idle = if wanted("idle") {
        report::heading(&format!(
            "3. idle connections: VmRSS holding up to {} idle relayed connections",
            report::count(idle_params.target)
        ));
        section(
            &mut failed,
            "idle",
            idle::run(dir.path(), &tools, &idle_params, &cpus, fd_limit),
        )
    } else {
        None
    };

    summary::print(throughput.as_deref(), latency.as_deref(), idle.as_ref());
    println!();
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("section(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Temporary directories are named `<prefix><pid>-<random>`.
const DIR_PREFIX: &str = "apiserver-relay-bench-";

/// A section's result, or `None` after printing why it failed: the other
/// sections still run and the summary shows what was measured.
fn section<T>(
    failed: &mut Vec<&'static str>,
    name: &'static str,
    result: anyhow::Result<T>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            println!("  ! {name} failed: {err:#}");
            failed.push(name);
            None
        }
    }
}
