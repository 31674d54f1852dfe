//! Proves the real-control-plane fixture in `tests/support/`: control planes
//! start, are independent, survive an apiserver SIGKILL with their data, and
//! pods in network namespaces are reached through the apiserver's
//! services/proxy (and reach the apiserver themselves) and vanish on drop.
//!
//! Run with `cargo test --test fixture` (root; see hack/install-deps.sh).

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use support::{ControlPlane, NetnsPod, shared, wait_for_sync, wait_until, wait_until_sync};

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
