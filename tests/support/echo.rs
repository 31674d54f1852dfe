//! The echo upstream of relay tests: `tests/support/echo.py` (its docstring
//! lists what it serves) run as an [`EchoPod`] behind a Service on a real
//! apiserver, or as an [`EchoServer`] on the host's 127.0.0.1 for loopback
//! tests and benchmarks; plus [`WsClient`], a minimal WebSocket client to
//! drive its `/ws` echo through whatever sits in between.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use super::procs::{self, repo_path};
use super::tls::TlsFiles;
use super::wait::wait_for_sync;
use super::{ControlPlane, NetnsPod};

/// Python starts in well under a second; a loaded CI machine needs more.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Debian's interpreter when present: the same everywhere, and quicker to
/// start than a version manager's shim found first on PATH.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn echo_command(bind: Ipv4Addr, port: u16, tls: Option<&TlsFiles>) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo_path("tests/support/echo.py"));
    cmd.args(["--bind", &bind.to_string(), "--port", &port.to_string()]);
    if let Some(tls) = tls {
        cmd.arg("--tls-cert").arg(&tls.cert_path);
        cmd.arg("--tls-key").arg(&tls.key_path);
    }
    cmd
}

/// echo.py in a [`NetnsPod`] whose Service has the echo port; dropping it
/// kills the server and deletes the pod.
pub struct EchoPod {
    pod: NetnsPod,
    port: u16,
    tls: bool,
}

impl EchoPod {
    /// Creates pod `name` (Service and Endpoints too, with `port`) and serves
    /// on `pod_ip:port`, with TLS if `tls` is given. The certificate must name
    /// what clients will connect to; for the pod IP, use
    /// [`EchoPod::start_in`] with a certificate made once the IP is known.
    pub fn start(
        plane: &ControlPlane,
        namespace: &str,
        name: &str,
        port: u16,
        tls: Option<&TlsFiles>,
    ) -> anyhow::Result<EchoPod> {
        let pod = NetnsPod::create(plane, namespace, name, &[port])?;
        EchoPod::start_in(pod, port, tls)
    }

    /// Serves in an existing pod (whose Service should have `port`).
    pub fn start_in(pod: NetnsPod, port: u16, tls: Option<&TlsFiles>) -> anyhow::Result<EchoPod> {
        pod.spawn(echo_command(pod.pod_ip(), port, tls))?;
        pod.wait_listening(port, START_TIMEOUT)?;
        Ok(EchoPod {
            pod,
            port,
            tls: tls.is_some(),
        })
    }

    /// The pod it runs in.
    pub fn pod(&self) -> &NetnsPod {
        &self.pod
    }

    /// The pod IP, where it listens.
    pub fn ip(&self) -> Ipv4Addr {
        self.pod.pod_ip()
    }

    /// The port, the same on the pod and its Service.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pod_ip:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip(), self.port))
    }

    /// `http://` or `https://` plus [`EchoPod::addr`] plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", scheme(self.tls), self.addr())
    }

    /// The apiserver path through `services/proxy` to `path` on this server
    /// (with the `https:` scheme prefix when it serves TLS).
    pub fn proxy_path(&self, path: &str) -> String {
        format!(
            "/api/v1/namespaces/{}/services/{}:{}:{}/proxy{path}",
            self.pod.namespace(),
            scheme(self.tls),
            self.pod.name(),
            self.port
        )
    }
}

fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// echo.py on the host's 127.0.0.1, on a port the kernel picked; killed on
/// drop.
pub struct EchoServer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    tls: bool,
}

