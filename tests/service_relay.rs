//! `agent service-relay` end to end: the entry on the hosting side follows
//! the provisioned managed kubeconfig (tokens rotating every ~10 s all along),
//! sends requests through the real managed apiserver's services/proxy to the
//! exit relay running as a netns "pod", which forwards to echo pods. Shown:
//! the caller's own Authorization arrives and no Cluster-Proxy-* header
//! does; forged headers gain nothing; http and https targets, ports by name
//! and number; 1 GiB each way with bounded relay memory; WebSocket; no
//! failed request while the token rotates.

mod support;

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::Command,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{
    ControlPlane, NetnsPod,
    agent::{Agent, agent_bin, raw_http},
    echo::{EchoPod, WsClient, echoed},
    shared,
    tls::TlsFiles,
    wait_until_sync,
};

const DEADLINE: Duration = Duration::from_secs(90);
const USER: &str = "Bearer the-users-own-token";
const EXIT_PORT: u16 = 7444;

struct Topology {
    hosting: &'static ControlPlane,
    entry: Agent,
    _provisioner: Agent,
    exit: NetnsPod,
    exit_pid: u32,
    echo: EchoPod,
    echo_tls: EchoPod,
}

fn topology() -> &'static Topology {
    static TOPOLOGY: OnceLock<Topology> = OnceLock::new();
    TOPOLOGY
        .get_or_init(|| build().unwrap_or_else(|err| panic!("cannot build the topology: {err:#}")))
}

fn build() -> anyhow::Result<Topology> {
    let (hosting, managed) = (shared("hosting"), shared("managed"));
    hosting.ensure_namespace("sr")?;
    let source = hosting.kubectl_cmd(&[
        "create",
        "secret",
        "generic",
        "external-managed-kubeconfig",
        "-n",
        "sr",
        &format!(
            "--from-file=kubeconfig={}",
            managed.kubeconfig_path().display()
        ),
    ]);
    let out = { source }.output()?;
    anyhow::ensure!(
        out.status.success(),
        "source secret: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosting_kubeconfig = hosting.kubeconfig_path();
    let hosting_kubeconfig = hosting_kubeconfig.to_str().expect("utf-8");
    let provisioner = Agent::spawn(
        &[
            "provision-kubeconfig",
            "--kubeconfig",
            hosting_kubeconfig,
            "--namespace",
            "sr",
            "--service-account-namespace",
            "relay-sr",
            "--token-expiration",
            "10m",
            "--refresh-before",
            "9m50s",
            "--admin-addr",
            "127.0.0.1:0",
        ],
        &[],
    )?;

    // The echo Services on the managed cluster, http and https.
    let echo = EchoPod::start(managed, "apps", "echo", 8080, None)?;
    let tls = TlsFiles::generate(&["echo-tls.apps.svc"], &[])?;
    let echo_tls = EchoPod::start(managed, "apps", "echo-tls", 8443, Some(&tls))?;

    // The exit relay as a pod on the managed cluster; it reaches the managed
    // apiserver (for TokenReview and Endpoints) through a forwarded port.
    let exit = NetnsPod::create(
        managed,
        "cluster-relay-sr",
        "cluster-relay-service-relay",
        &[EXIT_PORT],
    )?;
    exit.forward_host_port(managed.port())?;
    let mut command = Command::new(agent_bin());
    command
        .arg("service-relay")
        .args(["--role", "exit", "--resolution", "endpoints"])
        .args([
            "--allowed-caller",
            "system:serviceaccount:relay-sr:cluster-relay",
        ])
        .arg("--kubeconfig")
        .arg(managed.kubeconfig_path())
        .arg("--upstream-ca-file")
        .arg(&tls.ca_pem_path)
        .args(["--listen-addr", &format!("{}:{EXIT_PORT}", exit.pod_ip())])
        .args(["--admin-addr", &format!("{}:9090", exit.pod_ip())]);
    let exit_pid = exit.spawn(command)?;
    exit.wait_listening(EXIT_PORT, DEADLINE)?;

    let entry = Agent::spawn(
        &[
            "service-relay",
            "--role",
            "entry",
            "--kubeconfig",
            hosting_kubeconfig,
            "--managed-kubeconfig-secret",
            "sr/cluster-relay-managed-kubeconfig",
            "--exit-namespace",
            "cluster-relay-sr",
            "--exit-service",
            "cluster-relay-service-relay",
            "--exit-port",
            &EXIT_PORT.to_string(),
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ],
        &["relay"],
    )?;
    wait_until_sync("the entry to be ready", DEADLINE, || {
        entry
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 200)
    })?;
    Ok(Topology {
        hosting,
        entry,
        _provisioner: provisioner,
        exit,
        exit_pid,
        echo,
        echo_tls,
    })
}

