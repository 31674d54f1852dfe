//! Bulk-transfer throughput: one iperf3 stream directly over loopback and
//! through each proxy (iperf3's control and data connections both pass the
//! proxy). Rounds go round-robin over the configurations, so a burst of
//! other load on the shared cores spreads over all of them instead of
//! spoiling one; each figure is the median of its rounds.

use std::{fs, net::SocketAddr, path::Path, process::Stdio, time::Duration, time::Instant};

use anyhow::{Context as _, bail};
use bench_support::{
    procs::{self, OtherLoad, Proc},
    report::{self, Table},
};

use crate::{
    Cpus,
    peers::{self, Tools},
};

pub struct Params {
    pub seconds: u32,
    pub rounds: usize,
    pub reverse: bool,
}

/// Every run of one configuration in one direction.
#[derive(Default)]
pub struct Runs {
    pub gbps: Vec<f64>,
    /// CPU of the proxy's process group, in percent of one core.
    pub proxy_cpu: Vec<f64>,
    /// `proxy_cpu` per Gbit/s moved: the proxy's cost per byte, which
    /// depends less on how the scheduler shared the cores than either.
    pub proxy_cpu_per_gbps: Vec<f64>,
    /// CPU of the iperf3 client plus server, in percent of one core.
    pub endpoints_cpu: Vec<f64>,
    /// CPU of processes not the bench's, in percent of the machine.
    pub other: Vec<f64>,
    pub failures: Vec<String>,
}

impl Runs {
    pub fn median(&self) -> Option<f64> {
        report::median(&self.gbps)
    }
}

pub struct Row {
    pub name: &'static str,
    pub forward: Runs,
    pub reverse: Runs,
}

impl Row {
    pub fn runs(&self, reverse: bool) -> &Runs {
        if reverse {
            &self.reverse
        } else {
            &self.forward
        }
    }
}

