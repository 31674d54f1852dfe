//! `agent apiserver-relay` against raw TCP peers on loopback: half-close,
//! the connection cap, descriptors after many connections, following the
//! kubeconfig file, dial errors, the shutdown protocol and bad flags.
//! (The tests against real kube-apiservers are in apiserver_relay.rs.)

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use support::agent::{Agent, kubeconfig_for, run_to_exit};
use support::wait_until_sync;

const DEADLINE: Duration = Duration::from_secs(30);

/// A raw TCP upstream on loopback, one thread per connection.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

/// What an upstream does with each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Sends `tag` first, then echoes until EOF, then closes.
    Echo { tag: u8 },
    /// Reads the request to EOF, then sends `len` bytes and closes.
    ReplyAfterEof { len: usize },
}

impl Upstream {
    fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, op) = (accepted.clone(), open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                op.fetch_add(1, Ordering::SeqCst);
                let op = op.clone();
                std::thread::spawn(move || {
                    let _ = serve(&mut stream, behaviour);
                    op.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            accepted,
            open,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn serve(stream: &mut TcpStream, behaviour: Behaviour) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Echo { tag } => {
            stream.write_all(&[tag])?;
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return stream.shutdown(Shutdown::Write);
                }
                stream.write_all(&buf[..n])?;
            }
        }
        Behaviour::ReplyAfterEof { len } => {
            let mut request = Vec::new();
            stream.read_to_end(&mut request)?;
            let reply: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            stream.write_all(&reply)?;
            stream.shutdown(Shutdown::Write)
        }
    }
}

/// A relay whose managed kubeconfig file points at `upstream`.
struct Relay {
    agent: Agent,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn relay_to(upstream: SocketAddr, extra: &[&str]) -> Relay {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("managed.kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_for(&format!("https://{upstream}")))
        .expect("write kubeconfig");
    let path = kubeconfig.to_str().expect("utf-8 path").to_owned();
    let mut args = vec![
        "apiserver-relay",
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--managed-kubeconfig",
        &path,
        "--managed-kubeconfig-poll-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let agent = Agent::spawn(&args, &["relay"]).expect("relay starts");
    Relay {
        agent,
        kubeconfig,
        _dir: dir,
    }
}

/// Connects through the relay to an Echo upstream and checks the tag.
fn echo_connection(relay: SocketAddr, expect_tag: u8) -> TcpStream {
    let mut stream = TcpStream::connect(relay).expect("connect to relay");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut tag = [0u8; 1];
    stream.read_exact(&mut tag).expect("tag from upstream");
    assert_eq!(tag[0], expect_tag);
    stream
}

fn round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).expect("write");
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(back, payload);
}

/// Whether the relay closed this connection without relaying anything.
fn closed_at_once(relay: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(relay) else {
        return true;
    };
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Err(err) if err.kind() == ErrorKind::ConnectionReset => true,
        _ => false,
    }
}