fn get(path: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let t = topology();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: relay.example\r\nConnection: close\r\nAuthorization: {USER}\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw_http(t.entry.addr("relay"), request.as_bytes()).expect("the entry answers")
}

fn assert_clean(headers: &HashMap<String, Vec<String>>) {
    assert_eq!(
        headers.get("authorization"),
        Some(&vec![USER.to_owned()]),
        "{headers:?}"
    );
    let leaked: Vec<&String> = headers
        .keys()
        .filter(|name| name.starts_with("cluster-proxy-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "Cluster-Proxy-* headers reached the service: {leaked:?}"
    );
}

#[test]
fn the_callers_authorization_arrives_and_nothing_else_of_ours() {
    let path = "/api/v1/namespaces/apps/services/http:echo:8080/proxy/hello?a=1";
    let (status, body) = get(path, &[]);
    assert_eq!(status, 200, "{body}");
    let (json, headers) = echoed(&body);
    assert_clean(&headers);
    assert_eq!(json["path"], "/hello?a=1");
    assert!(headers.contains_key("x-forwarded-for"));
}

#[test]
fn forged_cluster_proxy_headers_gain_nothing() {
    let path = "/api/v1/namespaces/apps/services/http:echo:8080/proxy/forged";
    let (status, body) = get(
        path,
        &[
            ("Cluster-Proxy-Authorization", "Bearer forged"),
            ("Cluster-Proxy-Relay-Authorization", "Bearer forged"),
            ("Cluster-Proxy-Service", "echo-tls"),
            ("Cluster-Proxy-Port", "8443"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let (json, headers) = echoed(&body);
    assert_clean(&headers);
    assert_eq!(json["path"], "/forged");
}

#[test]
fn http_and_https_targets_by_port_number_and_name() {
    let t = topology();
    for path in [
        "/api/v1/namespaces/apps/services/echo:8080/proxy/number",
        "/api/v1/namespaces/apps/services/http:echo:port-8080/proxy/name",
        "/api/v1/namespaces/apps/services/echo/proxy/only-port",
        "/api/v1/namespaces/apps/services/https:echo-tls:8443/proxy/tls-number",
        "/api/v1/namespaces/apps/services/https:echo-tls:port-8443/proxy/tls-name",
    ] {
        let (status, body) = get(path, &[]);
        assert_eq!(status, 200, "{path}: {body}\nexit log:\n{}", t.exit.log());
        let (json, headers) = echoed(&body);
        assert_clean(&headers);
        assert_eq!(
            json["path"].as_str().map(|p| path.ends_with(p)),
            Some(true),
            "{path}: {json}"
        );
    }
    let (status, _) = get("/api/v1/namespaces/apps/services/echo:9999/proxy/", &[]);
    assert_eq!(status, 404, "an unknown port");
    assert!(t.echo.port() == 8080 && t.echo_tls.port() == 8443);
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Peak VmRSS (KiB) of `pids` while `work` runs, sampled every 50 ms.
fn peak_rss<T>(pids: &[u32], work: impl FnOnce() -> T) -> (T, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peaks: Vec<Arc<AtomicU64>> = pids.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let sampler = {
        let (stop, peaks, pids) = (stop.clone(), peaks.clone(), pids.to_vec());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(&peaks) {
                    if let Some(kib) = rss_kib(*pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let result = work();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    (
        result,
        peaks.iter().map(|p| p.load(Ordering::Relaxed)).collect(),
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

const GIB: u64 = 1 << 30;

fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = ((offset + i as u64) % 251) as u8;
    }
}

#[test]
fn a_gibibyte_each_way_streams_with_bounded_memory() {
    let t = topology();
    let pids = [t.entry.pid(), t.exit_pid];
    let base = "/api/v1/namespaces/apps/services/http:echo:8080/proxy";

    // Up: 1 GiB request body, hashed on the way out and by the echo server.
    let (expected, peaks_up) = peak_rss(&pids, || {
        let mut stream = TcpStream::connect(t.entry.addr("relay")).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .expect("timeout");
        write!(
            stream,
            "POST {base}/upload HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nAuthorization: {USER}\r\nContent-Length: {GIB}\r\n\r\n"
        )
        .expect("head");
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < GIB {
            pattern(sent, &mut chunk);
            if let Err(err) = stream.write_all(&chunk) {
                // The relays or the apiserver cut the upload: say who.
                panic!(
                    "the upload was cut after {sent} bytes: {err}\n--- entry:\n{}\n--- exit:\n{}\n--- managed apiserver:\n{}",
                    t.entry.logs(),
                    t.exit.log(),
                    tail(&shared("managed").apiserver_log(), 20)
                );
            }
            hasher.update(&chunk);
            sent += chunk.len() as u64;
        }
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (format!("{:x}", hasher.finalize()), body)
    });
    let (sha, body) = expected;
    let json: Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("upload answer: {body}"));
    assert_eq!(json["body_bytes"].as_u64(), Some(GIB));
    assert_eq!(json["body_sha256"].as_str(), Some(sha.as_str()));

    // Down: 1 GiB response body, checked byte by byte.
    let (received, peaks_down) = peak_rss(&pids, || {
        let mut stream = TcpStream::connect(t.entry.addr("relay")).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .expect("timeout");
        write!(stream, "GET {base}/bytes?n={GIB} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nAuthorization: {USER}\r\n\r\n")
            .expect("request");
        let mut reader = BufReader::with_capacity(1 << 20, stream);
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut expected = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).expect("body");
            if n == 0 {
                break;
            }
            pattern(total, &mut expected[..n]);
            assert!(
                buf[..n] == expected[..n],
                "corrupt byte near offset {total}"
            );
            total += n as u64;
        }
        total
    });
    assert_eq!(received, GIB);
    let mib = |kib: u64| kib / 1024;
    println!(
        "peak RSS entry: up {} MiB, down {} MiB; exit: up {} MiB, down {} MiB",
        mib(peaks_up[0]),
        mib(peaks_down[0]),
        mib(peaks_up[1]),
        mib(peaks_down[1])
    );
    for peak in peaks_up.iter().chain(&peaks_down) {
        assert!(
            *peak > 0 && mib(*peak) < 128,
            "a relay held {} MiB while streaming 1 GiB",
            mib(*peak)
        );
    }
}

#[test]
fn websocket_echo_through_the_apiserver() {
    let t = topology();
    let mut ws = WsClient::connect(
        t.entry.addr("relay"),
        "relay.example",
        "/api/v1/namespaces/apps/services/http:echo:8080/proxy/ws",
    )
    .expect("upgrade through entry, apiserver and exit");
    for message in ["hello", "through three proxies"] {
        ws.send(0x1, message.as_bytes()).expect("send");
        let (opcode, payload) = ws.recv().expect("echo");
        assert_eq!((opcode, payload.as_slice()), (0x1, message.as_bytes()));
    }
    assert_eq!(ws.close(1000).expect("close"), 1000);
}

#[test]
fn no_request_fails_while_the_token_rotates() {
    let t = topology();
    let token_of = || {
        t.hosting
            .kubectl_ok(&[
                "get",
                "secret",
                "cluster-relay-managed-kubeconfig",
                "-n",
                "sr",
                "-o",
                "jsonpath={.metadata.annotations.cluster-relay\\.io/kubeconfig-hash}",
            ])
            .unwrap_or_default()
    };
    let mut seen = BTreeSet::new();
    let (mut ok, mut failed) = (0, Vec::new());
    let started = Instant::now();
    while seen.len() < 3 && started.elapsed() < Duration::from_secs(120) {
        seen.insert(token_of());
        let (status, body) = get(
            "/api/v1/namespaces/apps/services/echo:8080/proxy/rotation",
            &[],
        );
        if status == 200 {
            ok += 1;
        } else {
            failed.push((status, body));
        }
    }
    assert!(
        seen.len() >= 3,
        "the token rotated only {} times",
        seen.len().saturating_sub(1)
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during rotation: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
}

#[test]
fn direct_mode_passes_the_request_as_it_is() {
    let t = topology();
    let resolve = format!("echo.apps.svc={}", t.echo.ip());
    let direct = Agent::spawn(
        &[
            "service-relay",
            "--role",
            "entry",
            "--direct",
            "--resolve",
            &resolve,
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ],
        &["relay"],
    )
    .expect("direct entry");
    let request = format!(
        "GET /api/v1/namespaces/apps/services/echo:8080/proxy/direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {USER}\r\nCluster-Proxy-Service: forged\r\n\r\n"
    );
    let (status, body) = raw_http(direct.addr("relay"), request.as_bytes()).expect("answer");
    assert_eq!(status, 200, "{body}");
    let (_, headers) = echoed(&body);
    assert_clean(&headers);
}
