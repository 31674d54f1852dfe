//! `agent webhook-fanout` as a process, with webhook receivers on loopback.
//! Shown: GitHub's signature test vector verifies and a flipped byte reaches
//! nobody; the forge is answered before slow backends answer, and a backend
//! that is down gets the delivery when it comes up, also after a `kill -9`
//! and restart of the fan-out; an oversized body is refused while it is
//! read; runtime backends need the flag and a credential, persist, and can
//! come and go while 1,000 deliveries are in flight without losing or
//! doubling any.

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use cluster_relay::signature::sign_sha256;
use http::{Method, StatusCode};
use support::{
    agent::Agent,
    hook_sink::Sink,
    http_client::{Answer, HttpClient},
    run_dir, shared, wait_until,
};

const SECRET: &str = "It's a Secret to Everybody";
const DEADLINE: Duration = Duration::from_secs(30);

fn workdir(name: &str) -> PathBuf {
    let dir = run_dir().join(format!("fanout-{name}"));
    std::fs::create_dir_all(&dir).expect("a work directory");
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).expect("the secret file");
    dir
}

fn spawn(dir: &Path, extra: &[&str]) -> Agent {
    let secret = dir.join("secret");
    let queue = dir.join("queue");
    let mut args = vec![
        "webhook-fanout",
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--secret-file",
        secret.to_str().expect("utf-8"),
        "--queue-dir",
        queue.to_str().expect("utf-8"),
        "--retry-initial-backoff",
        "50ms",
        "--retry-max-backoff",
        "500ms",
    ];
    args.extend_from_slice(extra);
    Agent::spawn(&args, &["webhook"]).expect("the fan-out starts")
}

async fn post(fanout: &Agent, path: &str, id: &str, body: &[u8], signature: &str) -> Answer {
    HttpClient::new("")
        .send(
            Method::POST,
            &format!("http://{}{path}", fanout.addr("webhook")),
            &[
                ("x-github-event", "push"),
                ("x-github-delivery", id),
                ("x-github-hook-id", "42"),
                ("content-type", "application/json"),
                ("x-hub-signature-256", signature),
            ],
            Some(Bytes::copy_from_slice(body)),
        )
        .await
        .expect("the fan-out answers")
}

async fn deliver(fanout: &Agent, id: &str, body: &[u8]) -> Answer {
    post(fanout, "/", id, body, &sign_sha256(SECRET.as_bytes(), body)).await
}

/// A port nothing listens on (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// 1. GitHub's documented test vector verifies and is fanned out with its
/// headers; a flipped byte is refused and reaches no backend.
#[tokio::test(flavor = "multi_thread")]
async fn githubs_test_vector_verifies_and_a_flipped_byte_reaches_nobody() {
    let sink = Sink::start().await;
    let dir = workdir("vector");
    let fanout = spawn(&dir, &["--backend", &sink.url()]);
    let vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    let refused = post(&fanout, "/", "flipped", b"Hello, World?", vector).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        refused.text()
    );
    let unsigned = post(&fanout, "/", "unsigned", b"Hello, World!", "").await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);

    let accepted = post(&fanout, "/proxy", "vector", b"Hello, World!", vector).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text());
    let got = sink
        .wait_for_id("vector", DEADLINE)
        .await
        .expect("delivered");
    assert_eq!(&got.body[..], b"Hello, World!");
    assert_eq!(got.header("x-hub-signature-256"), vector);
    assert_eq!(got.header("x-github-event"), "push");
    assert_eq!(got.header("x-github-hook-id"), "42");
    assert_eq!(got.header("content-type"), "application/json");
    // Refused deliveries were never queued, so nothing but the good one.
    assert_eq!(sink.ids(), ["vector"]);
    assert_eq!(
        fanout.metric(r#"cluster_relay_webhook_fanout_inbound_total{result="bad_signature"}"#),
        2.0
    );
    // The same delivery again is acknowledged, not fanned out twice.
    let again = post(&fanout, "/", "vector", b"Hello, World!", vector).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["duplicate"], true);
    let marker = deliver(&fanout, "after", b"{}").await;
    assert_eq!(marker.status, StatusCode::ACCEPTED);
    sink.wait_for_id("after", DEADLINE)
        .await
        .expect("delivered");
    assert_eq!(sink.ids(), ["vector", "after"]);
}

