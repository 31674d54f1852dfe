//! LIST of 5,000 ConfigMaps in one namespace through `agent read-cache
//! --profile kubernetes` against the same LIST from the apiserver, all on
//! this machine in one run, with one caller (a ServiceAccount that may list
//! ConfigMaps there):
//!
//! - direct: the caller's token to a real kube-apiserver (etcd behind it)
//!   over HTTPS, as a controller without the cache would;
//! - cache (authz reused): the caller's token to the cache, which asks the
//!   apiserver whether the caller may list (a SelfSubjectAccessReview with
//!   that token), reuses the decision for the default `--authz-cache-ttl`
//!   of 5 s, and answers from its store;
//! - cache (SSAR every request): the same with `--authz-cache-ttl 0s`, so
//!   every request waits for its own review: authorization truly included
//!   (concurrent identical reviews are still merged, and the report shows
//!   how many the apiserver answered per request).
//!
//! Both caches watch ConfigMaps (`--watch-resource configmaps`), so the
//! entry stays while nothing changes, as it would in production. Each way
//! is measured for JSON (the headline), gzipped JSON and protobuf: first
//! answers checked, sequential latency, then wrk ([`measure`]); a summary
//! prints the target: at least 20x faster. It prints figures and
//! asserts none; it fails only when a configuration answered wrongly (a
//! bad first answer, non-2xx responses or socket errors under load).
//!
//! `cargo bench --bench read_cache_kubernetes` passes `--bench` and gets
//! the full run (about two minutes). Without it, as `cargo test
//! --all-targets` runs every target, it makes a short smoke run of the same
//! steps with 200 ConfigMaps.

mod cache;
mod client;
mod measure;
mod setup;
mod summary;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bench_support::{controlplane::ControlPlane, procs, report, wrk};

use crate::{
    client::HttpClient,
    measure::Config,
    setup::{Cluster, NAMESPACE},
    summary::{CACHE, CACHE_SSAR, DIRECT},
};

/// wrk's `--timeout`: a direct LIST takes a few hundred milliseconds and
/// several run at once on two shared cores; the 5 s of the other benches
/// (and wrk's default of 2 s) would count slow ones as errors.
const WRK_TIMEOUT_SECONDS: u32 = 10;

/// Temporary directories are named `<prefix><pid>-<random>`.
const DIR_PREFIX: &str = "read-cache-kubernetes-bench-";

fn main() -> ExitCode {
    procs::bench_main("read_cache_kubernetes", run)
}