impl EchoServer {
    /// Starts it and waits until it listens.
    pub fn start_local(tls: Option<&TlsFiles>) -> anyhow::Result<EchoServer> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = procs::run_dir().join(format!("echo-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("echo.log")).context("creating the echo log")?;
        let port_file = dir.join("port");
        let mut cmd = echo_command(Ipv4Addr::LOCALHOST, 0, tls);
        cmd.arg("--port-file").arg(&port_file);
        cmd.stdout(log.try_clone()?).stderr(log);
        let mut server = EchoServer {
            child: procs::spawn(cmd)?,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dir,
            tls: tls.is_some(),
        };
        // echo.py writes the file once its socket listens.
        let port = wait_for_sync("echo.py to write its port", START_TIMEOUT, || {
            if let Some(status) = server.child.try_wait()? {
                return Ok(Err(anyhow::anyhow!("echo.py exited: {status}")));
            }
            let text = std::fs::read_to_string(&port_file)?;
            Ok(Ok(text.trim().parse::<u16>()?))
        })
        .and_then(|port| port)
        .with_context(|| format!("echo.py log:\n{}", server.log()))?;
        server.addr.set_port(port);
        Ok(server)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` or `https://` plus [`EchoServer::addr`] plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", scheme(self.tls), self.addr)
    }

    /// What echo.py printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("echo.log")).unwrap_or_default()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        procs::kill(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs curl (with `-sS` and a 30 s limit) on the host with `args`.
pub fn curl(args: &[&str]) -> Output {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output();
    out.expect("curl is installed (hack/install-deps.sh)")
}

/// The JSON a successful curl printed, such as echo.py's reply to a request;
/// panics with curl's output otherwise.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// GETs `url` with [`curl`] (extra `args` first), asserting success;
/// returns the response head (lowercased) and the decoded body.
pub fn curl_get(args: &[&str], url: &str) -> (String, Vec<u8>) {
    let out = curl(&[args, &["--fail", "-i", url]].concat());
    assert!(out.status.success(), "{out:?}");
    let mut rest = &out.stdout[..];
    loop {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
        rest = &rest[end..];
        // Interim heads (100 Continue, a proxy's CONNECT answer) come first.
        let code = head.split_whitespace().nth(1).unwrap_or_default();
        if !code.starts_with('1') && !head.contains(" connection established") {
            return (head, rest.to_vec());
        }
    }
}

/// WebSocket opcodes (RFC 6455 5.2).
pub mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A client end of a WebSocket over plain TCP: frames are sent whole, masked
/// and with FIN set; received frames are returned one by one, unassembled.
pub struct WsClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    masks: u32,
}

/// The key of RFC 6455's own example, so the expected accept value is known
/// without a SHA-1 here; the server cannot tell it from a random one.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

impl WsClient {
    /// Connects to `addr` and upgrades `GET path` (with `Host: host`),
    /// checking the 101 and its Sec-WebSocket-Accept.
    pub fn connect(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<WsClient> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut ws = WsClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            masks: 0x9e37_79b9,
        };
        write!(
            ws.writer,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            ensure!(
                ws.reader.read_line(&mut head)? > 0,
                "closed during the handshake: {head:?}"
            );
        }
        ensure!(
            head.starts_with("HTTP/1.1 101 "),
            "no 101 Switching Protocols: {head:?}"
        );
        let accept = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim())
        });
        ensure!(
            accept == Some(WS_ACCEPT),
            "wrong Sec-WebSocket-Accept in {head:?}"
        );
        Ok(ws)
    }

    /// Sends one final, masked frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 1 << 16 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // Masks only need to vary; a Weyl sequence does.
        self.masks = self.masks.wrapping_add(0x9e37_79b9);
        let mask = self.masks.to_be_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer.write_all(&frame).context("sending a frame")
    }

    /// Receives one frame: (opcode, payload). Server frames must be unmasked.
    pub fn recv(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.reader
            .read_exact(&mut head)
            .context("reading a frame")?;
        ensure!(head[1] & 0x80 == 0, "the server masked a frame");
        let len = match head[1] & 0x7f {
            126 => u64::from(self.read_array::<2>().map(u16::from_be_bytes)?),
            127 => self.read_array::<8>().map(u64::from_be_bytes)?,
            n => u64::from(n),
        };
        let mut payload = vec![0; usize::try_from(len)?];
        self.reader
            .read_exact(&mut payload)
            .context("reading a payload")?;
        Ok((head[0] & 0x0f, payload))
    }

    fn read_array<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        let mut buf = [0; N];
        self.reader.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Sends a close with `code`, waits for the server's close and returns
    /// the code in it.
    pub fn close(&mut self, code: u16) -> anyhow::Result<u16> {
        self.send(opcode::CLOSE, &code.to_be_bytes())?;
        loop {
            let (op, payload) = self.recv()?;
            if op == opcode::CLOSE {
                let Some(code) = payload.get(..2) else {
                    bail!("a close frame without a status code");
                };
                return Ok(u16::from_be_bytes([code[0], code[1]]));
            }
        }
    }
}

/// An echo answer: the whole JSON and its headers (lowercased name to the
/// values sent). Panics, quoting the body, if it is not one.
pub fn echoed(
    body: &str,
) -> (
    serde_json::Value,
    std::collections::HashMap<String, Vec<String>>,
) {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|err| panic!("not echo JSON ({err}): {body}"));
    let headers = serde_json::from_value(json["headers"].clone()).expect("a headers map");
    (json, headers)
}
