//! Requests per second and latency of each configuration under the same wrk
//! load. Rounds go round-robin over the configurations, so a burst of other
//! load on the shared cores spreads over all of them instead of spoiling
//! one; each figure is the median of its rounds.
//!
//! Beside wrk's figures each run records CPU from /proc: the proxy's process
//! group (nginx master + worker, or the relay), the upstream's, and wrk's
//! own (from the bench's reaped-children usage), since on two cores all
//! three compete for the same CPUs.

use std::{net::SocketAddr, path::Path, time::Instant};

use crate::{
    procs::{self, OtherLoad},
    report::{self, Table},
    wrk::{self, Settings},
};

/// One configuration: where wrk sends its requests and what it sends.
pub struct Config {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub headers: Vec<(String, String)>,
    /// The proxy's process group; `None` for the upstream measured directly.
    pub proxy_group: Option<i32>,
}

pub struct Params {
    pub settings: Settings,
    pub rounds: usize,
    /// Seconds of unrecorded load per configuration first (0 for none):
    /// pools fill, the relay's TokenReview verdict is cached, pages fault in.
    pub warmup_seconds: u32,
}

impl Params {
    /// The load of the wrk benches: one thread and 32 connections, `rounds`
    /// rounds of 5 s after 1 s of warm-up; a smoke run, 8 connections for
    /// one round of 1 s.
    pub fn wrk(full: bool, rounds: usize) -> Self {
        let (connections, seconds, rounds, warmup_seconds) = if full {
            (32, 5, rounds, 1)
        } else {
            (8, 1, 1, 0)
        };
        Self {
            settings: Settings {
                threads: 1,
                connections,
                seconds,
                timeout_seconds: 5,
            },
            rounds,
            warmup_seconds,
        }
    }
}

/// One run of one configuration.
pub struct Sample {
    pub report: wrk::Report,
    /// TokenReviews the apiserver answered during the run.
    pub token_reviews: Option<u64>,
    /// CPU in percent of one core over the run.
    pub proxy_cpu: Option<f64>,
    pub upstream_cpu: f64,
    pub wrk_cpu: f64,
    /// The proxy's CPU time per request, in microseconds.
    pub proxy_us_per_request: Option<f64>,
    /// CPU of processes that are not the bench's, % of the machine.
    pub other: f64,
}

/// Every run of one configuration.
pub struct Row {
    pub name: &'static str,
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
}

impl Row {
    fn median(&self, pick: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(pick).collect();
        report::median(&values)
    }

    pub fn requests_per_second(&self) -> Option<f64> {
        self.median(|s| Some(s.report.requests_per_second()))
    }

    pub fn p50_us(&self) -> Option<f64> {
        self.median(|s| Some(s.report.p50_us as f64))
    }

    pub fn p99_us(&self) -> Option<f64> {
        self.median(|s| Some(s.report.p99_us as f64))
    }

    pub fn proxy_cpu(&self) -> Option<f64> {
        self.median(|s| s.proxy_cpu)
    }

    pub fn proxy_us_per_request(&self) -> Option<f64> {
        self.median(|s| s.proxy_us_per_request)
    }

    /// Responses outside 2xx/3xx and socket errors over every run.
    pub fn bad_responses(&self) -> (u64, u64) {
        self.samples.iter().fold((0, 0), |(status, socket), s| {
            (
                status + s.report.non_2xx_3xx,
                socket + s.report.socket_errors(),
            )
        })
    }

    /// Whether every run completed with only 2xx/3xx and no socket error.
    pub fn clean(&self) -> bool {
        self.failures.is_empty() && !self.samples.is_empty() && self.bad_responses() == (0, 0)
    }
}

/// Where the runs go and what they read besides wrk's report.
pub struct Context<'a> {
    pub dir: &'a Path,
    pub wrk: &'a Path,
    pub path: &'a str,
    pub upstream_group: i32,
    /// The apiserver's TokenReview count so far, read around each run
    /// (outside its timed part).
    pub token_reviews: &'a dyn Fn() -> anyhow::Result<u64>,
}

/// Runs every configuration `params.rounds` times, round-robin.
pub fn run(cx: &Context, configs: &[Config], params: &Params) -> anyhow::Result<Vec<Row>> {
    let dir = cx.dir;
    let hook = wrk::write_hook(dir)?;
    let mut rows: Vec<Row> = configs
        .iter()
        .map(|config| Row {
            name: config.name,
            samples: Vec::new(),
            failures: Vec::new(),
        })
        .collect();
    if params.warmup_seconds > 0 {
        let warmup = Settings {
            seconds: params.warmup_seconds,
            ..params.settings.clone()
        };
        for (row, config) in rows.iter_mut().zip(configs) {
            procs::check_interrupted()?;
            let tag = format!("{}-warmup", slug(config.name));
            let url = format!("http://{}{}", config.addr, cx.path);
            if let Err(err) = wrk::run(cx.wrk, &hook, dir, &tag, &warmup, &url, &config.headers) {
                row.failures.push(format!("warm-up: {err:#}"));
            }
        }
    }
    for round in 0..params.rounds {
        for (row, config) in rows.iter_mut().zip(configs) {
            procs::check_interrupted()?;
            let tag = format!("{}-{round}", slug(config.name));
            match one_run(cx, &hook, &tag, params, config) {
                Ok(sample) => row.samples.push(sample),
                Err(err) => row.failures.push(format!("{err:#}")),
            }
        }
    }
    Ok(rows)
}

