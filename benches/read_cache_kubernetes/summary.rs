//! The report: per representation a table of every configuration (its
//! sequential latency and its figures under wrk), a table of the checks
//! and of what authorization and the cache did during the runs, then the
//! issue's target with its ratios (printed, not asserted).

use bench_support::report::{self, Table};
use std::time::Duration;

use crate::measure::{Row, Variant};

/// The rows' names, as the bench gives them.
pub const DIRECT: &str = "direct (apiserver, https)";
pub const CACHE: &str = "cache (authz reused 5 s)";
pub const CACHE_SSAR: &str = "cache (SSAR every request)";

/// What the issue asks of the cache against the apiserver.
const TARGET: f64 = 20.0;

pub fn print(rows: &[Row]) {
    for variant in Variant::ALL {
        let rows: Vec<&Row> = rows.iter().filter(|row| row.variant == variant).collect();
        if rows.is_empty() {
            continue;
        }
        figures(variant, &rows);
    }
    checks(rows);
}

fn figures(variant: Variant, rows: &[&Row]) {
    report::heading(&format!("LIST, {}", variant.name()));
    let direct = rows.iter().find(|row| row.name == DIRECT);
    let direct_rps = direct.and_then(|row| row.requests_per_second());
    let direct_p50 = direct.and_then(|row| row.p50());
    let mut table = Table::new(&[
        "config",
        "seq n",
        "seq p50",
        "seq p99",
        "x direct",
        "req/s",
        "x direct",
        "MiB/s",
        "load p50",
        "load p99",
        "runs (req/s)",
    ]);
    for row in rows {
        let rps = row.requests_per_second();
        table.row(vec![
            row.name.to_owned(),
            row.latencies.len().to_string(),
            report::or_dash(row.p50().map(duration)),
            report::or_dash(row.p99().map(duration)),
            report::or_dash(
                row.p50()
                    .zip(direct_p50)
                    .map(|(ours, theirs)| ratio(theirs.as_secs_f64() / ours.as_secs_f64())),
            ),
            report::or_dash(rps.map(|r| format!("{r:.1}"))),
            report::or_dash(
                rps.zip(direct_rps)
                    .map(|(ours, theirs)| ratio(ours / theirs)),
            ),
            report::or_dash(row.mib_per_second().map(|m| format!("{m:.0}"))),
            report::or_dash(row.load_p50_us().map(micros)),
            report::or_dash(row.load_p99_us().map(micros)),
            row.samples
                .iter()
                .map(|s| format!("{:.1}", s.report.requests_per_second()))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    table.print();
}

fn checks(rows: &[Row]) {
    report::heading("checks and costs, over all wrk runs");
    println!(
        "  SSAR/req = SelfSubjectAccessReviews the apiserver answered per request, sequentially and \
         under wrk (where concurrent identical reviews are merged); fresh hits = \
         the cache's answers served from its store; CPU/req = CPU time per request of the cache \
         and of etcd + the apiserver; other = CPU of processes not the bench's, % of the machine"
    );
    let mut table = Table::new(&[
        "representation",
        "config",
        "non-2xx/3xx",
        "socket errors",
        "max latency",
        "SSAR/req seq",
        "SSAR/req wrk",
        "fresh hits",
        "cache CPU/req",
        "plane CPU/req",
        "other",
        "check",
    ]);
    for row in rows {
        let (status, socket) = row.bad_responses();
        table.row(vec![
            row.variant.name().to_owned(),
            row.name.to_owned(),
            status.to_string(),
            socket.to_string(),
            report::or_dash(
                row.samples
                    .iter()
                    .map(|s| s.report.max_us)
                    .max()
                    .map(|us| micros(us as f64)),
            ),
            report::or_dash(
                row.sequential_reviews_per_request()
                    .map(|r| format!("{r:.3}")),
            ),
            report::or_dash(row.reviews_per_request().map(|r| format!("{r:.3}"))),
            report::or_dash(row.hit_ratio().map(|h| format!("{:.1}%", h * 100.0))),
            report::or_dash(row.cpu_us_per_request(|s| s.cache_cpu).map(micros)),
            report::or_dash(row.cpu_us_per_request(|s| Some(s.plane_cpu)).map(micros)),
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
            println!("  ! {} / {}: {failure}", row.variant.name(), row.name);
        }
    }
}

/// The closing lines: the target, for each cache configuration and
/// representation, in requests per second and in sequential p50.
pub fn targets(rows: &[Row]) {
    report::heading("summary");
    println!(
        "  target: LIST through the cache at least {TARGET:.0}x faster than from the apiserver (printed, not asserted)"
    );
    let verdict = |x: f64| if x >= TARGET { "met" } else { "MISSED" };
    for variant in Variant::ALL {
        let find = |name: &str| {
            rows.iter()
                .find(|row| row.variant == variant && row.name == name)
        };
        let Some(direct) = find(DIRECT) else {
            continue;
        };
        for name in [CACHE, CACHE_SSAR] {
            let Some(cache) = find(name) else {
                continue;
            };
            let throughput = cache
                .requests_per_second()
                .zip(direct.requests_per_second())
                .map(|(ours, theirs)| {
                    format!(
                        "{ours:.0} vs {theirs:.1} req/s = {} ({})",
                        ratio(ours / theirs),
                        verdict(ours / theirs)
                    )
                });
            let latency = cache.p50().zip(direct.p50()).map(|(ours, theirs)| {
                let x = theirs.as_secs_f64() / ours.as_secs_f64();
                format!(
                    "p50 {} vs {} = {} ({})",
                    duration(ours),
                    duration(theirs),
                    ratio(x),
                    verdict(x)
                )
            });
            println!(
                "  - {:<10} {name}: {}; {}",
                variant.name(),
                report::or_dash(throughput),
                report::or_dash(latency)
            );
        }
    }
}

/// Names of the rows whose checks or runs failed.
pub fn unclean(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|row| !row.clean())
        .map(|row| format!("{} / {}", row.variant.name(), row.name))
        .collect()
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}x")
    } else {
        format!("{x:.1}x")
    }
}

fn duration(d: Duration) -> String {
    micros(d.as_secs_f64() * 1e6)
}

/// Microseconds below 10 ms, milliseconds above.
fn micros(us: f64) -> String {
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}