/// 2. Three backends, one down and one slow: the forge is answered before
/// the slow one answers; the healthy one has it at once; the slow one gets
/// it; the down one gets it once it is up, after the fan-out was killed
/// with SIGKILL and restarted in between.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_dead_backends_never_hold_up_the_forge_or_lose_a_delivery() {
    let healthy = Sink::start().await;
    let slow = Sink::start_held().await;
    let down_port = free_port();
    let down_url = format!("http://127.0.0.1:{down_port}/hook");
    let dir = workdir("slow-dead");
    let backends = [
        "--backend",
        &healthy.url(),
        "--backend",
        &slow.url(),
        "--backend",
        &down_url,
        "--backend-timeout",
        "60s",
    ];
    let mut fanout = spawn(&dir, &backends);

    let started = Instant::now();
    let answer = deliver(&fanout, "d-1", br#"{"ref":"main"}"#).await;
    let answered_in = started.elapsed();
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
    healthy
        .wait_for_id("d-1", DEADLINE)
        .await
        .expect("healthy has it");
    slow.wait_for_id("d-1", DEADLINE)
        .await
        .expect("slow has it, unanswered");
    // The forge's answer came while the slow backend still held its own.
    println!("forge answered in {answered_in:?} with one backend holding and one down");
    slow.release();
    wait_until("the slow backend's answer to count", DEADLINE, || async {
        fanout.metric(&format!(
            r#"cluster_relay_webhook_fanout_forwarded_total{{backend="{}",result="delivered"}}"#,
            slow.url()
        )) == 1.0
    })
    .await
    .expect("slow delivered");
    assert!(
        fanout.metric(&format!(
            r#"cluster_relay_webhook_fanout_send_failures_total{{backend="{down_url}",reason="connect"}}"#
        )) >= 1.0
    );

    // kill -9 while the down backend is still owed the delivery.
    fanout.signal(libc::SIGKILL);
    fanout.wait_exit(DEADLINE).expect("killed");
    let fanout = spawn(&dir, &backends);
    let down = Sink::start_on(down_port, true).await;
    let got = down
        .wait_for_id("d-1", DEADLINE)
        .await
        .expect("down one has it");
    assert_eq!(&got.body[..], br#"{"ref":"main"}"#);
    wait_until("the queue to drain", DEADLINE, || async {
        fanout.metric("cluster_relay_webhook_fanout_queue_depth") == 0.0
    })
    .await
    .expect("drained");
    assert_eq!(down.ids(), ["d-1"]);
}

/// 3. 26 MiB is refused with 413: at once when declared, and as soon as
/// the cap is passed when streamed, without holding the whole body.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_refused_while_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = Sink::start().await;
    let dir = workdir("too-large");
    let fanout = spawn(&dir, &["--backend", &sink.url()]);
    let addr = fanout.addr("webhook");
    let size: usize = 26 << 20;
    let baseline = rss_kib(fanout.pid(), "VmRSS:");

    // Declared: the answer comes before any body byte is sent.
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let head = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\nx-hub-signature-256: sha256=00\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head sent");
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await.expect("an answer");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    // Streamed (chunked, up to 64 MiB offered): refused once past 25 MiB;
    // the rest is never read.
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-hub-signature-256: sha256=00\r\n\r\n")
        .await
        .expect("head sent");
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    let mut refused = false;
    while sent < 64 << 20 {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            refused = true;
            break;
        }
        sent += chunk.len();
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        refused || reply.starts_with("HTTP/1.1 413"),
        "sent {sent}: {reply}"
    );
    if !reply.is_empty() {
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    }
    let peak = rss_kib(fanout.pid(), "VmHWM:");
    println!(
        "oversized body refused after {} MiB sent; fan-out RSS {} MiB before, peak {} MiB",
        sent >> 20,
        baseline / 1024,
        peak / 1024
    );
    // Bounded by the 25 MiB cap (plus buffers), not by what was offered.
    assert!(sent < 64 << 20, "the fan-out read all {sent} bytes offered");
    assert!(
        peak - baseline < 30 * 1024,
        "grew by {} KiB",
        peak - baseline
    );
    assert_eq!(
        fanout.metric(r#"cluster_relay_webhook_fanout_inbound_total{result="too_large"}"#),
        2.0
    );
    assert!(sink.ids().is_empty());
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a size in kB")
}

