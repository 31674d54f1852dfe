//! Proves the real-control-plane fixture in `tests/support/`: control planes
//! start, are independent, survive an apiserver SIGKILL with their data, and
//! pods in network namespaces are reached through the apiserver's
//! services/proxy (and reach the apiserver themselves) and vanish on drop;
//! pods reach each other by pod IP while the host forwards nothing; the echo
//! upstream (`echo.py`) serves what relay tests rely on, over TLS too.
//!
//! Run with `cargo test --test fixture` (root; see hack/install-deps.sh).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use support::echo::{curl, curl_get, json, opcode};
use support::{
    ControlPlane, EchoPod, EchoServer, NetnsPod, TlsFiles, WsClient, host_network_state,
    pod_network_ports, shared, wait_for_sync, wait_until, wait_until_sync,
};

const POD_START: Duration = Duration::from_secs(20);

fn named<T>(name: &str, build: impl FnOnce(ObjectMeta) -> T) -> T {
    build(ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    })
}

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[tokio::test]
async fn two_control_planes_are_independent() {
    let (alpha, beta) = (shared("alpha"), shared("beta"));
    assert_ne!(alpha.port(), beta.port());
    assert_ne!(alpha.ca_pem(), beta.ca_pem());
    assert!(alpha.kubeconfig_yaml().contains(&alpha.server()));

    let ns = named("only-on-alpha", |metadata| Namespace {
        metadata,
        ..Namespace::default()
    });
    Api::<Namespace>::all(alpha.client().await)
        .create(&PostParams::default(), &ns)
        .await
        .expect("alpha accepts the namespace");
    let on_alpha = Api::<Namespace>::all(alpha.client().await)
        .get_opt("only-on-alpha")
        .await;
    let on_beta = Api::<Namespace>::all(beta.client().await)
        .get_opt("only-on-alpha")
        .await;
    assert!(on_alpha.expect("alpha answers").is_some());
    assert!(
        on_beta.expect("beta answers").is_none(),
        "beta must not see alpha's namespace"
    );
}

#[test]
fn kubectl_reads_readyz_and_the_default_service_account_exists() {
    let alpha = shared("alpha");
    let readyz = alpha
        .kubectl_ok(&["get", "--raw", "/readyz"])
        .expect("readyz");
    assert_eq!(readyz.trim(), "ok");
    alpha
        .kubectl_ok(&["-n", "default", "get", "serviceaccount", "default"])
        .expect("bootstrap created the default ServiceAccount");
}

#[tokio::test]
async fn apiserver_restart_keeps_port_and_data() {
    // Not shared: killing its apiserver must not disturb other tests.
    let plane = ControlPlane::start("restart").expect("control plane starts");
    let cm = named("survivor", |metadata| ConfigMap {
        metadata,
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..ConfigMap::default()
    });
    Api::<ConfigMap>::namespaced(plane.client().await, "default")
        .create(&PostParams::default(), &cm)
        .await
        .expect("configmap created");

    plane.kill_apiserver();
    let down = plane.kubectl(&["get", "--raw", "/readyz"]);
    assert!(!down.status.success(), "a killed apiserver must not answer");

    let port = plane.port();
    plane.start_apiserver().expect("apiserver restarts");
    assert_eq!(plane.port(), port);
    let got = Api::<ConfigMap>::namespaced(plane.client().await, "default")
        .get("survivor")
        .await
        .expect("the configmap survived the restart");
    assert_eq!(
        got.data.unwrap_or_default().get("k").map(String::as_str),
        Some("v")
    );
}

