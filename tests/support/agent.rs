//! Runs the `agent` binary as a real process for tests: learns its bound
//! addresses from its `listening` log lines, reads its metrics and
//! readiness, sends it signals, counts its open files, and kills it on drop.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A running `agent`.
pub struct Agent {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    addrs: HashMap<String, SocketAddr>,
}

/// Where the binary under test is.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agent")
}

impl Agent {
    /// Starts `agent <args> --log-format json` and waits until each listener
    /// named in `listeners` (plus `admin`) has logged its address.
    pub fn spawn(args: &[&str], listeners: &[&str]) -> anyhow::Result<Agent> {
        let mut command = Command::new(agent_bin());
        command
            .args(args)
            .args([
                "--log-format",
                "json",
                "--log-level",
                "info,cluster_relay=debug",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // From the fixture's spawner: the agent dies with the test binary,
        // also when a shared one is never dropped.
        let mut child = super::procs::spawn(command)?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut agent = Agent {
            child,
            logs,
            addrs: HashMap::new(),
        };
        let mut wanted: Vec<&str> = listeners.to_vec();
        wanted.push("admin");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for line in agent.logs.lock().expect("log lock").iter() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if value["message"] == "listening" {
                    let name = value["listener"].as_str().unwrap_or_default().to_owned();
                    let addr = value["addr"].as_str().unwrap_or_default().parse()?;
                    agent.addrs.insert(name, addr);
                }
            }
            if wanted.iter().all(|name| agent.addrs.contains_key(*name)) {
                return Ok(agent);
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "agent exited with {status} before listening:\n{}",
                    agent.logs()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent did not listen on {wanted:?} within 60 s:\n{}",
                    agent.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address a listener bound.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs[listener]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    /// GET on the admin server: status and body.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.addr("admin"), path)
    }

    /// The value of one sample, e.g. `name{label="x"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").expect("metrics answer");
        body.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Sends a signal (e.g. libc::SIGTERM).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("agent still running after {timeout:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How many files the process has open.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        super::procs::kill(&mut self.child);
    }
}

/// A minimal HTTP/1.0 GET, enough for the admin server.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sends raw HTTP/1.1 bytes (use `Connection: close`) and returns the status
/// and the body (de-chunked when chunked).
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response)
}

/// The status and the body (de-chunked when chunked) of a whole HTTP/1.x
/// response.
pub fn parse_response(response: &[u8]) -> anyhow::Result<(u16, String)> {
    let response = String::from_utf8_lossy(response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no status line")?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase().starts_with("transfer-encoding:")
            && line.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Runs `agent <args>` to completion and returns its exit status and stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let output = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("agent runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A kubeconfig whose only cluster's server is `server`, for relays whose
/// target is a plain TCP peer.
pub fn kubeconfig_for(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: m, cluster: {{server: \"{server}\"}}}}]\n\
         contexts: [{{name: m, context: {{cluster: m, user: u}}}}]\nusers: [{{name: u, user: {{}}}}]\n\
         current-context: m\n"
    )
}