#[test]
fn half_close_still_delivers_the_whole_reply() {
    let upstream = Upstream::start(Behaviour::ReplyAfterEof { len: 3 << 20 });
    let relay = relay_to(upstream.addr, &[]);
    let mut stream = TcpStream::connect(relay.agent.addr("relay")).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
        .write_all(b"GET / and then nothing more")
        .expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("reply until EOF");
    assert_eq!(reply.len(), 3 << 20);
    assert!(reply.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    wait_until_sync("bytes counted both ways", DEADLINE, || {
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_bytes_total{direction=\"to_upstream\"}")
            == 27.0
            && relay
                .agent
                .metric("cluster_relay_apiserver_relay_bytes_total{direction=\"to_client\"}")
                == (3 << 20) as f64
    })
    .expect("byte counters");
}

#[test]
fn max_connections_holds() {
    let upstream = Upstream::start(Behaviour::Echo { tag: b'A' });
    let relay = relay_to(upstream.addr, &["--max-connections", "20"]);
    let addr = relay.agent.addr("relay");
    let mut held: Vec<TcpStream> = (0..20).map(|_| echo_connection(addr, b'A')).collect();
    assert_eq!(upstream.accepted(), 20);

    // The 21st is closed at once and never reaches the upstream.
    assert!(
        closed_at_once(addr),
        "a connection beyond the cap was relayed"
    );
    assert_eq!(
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_connections_rejected_total"),
        1.0
    );
    assert_eq!(upstream.accepted(), 20);
    assert_eq!(
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_connections_active"),
        20.0
    );

    // A freed slot is usable again.
    held.pop();
    wait_until_sync("a slot to free up", DEADLINE, || {
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_connections_active")
            == 19.0
    })
    .expect("slot freed");
    let mut again = echo_connection(addr, b'A');
    round_trip(&mut again, b"still works");
    assert_eq!(upstream.accepted(), 21);
    for stream in held.iter_mut() {
        round_trip(stream, b"ping");
    }
}

#[test]
fn descriptors_return_to_baseline_after_ten_thousand_connections() {
    let upstream = Upstream::start(Behaviour::Echo { tag: b'A' });
    let relay = relay_to(upstream.addr, &["--max-connections", "1000"]);
    let addr = relay.agent.addr("relay");
    // Warm up (the first connections allocate runtime resources), then settle.
    drop(echo_connection(addr, b'A'));
    wait_until_sync("warm-up connection to close", DEADLINE, || {
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_connections_active")
            == 0.0
    })
    .expect("warm-up closed");
    let baseline = relay.agent.open_files();

    for _batch in 0..100 {
        let mut streams: Vec<TcpStream> = (0..100).map(|_| echo_connection(addr, b'A')).collect();
        for stream in streams.iter_mut() {
            round_trip(stream, b"x");
        }
    }
    wait_until_sync("all relayed connections to close", DEADLINE, || {
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_connections_active")
            == 0.0
            && upstream.open() == 0
    })
    .expect("connections closed");
    // At most the baseline: the admin connection of a metrics poll may be
    // open at either count, while a leak would add two descriptors for each
    // connection that leaked.
    wait_until_sync("open files to return to the baseline", DEADLINE, || {
        relay.agent.open_files() <= baseline
    })
    .unwrap_or_else(|err| {
        panic!(
            "{err}: baseline {baseline}, now {}",
            relay.agent.open_files()
        )
    });
    assert_eq!(
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_connections_total"),
        10_001.0
    );
    assert_eq!(
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_connections_rejected_total"),
        0.0
    );
    assert_eq!(upstream.accepted(), 10_001);
}

#[test]
fn a_changed_kubeconfig_file_moves_new_connections_only() {
    let first = Upstream::start(Behaviour::Echo { tag: b'A' });
    let second = Upstream::start(Behaviour::Echo { tag: b'B' });
    let relay = relay_to(first.addr, &[]);
    let addr = relay.agent.addr("relay");
    let mut before = echo_connection(addr, b'A');

    // Replace the file the way a kubelet updates a mounted Secret: atomically.
    let staged = relay.kubeconfig.with_extension("new");
    std::fs::write(&staged, kubeconfig_for(&format!("https://{}", second.addr))).expect("write");
    std::fs::rename(&staged, &relay.kubeconfig).expect("rename");
    wait_until_sync(
        "new connections to reach the second upstream",
        DEADLINE,
        || {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let mut tag = [0u8; 1];
            stream.read_exact(&mut tag).is_ok() && tag[0] == b'B'
        },
    )
    .expect("switched");
    // The connection opened before the switch still talks to the first.
    round_trip(&mut before, b"still the first upstream");
    assert_eq!(first.open(), 1);

    // An unusable file keeps the last good target.
    std::fs::write(&staged, "this is: [not a kubeconfig").expect("write");
    std::fs::rename(&staged, &relay.kubeconfig).expect("rename");
    wait_until_sync("the invalid kubeconfig to be noticed", DEADLINE, || {
        relay
            .agent
            .metric("cluster_relay_managed_kubeconfig_reloads_total{result=\"invalid\"}")
            == 1.0
    })
    .expect("noticed");
    let mut after = echo_connection(addr, b'B');
    round_trip(&mut after, b"last good target");
    let (status, detail) = relay.agent.admin_get("/readyz").expect("readyz");
    assert_eq!(status, 200, "{detail}");
    assert!(detail.contains("last good kubeconfig in use"), "{detail}");
}

#[test]
fn an_unreachable_target_fails_fast_and_counts() {
    // A port with nothing listening: bind, note, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let relay = relay_to(port, &[]);
    let addr = relay.agent.addr("relay");
    assert!(closed_at_once(addr));
    assert!(closed_at_once(addr));
    assert_eq!(
        relay
            .agent
            .metric("cluster_relay_apiserver_relay_dial_errors_total{reason=\"refused\"}"),
        2.0
    );
    let (status, _) = relay.agent.admin_get("/healthz").expect("healthz");
    assert_eq!(status, 200);
}

#[test]
fn first_signal_drains_and_the_last_connection_ends_the_process() {
    let upstream = Upstream::start(Behaviour::Echo { tag: b'A' });
    let mut relay = relay_to(upstream.addr, &["--shutdown-grace-period", "1h"]);
    let addr = relay.agent.addr("relay");
    let mut open = echo_connection(addr, b'A');
    assert_eq!(relay.agent.admin_get("/readyz").expect("readyz").0, 200);

    relay.agent.signal(libc::SIGTERM);
    wait_until_sync("/readyz to turn 503", DEADLINE, || {
        relay
            .agent
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 503)
    })
    .expect("not ready while draining");
    wait_until_sync("the listener to close", DEADLINE, || {
        TcpStream::connect(addr).is_err()
    })
    .expect("no longer accepting");
    round_trip(&mut open, b"the open connection keeps working");
    drop(open);
    let status = relay
        .agent
        .wait_exit(DEADLINE)
        .expect("exits after the last connection");
    assert!(status.success(), "{status}");
}

