//! The exit role of `agent service-relay` on the wire, part one: raw
//! HTTP/1.1 bytes from a client shaped like the managed apiserver's
//! services/proxy, through the relay, to a scripted upstream on loopback
//! that records every request byte for byte and answers what each test
//! scripts. A real kube-apiserver (the shared plane) reviews the relay
//! token.
//!
//! Together with `service_relay_wire_limits.rs` these tests are the contract
//! of the exit relay's HTTP/1.1 path. Here: what the Service receives
//! (target, Host, Authorization, `X-Forwarded-*`, no `Cluster-Proxy-*` or
//! hop-by-hop header), what the client receives (status, headers, bodies
//! however framed), keep-alive and pipelining, and pooled connections the
//! upstream closed (at the entry too, whose upstream client is hyper's). Each test has an upstream of its own, named by its port
//! in `Cluster-Proxy-Port`, so tests sharing a relay stay independent.

mod support;

use std::collections::BTreeSet;

use support::{
    exit_wire::*,
    scripted_upstream::{Answer, Framing, ScriptedUpstream},
};

#[test]
fn a_get_reaches_the_service_with_its_target_and_only_end_to_end_headers() {
    let upstream = ScriptedUpstream::start(|_| Answer::Reply(ok("fine")));
    let target = "/a/b%20c/?x=1&y=%2F&x=2&empty=";
    let request = head(
        &format!("GET {target} HTTP/1.1"),
        upstream.port(),
        &[
            // What the apiserver left, not the caller's: replaced.
            ("Authorization", "Bearer what-the-apiserver-left"),
            ("Cluster-Proxy-Authorization", CALLERS_AUTHORIZATION),
            ("CLUSTER-PROXY-EXTRA", "forged"),
            ("cluster-proxy-another", "forged"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("Connection", "keep-alive, X-Hop-Listed"),
            ("X-Hop-Listed", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Multi", "one"),
            ("Accept", "text/plain"),
            ("X-Multi", "two"),
        ],
    );
    let response = Client::connect(relay()).exchange(&request, "GET");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "fine");

    let seen = only(upstream.requests()).head;
    assert_eq!(seen.start_line, format!("GET {target} HTTP/1.1"));
    assert_eq!(
        seen.all("host"),
        [format!(
            "{SERVICE}.{SERVICE_NAMESPACE}.svc:{}",
            upstream.port()
        )]
    );
    assert_eq!(seen.all("authorization"), [CALLERS_AUTHORIZATION]);
    let leaked: Vec<&String> = seen
        .headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| name.to_ascii_lowercase().starts_with("cluster-proxy-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "Cluster-Proxy-* reached the Service: {leaked:?}"
    );
    assert!(
        !String::from_utf8_lossy(&seen.raw).contains(relay_token()),
        "the relay token reached the Service"
    );
    assert_eq!(seen.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["relay.example"]);
    assert_own_connection_header(&seen);
    for hop in [
        "x-hop-listed",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            seen.get(hop).is_none(),
            "hop-by-hop {hop} reached the Service: {seen:#?}"
        );
    }
    assert_eq!(seen.all("x-multi"), ["one", "two"]);
    assert_eq!(seen.all("accept"), ["text/plain"]);
}

#[test]
fn forwarded_headers_of_an_earlier_hop_are_kept_and_no_authorization_is_invented() {
    let upstream = target_echo();
    let request = head(
        "GET /behind-another-proxy HTTP/1.1",
        upstream.port(),
        &[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "outer.example"),
        ],
    );
    let response = Client::connect(relay()).exchange(&request, "GET");
    assert_eq!(response.status(), 200, "{response:?}");

    let seen = only(upstream.requests()).head;
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("x-forwarded-host"), ["outer.example"]);
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert!(seen.get("authorization").is_none(), "{seen:#?}");
}

