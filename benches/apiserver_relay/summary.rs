//! The closing summary: one table with every configuration side by side,
//! then each of the team's targets with its figure (printed, not
//! asserted).

use bench_support::report::{self, Table};

use crate::{idle, latency, throughput};

/// How a summary row shows one proxy's idle-memory figure.
type ShowMeasured = fn(&idle::Measured) -> String;

const CONFIGS: [&str; 4] = ["direct", "relay", "haproxy", "socat"];

pub fn print(
    throughput: Option<&[throughput::Row]>,
    latency: Option<&[latency::Row]>,
    idle: Option<&idle::Outcome>,
) {
    report::heading("summary");
    let mut header = vec!["measure"];
    header.extend(CONFIGS);
    let mut table = Table::new(&header);
    let median = |name: &str, reverse: bool| {
        throughput?
            .iter()
            .find(|row| row.name == name)
            .and_then(|row| row.runs(reverse).median())
    };
    for (label, reverse) in [
        ("throughput → (Gbit/s, x direct)", false),
        ("throughput ← -R (Gbit/s, x direct)", true),
    ] {
        let direct = median("direct", reverse);
        let mut cells = vec![label.to_owned()];
        cells.extend(CONFIGS.map(|name| {
            report::or_dash(median(name, reverse).map(|gbps| match direct {
                Some(direct) => format!("{gbps:.2} ({:.2}x)", gbps / direct),
                None => format!("{gbps:.2}"),
            }))
        }));
        table.row(cells);
    }
    let mut cells = vec!["proxy CPU per Gbit/s →".to_owned()];
    cells.extend(CONFIGS.map(|name| {
        let per_gbps = throughput.and_then(|rows| {
            let row = rows.iter().find(|row| row.name == name)?;
            report::median(&row.forward.proxy_cpu_per_gbps)
        });
        report::or_dash(per_gbps.map(|c| format!("{c:.1}% of a core")))
    }));
    table.row(cells);
    let latency_row = |name: &str| latency?.iter().find(|row| row.name == name);
    for (label, pick) in [
        (
            "connect + first byte p50",
            (|row: &latency::Row| row.p50) as fn(&latency::Row) -> _,
        ),
        ("connect + first byte p99", |row: &latency::Row| row.p99),
    ] {
        let mut cells = vec![label.to_owned()];
        cells.extend(
            CONFIGS
                .map(|name| report::or_dash(latency_row(name).and_then(pick).map(report::micros))),
        );
        table.row(cells);
    }
    let direct = latency_row("direct").and_then(|row| row.p50.zip(row.p99));
    let mut cells = vec!["  added vs direct (p50 / p99)".to_owned()];
    cells.extend(CONFIGS.map(|name| {
        let mine = latency_row(name)
            .and_then(|row| row.p50.zip(row.p99))
            .filter(|_| name != "direct");
        report::or_dash(mine.zip(direct).map(|((p50, p99), (d50, d99))| {
            format!(
                "{} / {}",
                report::micros_delta(p50, d50),
                report::micros_delta(p99, d99)
            )
        }))
    }));
    table.row(cells);
    let measured = |name: &str| match (name, idle) {
        ("relay", Some(outcome)) => Some(&outcome.relay),
        ("haproxy", Some(outcome)) => outcome.haproxy.as_ref()?.as_ref().ok(),
        _ => None,
    };
    let count = idle.map_or(0, |outcome| outcome.relay.count);
    let rows: [(String, ShowMeasured); 3] = [
        (format!("idle RSS holding {}", report::count(count)), |m| {
            report::mib(m.holding_kib as f64)
        }),
        ("idle RSS per connection".to_owned(), |m| {
            format!("{:.2} KiB", m.per_connection_kib())
        }),
        ("idle RSS 10,000 (projection)".to_owned(), |m| {
            report::mib(m.projected_kib(10_000))
        }),
    ];
    for (label, show) in rows {
        let mut cells = vec![label];
        cells.extend(CONFIGS.map(|name| report::or_dash(measured(name).map(show))));
        table.row(cells);
    }
    table.print();

    println!();
    println!("  targets (printed, not asserted):");
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    match (median("relay", false), median("direct", false)) {
        (Some(relay), Some(direct)) => println!(
            "  - relay throughput ≥ 0.7x direct: {:.2}x → {}",
            relay / direct,
            verdict(relay / direct >= 0.7)
        ),
        _ => println!("  - relay throughput ≥ 0.7x direct: not measured"),
    }
    match (median("relay", false), median("haproxy", false)) {
        (Some(relay), Some(haproxy)) => println!(
            "  - relay throughput ahead of haproxy: {relay:.2} vs {haproxy:.2} Gbit/s → {}",
            verdict(relay > haproxy)
        ),
        _ => println!("  - relay throughput ahead of haproxy: not measured"),
    }
    match idle {
        Some(outcome) => {
            let projected = outcome.relay.projected_kib(10_000);
            println!(
                "  - relay idle RSS for 10,000 connections ≤ 64 MiB: {} (linear projection from {} measured) → {}",
                report::mib(projected),
                report::count(outcome.relay.count),
                verdict(projected <= 64.0 * 1024.0)
            );
        }
        None => println!("  - relay idle RSS for 10,000 connections ≤ 64 MiB: not measured"),
    }
}
