//! Benchmark of `agent webhook-fanout` (release build) with receivers on
//! loopback, in one run:
//!
//! - ten healthy backends: signed 2 KiB deliveries from 16 concurrent
//!   senders; deliveries accepted per second (the forge's view), the
//!   forge-facing latency, and the end-to-end latency from the forge's send
//!   to each backend's receipt (p50/p99 over every backend's copy);
//! - the same with one of the ten backends hanging (it takes the request
//!   and never answers): the forge-facing latency, which a fan-out that
//!   sends to its backends one after another before answering (SprayProxy's
//!   design) would pay the hanging backend's whole timeout for, 15 s there,
//!   on every delivery.
//!
//! No fan-out peer runs on this machine (SprayProxy is a Go program), so
//! the sequential design's figure is its timeout by construction, printed
//! beside ours. The bench asserts nothing about speed; it fails only if a
//! delivery was refused or lost, since its figures would then mean nothing.
//!
//! `cargo bench --bench webhook_fanout` passes `--bench` and gets the full
//! run (about 30 s); without it, a short smoke run of the same steps.

mod sinks;

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bench_support::{
    procs::{self, Proc},
    report::{Table, percentile},
};
use bytes::Bytes;
use cluster_relay::signature::sign_sha256;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::sinks::Sink;

const DIR_PREFIX: &str = "webhook-fanout-bench-";
const SECRET: &str = "bench-secret";
const BACKENDS: usize = 10;
const SENDERS: usize = 16;
const BODY_BYTES: usize = 2048;
/// SprayProxy's per-backend timeout, which a sequential fan-out pays in
/// full for a hanging backend before it answers the forge.
const SEQUENTIAL_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    procs::bench_main("webhook_fanout", |full| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(full))
    })
}

struct Fanout {
    _proc: Proc,
    addr: std::net::SocketAddr,
}

fn start_fanout(dir: &std::path::Path, tag: &str, backends: &[String]) -> anyhow::Result<Fanout> {
    let log = dir.join(format!("{tag}.log"));
    let mut command = procs::command(env!("CARGO_BIN_EXE_agent"));
    command
        .arg("webhook-fanout")
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--queue-dir")
        .arg(dir.join(format!("{tag}-queue")))
        .args(["--backend-timeout", "15s"])
        .args(["--log-format", "json", "--log-level", "info"])
        .env("CLUSTER_RELAY_WEBHOOK_SECRET", SECRET);
    for backend in backends {
        command.args(["--backend", backend]);
    }
    let mut proc = Proc::spawn(
        &format!("agent webhook-fanout ({tag})"),
        command,
        None,
        Some(&log),
    )?;
    let (addr, _) =
        procs::agent_listener_addrs(&mut proc, &log, "webhook", Duration::from_secs(30))?;
    Ok(Fanout { _proc: proc, addr })
}

/// Forge-side figures of one load.
struct Load {
    wall: Duration,
    forge: Vec<Duration>,
    /// When each delivery was sent, by index.
    sent_at: Vec<Instant>,
}