#[test]
fn pod_is_reached_through_service_proxy_and_removed_on_drop() {
    let alpha = shared("alpha");
    let pod = NetnsPod::create(alpha, "proxy-test", "web", &[8080]).expect("pod created");
    let ip = pod.pod_ip().to_string();
    assert!(!ip.starts_with("192.0.2."), "never the host's own network");

    // Under the run directory, so even a killed run's files get swept.
    let docroot = support::run_dir().join("proxy-test-docroot");
    std::fs::create_dir_all(&docroot).expect("docroot");
    std::fs::write(docroot.join("hello.txt"), "hello from the pod\n").expect("write");
    let mut server = Command::new("/usr/bin/python3");
    server.args(["-m", "http.server", "--bind", &ip, "8080", "--directory"]);
    server.arg(&docroot);
    pod.spawn(server).expect("server spawned");
    pod.wait_listening(8080, POD_START).expect("server listens");

    let body = alpha
        .kubectl_ok(&["get", "--raw", &pod.proxy_path(8080, "/hello.txt")])
        .unwrap_or_else(|err| {
            panic!(
                "{err:#}\napiserver log tail: {}",
                tail(&alpha.apiserver_log())
            )
        });
    assert_eq!(body, "hello from the pod\n");

    let netns = pod.netns().to_owned();
    assert!(netns_exists(&netns));
    drop(pod);
    assert!(
        !netns_exists(&netns),
        "the network namespace is deleted on drop"
    );
    for kind in ["pod", "service", "endpoints"] {
        let out = alpha.kubectl(&["-n", "proxy-test", "get", kind, "web"]);
        assert!(!out.status.success(), "{kind}/web is deleted on drop");
        assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    }
}

#[test]
fn pod_reaches_the_host_apiserver_through_the_forwarder() {
    let alpha = shared("alpha");
    let pod = NetnsPod::create(alpha, "forward-test", "client", &[]).expect("pod created");
    pod.forward_host_port(alpha.port())
        .expect("forwarder starts");
    let mut kubectl = Command::new("kubectl");
    kubectl.arg("--kubeconfig").arg(alpha.kubeconfig_path());
    kubectl.args(["get", "--raw", "/readyz"]);
    pod.spawn(kubectl).expect("kubectl spawned in the pod");
    wait_until_sync("kubectl in the pod to print ok", POD_START, || {
        pod.log().lines().any(|l| l == "ok")
    })
    .unwrap_or_else(|err| panic!("{err:#}\npod log: {}", pod.log()));
}

#[test]
fn concurrent_pods_get_distinct_addresses() {
    let alpha = shared("alpha");
    let pods: Vec<NetnsPod> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| s.spawn(move || NetnsPod::create(alpha, "many", &format!("p{i}"), &[80])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic").expect("pod created"))
            .collect()
    });
    let mut ips: Vec<_> = pods.iter().map(NetnsPod::pod_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), pods.len(), "every pod has its own address");
    let names: Vec<String> = pods.iter().map(|p| p.netns().to_owned()).collect();
    drop(pods);
    assert!(names.iter().all(|n| !netns_exists(n)));
}

