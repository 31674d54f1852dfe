//! The closing summary: every configuration in one line each, then the
//! issue's target with its figures (printed, not asserted) and whether every
//! run's responses were good.

use bench_support::{
    measure::{self, Row},
    report,
};

/// The rows' names, as the bench gives them.
pub const DIRECT: &str = "direct";
pub const NGINX: &str = "nginx proxy";
pub const RELAY: &str = "exit relay";
pub const RELAY_ONE: &str = "exit relay (1 worker)";

pub fn print(rows: &[Row]) {
    report::heading("summary");
    let find = |name: &str| rows.iter().find(|row| row.name == name);
    measure::summary_table(rows, DIRECT);

    println!();
    println!("  targets (printed, not asserted):");
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let nginx = find(NGINX);
    for (relay, label) in [
        (RELAY, "exit relay ahead of nginx"),
        (
            RELAY_ONE,
            "exit relay with 1 worker ahead of nginx (like for like, nginx has 1 worker)",
        ),
    ] {
        let relay = find(relay);
        match (
            relay.and_then(Row::requests_per_second),
            nginx.and_then(Row::requests_per_second),
        ) {
            (Some(ours), Some(theirs)) => println!(
                "  - {label}: {ours:.0} vs {theirs:.0} req/s ({:.2}x) → {}",
                ours / theirs,
                verdict(ours > theirs)
            ),
            _ => println!("  - {label}: not measured"),
        }
        if let (Some(ours), Some(theirs)) =
            (relay.and_then(Row::p99_us), nginx.and_then(Row::p99_us))
        {
            println!(
                "    p99 {} vs {} (for reference)",
                measure::micros(ours),
                measure::micros(theirs)
            );
        }
    }
}

/// Names of the configurations whose runs were not all clean.
pub fn unclean(rows: &[Row]) -> Vec<&'static str> {
    rows.iter()
        .filter(|row| !row.clean())
        .map(|row| row.name)
        .collect()
}