/// Sends `count` signed deliveries named `{tag}-{i}` from SENDERS tasks.
async fn load(fanout: &Fanout, tag: &str, count: usize) -> anyhow::Result<Load> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = Bytes::from(format!(
        r#"{{"ref":"refs/heads/main","pad":"{}"}}"#,
        "x".repeat(BODY_BYTES - 34)
    ));
    let signature = sign_sha256(SECRET.as_bytes(), &body);
    let url = format!("http://{}/", fanout.addr);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let (client, body, signature, url, tag) = (
            client.clone(),
            body.clone(),
            signature.clone(),
            url.clone(),
            tag.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut timings = Vec::new();
            for i in (sender..count).step_by(SENDERS) {
                let request = http::Request::post(&url)
                    .header("x-github-event", "push")
                    .header("x-github-delivery", format!("{tag}-{i}"))
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", &signature)
                    .body(Full::new(body.clone()))
                    .expect("a valid request");
                let at = Instant::now();
                let response = client.request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status != http::StatusCode::ACCEPTED {
                    bail!("delivery {tag}-{i} got {status}");
                }
                timings.push((i, at, at.elapsed()));
            }
            anyhow::Ok(timings)
        }));
    }
    let mut sent_at = vec![started; count];
    let mut forge = Vec::with_capacity(count);
    for task in tasks {
        for (i, at, took) in task.await.context("a sender panicked")?? {
            sent_at[i] = at;
            forge.push(took);
        }
    }
    let wall = started.elapsed();
    forge.sort();
    Ok(Load {
        wall,
        forge,
        sent_at,
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
}

async fn run(full: bool) -> anyhow::Result<()> {
    let dir = procs::work_dir(DIR_PREFIX)?;
    let (count, hang_count) = if full { (5000, 500) } else { (200, 50) };
    println!(
        "# agent webhook-fanout, {BACKENDS} backends on loopback, {BODY_BYTES} B signed deliveries from {SENDERS} senders ({})",
        procs::run_kind(full)
    );
    println!(
        "  {} CPUs; queue on {}",
        procs::cpus(),
        dir.path().display()
    );

    // 1. Ten healthy backends.
    let sinks: Vec<Arc<Sink>> =
        futures::future::join_all((0..BACKENDS).map(|_| Sink::start(false)))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let urls: Vec<String> = sinks.iter().map(|s| s.url()).collect();
    let fanout = start_fanout(dir.path(), "healthy", &urls)?;
    let warm = load(&fanout, "warm", SENDERS * 4).await?;
    drop(warm);
    let healthy = load(&fanout, "d", count).await?;
    let drained = sinks::wait_all(&sinks, "d", count, Duration::from_secs(120)).await?;
    let mut end_to_end: Vec<Duration> = Vec::with_capacity(count * BACKENDS);
    for sink in &sinks {
        for (i, at) in sink.arrivals("d", count)? {
            end_to_end.push(at.saturating_duration_since(healthy.sent_at[i]));
        }
    }
    end_to_end.sort();
    let duplicates: usize = sinks.iter().map(|s| s.duplicates()).sum();
    if duplicates > 0 {
        bail!("{duplicates} deliveries arrived twice in normal operation");
    }

    // 2. One of ten hanging.
    let mut hang_sinks: Vec<Arc<Sink>> =
        futures::future::join_all((0..BACKENDS - 1).map(|_| Sink::start(false)))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    hang_sinks.push(Sink::start(true).await?);
    let hang_urls: Vec<String> = hang_sinks.iter().map(|s| s.url()).collect();
    let hang_fanout = start_fanout(dir.path(), "one-hanging", &hang_urls)?;
    let hanging = load(&hang_fanout, "h", hang_count).await?;
    sinks::wait_all(
        &hang_sinks[..BACKENDS - 1],
        "h",
        hang_count,
        Duration::from_secs(120),
    )
    .await?;

    let mut table = Table::new(&[
        "configuration",
        "deliveries",
        "accepted/s",
        "forge p50",
        "forge p99",
        "end-to-end p50",
        "end-to-end p99",
    ]);
    table.row(vec![
        format!("fan-out, {BACKENDS} healthy backends"),
        count.to_string(),
        format!("{:.0}", count as f64 / healthy.wall.as_secs_f64()),
        ms(percentile(&healthy.forge, 50.0)),
        ms(percentile(&healthy.forge, 99.0)),
        ms(percentile(&end_to_end, 50.0)),
        ms(percentile(&end_to_end, 99.0)),
    ]);
    table.row(vec![
        format!("fan-out, 1 of {BACKENDS} hanging"),
        hang_count.to_string(),
        format!("{:.0}", hang_count as f64 / hanging.wall.as_secs_f64()),
        ms(percentile(&hanging.forge, 50.0)),
        ms(percentile(&hanging.forge, 99.0)),
        "-".into(),
        "-".into(),
    ]);
    table.row(vec![
        "sequential fan-out (SprayProxy), 1 hanging".into(),
        "-".into(),
        "-".into(),
        ms(Some(SEQUENTIAL_TIMEOUT)),
        ms(Some(SEQUENTIAL_TIMEOUT)),
        "-".into(),
        "-".into(),
    ]);
    println!();
    table.print();
    println!();
    println!(
        "  every backend had all {count} deliveries {:.2} s after the first was sent; none twice",
        drained
            .saturating_duration_since(healthy.sent_at.iter().min().copied().unwrap_or(drained))
            .as_secs_f64()
    );
    println!(
        "  with one backend hanging: forge answered within {} (max), the healthy nine had every delivery",
        ms(hanging.forge.last().copied())
    );
    println!(
        "  summary: {:.0} deliveries/s accepted with {BACKENDS} backends, end-to-end p99 {}; forge-facing p99 with a hanging backend {} vs {} sequential",
        count as f64 / healthy.wall.as_secs_f64(),
        ms(percentile(&end_to_end, 99.0)),
        ms(percentile(&hanging.forge, 99.0)),
        ms(Some(SEQUENTIAL_TIMEOUT)),
    );
    Ok(())
}
