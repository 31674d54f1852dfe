//! `agent read-cache --profile kubernetes` as the bench's child, in front of
//! the bench's apiserver, and what its admin port tells about a run.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use bench_support::procs::{self, Proc};

/// How long the cache may take to listen and to have its watch in sync.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One running cache.
pub struct Cache {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
}

/// Starts a cache with `extra` flags after the common ones: listening on
/// loopback, the managed kubeconfig with the cache's own token, and
/// ConfigMaps watched (so their entries stay while nothing changes them,
/// instead of expiring every `--cache-ttl`). Returns once `/readyz` says
/// the watch is in sync.
pub fn start(dir: &Path, tag: &str, kubeconfig: &Path, extra: &[&str]) -> anyhow::Result<Cache> {
    let log = dir.join(format!("{tag}.log"));
    let mut command = procs::command(env!("CARGO_BIN_EXE_agent"));
    command
        .args(["read-cache", "--profile", "kubernetes"])
        .arg("--managed-kubeconfig")
        .arg(kubeconfig)
        .args(["--watch-resource", "configmaps"])
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        // info, for the lines naming the bound addresses; nothing is logged
        // at info per request.
        .args(["--log-format", "json", "--log-level", "info"])
        .args(extra)
        .env_remove("TOKIO_WORKER_THREADS");
    let mut proc = Proc::spawn(
        &format!("agent read-cache ({tag})"),
        command,
        None,
        Some(&log),
    )?;
    let (addr, admin) = procs::agent_listener_addrs(&mut proc, &log, "cache", START_TIMEOUT)?;
    procs::wait_for("the cache's /readyz", START_TIMEOUT, || {
        proc.ensure_running()?;
        Ok(admin_get(admin, "/readyz").is_ok_and(|(status, _)| status == 200))
    })?;
    Ok(Cache { addr, admin, proc })
}

impl Cache {
    /// Requests the cache has answered, by how they were served, from its
    /// `cluster_relay_read_cache_requests_total` counter: (fresh hits, all).
    pub fn served(&self) -> anyhow::Result<(u64, u64)> {
        let (status, text) = admin_get(self.admin, "/metrics")?;
        if status != 200 {
            bail!("the cache's /metrics answered {status}");
        }
        let (mut hits, mut all) = (0, 0);
        for line in text.lines() {
            if !line.starts_with("cluster_relay_read_cache_requests_total{") {
                continue;
            }
            let value: u64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("unreadable metric line {line:?}"))?;
            all += value;
            if line.contains("cache=\"fresh_hit\"") {
                hits += value;
            }
        }
        Ok((hits, all))
    }
}

/// A bounded HTTP/1.0 GET to the admin port (1.0, so the body ends with
/// the connection): status and body as text.
fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without a blank line")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
