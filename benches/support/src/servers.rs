//! nginx under test, with its own configuration and log in the bench's
//! temporary directory (nothing relies on system services): the upstream
//! (serving a static file), a reverse proxy to it, or a server with a
//! configuration of the bench's own (the read cache's peers); and a bounded
//! GET that checks what a server under test serves.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::procs::{self, Proc};

/// How long a process may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per client connection before nginx closes it: high, so that no
/// configuration spends the run reconnecting (nginx's default is 1000).
const KEEPALIVE_REQUESTS: u32 = 1_000_000;

/// The static file the upstream serves.
pub struct Document {
    pub path: &'static str,
    pub body: Vec<u8>,
}

impl Document {
    /// `size` bytes of printable text, so a truncated or shifted body shows.
    pub fn new(size: usize) -> Self {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut body: Vec<u8> = (0..size).map(|i| alphabet[i % alphabet.len()]).collect();
        if let Some(last) = body.last_mut() {
            *last = b'\n';
        }
        Self { path: "/1k", body }
    }
}

/// A server under test.
pub struct Server {
    pub addr: SocketAddr,
    pub proc: Proc,
}

/// nginx (nginx-light) with one worker serving `doc` from `dir/www`.
pub fn upstream(dir: &Path, nginx: &Path, doc: &Document) -> anyhow::Result<Server> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join(doc.path.trim_start_matches('/')), &doc.body)?;
    // Run as root, nginx's worker drops to `nobody`, which must be able to
    // reach the file through the (0700) temporary directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755))?;
    let port = procs::free_port()?;
    let server = format!(
        "server {{\n    listen 127.0.0.1:{port};\n    root {};\n    \
         location / {{ }}\n}}\n",
        www.display()
    );
    nginx_server(dir, nginx, "upstream", &server, port)
}

/// nginx with one worker as a reverse proxy to `upstream`, with a pool of
/// keep-alive connections to it (`keepalive 64`).
pub fn nginx_proxy(dir: &Path, nginx: &Path, upstream: SocketAddr) -> anyhow::Result<Server> {
    let port = procs::free_port()?;
    let server = format!(
        "upstream backend {{\n    server {upstream};\n    keepalive 64;\n    \
         keepalive_requests {KEEPALIVE_REQUESTS};\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n        \
         proxy_pass http://backend;\n        proxy_http_version 1.1;\n        \
         proxy_set_header Connection \"\";\n    }}\n}}\n"
    );
    nginx_server(dir, nginx, "nginx-proxy", &server, port)
}

/// The configuration shared by both nginx instances: one worker, no access
/// log, every path under its own prefix in `dir`; in the foreground
/// (`daemon off`), so killing the child's process group ends it.
pub fn nginx_server(
    dir: &Path,
    nginx: &Path,
    tag: &str,
    server: &str,
    port: u16,
) -> anyhow::Result<Server> {
    let prefix = dir.join(tag);
    std::fs::create_dir_all(&prefix)?;
    let error_log = prefix.join("error.log");
    let config = format!(
        "worker_processes 1;\npid {pid};\nerror_log {log} warn;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n    access_log off;\n    keepalive_requests {KEEPALIVE_REQUESTS};\n    \
         keepalive_timeout 65s;\n{server}}}\n",
        pid = prefix.join("nginx.pid").display(),
        log = error_log.display(),
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, config)?;
    let mut command = match pid_namespace() {
        Some(unshare) => {
            let mut command = procs::command(unshare);
            command
                .args(["--pid", "--fork", "--kill-child", "--"])
                .arg(nginx);
            command
        }
        None => procs::command(nginx),
    };
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(&error_log)
        .args(["-g", "daemon off;"]);
    let proc = Proc::spawn(
        &format!("nginx ({tag})"),
        command,
        None,
        Some(&prefix.join("stderr.log")),
    )?;
    listening(proc, port)
}

pub fn listening(mut proc: Proc, port: u16) -> anyhow::Result<Server> {
    procs::wait_for(&format!("nginx to listen on {port}"), START_TIMEOUT, || {
        proc.ensure_running()?;
        procs::is_listening(port)
    })?;
    Ok(Server {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        proc,
    })
}

/// `unshare`, if it can give nginx a PID namespace of its own here (it
/// needs root). nginx's worker is the master's child, not the bench's, so
/// `PR_SET_PDEATHSIG` does not reach it and it would outlive a SIGKILLed
/// bench; as PID 1 of its own namespace the master takes the worker with
/// it when it dies, and `--kill-child` ties the master to `unshare`, the
/// bench's child. Without it a SIGKILLed bench may leave workers behind.
pub fn pid_namespace() -> Option<&'static Path> {
    static UNSHARE: OnceLock<Option<PathBuf>> = OnceLock::new();
    UNSHARE
        .get_or_init(|| {
            let unshare = procs::which("unshare")?;
            let works = procs::command(&unshare)
                .args(["--pid", "--fork", "--kill-child", "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            works.then_some(unshare)
        })
        .as_deref()
}

/// The nginx binary, if installed.
/// wrk and nginx, which the wrk benches need. Without them the smoke run
/// (part of `cargo test --all-targets`) passes with a note (`None`); the full
/// run fails.
pub fn wrk_and_nginx(full: bool) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    if let (Some(wrk), Some(nginx)) = (crate::wrk::find(), find_nginx()) {
        return Ok(Some((wrk, nginx)));
    }
    let missing = "wrk and nginx are needed (hack/install-deps.sh --bench)";
    if full {
        anyhow::bail!("{missing}");
    }
    println!("  {missing}; skipped");
    Ok(None)
}

pub fn find_nginx() -> Option<PathBuf> {
    procs::which("nginx").or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        sbin.is_file().then_some(sbin)
    })
}

/// Fails unless `addr` answers GET `doc.path` (with `headers`) with 200 and
/// exactly the document's bytes.
pub fn verify(
    addr: SocketAddr,
    doc: &Document,
    headers: &[(String, String)],
) -> anyhow::Result<()> {
    let (status, body) = get(addr, doc.path, headers)?;
    if status != 200 {
        bail!(
            "GET {} answered {status}: {}",
            doc.path,
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        );
    }
    if body != doc.body {
        bail!(
            "GET {} answered 200 with {} bytes that are not the {}-byte document",
            doc.path,
            body.len(),
            doc.body.len()
        );
    }
    Ok(())
}

/// A bounded HTTP/1.0 GET (1.0, so the body is never chunked and ends with
/// the connection): status and body.
pub fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, Vec<u8>)> {
    get_with_head(addr, path, headers).map(|(status, _, body)| (status, body))
}

/// [`get`], also with the response head as text (without its blank line).
pub fn get_with_head(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response without a blank line")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("HTTP response without a status")?;
    Ok((status, head, response[split + 4..].to_vec()))
}
