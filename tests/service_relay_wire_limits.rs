//! The exit role of `agent service-relay` on the wire, part two (the setup
//! is part one's, `service_relay_wire.rs`): interim responses and `Expect`,
//! the body limit, malformed requests, HTTP/1.0 and closing clients,
//! upstream failures, and the request metrics; and the entry's response
//! timeout, which like the exit's runs from the end of the request body.

mod support;

use std::net::TcpListener;

use support::{
    exit_wire::*,
    scripted_upstream::{Answer, ScriptedUpstream},
};

#[test]
fn an_interim_103_is_followed_by_the_final_answer() {
    let upstream = ScriptedUpstream::start(|request| {
        Answer::Reply(match request.head.target() {
            "/hinted" => b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                .to_vec(),
            target => ok(target),
        })
    });
    let mut client = Client::connect(relay());
    let response = client.exchange(&get("/hinted", upstream.port()), "GET");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "final");
    let after = client.exchange(&get("/after", upstream.port()), "GET");
    assert_eq!((after.status(), after.text().as_str()), (200, "/after"));
}

#[test]
fn expect_100_continue_gets_continue_then_the_answer() {
    let upstream = body_length_echo();
    let mut client = Client::connect(relay());
    client.send(&head(
        "POST /upload HTTP/1.1",
        upstream.port(),
        &[("Expect", "100-continue"), ("Content-Length", "11")],
    ));
    let interim = client.next("POST");
    assert_eq!(interim.status(), 100, "{interim:?}");
    client.send(b"hello world");
    let response = client.answer("POST");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "11");
    assert_eq!(only(upstream.requests()).body.bytes, b"hello world");
}

#[test]
fn a_declared_body_over_the_limit_is_refused_before_the_upstream() {
    let upstream = body_length_echo();
    let response = Client::connect(limited_relay())
        .exchange(&post("/big", upstream.port(), &[b'x'; 2000]), "POST");
    assert_eq!(response.status(), 413, "{response:?}");
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
    assert_eq!(upstream.connections(), 0);

    // At the limit, it passes.
    let response = Client::connect(limited_relay())
        .exchange(&post("/limit", upstream.port(), &[b'y'; 1000]), "POST");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(only(upstream.requests()).body.bytes, [b'y'; 1000]);
}