#[tokio::test]
async fn waits_say_what_they_waited_for() {
    let err = wait_until_sync("the impossible", Duration::from_millis(50), || false)
        .expect_err("never true");
    assert!(
        format!("{err:#}").contains("waiting for the impossible"),
        "{err:#}"
    );

    let err = wait_until("the unlikely", Duration::from_millis(50), || async {
        false
    })
    .await
    .expect_err("never true");
    assert!(
        format!("{err:#}").contains("waiting for the unlikely"),
        "{err:#}"
    );
    let mut calls = 0;
    let third = wait_for_sync("a third call", Duration::from_secs(5), || {
        calls += 1;
        if calls < 3 {
            Err(anyhow::anyhow!("call {calls}"))
        } else {
            Ok(calls)
        }
    });
    assert_eq!(third.expect("succeeds on the third call"), 3);
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn pods_reach_each_other_by_pod_ip_and_the_host_forwards_nothing() {
    let before = host_network_state().expect("host state");
    assert!(before.contains("net.ipv4.ip_forward = 0"), "{before}");
    let alpha = shared("alpha");
    let client = NetnsPod::create(alpha, "p2p", "client", &[]).expect("client pod");
    let post_from_client = |echo: &EchoPod| {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "--data-binary", "from pod A"]);
        curl.arg(echo.url("/a-to-b"));
        json(&client.run(curl, POD_START).expect("curl runs"))
    };
    let echo = EchoPod::start(alpha, "p2p", "echo", 8080, None).expect("echo pod");
    let echoed = post_from_client(&echo);
    assert_eq!(
        (&echoed["path"], &echoed["body_bytes"]),
        (&"/a-to-b".into(), &10.into())
    );
    // The echo saw pod A's own address: nothing translated or relayed it.
    let peer = echoed["peer"].as_str().expect("peer").split(':').next();
    assert_eq!(peer, Some(client.pod_ip().to_string().as_str()));

    // A freed address goes to the next pod (unless a concurrent test takes
    // it first) while the client and the host still have a neighbour entry
    // for it; the new pod must be reached at once all the same.
    let port = echo.pod().bridge_port().expect("port");
    drop(echo);
    assert!(
        !pod_network_ports().contains(&port),
        "the bridge port goes with the pod"
    );
    let echo = EchoPod::start(alpha, "p2p", "echo-again", 8080, None).expect("echo pod");
    assert_eq!(post_from_client(&echo)["body_bytes"], 10);

    // What a pod sends anywhere but the pod network ends at the host.
    let from = client.pod_ip().to_string();
    let args = [
        "route",
        "get",
        "8.8.8.8",
        "from",
        &from,
        "iif",
        client.host_if(),
    ];
    let route = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        !route.status.success(),
        "the host would route it: {route:?}"
    );
    assert!(String::from_utf8_lossy(&route.stderr).contains("No route to host"));

    drop((client, echo));
    let after = host_network_state().expect("host state");
    assert_eq!(after, before, "the host's network changed");
}

#[test]
fn echo_returns_json_for_requests_with_bodies_on_kept_alive_connections() {
    let echo = EchoServer::start_local(None).expect("echo starts");
    let body: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = support::run_dir().join("echo-upload");
    std::fs::write(&file, &body).expect("write");
    let upload = format!("@{}", file.display());
    let sha = format!("{:x}", Sha256::digest(&body));
    let url = echo.url("/up/load?x=1&y=2");

    let echoed = json(&curl(&[
        "--data-binary",
        &upload,
        "-H",
        "X-Two: a",
        "-H",
        "X-Two: b",
        &url,
    ]));
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/up/load?x=1&y=2");
    assert_eq!(echoed["headers"]["x-two"], serde_json::json!(["a", "b"]));
    assert_eq!(echoed["headers"]["content-length"][0], "3000017");
    assert_eq!(echoed["body_bytes"], 3_000_017);
    assert_eq!(echoed["body_sha256"].as_str(), Some(sha.as_str()));

    let chunked = [
        "-X",
        "PUT",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &upload,
    ];
    let echoed = json(&curl(&[&chunked[..], &[&url]].concat()));
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["headers"]["transfer-encoding"][0], "chunked");
    assert_eq!(echoed["body_sha256"].as_str(), Some(sha.as_str()));

    // Two requests in one curl run: the second reuses the connection.
    let health = echo.url("/healthz");
    let nulls = ["-o", "/dev/null", "-o", "/dev/null"];
    let out = curl(&[&nulls[..], &["-w", "%{num_connects} ", &health, &health]].concat());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 0 ");
}

#[test]
fn echo_streams_bytes_with_length_chunked_and_slowly() {
    let echo = EchoServer::start_local(None).expect("echo starts");
    let n = 5 * 1024 * 1024 + 3;
    let pattern: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let (head, body) = curl_get(&[], &echo.url(&format!("/bytes?n={n}")));
    assert!(head.contains(&format!("content-length: {n}\r\n")), "{head}");
    assert!(
        body == pattern,
        "/bytes: {} bytes, not the pattern",
        body.len()
    );

    let (head, body) = curl_get(&[], &echo.url(&format!("/chunked?n={n}")));
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(
        body == pattern,
        "/chunked: {} bytes, not the pattern",
        body.len()
    );

    let (head, body) = curl_get(&[], &echo.url("/slow?chunks=3&interval_ms=20"));
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "chunk 0\nchunk 1\nchunk 2\n"
    );
}

