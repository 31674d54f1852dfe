//! The exit role of `agent service-relay` at service level: a real
//! kube-apiserver reviews the relay tokens, the exit listens on loopback and
//! forwards to an echo server named by `--resolve`. Requests are sent as the
//! managed apiserver's services/proxy would send them. (The whole path
//! through a real apiserver and netns pods is in service_relay.rs.)

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    agent::Agent,
    echo::{EchoServer, echoed},
    shared, wait_until_sync,
};

const DEADLINE: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "exit-callers";

/// A token for a new ServiceAccount `name` in NAMESPACE on the shared plane.
fn token_for(name: &str) -> String {
    let managed = shared("managed");
    managed.ensure_namespace(NAMESPACE).expect("namespace");
    let _ = managed.kubectl(&["create", "serviceaccount", name, "-n", NAMESPACE]);
    managed
        .kubectl_ok(&["create", "token", name, "-n", NAMESPACE, "--duration", "1h"])
        .expect("token")
        .trim()
        .to_owned()
}

fn exit_relay(echo: &EchoServer, extra: &[&str]) -> Agent {
    let managed = shared("managed");
    let kubeconfig = managed.kubeconfig_path();
    let resolve = format!("echo.apps.svc={}", echo.addr().ip());
    let mut args = vec![
        "service-relay",
        "--role",
        "exit",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
        "--resolve",
        &resolve,
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Agent::spawn(&args, &["relay"]).expect("exit relay starts")
}

/// Sends a request the way the managed apiserver's services/proxy would.
fn call(exit: &Agent, echo: &EchoServer, headers: &[(&str, String)]) -> (u16, String) {
    let mut request = format!(
        "GET /hello?x=1 HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\
         Cluster-Proxy-Proto: http\r\nCluster-Proxy-Namespace: apps\r\nCluster-Proxy-Service: echo\r\nCluster-Proxy-Port: {}\r\n",
        echo.addr().port()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    support::agent::raw_http(exit.addr("relay"), request.as_bytes()).expect("exit answers")
}

#[test]
fn only_allowed_callers_pass_and_the_callers_authorization_is_restored() {
    let echo = EchoServer::start_local(None).expect("echo");
    let relay_token = token_for("relay");
    let intruder_token = token_for("intruder");
    let exit = exit_relay(
        &echo,
        &[
            "--allowed-caller",
            &format!("system:serviceaccount:{NAMESPACE}:relay"),
        ],
    );

    let (status, _) = call(&exit, &echo, &[]);
    assert_eq!(status, 401, "no relay credential");
    let (status, _) = call(
        &exit,
        &echo,
        &[(
            "Cluster-Proxy-Relay-Authorization",
            "Bearer not-a-token".into(),
        )],
    );
    assert_eq!(status, 401, "an invalid relay credential");
    let (status, _) = call(
        &exit,
        &echo,
        &[(
            "Cluster-Proxy-Relay-Authorization",
            format!("Bearer {intruder_token}"),
        )],
    );
    assert_eq!(
        status, 403,
        "a valid token of a ServiceAccount that is not an allowed caller"
    );
    // The user's own credential is not a relay credential.
    let (status, _) = call(
        &exit,
        &echo,
        &[("Authorization", format!("Bearer {relay_token}"))],
    );
    assert_eq!(status, 401);

    let (status, body) = call(
        &exit,
        &echo,
        &[
            (
                "Cluster-Proxy-Relay-Authorization",
                format!("Bearer {relay_token}"),
            ),
            ("Authorization", format!("Bearer {relay_token}")),
            (
                "Cluster-Proxy-Authorization",
                "Bearer the-users-own-token".into(),
            ),
            ("Cluster-Proxy-Something-Else", "x".into()),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let headers = echoed(&body).1;
    assert_eq!(
        headers["authorization"],
        vec!["Bearer the-users-own-token".to_owned()]
    );
    let leaked: Vec<&String> = headers
        .keys()
        .filter(|name| name.starts_with("cluster-proxy-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "Cluster-Proxy-* headers reached the service: {leaked:?}"
    );
    assert!(headers.contains_key("x-forwarded-for"));
    let json: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["path"], "/hello?x=1");

    // Without a caller's Authorization, the service gets none.
    let (status, body) = call(
        &exit,
        &echo,
        &[(
            "Cluster-Proxy-Relay-Authorization",
            format!("Bearer {relay_token}"),
        )],
    );
    assert_eq!(status, 200);
    assert!(!echoed(&body).1.contains_key("authorization"));

    assert_eq!(
        exit.metric("cluster_relay_service_relay_caller_rejections_total{reason=\"not_allowed\"}"),
        1.0
    );
    assert_eq!(
        exit.metric(
            "cluster_relay_service_relay_caller_rejections_total{reason=\"no_credential\"}"
        ),
        2.0
    );
    assert_eq!(
        exit.metric("cluster_relay_service_relay_requests_total{code=\"200\",role=\"exit\"}"),
        2.0
    );
}

#[test]
fn with_no_allowed_caller_nobody_passes() {
    let echo = EchoServer::start_local(None).expect("echo");
    let relay_token = token_for("lonely");
    let exit = exit_relay(&echo, &[]);
    let (status, _) = call(
        &exit,
        &echo,
        &[(
            "Cluster-Proxy-Relay-Authorization",
            format!("Bearer {relay_token}"),
        )],
    );
    assert_eq!(status, 403);
    wait_until_sync("/readyz to say why", DEADLINE, || {
        exit.admin_get("/readyz")
            .is_ok_and(|(status, body)| status == 503 && body.contains("no --allowed-caller"))
    })
    .expect("not ready");
}