fn run(full: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    procs::raise_nofile()?;
    let params = if full {
        measure::Params {
            objects: 5_000,
            sequential_count: 200,
            sequential_budget: Duration::from_secs(6),
            settings: wrk::Settings {
                threads: 1,
                connections: 4,
                seconds: 4,
                timeout_seconds: WRK_TIMEOUT_SECONDS,
            },
            rounds: 3,
            warmup_seconds: 1,
            other_seconds: 3,
        }
    } else {
        measure::Params {
            objects: 200,
            sequential_count: 5,
            sequential_budget: Duration::from_secs(1),
            settings: wrk::Settings {
                threads: 1,
                connections: 2,
                seconds: 1,
                timeout_seconds: WRK_TIMEOUT_SECONDS,
            },
            rounds: 1,
            warmup_seconds: 0,
            other_seconds: 1,
        }
    };
    println!(
        "# LIST of {} ConfigMaps: agent read-cache --profile kubernetes vs the kube-apiserver ({})",
        params.objects,
        procs::run_kind(full)
    );
    let Some(wrk_binary) = wrk::find() else {
        return skip_or_fail(full, "wrk");
    };
    if let Some(missing) = plane_missing() {
        return skip_or_fail(full, &missing);
    }
    let dir = procs::work_dir(DIR_PREFIX)?;
    describe_machine(&wrk_binary);
    // One thread: the bench's own requests are sequential, and its
    // children are spawned from this (main) thread, which their
    // PR_SET_PDEATHSIG follows.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let plane_started = Instant::now();
    let plane_dir = dir.path().join("controlplane");
    let plane = ControlPlane::start(&plane_dir)?;
    let cluster = Cluster::prepare(plane, &plane_dir)?;
    println!(
        "  control plane (etcd + kube-apiserver {}) ready, RBAC and tokens made in {:.1} s",
        cluster.server,
        plane_started.elapsed().as_secs_f64()
    );
    let create_started = Instant::now();
    let data_bytes = rt.block_on(setup::create_configmaps(&cluster.plane, params.objects))?;
    println!(
        "  {} ConfigMaps created in namespace {NAMESPACE} in {:.1} s (3 keys each, {} bytes of data on average)",
        params.objects,
        create_started.elapsed().as_secs_f64(),
        data_bytes / params.objects.max(1)
    );
    // Started after the ConfigMaps exist, so their watches begin in sync
    // and no event drops an entry while measuring.
    let cache = cache::start(dir.path(), "cache", &cluster.cache_kubeconfig, &[])?;
    let cache_ssar = cache::start(
        dir.path(),
        "cache-ssar",
        &cluster.cache_kubeconfig,
        &["--authz-cache-ttl", "0s"],
    )?;
    for (name, server) in [(CACHE, &cache), (CACHE_SSAR, &cache_ssar)] {
        println!(
            "  {name}: http://{}, pid {}, {} threads",
            server.addr,
            server.proc.pid(),
            procs::threads(server.proc.pid())?
        );
    }

    let configs = [
        Config {
            name: DIRECT,
            base: cluster.server.clone(),
            cache: None,
        },
        Config {
            name: CACHE,
            base: format!("http://{}", cache.addr),
            cache: Some(&cache),
        },
        Config {
            name: CACHE_SSAR,
            base: format!("http://{}", cache_ssar.addr),
            cache: Some(&cache_ssar),
        },
    ];
    let client = HttpClient::new(&cluster.ca_pem)?;
    let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps");
    report::heading(&format!(
        "GET {path}: first answers, then sequential latency (up to {} requests or {:.0} s), then wrk",
        params.sequential_count,
        params.sequential_budget.as_secs_f64()
    ));
    println!(
        "  load: {} (gzip adds -H 'Accept-Encoding: gzip'); JSON: {} round(s) round-robin after {} s of warm-up each; gzip and protobuf: 1 round of {} s",
        params
            .settings
            .describe(&["Authorization", "Accept"], "URL"),
        params.rounds,
        params.warmup_seconds,
        params.other_seconds
    );
    let cx = measure::Context {
        rt: &rt,
        dir: dir.path(),
        wrk: &wrk_binary,
        client: &client,
        cluster: &cluster,
        path: &path,
    };
    let rows = measure::run(&cx, &configs, &params)?;
    summary::print(&rows);
    summary::targets(&rows);

    println!();
    println!("  load average at the end: {}", load_average());
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    let unclean = summary::unclean(&rows);
    if !unclean.is_empty() {
        bail!(
            "config(s) with failed checks or runs, non-2xx responses or socket errors: {}",
            unclean.join(", ")
        );
    }
    Ok(())
}

/// Without its tools the smoke run (part of `cargo test --all-targets`)
/// passes with a note; the full run fails.
fn skip_or_fail(full: bool, missing: &str) -> anyhow::Result<()> {
    let message = format!("{missing} is needed (hack/install-deps.sh --bench)");
    if full {
        bail!("{message}");
    }
    println!("  {message}; skipped");
    Ok(())
}

/// etcd, kubectl or the kube-apiserver the control plane script runs, if
/// one is missing.
fn plane_missing() -> Option<String> {
    // hack/controlplane.sh's defaults: the current version's build.
    let bin = std::env::var_os("KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cluster-relay/kubernetes-1.37.2-r1"));
    let apiserver = std::env::var_os("KUBE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin.join("kube-apiserver"));
    let etcd = std::env::var_os("ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin.join("etcd"));
    (procs::which("kubectl").is_none())
        .then(|| "kubectl".to_owned())
        .or_else(|| {
            // ETCD may be a bare name (`make test-oldest`: Debian's etcd).
            [apiserver, etcd]
                .into_iter()
                .find(|path| !path.is_file() && path.to_str().and_then(procs::which).is_none())
                .map(|path| path.display().to_string())
        })
}

fn describe_machine(wrk: &Path) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "  {} cores, Linux {}; load average at the start: {}",
        procs::cpus(),
        kernel.trim(),
        load_average()
    );
    println!("  agent: {}", env!("CARGO_BIN_EXE_agent"));
    let wrk_version = procs::command(wrk)
        .arg("-v")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&[out.stdout, out.stderr].concat())
                .lines()
                .next()
                .map(|line| line.trim().to_owned())
        })
        .context("wrk -v");
    match wrk_version {
        Ok(version) => println!("  {version}"),
        Err(err) => println!("  wrk: version unknown ({err:#})"),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}