#[tokio::test]
async fn https_echo_is_verified_with_the_generated_ca_by_curl_and_rustls() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let tls = TlsFiles::generate(&["echo.test"], &[localhost]).expect("certificates");
    let echo = EchoServer::start_local(Some(&tls)).expect("echo starts");
    let ca = tls.ca_pem_path.to_str().expect("utf-8 path");
    let (_, ok) = curl_get(&["--cacert", ca], &echo.url("/healthz"));
    assert_eq!(ok, b"ok");
    let port = echo.addr().port();
    let by_name = format!("echo.test:{port}:127.0.0.1");
    let (_, ok) = curl_get(
        &["--cacert", ca, "--resolve", &by_name],
        &format!("https://echo.test:{port}/healthz"),
    );
    assert_eq!(ok, b"ok");
    let untrusted = curl(&[&echo.url("/healthz")]);
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "unknown CA: {untrusted:?}"
    );

    // kube-rs over rustls, which rejects what is not X.509 v3.
    let b64: String = tls
        .ca_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64);
    let mut config = kube::Config::new(echo.url("").parse().expect("a URI"));
    config.root_cert = Some(vec![der.expect("base64")]);
    let client = kube::Client::try_from(config).expect("client");
    let request = http::Request::get("/healthz")
        .body(Vec::new())
        .expect("request");
    let ok = client
        .request_text(request)
        .await
        .expect("rustls accepts it");
    assert_eq!(ok, "ok");
}

#[test]
fn websocket_frames_are_echoed() {
    let echo = EchoServer::start_local(None).expect("echo starts");
    let mut ws = WsClient::connect(echo.addr(), "echo", "/ws").expect("upgrade");
    ws.send(opcode::TEXT, b"hello").expect("send");
    assert_eq!(ws.recv().expect("recv"), (opcode::TEXT, b"hello".to_vec()));
    // Past 65535 bytes: the 64-bit length form, both ways.
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 256) as u8).collect();
    ws.send(opcode::BINARY, &big).expect("send");
    assert_eq!(ws.recv().expect("recv"), (opcode::BINARY, big));
    ws.send(opcode::PING, b"p").expect("send");
    assert_eq!(ws.recv().expect("recv"), (opcode::PONG, b"p".to_vec()));
    assert_eq!(ws.close(1000).expect("close echoed"), 1000);
}

#[test]
fn apiserver_service_proxy_reaches_echo_pods_over_http_and_https() {
    let alpha = shared("alpha");
    let echo = EchoPod::start(alpha, "echo-proxy", "echo", 8080, None).expect("echo pod");
    let ok = alpha.kubectl_ok(&["get", "--raw", &echo.proxy_path("/healthz")]);
    assert_eq!(ok.expect("proxied"), "ok");
    let raw = alpha.kubectl_ok(&["get", "--raw", &echo.proxy_path("/deep/path?q=1")]);
    let echoed: Value = serde_json::from_str(&raw.expect("proxied")).expect("json");
    // kubectl adds its --request-timeout to the query.
    let path = echoed["path"].as_str().expect("a path");
    assert!(path.starts_with("/deep/path?q=1"), "{path}");

    let tls = TlsFiles::generate(&["echo-tls.echo-proxy.svc"], &[]).expect("certificates");
    let secure = EchoPod::start(alpha, "echo-proxy", "echo-tls", 8443, Some(&tls)).expect("pod");
    let ok = alpha.kubectl_ok(&["get", "--raw", &secure.proxy_path("/healthz")]);
    assert_eq!(ok.expect("proxied over TLS"), "ok");
}
