//! Side-by-side benchmark of `agent service-relay --role exit` against nginx
//! as a reverse proxy, both in front of the same small upstream (nginx, one
//! worker, serving a 1 KiB file), all on this machine in one run:
//!
//! - direct: wrk against the upstream itself, the ceiling;
//! - nginx proxy: one worker, `proxy_pass` to an `upstream` block with
//!   `keepalive 64`;
//! - exit relay: with the runtime's default workers (one per core), and
//!   with `--worker-threads 1` to match nginx's one worker. It reviews the
//!   caller's token against a real kube-apiserver (verdicts cached for the
//!   default 10 s).
//!
//! Every configuration gets the same requests, byte for byte: with the
//! `Cluster-Proxy-*` headers the managed apiserver would send the exit relay
//! (a ~1 KiB relay token among them), which nginx and the upstream pass on
//! or ignore.
//!
//! The same wrk load goes to each ([`measure`]), then a summary prints the
//! issue's target: the exit relay ahead of nginx in requests per second. It
//! prints figures and asserts none; it fails only when a configuration
//! answered wrongly (a bad first response, non-2xx responses or socket
//! errors under load), since its figures would then mean nothing.
//!
//! `cargo bench --bench service_relay` passes `--bench` and gets the full
//! run (about 110 s). Without it, as `cargo test --all-targets` runs every
//! target, it makes a short smoke run of the same steps.

mod exit;
mod summary;

use std::{process::ExitCode, time::Instant};

use anyhow::{Context as _, bail};
use bench_support::{
    controlplane::{self, ControlPlane},
    measure::{self, Config},
    procs, report,
    servers::{self, Document},
};

use crate::{
    exit::{NAMESPACE, SERVICE},
    summary::{DIRECT, NGINX, RELAY, RELAY_ONE},
};

/// Temporary directories are named `<prefix><pid>-<random>`.
const DIR_PREFIX: &str = "service-relay-bench-";
const DOCUMENT_BYTES: usize = 1024;

fn main() -> ExitCode {
    procs::bench_main("service_relay", run)
}

fn run(full: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    procs::raise_nofile()?;
    let params = measure::Params::wrk(full, 5);
    println!(
        "# agent service-relay --role exit vs nginx reverse proxy, 1 KiB static file ({})",
        procs::run_kind(full)
    );
    let Some((wrk_binary, nginx)) = servers::wrk_and_nginx(full)? else {
        return Ok(());
    };
    let dir = procs::work_dir(DIR_PREFIX)?;
    describe_machine(&wrk_binary, &nginx);
    let doc = Document::new(DOCUMENT_BYTES);

    let upstream = servers::upstream(dir.path(), &nginx, &doc)?;
    let plane_started = Instant::now();
    let plane = ControlPlane::start(&dir.path().join("controlplane"))?;
    let token = plane.caller_token()?;
    println!(
        "  control plane (etcd + kube-apiserver) ready and ServiceAccount token made in {:.1} s",
        plane_started.elapsed().as_secs_f64()
    );
    let nginx_proxy = servers::nginx_proxy(dir.path(), &nginx, upstream.addr)?;
    let kubeconfig = plane.kubeconfig();
    let relay = exit::exit_relay(dir.path(), "relay", &kubeconfig, controlplane::CALLER, None)?;
    let relay_one = exit::exit_relay(
        dir.path(),
        "relay-1-worker",
        &kubeconfig,
        controlplane::CALLER,
        Some(1),
    )?;
    for (name, server) in [("upstream nginx", &upstream), (NGINX, &nginx_proxy)] {
        println!(
            "  {name}: {}, process group {} (master + 1 worker, one thread each)",
            server.addr,
            server.proc.pid()
        );
    }
    for (name, server) in [(RELAY, &relay), (RELAY_ONE, &relay_one)] {
        println!(
            "  {name}: {}, pid {}, {} threads",
            server.addr,
            server.proc.pid(),
            procs::threads(server.proc.pid())?
        );
    }

    let relay_headers: Vec<(String, String)> = [
        (
            "Cluster-Proxy-Relay-Authorization",
            format!("Bearer {token}"),
        ),
        ("Cluster-Proxy-Proto", "http".to_owned()),
        ("Cluster-Proxy-Namespace", NAMESPACE.to_owned()),
        ("Cluster-Proxy-Service", SERVICE.to_owned()),
        ("Cluster-Proxy-Port", upstream.addr.port().to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    let configs = [
        Config {
            name: DIRECT,
            addr: upstream.addr,
            headers: relay_headers.clone(),
            proxy_group: None,
        },
        Config {
            name: NGINX,
            addr: nginx_proxy.addr,
            headers: relay_headers.clone(),
            proxy_group: Some(nginx_proxy.proc.pid()),
        },
        Config {
            name: RELAY,
            addr: relay.addr,
            headers: relay_headers.clone(),
            proxy_group: Some(relay.proc.pid()),
        },
        Config {
            name: RELAY_ONE,
            addr: relay_one.addr,
            headers: relay_headers,
            proxy_group: Some(relay_one.proc.pid()),
        },
    ];
    for config in &configs {
        servers::verify(config.addr, &doc, &config.headers)
            .with_context(|| format!("{} before measuring", config.name))?;
    }
    println!(
        "  each config answered GET {} with 200 and the {}-byte document",
        doc.path,
        doc.body.len()
    );

    report::heading(&format!(
        "requests/s and latency: {} round(s) round-robin of {} s per config, after {} s of warm-up each",
        params.rounds, params.settings.seconds, params.warmup_seconds
    ));
    println!(
        "  load, the same for every config: {}",
        params.settings.describe(&[], "http://ADDR/PATH")
    );
    println!(
        "  (every config gets the same request bytes: -H for the five Cluster-Proxy-* headers the managed apiserver sends, relay token, proto, namespace, service, port; the relay needs them, nginx and the upstream pass or ignore them)"
    );
    let token_reviews = || plane.token_reviews();
    let cx = measure::Context {
        dir: dir.path(),
        wrk: &wrk_binary,
        path: doc.path,
        upstream_group: upstream.proc.pid(),
        token_reviews: &token_reviews,
    };
    let rows = measure::run(&cx, &configs, &params)?;
    measure::print(&rows);
    summary::print(&rows);

    println!();
    println!("  load average at the end: {}", load_average());
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    let unclean = summary::unclean(&rows);
    if !unclean.is_empty() {
        bail!(
            "config(s) with failed runs, non-2xx responses or socket errors: {}",
            unclean.join(", ")
        );
    }
    Ok(())
}

fn describe_machine(wrk: &std::path::Path, nginx: &std::path::Path) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "  {} cores, Linux {}; load average at the start: {}",
        procs::cpus(),
        kernel.trim(),
        load_average()
    );
    println!("  agent: {}", env!("CARGO_BIN_EXE_agent"));
    let version = |program: &std::path::Path, arg: &str| -> String {
        procs::command(program)
            .arg(arg)
            .output()
            .ok()
            .and_then(|out| {
                // nginx -v writes to stderr, wrk -v to stdout.
                let text = [out.stdout, out.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .map(|line| line.trim().to_owned())
            })
            .unwrap_or_else(|| format!("{}: version unknown", program.display()))
    };
    println!(
        "  {} ({})",
        version(nginx, "-v"),
        match servers::pid_namespace() {
            Some(_) => "each in a PID namespace of its own, so its worker dies with it",
            None => "no PID namespace: a SIGKILLed bench may leave nginx workers behind",
        }
    );
    println!("  {}", version(wrk, "-v"));
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
