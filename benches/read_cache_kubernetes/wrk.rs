//! One wrk run against a whole URL: https for the apiserver, plain http for
//! the cache. The service-relay bench's wrk module builds `http://ADDR/PATH`
//! itself, so this is its sibling rather than a user of it: the same Lua
//! `done` hook (wrk's summary and latency histogram as one JSON line, in
//! microseconds), plus the bytes read, since a response here is megabytes.

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
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// A direct LIST takes a few hundred milliseconds and several run at once
/// on two shared cores; wrk's default of 2 s would count slow ones as
/// errors.
const TIMEOUT_SECONDS: u32 = 10;

/// The load every configuration gets alike.
#[derive(Debug, Clone)]
pub struct Settings {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

impl Settings {
    /// The wrk command line, with header values left out (one is a token).
    pub fn describe(&self, header_names: &[&str]) -> String {
        let headers: String = header_names
            .iter()
            .map(|name| format!(" -H '{name}: …'"))
            .collect();
        format!(
            "wrk -t{} -c{} -d{}s --latency --timeout {TIMEOUT_SECONDS}s{headers} URL",
            self.threads, self.connections, self.seconds
        )
    }
}

/// What wrk reported for one run.
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
        .arg(format!("{TIMEOUT_SECONDS}s"))
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
    let deadline = started + Duration::from_secs(u64::from(settings.seconds + TIMEOUT_SECONDS + 5));
    let status = proc.wait_until(deadline)?;
    let text = fs::read_to_string(&out)?;
    let Some(line) = text.lines().find_map(|line| line.strip_prefix(MARK)) else {
        bail!("wrk ({status}) printed no summary{}", proc.log_tail());
    };
    serde_json::from_str(line).context("wrk's summary line is not the expected JSON")
}