/// Runs every configuration; `None` when iperf3 is not installed.
pub fn run(
    dir: &Path,
    tools: &Tools,
    params: &Params,
    cpus: &Cpus,
) -> anyhow::Result<Option<Vec<Row>>> {
    let Some(iperf3) = tools.iperf3.as_deref() else {
        println!("  iperf3 is not installed; skipped");
        return Ok(None);
    };
    let (_server, upstream) = peers::iperf3_server(dir, iperf3, cpus.endpoints())?;
    let mut proxies = vec![peers::relay(dir, "throughput", upstream, 64, cpus.proxy())?];
    if let Some(haproxy) = tools.haproxy.as_deref() {
        proxies.push(peers::haproxy(
            dir,
            "throughput",
            haproxy,
            upstream,
            1000,
            cpus.proxy(),
        )?);
    }
    if let Some(socat) = tools.socat.as_deref() {
        proxies.push(peers::socat(
            dir,
            "throughput",
            socat,
            upstream,
            cpus.proxy(),
        )?);
    }
    for proxy in &proxies {
        println!(
            "  {}: pid {}, {} threads",
            proxy.name,
            proxy.proc.pid(),
            procs::threads(proxy.proc.pid())?
        );
    }
    let targets: Vec<(&'static str, SocketAddr, Option<i32>)> =
        std::iter::once(("direct", upstream, None))
            .chain(proxies.iter().map(|p| (p.name, p.addr, Some(p.proc.pid()))))
            .collect();
    let mut rows: Vec<Row> = targets
        .iter()
        .map(|&(name, ..)| Row {
            name,
            forward: Runs::default(),
            reverse: Runs::default(),
        })
        .collect();

    let directions: &[bool] = if params.reverse {
        &[false, true]
    } else {
        &[false]
    };
    for &reverse in directions {
        for round in 0..params.rounds {
            for (row, &(name, addr, group)) in rows.iter_mut().zip(&targets) {
                procs::check_interrupted()?;
                let runs = if reverse {
                    &mut row.reverse
                } else {
                    &mut row.forward
                };
                let tag = format!(
                    "{name}-{}-{round}",
                    if reverse { "reverse" } else { "forward" }
                );
                match one_run(
                    dir,
                    iperf3,
                    addr,
                    params.seconds,
                    reverse,
                    group,
                    cpus,
                    &tag,
                ) {
                    Ok(sample) => {
                        runs.gbps.push(sample.gbps);
                        runs.proxy_cpu.extend(sample.proxy_cpu);
                        runs.proxy_cpu_per_gbps
                            .extend(sample.proxy_cpu.map(|cpu| cpu / sample.gbps));
                        runs.endpoints_cpu.push(sample.endpoints_cpu);
                        runs.other.push(sample.other);
                    }
                    Err(err) => runs.failures.push(format!("{err:#}")),
                }
            }
        }
        print_direction(&rows, reverse);
    }
    Ok(Some(rows))
}

struct Sample {
    gbps: f64,
    proxy_cpu: Option<f64>,
    endpoints_cpu: f64,
    other: f64,
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    dir: &Path,
    iperf3: &Path,
    addr: SocketAddr,
    seconds: u32,
    reverse: bool,
    group: Option<i32>,
    cpus: &Cpus,
    tag: &str,
) -> anyhow::Result<Sample> {
    let json = dir.join(format!("iperf3-{tag}.json"));
    let mut command = procs::command(iperf3);
    command
        .args(["-c", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .args([
            "-t",
            &seconds.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ])
        .stdout(fs::File::create(&json)?)
        .stderr(Stdio::null());
    if reverse {
        command.arg("-R");
    }
    let load = OtherLoad::start();
    let cpu_before = group.map(procs::group_ticks);
    let started = Instant::now();
    let mut client = Proc::spawn("iperf3 -c", command, cpus.endpoints(), None)?;
    // iperf3 ends by itself after `seconds`; the margin covers setup and
    // a proxy that stalls, after which the run counts as failed.
    let status = client.wait_until(started + Duration::from_secs(u64::from(seconds) + 20))?;
    let elapsed = started.elapsed().as_secs_f64();
    let proxy_cpu = group.zip(cpu_before).map(|(group, before)| {
        let used = procs::group_ticks(group).saturating_sub(before);
        100.0 * used as f64 / procs::clock_ticks_per_second() / elapsed
    });
    let other = load.percent();

    let text = fs::read_to_string(&json)?;
    let result: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("iperf3 ({status}) printed no JSON"))?;
    if let Some(error) = result["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let bits = result["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")?;
    // iperf3 reports each end's CPU time over the test in % of one core.
    let cpu = &result["end"]["cpu_utilization_percent"];
    let endpoints_cpu =
        cpu["host_total"].as_f64().unwrap_or(0.0) + cpu["remote_total"].as_f64().unwrap_or(0.0);
    Ok(Sample {
        gbps: bits / 1e9,
        proxy_cpu,
        endpoints_cpu,
        other,
    })
}

fn print_direction(rows: &[Row], reverse: bool) {
    println!();
    println!(
        "  {} (median of runs; CPU in % of one core, 200% is the machine; \
         other = CPU of processes not the bench's, % of the machine)",
        if reverse {
            "reverse, iperf3 -R: server sends"
        } else {
            "forward: client sends"
        }
    );
    let direct = rows.first().and_then(|row| row.runs(reverse).median());
    let mut table = Table::new(&[
        "config",
        "Gbit/s",
        "x direct",
        "runs (Gbit/s)",
        "iperf3 CPU",
        "proxy CPU",
        "per Gbit/s",
        "other",
    ]);
    for row in rows {
        let r = row.runs(reverse);
        let median = r.median();
        table.row(vec![
            row.name.to_owned(),
            report::or_dash(median.map(|m| format!("{m:.2}"))),
            report::or_dash(median.zip(direct).map(|(m, d)| format!("{:.2}x", m / d))),
            r.gbps
                .iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            report::or_dash(report::median(&r.endpoints_cpu).map(|c| format!("{c:.0}%"))),
            report::or_dash(report::median(&r.proxy_cpu).map(|c| format!("{c:.0}%"))),
            report::or_dash(report::median(&r.proxy_cpu_per_gbps).map(|c| format!("{c:.1}%"))),
            report::or_dash(
                r.other
                    .iter()
                    .copied()
                    .reduce(f64::max)
                    .map(|o| format!("max {o:.0}%")),
            ),
        ]);
    }
    table.print();
    for row in rows {
        for failure in &row.runs(reverse).failures {
            println!("  ! {} run failed: {failure}", row.name);
        }
    }
}
