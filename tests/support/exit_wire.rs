//! The exit relay as the wire tests (`service_relay_wire*.rs`) drive it:
//! relays against the shared managed plane with an allowed caller, request
//! heads shaped like the managed apiserver's services/proxy, scripted
//! upstreams, and a raw client that reads responses however framed.

use std::{io, net::TcpListener, sync::OnceLock, time::Duration};

use super::{
    agent::Agent,
    scripted_upstream::{Answer, Body, Framing, Head, Recorded, ScriptedUpstream, Wire},
    shared,
};

/// Namespace of the ServiceAccount allowed to call the relays.
pub const CALLERS: &str = "wire-callers";
/// The Service every request names, `upstream.wire.svc`, which `--resolve`
/// points at 127.0.0.1; the port picks the test's upstream.
pub const SERVICE: &str = "upstream";
pub const SERVICE_NAMESPACE: &str = "wire";
/// The caller's own credential, carried in `Cluster-Proxy-Authorization`.
pub const CALLERS_AUTHORIZATION: &str = "Bearer the-callers-own-token";
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Interim responses read before giving up on a final one.
pub const MAX_INTERIM: usize = 10;

/// A token of the ServiceAccount the relays allow, minted once.
pub fn relay_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let managed = shared("managed");
        managed.ensure_namespace(CALLERS).expect("namespace");
        // Already there when another test binary of this run made it.
        let _ = managed.kubectl(&["create", "serviceaccount", "relay", "-n", CALLERS]);
        managed
            .kubectl_ok(&[
                "create",
                "token",
                "relay",
                "-n",
                CALLERS,
                "--duration",
                "1h",
            ])
            .expect("token")
            .trim()
            .to_owned()
    })
}

/// An exit relay against the shared managed plane, with `extra` flags.
pub fn start_relay(extra: &[&str]) -> Agent {
    let kubeconfig = shared("managed").kubeconfig_path();
    let caller = format!("system:serviceaccount:{CALLERS}:relay");
    let resolve = format!("{SERVICE}.{SERVICE_NAMESPACE}.svc=127.0.0.1");
    let mut args = vec![
        "service-relay",
        "--role",
        "exit",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
        "--allowed-caller",
        &caller,
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

/// The relay most tests share, with the default flags.
pub fn relay() -> &'static Agent {
    static RELAY: OnceLock<Agent> = OnceLock::new();
    RELAY.get_or_init(|| start_relay(&[]))
}

/// The relay of the limit tests: a 1000-byte body limit, a 1 s response
/// timeout.
pub fn limited_relay() -> &'static Agent {
    static RELAY: OnceLock<Agent> = OnceLock::new();
    RELAY.get_or_init(|| {
        start_relay(&[
            "--max-request-body-bytes",
            "1000",
            "--response-timeout",
            "1s",
        ])
    })
}

/// A request head as the managed apiserver's services/proxy sends it to the
/// exit relay, for the upstream on `port`: `start_line`, `Host`, the relay
/// credential and routing headers, then `extra` in order.
pub fn head(start_line: &str, port: u16, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!(
        "{start_line}\r\nHost: relay.example\r\n\
         Cluster-Proxy-Relay-Authorization: Bearer {}\r\n\
         Cluster-Proxy-Proto: http\r\nCluster-Proxy-Namespace: {SERVICE_NAMESPACE}\r\n\
         Cluster-Proxy-Service: {SERVICE}\r\nCluster-Proxy-Port: {port}\r\n",
        relay_token()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A GET of `target` from the upstream on `port`.
pub fn get(target: &str, port: u16) -> Vec<u8> {
    head(&format!("GET {target} HTTP/1.1"), port, &[])
}

/// A request with `body` framed by Content-Length.
pub fn post(target: &str, port: u16, body: &[u8]) -> Vec<u8> {
    let length = body.len().to_string();
    let mut request = head(
        &format!("POST {target} HTTP/1.1"),
        port,
        &[("Content-Length", &length)],
    );
    request.extend_from_slice(body);
    request
}

/// A 200 with `body` and its Content-Length.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An upstream that answers every request with a 200 whose body is the
/// request's target.
pub fn target_echo() -> ScriptedUpstream {
    ScriptedUpstream::start(|request| Answer::Reply(ok(request.head.target())))
}

/// An upstream that answers every request with a 200 whose body is the
/// length of the request's body.
pub fn body_length_echo() -> ScriptedUpstream {
    ScriptedUpstream::start(|request| Answer::Reply(ok(&request.body.bytes.len().to_string())))
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("bound").port()
}

/// Asserts that the Connection headers of `head`, if any, only say what
/// the sender does with its own hop (keep-alive, close): nothing of the
/// previous hop's Connection came through.
pub fn assert_own_connection_header(head: &Head) {
    for value in head.all("connection") {
        for token in value.split(',').map(str::trim) {
            assert!(
                token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close"),
                "Connection passed on from the previous hop: {value:?}"
            );
        }
    }
}

/// One response as the client read it.
#[derive(Debug)]
pub struct Response {
    pub head: Head,
    pub framing: Framing,
    pub body: Body,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body.bytes).into_owned()
    }
}

/// A client connection to a relay, speaking raw bytes.
pub struct Client {
    pub wire: Wire,
}

impl Client {
    pub fn connect(relay: &Agent) -> Client {
        Client {
            wire: Wire::connect(relay.addr("relay")).expect("the relay accepts"),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.wire.send(bytes).expect("the relay takes the bytes");
    }

    /// The next response to a `method` request, an interim one included;
    /// `None` if the relay closed the connection first.
    pub fn try_next(&mut self, method: &str) -> io::Result<Option<Response>> {
        let Some(head) = self.wire.head()? else {
            return Ok(None);
        };
        let framing = head.response_framing(method)?;
        let body = self.wire.body(framing)?;
        Ok(Some(Response {
            head,
            framing,
            body,
        }))
    }

    pub fn next(&mut self, method: &str) -> Response {
        self.try_next(method)
            .expect("a whole response")
            .expect("a response before the relay closed the connection")
    }

    /// The final response to a `method` request, after any interim ones.
    pub fn try_answer(&mut self, method: &str) -> io::Result<Option<Response>> {
        for _ in 0..MAX_INTERIM {
            let response = self.try_next(method)?;
            if !response
                .as_ref()
                .is_some_and(|response| (100..200).contains(&response.status()))
            {
                return Ok(response);
            }
        }
        panic!("more than {MAX_INTERIM} interim responses");
    }

    pub fn answer(&mut self, method: &str) -> Response {
        self.try_answer(method)
            .expect("a whole response")
            .expect("a response before the relay closed the connection")
    }

    /// Sends `request` and reads its final response.
    pub fn exchange(&mut self, request: &[u8], method: &str) -> Response {
        self.send(request);
        self.answer(method)
    }

    /// Asserts that the relay closes the connection with nothing more sent.
    pub fn assert_closed(&mut self) {
        let rest = self
            .wire
            .until_close()
            .expect("the relay closes the connection");
        assert!(
            rest.is_empty(),
            "bytes after the response: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// The only request the upstream received.
pub fn only(requests: Vec<Recorded>) -> Recorded {
    let [request] = <[Recorded; 1]>::try_from(requests)
        .unwrap_or_else(|all| panic!("expected one request upstream, got {all:#?}"));
    request
}