fn one_run(
    cx: &Context,
    hook: &Path,
    tag: &str,
    params: &Params,
    config: &Config,
) -> anyhow::Result<Sample> {
    let upstream_group = cx.upstream_group;
    // A failed read leaves the column empty; it does not fail the run.
    let reviews_before = (cx.token_reviews)().ok();
    let load = OtherLoad::start();
    let proxy_before = config.proxy_group.map(procs::group_ticks);
    let upstream_before = procs::group_ticks(upstream_group);
    let wrk_before = children_cpu_seconds();
    let started = Instant::now();
    let url = format!("http://{}{}", config.addr, cx.path);
    let report = wrk::run(
        cx.wrk,
        hook,
        cx.dir,
        tag,
        &params.settings,
        &url,
        &config.headers,
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = procs::clock_ticks_per_second();
    let percent = |seconds: f64| 100.0 * seconds / elapsed;
    let proxy_seconds = config
        .proxy_group
        .zip(proxy_before)
        .map(|(group, before)| procs::group_ticks(group).saturating_sub(before) as f64 / ticks);
    let upstream_seconds =
        procs::group_ticks(upstream_group).saturating_sub(upstream_before) as f64 / ticks;
    let wrk_seconds = children_cpu_seconds() - wrk_before;
    let other = load.percent();
    let token_reviews = reviews_before
        .zip((cx.token_reviews)().ok())
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Sample {
        proxy_cpu: proxy_seconds.map(percent),
        proxy_us_per_request: proxy_seconds
            .filter(|_| report.requests > 0)
            .map(|seconds| seconds * 1e6 / report.requests as f64),
        upstream_cpu: percent(upstream_seconds),
        wrk_cpu: percent(wrk_seconds),
        other,
        token_reviews,
        report,
    })
}

/// User + system time of the bench's reaped children: wrk is the only
/// child that exits during a run.
fn children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The results table and the checks table.
pub fn print(rows: &[Row]) {
    let direct = rows.first().and_then(Row::requests_per_second);
    println!();
    println!(
        "  median of runs; latency from wrk's histogram; CPU in % of one core \
         (200% is the machine); CPU/req = the proxy's CPU time per request"
    );
    let mut table = Table::new(&[
        "config",
        "req/s",
        "x direct",
        "p50",
        "p99",
        "proxy CPU",
        "CPU/req",
        "runs (req/s)",
    ]);
    for row in rows {
        let rps = row.requests_per_second();
        table.row(vec![
            row.name.to_owned(),
            report::or_dash(rps.map(|r| format!("{r:.0}"))),
            report::or_dash(rps.zip(direct).map(|(r, d)| format!("{:.2}x", r / d))),
            report::or_dash(row.p50_us().map(micros)),
            report::or_dash(row.p99_us().map(micros)),
            report::or_dash(row.proxy_cpu().map(|c| format!("{c:.0}%"))),
            report::or_dash(row.proxy_us_per_request().map(|us| format!("{us:.1} µs"))),
            row.samples
                .iter()
                .map(|s| format!("{:.0}", s.report.requests_per_second()))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    table.print();

    println!();
    println!(
        "  checks and load, over all runs (TokenReviews = reviews the apiserver answered \
         during the runs; other = CPU of processes not the bench's, % of the machine)"
    );
    let mut table = Table::new(&[
        "config",
        "non-2xx/3xx",
        "socket errors",
        "max latency",
        "TokenReviews",
        "upstream CPU",
        "wrk CPU",
        "other",
        "check",
    ]);
    for row in rows {
        let (status, socket) = row.bad_responses();
        let max = row.samples.iter().map(|s| s.report.max_us).max();
        let median = |pick: fn(&Sample) -> f64| {
            let values: Vec<f64> = row.samples.iter().map(pick).collect();
            report::median(&values)
        };
        table.row(vec![
            row.name.to_owned(),
            status.to_string(),
            socket.to_string(),
            report::or_dash(max.map(|us| micros(us as f64))),
            report::or_dash(
                row.samples
                    .iter()
                    .map(|s| s.token_reviews)
                    .sum::<Option<u64>>()
                    .map(|n| n.to_string()),
            ),
            report::or_dash(median(|s| s.upstream_cpu).map(|c| format!("{c:.0}%"))),
            report::or_dash(median(|s| s.wrk_cpu).map(|c| format!("{c:.0}%"))),
            report::or_dash(
                row.samples
                    .iter()
                    .map(|s| s.other)
                    .reduce(f64::max)
                    .map(|o| format!("max {o:.0}%")),
            ),
            if row.clean() { "ok" } else { "FAILED" }.to_owned(),
        ]);
    }
    table.print();
    for row in rows {
        for failure in &row.failures {
            println!("  ! {} run failed: {failure}", row.name);
        }
    }
}

/// Microseconds below 10 ms, milliseconds above.
/// The summary's table: every configuration in one line, requests per
/// second also as a multiple of the row named `direct`.
pub fn summary_table(rows: &[Row], direct: &str) {
    let direct = rows
        .iter()
        .find(|row| row.name == direct)
        .and_then(Row::requests_per_second);
    let mut table = Table::new(&["config", "req/s", "x direct", "p99", "CPU/req", "check"]);
    for row in rows {
        let rps = row.requests_per_second();
        table.row(vec![
            row.name.to_owned(),
            report::or_dash(rps.map(|r| format!("{r:.0}"))),
            report::or_dash(rps.zip(direct).map(|(r, d)| format!("{:.2}x", r / d))),
            report::or_dash(row.p99_us().map(micros)),
            report::or_dash(row.proxy_us_per_request().map(|us| format!("{us:.1} µs"))),
            if row.clean() { "ok" } else { "FAILED" }.to_owned(),
        ]);
    }
    table.print();
}

pub fn micros(us: f64) -> String {
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}
