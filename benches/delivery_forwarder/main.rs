//! What forwarding costs against the forge's rate limit: `agent
//! delivery-forwarder` next to a naive poller ([`naive`]), each against its
//! own instance of the forge stand-in (`bench_support::hook_forge`, which
//! charges GitHub's way: every answer but a 304 spends one unit), fed the
//! same steady stream of deliveries in the same run, both polling every
//! 250 ms. Two streams: a quiet one (a delivery every 2 s, so most polls
//! find nothing) and a busy one (20 a second, several per poll).
//!
//! Printed per stream and poller: deliveries, API requests, rate-limit
//! units spent, and both per delivery. A delivery needs at least one unit
//! (its detail); the rest is the price of noticing it. It prints figures
//! and asserts none; it fails only if a poller lost deliveries.
//!
//! `cargo bench --bench delivery_forwarder` passes `--bench` and gets the
//! full run (30 s per stream). Without it, as `cargo test --all-targets`
//! runs every target, it makes a 3 s smoke run of the same steps.

mod naive;

use std::{
    convert::Infallible,
    path::Path,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bench_support::{
    hook_forge::{ForgeConfig, HookForge},
    procs,
    report::Table,
};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

const DIR_PREFIX: &str = "delivery-forwarder-bench-";
const TOKEN: &str = "ghp_bench";
const POLL: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    procs::bench_main("delivery_forwarder", run)
}

/// A receiver that counts what it is sent.
struct Counter {
    url: String,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    async fn start() -> anyhow::Result<Counter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let counted = counted.clone();
                            async move {
                                let _ = request.into_body().collect().await;
                                counted.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(StatusCode::OK)
                                        .body(Full::new(Bytes::new()))
                                        .expect("a valid response"),
                                )
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Counter { url, count, task })
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests and units one poller spent on one stream.
struct Spent {
    deliveries: usize,
    requests: usize,
    units: u64,
}

fn run(full: bool) -> anyhow::Result<()> {
    let seconds = if full { 30 } else { 3 };
    println!(
        "# agent delivery-forwarder vs a naive poller: rate-limit cost per delivery, polling every {} ms ({})",
        POLL.as_millis(),
        procs::run_kind(full)
    );
    let dir = procs::work_dir(DIR_PREFIX)?;
    std::fs::write(dir.path().join("token"), TOKEN)?;
    std::fs::write(dir.path().join("secret"), "bench-secret")?;
    // The children are spawned from this (the main) thread: see procs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut table = Table::new(&[
        "stream / poller",
        "deliveries",
        "requests",
        "units",
        "requests/delivery",
        "units/delivery",
    ]);
    for (name, gap) in [
        ("quiet: 1 per 2 s", Duration::from_secs(2)),
        ("busy: 20 per s", Duration::from_millis(50)),
    ] {
        let count = (seconds * 1000 / gap.as_millis().max(1) as usize).max(2);
        let (ours, naive) = runtime.block_on(stream(dir.path(), name, gap, count))?;
        for (poller, spent) in [("delivery-forwarder", ours), ("naive poller", naive)] {
            table.row(vec![
                format!("{name} / {poller}"),
                spent.deliveries.to_string(),
                spent.requests.to_string(),
                spent.units.to_string(),
                format!("{:.2}", spent.requests as f64 / spent.deliveries as f64),
                format!("{:.2}", spent.units as f64 / spent.deliveries as f64),
            ]);
        }
    }
    table.print();
    println!(
        "  units: answers that count against GitHub's primary rate limit (every answer but a 304)."
    );
    Ok(())
}

async fn stream(
    dir: &Path,
    name: &str,
    gap: Duration,
    count: usize,
) -> anyhow::Result<(Spent, Spent)> {
    let config = ForgeConfig {
        token: Some(TOKEN.into()),
        budget: 1_000_000,
        ..ForgeConfig::default()
    };
    let (ours_forge, naive_forge) = (
        HookForge::start(config.clone()).await,
        HookForge::start(config).await,
    );
    let hook = ours_forge.add_hook("repos/bench/ours", "https://relay.invalid/hook");
    let naive_hook = naive_forge.add_hook("repos/bench/ours", "https://relay.invalid/hook");
    let (ours_sink, naive_sink) = (Counter::start().await?, Counter::start().await?);

    let slug = name.split(':').next().unwrap_or("stream");
    let rules = dir.join(format!("{slug}.yaml"));
    std::fs::write(
        &rules,
        format!(
            "rules:\n- repositories: [bench/ours]\n  hook: {{id: {hook}}}\n  target: {}\n",
            ours_sink.url
        ),
    )?;
    let log = dir.join(format!("{slug}.log"));
    let mut command = procs::command(env!("CARGO_BIN_EXE_agent"));
    command.args(["--log-format", "json", "delivery-forwarder", "--config"]);
    command
        .arg(&rules)
        .args(["--api-url", &ours_forge.url(), "--token-file"]);
    command
        .arg(dir.join("token"))
        .arg("--secret-file")
        .arg(dir.join("secret"));
    command
        .arg("--cursor-file")
        .arg(dir.join(format!("{slug}.cursor.json")));
    command.args([
        "--admin-addr",
        "127.0.0.1:0",
        "--poll-interval",
        &format!("{}ms", POLL.as_millis()),
    ]);
    let mut forwarder = procs::Proc::spawn("delivery-forwarder", command, None, Some(&log))?;

    let stop = CancellationToken::new();
    let naive = tokio::spawn(naive::run(
        naive_forge.url(),
        format!("/repos/bench/ours/hooks/{naive_hook}"),
        TOKEN.into(),
        naive_sink.url.clone(),
        POLL,
        stop.clone(),
    ));
    // Both have taken their starting point once each has listed deliveries.
    let started = Instant::now();
    loop {
        procs::check_interrupted()?;
        forwarder.ensure_running()?;
        let listed = |forge: &HookForge| forge.log().iter().any(|l| l.path.contains("/deliveries"));
        if listed(&ours_forge) && listed(&naive_forge) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the pollers did not start within 60 s:\n{}",
                forwarder.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let base = [
        (ours_forge.log().len(), ours_forge.units_used()),
        (naive_forge.log().len(), naive_forge.units_used()),
    ];

    let mut next = tokio::time::Instant::now();
    for n in 0..count {
        procs::check_interrupted()?;
        let payload = serde_json::json!({"n": n, "ref": "refs/heads/main"});
        ours_forge.deliver(hook, "push", payload.clone());
        naive_forge.deliver(naive_hook, "push", payload);
        next += gap;
        tokio::time::sleep_until(next).await;
    }
    // Each poller's bill is read when its own receiver has everything.
    let mut done: [Option<Spent>; 2] = [None, None];
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.iter().any(Option::is_none) {
        procs::check_interrupted()?;
        forwarder.ensure_running()?;
        if naive.is_finished() {
            bail!("the naive poller stopped early");
        }
        for (i, (forge, sink)) in [(&ours_forge, &ours_sink), (&naive_forge, &naive_sink)]
            .into_iter()
            .enumerate()
        {
            if done[i].is_none() && sink.count() >= count {
                done[i] = Some(Spent {
                    deliveries: sink.count(),
                    requests: forge.log().len() - base[i].0,
                    units: forge.units_used() - base[i].1,
                });
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: not every delivery arrived (forwarder {}, naive {} of {count}):\n{}",
                ours_sink.count(),
                naive_sink.count(),
                forwarder.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    naive.await.context("the naive poller")??;
    let [Some(ours), Some(naive)] = done else {
        unreachable!("the loop ends when both are done");
    };
    Ok((ours, naive))
}
