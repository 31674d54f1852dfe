//! Starting the relay and its peers (haproxy, socat) in front of an upstream,
//! and the iperf3 server, each with its own configuration and log in the
//! bench's temporary directory; nothing relies on system services.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use bench_support::procs::{self, Proc};
use kube::config::{Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

/// How long a process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer programs found on PATH, with their version lines.
pub struct Tools {
    pub iperf3: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub socat: Option<PathBuf>,
}

impl Tools {
    pub fn find() -> Self {
        Self {
            iperf3: procs::which("iperf3"),
            haproxy: procs::which("haproxy"),
            socat: procs::which("socat"),
        }
    }

    /// One line per peer: its version, or that it is missing.
    pub fn describe(&self) -> Vec<String> {
        let version = |path: &Option<PathBuf>, name: &str, flag: &str, pick: &str| match path {
            None => format!("{name}: not installed; skipped"),
            Some(path) => procs::command(path)
                .arg(flag)
                .output()
                .ok()
                .and_then(|out| {
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.lines()
                        .find(|line| line.contains(pick))
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| format!("{name}: version unknown")),
        };
        vec![
            version(&self.iperf3, "iperf3", "--version", "iperf"),
            version(&self.haproxy, "haproxy", "-v", "version"),
            version(&self.socat, "socat", "-V", "socat version"),
        ]
    }
}

/// A proxy in front of an upstream: the relay, haproxy or socat.
pub struct Proxy {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub proc: Proc,
    /// The relay's admin server (/metrics, /readyz).
    admin: Option<SocketAddr>,
}

impl Proxy {
    /// A plain (unlabelled) sample from the relay's /metrics.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let admin = self.admin.context("only the relay has metrics")?;
        let (_, body) = http_get(admin, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("{name} not in /metrics"))?
            .trim()
            .parse()
            .with_context(|| format!("{name} is not a number"))
    }
}

/// `agent apiserver-relay` relaying to `upstream`, ready (/readyz 200).
pub fn relay(
    dir: &Path,
    tag: &str,
    upstream: SocketAddr,
    max_connections: usize,
    cpus: Option<&[usize]>,
) -> anyhow::Result<Proxy> {
    let kubeconfig = dir.join(format!("{tag}-managed.kubeconfig"));
    write_kubeconfig(&kubeconfig, upstream)?;
    let log = dir.join(format!("{tag}-relay.log"));
    let mut command = procs::command(env!("CARGO_BIN_EXE_agent"));
    command
        .args(["apiserver-relay", "--log-format", "json"])
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--managed-kubeconfig")
        .arg(&kubeconfig)
        .arg("--max-connections")
        .arg(max_connections.to_string());
    let mut proc = Proc::spawn("agent apiserver-relay", command, cpus, Some(&log))?;

    // Port 0 everywhere: the relay logs what it bound.
    let (addr, admin) = procs::agent_addrs(&mut proc, &log, START_TIMEOUT)?;
    procs::wait_for("the relay's /readyz", START_TIMEOUT, || {
        proc.ensure_running()?;
        Ok(http_get(admin, "/readyz").is_ok_and(|(status, _)| status == 200))
    })?;
    Ok(Proxy {
        name: "relay",
        addr,
        proc,
        admin: Some(admin),
    })
}

/// The managed kubeconfig the relay follows: only the server matters, as
/// the relay never speaks TLS itself. JSON is YAML, so serde_json writes it.
fn write_kubeconfig(path: &Path, upstream: SocketAddr) -> anyhow::Result<()> {
    let config = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: "managed".into(),
            cluster: Some(Cluster {
                server: Some(format!("https://{upstream}")),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "managed".into(),
            context: Some(Context {
                cluster: "managed".into(),
                user: Some("bench".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "bench".into(),
            ..Default::default()
        }],
        current_context: Some("managed".into()),
        ..Default::default()
    };
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// haproxy in TCP mode, one frontend and one backend, its thread count left
/// at the default (one per core), generous timeouts so idle connections
/// stay; in the foreground (`-db`) so killing the child ends it.
pub fn haproxy(
    dir: &Path,
    tag: &str,
    binary: &Path,
    upstream: SocketAddr,
    maxconn: usize,
    cpus: Option<&[usize]>,
) -> anyhow::Result<Proxy> {
    let port = procs::free_port()?;
    let config = format!(
        "global\n    maxconn {maxconn}\n\
         defaults\n    mode tcp\n    maxconn {maxconn}\n    timeout connect 5s\n    \
         timeout client 1h\n    timeout server 1h\n\
         frontend relay\n    bind 127.0.0.1:{port}\n    default_backend upstream\n\
         backend upstream\n    server upstream {upstream}\n"
    );
    let path = dir.join(format!("{tag}-haproxy.cfg"));
    std::fs::write(&path, config)?;
    let mut command = procs::command(binary);
    command.arg("-f").arg(&path).arg("-db");
    let log = dir.join(format!("{tag}-haproxy.log"));
    let proc = Proc::spawn("haproxy", command, cpus, Some(&log))?;
    listening("haproxy", proc, port)
}

/// socat forking a process per connection, as usually run.
pub fn socat(
    dir: &Path,
    tag: &str,
    binary: &Path,
    upstream: SocketAddr,
    cpus: Option<&[usize]>,
) -> anyhow::Result<Proxy> {
    let port = procs::free_port()?;
    let mut command = procs::command(binary);
    command
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("TCP:{upstream}"));
    let log = dir.join(format!("{tag}-socat.log"));
    let proc = Proc::spawn("socat", command, cpus, Some(&log))?;
    listening("socat", proc, port)
}

/// A persistent iperf3 server on 127.0.0.1.
pub fn iperf3_server(
    dir: &Path,
    binary: &Path,
    cpus: Option<&[usize]>,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let port = procs::free_port()?;
    let mut command = procs::command(binary);
    command
        .args(["-s", "-B", "127.0.0.1", "-p"])
        .arg(port.to_string());
    let log = dir.join("iperf3-server.log");
    let proxy = listening(
        "iperf3 -s",
        Proc::spawn("iperf3 -s", command, cpus, Some(&log))?,
        port,
    )?;
    Ok((proxy.proc, proxy.addr))
}

fn listening(name: &'static str, mut proc: Proc, port: u16) -> anyhow::Result<Proxy> {
    procs::wait_for(
        &format!("{name} to listen on {port}"),
        START_TIMEOUT,
        || {
            proc.ensure_running()?;
            procs::is_listening(port)
        },
    )?;
    Ok(Proxy {
        name,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        proc,
        admin: None,
    })
}

/// A bounded HTTP/1.0 GET (1.0, so the body is never chunked): status and
/// body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
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
        .context("HTTP response without a status")?;
    if !(100..600).contains(&status) {
        bail!("HTTP status {status} out of range");
    }
    Ok((status, body.to_owned()))
}