#[test]
fn second_signal_aborts_open_connections() {
    let upstream = Upstream::start(Behaviour::Echo { tag: b'A' });
    let mut relay = relay_to(upstream.addr, &["--shutdown-grace-period", "1h"]);
    let mut open = echo_connection(relay.agent.addr("relay"), b'A');
    relay.agent.signal(libc::SIGTERM);
    wait_until_sync("/readyz to turn 503", DEADLINE, || {
        relay
            .agent
            .admin_get("/readyz")
            .is_ok_and(|(status, _)| status == 503)
    })
    .expect("draining");
    relay.agent.signal(libc::SIGTERM);
    relay
        .agent
        .wait_exit(DEADLINE)
        .expect("exits on the second signal");
    let mut buf = [0u8; 1];
    assert!(
        matches!(open.read(&mut buf), Ok(0) | Err(_)),
        "connection still open"
    );
}

#[test]
fn the_grace_period_ends_open_connections() {
    let upstream = Upstream::start(Behaviour::Echo { tag: b'A' });
    let mut relay = relay_to(upstream.addr, &["--shutdown-grace-period", "500ms"]);
    let mut open = echo_connection(relay.agent.addr("relay"), b'A');
    relay.agent.signal(libc::SIGTERM);
    relay
        .agent
        .wait_exit(DEADLINE)
        .expect("exits when the grace period is over");
    let mut buf = [0u8; 1];
    assert!(
        matches!(open.read(&mut buf), Ok(0) | Err(_)),
        "connection still open"
    );
    assert!(relay.agent.logs().contains("grace period over"));
}

#[test]
fn bad_configuration_exits_non_zero_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("ok.kubeconfig");
    std::fs::write(&good, kubeconfig_for("https://127.0.0.1:1")).expect("write");
    let good = good.to_str().expect("utf-8");
    let broken = dir.path().join("broken.kubeconfig");
    std::fs::write(&broken, "clusters: [").expect("write");
    let broken = broken.to_str().expect("utf-8");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--managed-kubeconfig", "/nonexistent/kubeconfig"],
            "--managed-kubeconfig /nonexistent/kubeconfig",
        ),
        (&["--managed-kubeconfig", broken], "--managed-kubeconfig"),
        (
            &[],
            "one of --managed-kubeconfig or --managed-kubeconfig-secret is required",
        ),
        (
            &[
                "--managed-kubeconfig",
                good,
                "--managed-kubeconfig-secret",
                "ns/name",
            ],
            "--managed-kubeconfig-secret",
        ),
        (
            &["--managed-kubeconfig-secret", "no-slash"],
            "--managed-kubeconfig-secret",
        ),
        (
            &[
                "--managed-kubeconfig-secret",
                "ns/name",
                "--kubeconfig",
                "/nonexistent/hosting",
            ],
            "--kubeconfig /nonexistent/hosting",
        ),
        (
            &[
                "--managed-kubeconfig",
                good,
                "--listen-addr",
                "not-an-address",
            ],
            "--listen-addr",
        ),
        (
            &["--managed-kubeconfig", good, "--max-connections", "0"],
            "--max-connections",
        ),
        (
            &["--managed-kubeconfig", good, "--managed-context", "nope"],
            "context \"nope\" not found",
        ),
        (
            &["--managed-kubeconfig", good, "--log-format", "xml"],
            "--log-format",
        ),
        (
            &["--managed-kubeconfig", good, "--idle-timeout", "soon"],
            "--idle-timeout",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "apiserver-relay",
            "--listen-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (status, stderr) = run_to_exit(&args);
        assert!(!status.success(), "{args:?} succeeded");
        // Earlier lines may be start-up logs; the problem is one last line.
        let last_line = stderr.lines().next_back().unwrap_or_default();
        assert!(
            last_line.starts_with("agent: ") && last_line.contains(expected),
            "{args:?}: expected {expected:?} in the last line, got:\n{stderr}"
        );
        assert_eq!(stderr.matches("agent: ").count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    }
    // An address that is taken names the flag too.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let (status, stderr) = run_to_exit(&[
        "apiserver-relay",
        "--managed-kubeconfig",
        good,
        "--listen-addr",
        &taken,
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with(&format!("agent: --listen-addr {taken}: cannot listen"))),
        "{stderr}"
    );
}
