//! The processes of the read-cache bench, each with its configuration and
//! log in the bench's temporary directory: a GitHub-like origin (nginx
//! serving one JSON document with the headers GitHub sends: a strong ETag,
//! `Last-Modified`, `Cache-Control: private, max-age=60, s-maxage=60`,
//! `Vary`, `X-RateLimit-*`; nginx answers `If-None-Match` with 304 itself),
//! nginx as a `proxy_cache` in front of it, and `agent read-cache --profile
//! etag` in front of it. The nginx plumbing (one worker, PID namespace,
//! foreground) is the service-relay bench's.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::bail;
use bench_support::{
    procs::{self, Proc},
    servers::{self, Document, Server},
};

const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Both caches keep an entry this long before revalidating, as GitHub's
/// `max-age=60` asks.
pub const TTL_SECONDS: u32 = 60;

/// The GitHub-like origin: nginx with one worker serving `doc`.
pub fn origin(dir: &Path, nginx: &Path, doc: &Document) -> anyhow::Result<Server> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join(doc.path.trim_start_matches('/')), &doc.body)?;
    // nginx's worker runs as `nobody` and must reach the file through the
    // (0700) temporary directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755))?;
    let port = procs::free_port()?;
    let server = format!(
        "server {{\n    listen 127.0.0.1:{port};\n    root {www};\n    \
         location / {{\n        default_type \"application/json; charset=utf-8\";\n        \
         etag on;\n        \
         add_header Cache-Control \"private, max-age={TTL_SECONDS}, s-maxage={TTL_SECONDS}\" always;\n        \
         add_header Vary \"Accept, Authorization, Cookie, X-GitHub-OTP\" always;\n        \
         add_header X-RateLimit-Limit 5000 always;\n        \
         add_header X-RateLimit-Remaining 4999 always;\n        \
         add_header X-RateLimit-Used 1 always;\n        \
         add_header X-RateLimit-Reset 1700000000 always;\n        \
         add_header X-RateLimit-Resource core always;\n    }}\n}}\n",
        www = www.display()
    );
    servers::nginx_server(dir, nginx, "origin", &server, port)
}

/// nginx with one worker as a caching proxy: `proxy_cache` keyed like the
/// agent (URI plus credential), entries valid for the TTL and then
/// revalidated (`proxy_cache_revalidate`), concurrent misses locked
/// (`proxy_cache_lock`). `Cache-Control: private` is ignored, since the key
/// holds the credential, as the agent does.
pub fn nginx_cache(dir: &Path, nginx: &Path, origin: SocketAddr) -> anyhow::Result<Server> {
    let cache = dir.join("nginx-cache-data");
    std::fs::create_dir_all(&cache)?;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777))?;
    let port = procs::free_port()?;
    let server = format!(
        "proxy_cache_path {cache} levels=1:2 keys_zone=api:10m max_size=256m inactive=1h use_temp_path=off;\n\
         upstream origin {{\n    server {origin};\n    keepalive 64;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n        \
         proxy_pass http://origin;\n        proxy_http_version 1.1;\n        \
         proxy_set_header Connection \"\";\n        \
         proxy_cache api;\n        \
         proxy_cache_key \"$scheme$proxy_host$request_uri$http_authorization\";\n        \
         proxy_ignore_headers Cache-Control Expires;\n        \
         proxy_cache_valid 200 {TTL_SECONDS}s;\n        \
         proxy_cache_revalidate on;\n        \
         proxy_cache_lock on;\n        \
         add_header X-Cache-Status $upstream_cache_status;\n    }}\n}}\n",
        cache = cache.display()
    );
    servers::nginx_server(dir, nginx, "nginx-cache", &server, port)
}

/// `agent read-cache --profile etag` in front of `origin`, with
/// `--worker-threads` when given (else one per core); ready (/readyz 200).
pub fn read_cache(
    dir: &Path,
    tag: &str,
    origin: SocketAddr,
    worker_threads: Option<u16>,
) -> anyhow::Result<Server> {
    let log = dir.join(format!("{tag}.log"));
    let mut command = procs::command(env!("CARGO_BIN_EXE_agent"));
    if let Some(n) = worker_threads {
        command.args(["--worker-threads", &n.to_string()]);
    }
    command
        .args(["read-cache", "--profile", "etag"])
        .args(["--upstream", &format!("http://{origin}")])
        .args(["--cache-ttl", &format!("{TTL_SECONDS}s")])
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        // info, for the lines naming the bound addresses; nothing is
        // logged at info per request.
        .args(["--log-format", "json", "--log-level", "info"])
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
        Ok(head(admin, "/readyz", &[]).is_ok_and(|(status, _)| status == 200))
    })?;
    Ok(Server { addr, proc })
}

/// Fails unless a GET of `path` with `headers` is answered with a response
/// head carrying `header: value` (the cache's own word that it was a hit).
pub fn expect_header(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    header: &str,
    value: &str,
) -> anyhow::Result<()> {
    let (status, head) = head(addr, path, headers)?;
    let found = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(header) && v.trim().eq_ignore_ascii_case(value)
        })
    });
    if status != 200 || !found {
        bail!("GET {path}: expected 200 with {header}: {value}, got:\n{head}");
    }
    Ok(())
}

/// A bounded HTTP/1.0 GET: status and the response head as text.
fn head(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, String)> {
    servers::get_with_head(addr, path, headers).map(|(status, head, _)| (status, head))
}