#[test]
fn responses_keep_status_body_and_repeated_headers_but_not_hop_by_hop_ones() {
    let upstream = ScriptedUpstream::start(|request| {
        Answer::Reply(match request.head.target() {
            "/created" => b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\
                Connection: keep-alive, X-Upstream-Hop\r\nX-Upstream-Hop: 1\r\n\
                Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n\
                Set-Cookie: a=1; Path=/\r\nX-Kept: yes\r\nSet-Cookie: b=2; Path=/\r\n\r\ncreated"
                .to_vec(),
            _ => b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 15\r\n\r\nshort and stout".to_vec(),
        })
    });
    let mut client = Client::connect(relay());

    let response = client.exchange(&get("/created", upstream.port()), "GET");
    assert_eq!(response.status(), 201, "{response:?}");
    assert_eq!(response.text(), "created");
    let head = &response.head;
    assert_eq!(head.all("set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(head.all("x-kept"), ["yes"]);
    assert_own_connection_header(head);
    for hop in ["x-upstream-hop", "keep-alive", "proxy-connection"] {
        assert!(
            head.get(hop).is_none(),
            "hop-by-hop {hop} reached the client: {head:#?}"
        );
    }

    let response = client.exchange(&get("/teapot", upstream.port()), "GET");
    assert_eq!(response.status(), 418, "{response:?}");
    assert_eq!(response.text(), "short and stout");
}

#[test]
fn one_client_connection_carries_sequential_and_pipelined_requests_in_order() {
    let upstream = target_echo();
    let port = upstream.port();
    let mut client = Client::connect(relay());
    for i in 0..3 {
        let target = format!("/sequential/{i}");
        let response = client.exchange(&get(&target, port), "GET");
        assert_eq!(response.status(), 200, "{response:?}");
        assert_eq!(response.text(), target);
    }

    // Two requests in one write.
    let mut pipelined = get("/pipelined/1", port);
    pipelined.extend(get("/pipelined/2", port));
    client.send(&pipelined);
    for target in ["/pipelined/1", "/pipelined/2"] {
        let response = client.answer("GET");
        assert_eq!(response.status(), 200, "{response:?}");
        assert_eq!(response.text(), target);
    }

    let targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|request| request.head.target().to_owned())
        .collect();
    assert_eq!(
        targets,
        [
            "/sequential/0",
            "/sequential/1",
            "/sequential/2",
            "/pipelined/1",
            "/pipelined/2"
        ]
    );
}

#[test]
fn request_bodies_reach_the_service_exactly_however_framed() {
    let upstream = body_length_echo();
    let port = upstream.port();
    let chunked = |target: &str, framed: &[u8]| {
        let mut request = head(
            &format!("POST {target} HTTP/1.1"),
            port,
            &[("Transfer-Encoding", "chunked")],
        );
        request.extend_from_slice(framed);
        request
    };
    // Many small chunks, sizes up to 0x1F in upper-case hex, then a trailer.
    let mut many = Vec::new();
    let mut many_framed = Vec::new();
    for i in 0..400u32 {
        let size = (i % 31 + 1) as usize;
        let data: Vec<u8> = (0..size)
            .map(|j| b'a' + ((i as usize + j) % 26) as u8)
            .collect();
        many_framed.extend(format!("{size:X}\r\n").bytes());
        many_framed.extend(&data);
        many_framed.extend(b"\r\n");
        many.extend(data);
    }
    many_framed.extend(b"0\r\nX-Checksum: 42\r\n\r\n");
    let cases: [(&str, Vec<u8>, Vec<u8>); 3] = [
        (
            "content-length",
            post("/length", port, b"hello world"),
            b"hello world".to_vec(),
        ),
        (
            "chunk extensions",
            chunked(
                "/extensions",
                b"5;ext=1\r\nhello\r\n6;name=\"quoted value\"\r\n world\r\n0\r\n\r\n",
            ),
            b"hello world".to_vec(),
        ),
        (
            "many chunks and a trailer",
            chunked("/many", &many_framed),
            many,
        ),
    ];

    let mut client = Client::connect(relay());
    for (what, request, _) in &cases {
        let response = client.exchange(request, "POST");
        assert_eq!(response.status(), 200, "{what}: {response:?}");
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), cases.len(), "{requests:#?}");
    for ((what, _, sent), seen) in cases.iter().zip(&requests) {
        assert_eq!(
            String::from_utf8_lossy(&seen.body.bytes),
            String::from_utf8_lossy(sent),
            "{what}"
        );
    }
}