async fn backends_api(
    fanout: &Agent,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    HttpClient::new("")
        .send(
            method,
            &format!("http://{}{path}", fanout.addr("webhook")),
            &headers,
            body.map(|b| Bytes::copy_from_slice(b.as_bytes())),
        )
        .await
        .expect("answers")
}

/// 4a. The backend API is off by default and, when on, refuses anyone
/// without the static token or an allowed TokenReview identity.
#[tokio::test(flavor = "multi_thread")]
async fn the_backend_api_needs_the_flag_and_a_credential() {
    let plain = spawn(&workdir("api-off"), &[]);
    let off = backends_api(&plain, Method::GET, "/backends", Some("x"), None).await;
    assert_eq!(off.status, StatusCode::NOT_FOUND);

    let plane = shared("webhook-fanout");
    plane
        .kubectl_with_stdin(
            &["apply", "-f", "-"],
            b"apiVersion: v1\nkind: Namespace\nmetadata: {name: fanout}\n---\n\
              apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: admin, namespace: fanout}\n---\n\
              apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: other, namespace: fanout}\n",
        )
        .expect("accounts");
    let token = |sa: &str| {
        plane
            .kubectl_ok(&["create", "token", sa, "-n", "fanout"])
            .expect("token")
            .trim()
            .to_owned()
    };
    let dir = workdir("api-on");
    std::fs::write(dir.join("admin-token"), "static-admin-token\n").expect("token file");
    let kubeconfig = plane.kubeconfig_path();
    let fanout = spawn(
        &dir,
        &[
            "--enable-dynamic-backends",
            "--admin-token-file",
            dir.join("admin-token").to_str().expect("utf-8"),
            "--admin-user",
            "system:serviceaccount:fanout:admin",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
        ],
    );
    let get = |token: Option<String>| {
        let fanout = &fanout;
        async move {
            backends_api(fanout, Method::GET, "/backends", token.as_deref(), None)
                .await
                .status
        }
    };
    assert_eq!(get(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some("wrong".into())).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some(token("other"))).await, StatusCode::FORBIDDEN);
    assert_eq!(get(Some("static-admin-token".into())).await, StatusCode::OK);
    assert_eq!(get(Some(token("admin"))).await, StatusCode::OK);
    let refused = backends_api(
        &fanout,
        Method::POST,
        "/backends",
        None,
        Some(r#"{"name":"x","url":"http://127.0.0.1:1/"}"#),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let listed = backends_api(
        &fanout,
        Method::GET,
        "/backends",
        Some("static-admin-token"),
        None,
    )
    .await;
    assert_eq!(listed.json()["backends"], serde_json::json!([]));
}

