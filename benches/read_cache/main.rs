//! Side-by-side benchmark of cache hits: `agent read-cache --profile etag`
//! against nginx `proxy_cache`, both in front of the same GitHub-like origin
//! (nginx, one worker, one 1 KiB document with GitHub's caching and
//! rate-limit headers), all on this machine in one run:
//!
//! - direct: wrk against the origin itself, for reference;
//! - nginx proxy_cache: one worker, keyed by URI and credential, entries
//!   valid for 60 s then revalidated, as GitHub's `max-age=60` asks;
//! - read-cache with `--worker-threads 1` (like for like with nginx's one
//!   worker), and with the default (one per core).
//!
//! Every request carries the same `Authorization`, so after the first miss
//! both caches serve hits (checked before measuring, from each one's own
//! cache-status header). The same wrk load goes to each configuration,
//! round-robin ([`measure`]), then a summary prints the target: the
//! cache ahead of nginx in requests per second. Figures are printed, never
//! asserted; it fails only if a configuration answered wrongly.
//!
//! Then the cost of what a fill adds: pointing a JSON body's upstream URLs
//! back at the cache, timed in-process on a GitHub-like page of issues
//! ([`rewrite`]; hits serve the stored result and never pay it).
//!
//! `cargo bench --bench read_cache` passes `--bench` and gets the full run
//! (about 80 s). Without it (`cargo test --all-targets`) it makes a short
//! smoke run of the same steps.

mod peers;
mod rewrite;

use std::{process::ExitCode, time::Instant};

use anyhow::{Context as _, anyhow, bail};
use bench_support::{
    measure::{self, Config, Row},
    procs, report,
    servers::{self, Document},
};

const DIR_PREFIX: &str = "read-cache-bench-";
const DOCUMENT_BYTES: usize = 1024;
/// A GitHub-style token; the origin does not check it, both caches key on it.
const TOKEN: &str = "ghp_benchbenchbenchbenchbenchbenchbench";

const DIRECT: &str = "direct (origin)";
const NGINX: &str = "nginx proxy_cache";
const CACHE_ONE: &str = "read-cache (1 worker)";
const CACHE: &str = "read-cache";

fn main() -> ExitCode {
    procs::bench_main("read_cache", run)
}

fn run(full: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    procs::raise_nofile()?;
    let params = measure::Params::wrk(full, 3);
    println!(
        "# agent read-cache --profile etag vs nginx proxy_cache: hits of a 1 KiB GitHub-like answer ({})",
        procs::run_kind(full)
    );
    let Some((wrk_binary, nginx)) = servers::wrk_and_nginx(full)? else {
        return Ok(());
    };
    let dir = procs::work_dir(DIR_PREFIX)?;
    println!(
        "  {} cores; load average at the start: {}",
        procs::cpus(),
        load_average()
    );
    println!("  agent: {}", env!("CARGO_BIN_EXE_agent"));
    let doc = Document::new(DOCUMENT_BYTES);

    let origin = peers::origin(dir.path(), &nginx, &doc)?;
    let nginx_cache = peers::nginx_cache(dir.path(), &nginx, origin.addr)?;
    let cache_one = peers::read_cache(dir.path(), "read-cache-1", origin.addr, Some(1))?;
    let cache = peers::read_cache(dir.path(), "read-cache", origin.addr, None)?;
    for (name, server) in [("origin nginx", &origin), (NGINX, &nginx_cache)] {
        println!(
            "  {name}: {}, process group {} (master + 1 worker)",
            server.addr,
            server.proc.pid()
        );
    }
    for (name, server) in [(CACHE_ONE, &cache_one), (CACHE, &cache)] {
        println!(
            "  {name}: {}, pid {}, {} threads",
            server.addr,
            server.proc.pid(),
            procs::threads(server.proc.pid())?
        );
    }

    let headers = vec![("Authorization".to_owned(), format!("token {TOKEN}"))];
    let config = |name, server: &servers::Server, proxy: bool| Config {
        name,
        addr: server.addr,
        headers: headers.clone(),
        proxy_group: proxy.then(|| server.proc.pid()),
    };
    let configs = [
        config(DIRECT, &origin, false),
        config(NGINX, &nginx_cache, true),
        config(CACHE_ONE, &cache_one, true),
        config(CACHE, &cache, true),
    ];
    for config in &configs {
        servers::verify(config.addr, &doc, &config.headers)
            .with_context(|| format!("{} before measuring", config.name))?;
    }
    // The first GET above filled each cache; the next must be a hit.
    peers::expect_header(
        nginx_cache.addr,
        doc.path,
        &headers,
        "X-Cache-Status",
        "HIT",
    )
    .context("nginx proxy_cache did not serve a hit")?;
    for server in [&cache_one, &cache] {
        peers::expect_header(
            server.addr,
            doc.path,
            &headers,
            "cluster-relay-cache",
            "fresh_hit",
        )
        .context("read-cache did not serve a fresh hit")?;
    }
    println!(
        "  each config answered GET {} with 200 and the {}-byte document; both caches then served hits",
        doc.path,
        doc.body.len()
    );

    report::heading(&format!(
        "requests/s and latency: {} round(s) round-robin of {} s per config, after {} s of warm-up each",
        params.rounds, params.settings.seconds, params.warmup_seconds
    ));
    println!(
        "  load, the same for every config: {}",
        params
            .settings
            .describe(&["Authorization"], "http://ADDR/PATH")
    );
    // The TokenReviews column of the shared tables has no meaning here.
    let no_reviews = || Err(anyhow!("not applicable"));
    let cx = measure::Context {
        dir: dir.path(),
        wrk: &wrk_binary,
        path: doc.path,
        upstream_group: origin.proc.pid(),
        token_reviews: &no_reviews,
    };
    let rows = measure::run(&cx, &configs, &params)?;
    measure::print(&rows);
    summary(&rows);
    rewrite::print(full)?;

    println!();
    println!("  load average at the end: {}", load_average());
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    let unclean: Vec<&str> = rows
        .iter()
        .filter(|row| !row.clean())
        .map(|row| row.name)
        .collect();
    if !unclean.is_empty() {
        bail!(
            "config(s) with failed runs, non-2xx responses or socket errors: {}",
            unclean.join(", ")
        );
    }
    Ok(())
}

/// Every configuration in one line, then the target (printed, not asserted).
fn summary(rows: &[Row]) {
    report::heading("summary");
    let find = |name: &str| rows.iter().find(|row| row.name == name);
    measure::summary_table(rows, DIRECT);
    println!();
    println!("  target (printed, not asserted):");
    let nginx = find(NGINX).and_then(Row::requests_per_second);
    for (name, label) in [
        (
            CACHE_ONE,
            "read-cache with 1 worker ahead of nginx proxy_cache (like for like: nginx has 1 worker)",
        ),
        (
            CACHE,
            "read-cache (one worker per core) ahead of nginx proxy_cache",
        ),
    ] {
        match (find(name).and_then(Row::requests_per_second), nginx) {
            (Some(ours), Some(theirs)) => println!(
                "  - {label}: {ours:.0} vs {theirs:.0} req/s ({:.2}x) → {}",
                ours / theirs,
                if ours > theirs { "met" } else { "MISSED" }
            ),
            _ => println!("  - {label}: not measured"),
        }
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