#[test]
fn an_8_mib_request_body_reaches_the_service_whole() {
    let upstream = body_length_echo();
    let body: Vec<u8> = (0..8 << 20).map(|i: usize| (i * 7 % 251) as u8).collect();
    let response = Client::connect(relay()).exchange(&post("/big", upstream.port(), &body), "POST");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), body.len().to_string());
    let seen = only(upstream.requests());
    assert_eq!(seen.body.bytes.len(), body.len());
    assert!(seen.body.bytes == body, "the body changed on the way");
}

#[test]
fn response_bodies_reach_the_client_whole_whatever_their_framing() {
    let until_close: Vec<u8> = (0..100_000).map(|i: usize| b'a' + (i % 26) as u8).collect();
    let unframed = until_close.clone();
    let upstream = ScriptedUpstream::start(move |request| match request.head.target() {
        "/length" => {
            Answer::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nfixed length".to_vec())
        }
        "/chunked" => Answer::Reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
              4;a=b\r\nwire\r\n5;quoted=\"x y\"\r\n-test\r\n0\r\nX-Sum: 9\r\n\r\n"
                .to_vec(),
        ),
        // HTTP/1.1 with neither a length nor chunked: the body ends at close.
        _ => {
            let mut response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
            response.extend(&unframed);
            Answer::ReplyAndClose(response)
        }
    });
    let port = upstream.port();

    let mut client = Client::connect(relay());
    let response = client.exchange(&get("/length", port), "GET");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "fixed length");
    let response = client.exchange(&get("/chunked", port), "GET");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "wire-test");

    let mut client = Client::connect(relay());
    let response = client.exchange(&get("/until-close", port), "GET");
    assert_eq!(response.status(), 200, "{:?}", response.head);
    assert_eq!(
        response.body.bytes.len(),
        until_close.len(),
        "{:?}",
        response.head
    );
    assert!(
        response.body.bytes == until_close,
        "the body changed on the way"
    );
    if response.framing != Framing::UntilClose {
        // Framed by the relay: the connection still serves.
        let response = client.exchange(&get("/length", port), "GET");
        assert_eq!(response.text(), "fixed length");
    }
}

#[test]
fn bodiless_responses_leave_the_client_connection_usable() {
    let upstream = ScriptedUpstream::start(|request| {
        Answer::Reply(match (request.head.method(), request.head.target()) {
            ("HEAD", _) => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n"
                    .to_vec()
            }
            (_, "/no-content") => b"HTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n".to_vec(),
            (_, "/not-modified") => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec(),
            (_, target) => ok(target),
        })
    });
    let port = upstream.port();
    let mut client = Client::connect(relay());

    let response = client.exchange(&head("HEAD /thing HTTP/1.1", port, &[]), "HEAD");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.head.all("content-length"), ["1234"]);
    let after = client.exchange(&get("/after-head", port), "GET");
    assert_eq!(
        (after.status(), after.text().as_str()),
        (200, "/after-head")
    );

    let response = client.exchange(&get("/no-content", port), "GET");
    assert_eq!(response.status(), 204, "{response:?}");
    assert_eq!(response.head.all("x-done"), ["yes"]);
    let after = client.exchange(&get("/after-204", port), "GET");
    assert_eq!((after.status(), after.text().as_str()), (200, "/after-204"));

    let request = head(
        "GET /not-modified HTTP/1.1",
        port,
        &[("If-None-Match", "\"v1\"")],
    );
    let response = client.exchange(&request, "GET");
    assert_eq!(response.status(), 304, "{response:?}");
    assert_eq!(response.head.all("etag"), ["\"v1\""]);
    let after = client.exchange(&get("/after-304", port), "GET");
    assert_eq!((after.status(), after.text().as_str()), (200, "/after-304"));
}

#[test]
fn the_relays_own_answer_to_a_head_has_no_body_and_the_connection_goes_on() {
    // A HEAD the relay refuses itself (a service that cannot be named) gets
    // the status and length of the refusal but no body, so the next
    // response on the connection is read from where it starts.
    let upstream = target_echo();
    let port = upstream.port();
    let mut client = Client::connect(relay());
    let bad_service = head(
        "HEAD /thing HTTP/1.1",
        port,
        &[("Cluster-Proxy-Service", "Not_A_Label")],
    );
    // The routing header is read first-wins; send the bad one alone.
    let bad_service = String::from_utf8(bad_service).expect("ascii").replacen(
        &format!("Cluster-Proxy-Service: {SERVICE}\r\n"),
        "",
        1,
    );
    let response = client.exchange(bad_service.as_bytes(), "HEAD");
    assert_eq!(response.status(), 400, "{response:?}");
    assert_ne!(response.head.all("content-length"), ["0"]);
    let after = client.exchange(&get("/after-refused-head", port), "GET");
    assert_eq!(
        (after.status(), after.text().as_str()),
        (200, "/after-refused-head")
    );
    assert_eq!(
        only(upstream.requests()).head.target(),
        "/after-refused-head"
    );
}