/// A POST of 1500 bytes in three chunks, to the upstream on `port`.
fn chunked_past_the_limit(port: u16) -> Vec<u8> {
    let mut request = head(
        "POST /streamed HTTP/1.1",
        port,
        &[("Transfer-Encoding", "chunked")],
    );
    for _ in 0..3 {
        request.extend(b"1F4\r\n");
        request.extend([b'z'; 500]);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    request
}

/// Sends a chunked body past the limit to the limited relay: its answer,
/// or `None` if it closed (or reset) the connection without one.
fn send_past_the_limit(upstream: &ScriptedUpstream) -> Option<Response> {
    let mut client = Client::connect(limited_relay());
    // The relay may stop reading and close while this is still sent.
    let _ = client.wire.send(&chunked_past_the_limit(upstream.port()));
    client.try_answer("POST").ok().flatten()
}

#[test]
fn a_chunked_body_over_the_limit_never_reaches_the_upstream_whole() {
    let upstream = body_length_echo();
    let response = send_past_the_limit(&upstream);
    if let Some(response) = &response {
        assert!(
            !(200..300).contains(&response.status()),
            "told success: {response:?}"
        );
    }
    upstream
        .wait_all_closed(DEADLINE)
        .expect("the relay ends the upstream exchange");
    // Any request recorded would be a complete one: the body cut short to
    // the limit, or all of it.
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

#[test]
fn a_chunked_body_over_the_limit_is_answered_413_or_cut_off() {
    let upstream = body_length_echo();
    if let Some(response) = send_past_the_limit(&upstream) {
        assert_eq!(response.status(), 413, "{response:?}");
    }
}

/// Sends `request` on a new connection to the shared relay and returns the
/// status it answers, or 0 if it closes the connection without a response.
fn status_of_malformed(request: &[u8]) -> u16 {
    let mut client = Client::connect(relay());
    // The relay may answer and close before it has read all of it.
    let _ = client.wire.send(request);
    match client.try_answer("POST") {
        Ok(Some(response)) => response.status(),
        Ok(None) => 0,
        Err(err) => panic!("no answer: {err}"),
    }
}

#[test]
fn content_length_with_chunked_is_refused_or_framed_by_chunked_alone_then_closed() {
    // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length. A
    // server may refuse such a request, or process it by the chunked framing
    // alone and then close the connection; an intermediary forwarding it
    // must drop the Content-Length first. The relay does the latter. Either
    // way the Service never sees the declared 3 bytes next to 11 chunked.
    let upstream = body_length_echo();
    let mut request = head(
        "POST /smuggled HTTP/1.1",
        upstream.port(),
        &[("Content-Length", "3"), ("Transfer-Encoding", "chunked")],
    );
    request.extend(b"B\r\nhello world\r\n0\r\n\r\n");
    let mut client = Client::connect(relay());
    let response = client.exchange(&request, "POST");
    match response.status() {
        400 => assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests()),
        200 => {
            assert_eq!(response.text(), "11");
            let seen = only(upstream.requests());
            assert!(
                seen.head.get("content-length").is_none(),
                "{:#?}",
                seen.head
            );
            assert_eq!(seen.body.bytes, b"hello world");
        }
        _ => panic!("neither refused nor framed by chunked: {response:?}"),
    }
    client.assert_closed();
}

#[test]
fn an_invalid_content_length_is_refused() {
    let upstream = target_echo();
    for length in ["abc", "-1", "5, 6", "0x10"] {
        let mut request = head(
            "POST /bad-length HTTP/1.1",
            upstream.port(),
            &[("Content-Length", length)],
        );
        request.extend(b"hello");
        assert_eq!(
            status_of_malformed(&request),
            400,
            "Content-Length: {length}"
        );
    }
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

#[test]
fn a_512_kib_header_section_is_refused() {
    let upstream = target_echo();
    let filler = "f".repeat(8 << 10);
    let names: Vec<String> = (0..64).map(|i| format!("X-Filler-{i}")).collect();
    let extra: Vec<(&str, &str)> = names
        .iter()
        .map(|name| (name.as_str(), filler.as_str()))
        .collect();
    let request = head("GET /huge HTTP/1.1", upstream.port(), &extra);
    assert_eq!(status_of_malformed(&request), 431);
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

#[test]
fn an_http_1_0_client_gets_a_response_it_can_read() {
    // The upstream chunks its body: the relay must not pass that on.
    let upstream = ScriptedUpstream::start(|_| {
        Answer::Reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let mut client = Client::connect(relay());
    let response = client.exchange(&head("GET /old HTTP/1.0", upstream.port(), &[]), "GET");
    assert_eq!(response.status(), 200, "{response:?}");
    assert!(
        response.head.get("transfer-encoding").is_none(),
        "{:#?}",
        response.head
    );
    assert_eq!(response.text(), "hello world");
    // No keep-alive asked for: the relay closes after the response.
    client.assert_closed();
}

#[test]
fn a_client_asking_to_close_is_answered_then_closed() {
    let upstream = target_echo();
    let mut client = Client::connect(relay());
    let request = head(
        "GET /last HTTP/1.1",
        upstream.port(),
        &[("Connection", "close")],
    );
    let response = client.exchange(&request, "GET");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "/last");
    client.assert_closed();
}

#[test]
fn nothing_listening_upstream_is_a_bad_gateway() {
    let response = Client::connect(relay()).exchange(&get("/nobody", unused_port()), "GET");
    assert_eq!(response.status(), 502, "{response:?}");
}

#[test]
fn an_upstream_that_never_answers_is_a_gateway_timeout() {
    // Connections complete in the backlog; nobody ever reads them.
    let silent = TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = silent.local_addr().expect("bound").port();
    let response = Client::connect(limited_relay()).exchange(&get("/silence", port), "GET");
    assert_eq!(response.status(), 504, "{response:?}");
}

#[test]
fn successful_requests_are_counted() {
    let exit = start_relay(&[]);
    let upstream = target_echo();
    let requests = "cluster_relay_service_relay_requests_total{code=\"200\",role=\"exit\"}";
    let durations = "cluster_relay_service_relay_request_duration_seconds_count{role=\"exit\"}";
    let (requests_before, durations_before) = (exit.metric(requests), exit.metric(durations));
    let mut client = Client::connect(&exit);
    let n = 5;
    for i in 0..n {
        let response = client.exchange(&get(&format!("/counted/{i}"), upstream.port()), "GET");
        assert_eq!(response.status(), 200, "{response:?}");
    }
    assert_eq!(exit.metric(requests) - requests_before, f64::from(n));
    assert_eq!(exit.metric(durations) - durations_before, f64::from(n));
}

#[test]
fn an_upload_longer_than_the_response_timeout_is_not_cut_off_at_the_entry() {
    // The entry's --response-timeout runs from the end of the request body,
    // as the exit's does: a slow upload of three chunks spanning more than
    // the timeout reaches the Service whole and gets its answer. (Counted
    // from the head, it answered 504 and cut the upload off.)
    let upstream = body_length_echo();
    let resolve = format!("{SERVICE}.{SERVICE_NAMESPACE}.svc=127.0.0.1");
    let entry = support::agent::Agent::spawn(
        &[
            "service-relay",
            "--role",
            "entry",
            "--direct",
            "--resolve",
            &resolve,
            "--response-timeout",
            "1s",
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
    let chunk = [b'x'; 1000];
    client.send(
        format!(
            "POST /api/v1/namespaces/{SERVICE_NAMESPACE}/services/{SERVICE}:{port}/proxy/upload HTTP/1.1\r\n\
             Host: entry.example\r\nContent-Length: {}\r\n\r\n",
            3 * chunk.len()
        )
        .as_bytes(),
    );
    for i in 0..3 {
        if i > 0 {
            // Not a wait for anything: the upload's pace is what is tested.
            std::thread::sleep(std::time::Duration::from_millis(700));
        }
        client.send(&chunk);
    }
    let response = client.answer("POST");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "3000");
}