/// 4b. Backends registered and removed while 1,000 deliveries are in
/// flight: the fixed backend gets every one exactly once; a backend gets
/// every delivery sent after its registration returned and none sent after
/// its removal returned; nobody gets one twice; registrations persist.
#[tokio::test(flavor = "multi_thread")]
async fn backends_come_and_go_under_load_without_loss_or_doubles() {
    let fixed = Sink::start().await;
    let early = Sink::start().await;
    let late = Sink::start().await;
    let dir = workdir("dynamic");
    std::fs::write(dir.join("admin-token"), "t0ken").expect("token file");
    let token_file = dir.join("admin-token");
    let args = [
        "--backend",
        &fixed.url(),
        "--enable-dynamic-backends",
        "--admin-token-file",
        token_file.to_str().expect("utf-8"),
    ];
    let mut fanout = spawn(&dir, &args);
    let register = |name: &str, url: &str| {
        let body = serde_json::json!({"name": name, "url": url}).to_string();
        let fanout = &fanout;
        async move {
            backends_api(
                fanout,
                Method::POST,
                "/backends",
                Some("t0ken"),
                Some(&body),
            )
            .await
        }
    };
    assert_eq!(
        register("early", &early.url()).await.status,
        StatusCode::CREATED
    );

    const TOTAL: usize = 1000;
    const SENDERS: usize = 8;
    let mut marks = (0, 0);
    let ids: Vec<String> = (0..TOTAL).map(|i| format!("load-{i:04}")).collect();
    for (round, chunk) in ids.chunks(TOTAL / 4).enumerate() {
        match round {
            1 => {
                let created = register("late", &late.url()).await;
                assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
                marks.0 = round * TOTAL / 4;
            }
            2 => {
                let removed = backends_api(
                    &fanout,
                    Method::DELETE,
                    "/backends/early",
                    Some("t0ken"),
                    None,
                )
                .await;
                assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text());
                marks.1 = round * TOTAL / 4;
            }
            _ => {}
        }
        // Each quarter goes out from several senders at once.
        let sends = chunk.chunks(chunk.len().div_ceil(SENDERS)).map(|part| {
            let fanout = &fanout;
            async move {
                for id in part {
                    let answer =
                        deliver(fanout, id, format!(r#"{{"id":"{id}"}}"#).as_bytes()).await;
                    assert_eq!(
                        answer.status,
                        StatusCode::ACCEPTED,
                        "{id}: {}",
                        answer.text()
                    );
                }
            }
        });
        futures::future::join_all(sends).await;
    }
    wait_until(
        "every delivery to reach the fixed backend",
        DEADLINE,
        || async { fixed.ids().len() >= TOTAL },
    )
    .await
    .expect("all delivered");
    wait_until("the queue to drain", DEADLINE, || async {
        fanout.metric("cluster_relay_webhook_fanout_queue_depth") == 0.0
    })
    .await
    .expect("drained");

    let sorted = |sink: &Sink| {
        let mut ids = sink.ids();
        ids.sort();
        ids
    };
    let no_doubles = |name: &str, ids: &[String]| {
        let mut unique = ids.to_vec();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{name} got a delivery twice");
    };
    let fixed_ids = sorted(&fixed);
    assert_eq!(fixed_ids, ids, "the fixed backend got each delivery once");
    let (early_ids, late_ids) = (sorted(&early), sorted(&late));
    no_doubles("early", &early_ids);
    no_doubles("late", &late_ids);
    for id in &ids[marks.0..] {
        assert!(late_ids.binary_search(id).is_ok(), "late missed {id}");
    }
    for id in &ids[marks.1..] {
        assert!(
            early_ids.binary_search(id).is_err(),
            "early got {id} after its removal"
        );
    }
    for id in &ids[..marks.0] {
        assert!(
            late_ids.binary_search(id).is_err(),
            "late got {id} from before it existed"
        );
    }
    println!(
        "{TOTAL} deliveries from {SENDERS} senders: fixed {}, early {} (removed at {}), late {} (added at {})",
        fixed_ids.len(),
        early_ids.len(),
        marks.1,
        late_ids.len(),
        marks.0
    );

    // Registrations persist across a restart.
    fanout.signal(libc::SIGTERM);
    fanout.wait_exit(DEADLINE).expect("stops");
    let fanout = spawn(&dir, &args);
    let listed = backends_api(&fanout, Method::GET, "/backends", Some("t0ken"), None).await;
    let names: Vec<String> = listed.json()["backends"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| b["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, [fixed.url(), "late".to_owned()]);
}
