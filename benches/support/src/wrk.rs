//! One wrk run: fixed threads, connections, duration and timeout against
//! one URL (plain http, or https for an apiserver), with `--latency`. A Lua
//! `done` hook prints wrk's own summary and latency histogram (the figures
//! `--latency` prints, in microseconds instead of rounded text) and the
//! bytes read as one JSON line, which is what is read back; the hook runs
//! once at the end, so wrk still sends its static request at full speed.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::procs::{self, Proc};

/// Marks the hook's line in wrk's output.
const MARK: &str = "WRK-SUMMARY ";

const DONE_HOOK: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-SUMMARY {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"non_2xx_3xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
"#;

/// The load every configuration gets alike.
#[derive(Debug, Clone)]
pub struct Settings {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
    /// wrk's `--timeout`: a response slower than this counts as an error.
    pub timeout_seconds: u32,
}

impl Settings {
    /// The wrk command line, with header values left out (one is a token).
    /// `url` as it should be printed, e.g. `http://ADDR/PATH`.
    pub fn describe(&self, header_names: &[&str], url: &str) -> String {
        let headers: String = header_names
            .iter()
            .map(|name| format!(" -H '{name}: …'"))
            .collect();
        format!(
            "wrk -t{} -c{} -d{}s --latency --timeout {}s{headers} {url}",
            self.threads, self.connections, self.seconds, self.timeout_seconds
        )
    }
}

/// What wrk reported for one run (the hook's line also has p90, left in
/// wrk's output file).
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub requests: u64,
    pub duration_us: u64,
    /// Response bytes read, heads included.
    pub bytes: u64,
    /// Responses with a status outside 2xx and 3xx.
    pub non_2xx_3xx: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Report {
    pub fn seconds(&self) -> f64 {
        (self.duration_us as f64 / 1e6).max(1e-9)
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds()
    }

    /// MiB of responses per second.
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds() / (1024.0 * 1024.0)
    }

    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// Writes the hook script once; its path goes to every run.
pub fn write_hook(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("wrk-summary.lua");
    fs::write(&path, DONE_HOOK)?;
    Ok(path)
}

/// The wrk binary, if installed.
pub fn find() -> Option<PathBuf> {
    procs::which("wrk")
}

/// Runs wrk once against `url` and returns its report; its output is kept
/// in `dir/wrk-<tag>.out`.
pub fn run(
    wrk: &Path,
    hook: &Path,
    dir: &Path,
    tag: &str,
    settings: &Settings,
    url: &str,
    headers: &[(String, String)],
) -> anyhow::Result<Report> {
    let out = dir.join(format!("wrk-{tag}.out"));
    let _ = fs::remove_file(&out);
    let mut command = procs::command(wrk);
    command
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{}s", settings.seconds))
        .arg("--latency")
        .arg("--timeout")
        .arg(format!("{}s", settings.timeout_seconds))
        .arg("-s")
        .arg(hook);
    for (name, value) in headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    command.arg(url);
    let started = Instant::now();
    let mut proc = Proc::spawn("wrk", command, None, Some(&out))?;
    // wrk ends by itself after its duration plus the last responses; the
    // margin covers a server that stalls, after which the run has failed.
    let limit = settings.seconds + settings.timeout_seconds + 10;
    let status = proc.wait_until(started + Duration::from_secs(u64::from(limit)))?;
    let text = fs::read_to_string(&out)?;
    let Some(line) = text.lines().find_map(|line| line.strip_prefix(MARK)) else {
        bail!("wrk ({status}) printed no summary{}", proc.log_tail());
    };
    serde_json::from_str(line).context("wrk's summary line is not the expected JSON")
}