#[test]
fn a_connection_the_upstream_closed_after_its_response_is_not_reused() {
    // Keep-alive by default in HTTP/1.1, then closed without a word.
    let upstream =
        ScriptedUpstream::start(|request| Answer::ReplyAndClose(ok(request.head.target())));
    let mut client = Client::connect(relay());
    let rounds = 5;
    for i in 0..rounds {
        let target = format!("/round/{i}");
        let response = client.exchange(&get(&target, upstream.port()), "GET");
        assert_eq!(response.status(), 200, "round {i}: {response:?}");
        assert_eq!(response.text(), target);
        // The next request comes once the upstream has closed this one.
        upstream
            .wait_all_closed(DEADLINE)
            .expect("the upstream closes");
    }
    let connections: BTreeSet<usize> = upstream
        .requests()
        .iter()
        .map(|request| request.connection)
        .collect();
    assert_eq!(
        connections.len(),
        rounds,
        "one upstream connection per request"
    );
}

/// Asserts that `/first` and `/second` went on connection 0, which closed
/// on the second unanswered, and `/second` again on connection 1.
fn assert_second_sent_again(upstream: &ScriptedUpstream) {
    let seen: Vec<(usize, String)> = upstream
        .requests()
        .iter()
        .map(|request| (request.connection, request.head.target().to_owned()))
        .collect();
    assert_eq!(
        seen,
        [
            (0, "/first".to_owned()),
            (0, "/second".to_owned()),
            (1, "/second".to_owned())
        ]
    );
}

#[test]
fn a_get_on_a_pooled_connection_the_upstream_closes_unanswered_is_sent_again() {
    // The worst timing of an upstream closing idle keep-alive connections:
    // the request is on its way when the upstream closes (here it has read
    // it; the relay cannot tell). No response byte came back and a GET is
    // idempotent, so it may be sent again (RFC 9110 section 9.2.2), as
    // clients such as Go's Transport do. Under load the relay meets this
    // after an upstream's unannounced close too: a few GETs in 1000.
    let upstream = ScriptedUpstream::start(|request| match request.on_connection {
        0 => Answer::Reply(ok(request.head.target())),
        _ => Answer::Close,
    });
    let mut client = Client::connect(relay());
    for target in ["/first", "/second"] {
        let response = client.exchange(&get(target, upstream.port()), "GET");
        assert_eq!(response.status(), 200, "{target}: {response:?}");
        assert_eq!(response.text(), target);
    }
    assert_second_sent_again(&upstream);
}

#[test]
fn the_entry_sends_a_get_again_when_its_pooled_connection_closes_unanswered() {
    // The same race at the entry (here in direct mode), whose upstream
    // client is hyper's: a GET the upstream read and closed on without an
    // answer goes again on a new connection.
    let upstream = ScriptedUpstream::start(|request| match request.on_connection {
        0 => Answer::Reply(ok(request.head.target())),
        _ => Answer::Close,
    });
    let resolve = format!("{SERVICE}.{SERVICE_NAMESPACE}.svc=127.0.0.1");
    let entry = support::agent::Agent::spawn(
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
    .expect("entry relay starts");
    let mut client = Client::connect(&entry);
    let port = upstream.port();
    for target in ["/first", "/second"] {
        let request = format!(
            "GET /api/v1/namespaces/{SERVICE_NAMESPACE}/services/{SERVICE}:{port}/proxy{target} HTTP/1.1\r\n\
             Host: entry.example\r\n\r\n"
        );
        let response = client.exchange(request.as_bytes(), "GET");
        assert_eq!(response.status(), 200, "{target}: {response:?}");
        assert_eq!(response.text(), target);
    }
    assert_second_sent_again(&upstream);
}
