//! Head reading and rewriting, on heads as they come over the wire.

use super::*;

fn parse_request<T>(raw: &[u8], then: impl FnOnce(Option<Request<'_, '_>>) -> T) -> T {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    assert!(parsed.parse(raw).expect("parses").is_complete());
    then(request(&parsed))
}

fn upstream_head(raw: &[u8]) -> Option<String> {
    parse_request(raw, |request| {
        let request = request?;
        let mut out = Vec::new();
        request.write_upstream_head("echo.apps.svc:80", "10.0.0.9".parse().unwrap(), &mut out);
        Some(String::from_utf8(out).expect("utf-8"))
    })
}

#[test]
fn the_relays_headers_go_and_the_callers_authorization_comes_back() {
    let head = upstream_head(
        b"GET /a?b=1 HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer apiserver\r\n\
          Cluster-Proxy-Authorization: Bearer user\r\ncluster-proxy-relay-authorization: Bearer r\r\n\
          Cluster-Proxy-Proto: http\r\nCluster-Proxy-Namespace: apps\r\nCluster-Proxy-Service: echo\r\n\
          Cluster-Proxy-Port: 80\r\nCluster-Proxy-Forged: x\r\nX-Multi: 1\r\nX-Multi: 2\r\n\
          X-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, X-Private\r\nX-Private: p\r\n\
          Keep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\nProxy-Connection: y\r\n\r\n",
    )
    .expect("served");
    assert_eq!(
        head,
        "GET /a?b=1 HTTP/1.1\r\nHost: echo.apps.svc:80\r\nX-Multi: 1\r\nX-Multi: 2\r\n\
         Authorization: Bearer user\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.9\r\n\
         X-Forwarded-Proto: http\r\nX-Forwarded-Host: relay\r\n\r\n"
    );
}

/// Found by the request_head fuzz target: a header named just
/// `Cluster-Proxy-` reached the Service (hyper's path drops it).
#[test]
fn the_bare_prefix_goes_too() {
    let head =
        upstream_head(b"GET / HTTP/1.1\r\nCluster-Proxy-: forged\r\ncluster-proxy-: x\r\n\r\n")
            .expect("served");
    assert!(
        !head.to_ascii_lowercase().contains("cluster-proxy"),
        "{head}"
    );
}

/// Found by the request_head fuzz target: a name listed in Connection
/// with a multi-byte character across its 14th byte panicked the
/// connection's task (slicing a str inside a character).
#[test]
fn a_listed_name_with_a_character_across_the_prefix_length_is_served() {
    let head = upstream_head(
        "GET / HTTP/1.1\r\nConnection: keep-alive-xyў, close\r\nX: 2\r\n\r\n".as_bytes(),
    )
    .expect("served");
    assert!(head.contains("X: 2\r\n"), "{head}");
}

#[test]
fn routing_headers_are_read() {
    parse_request(
        b"GET / HTTP/1.1\r\nCluster-Proxy-Relay-Authorization: Bearer t\r\nCluster-Proxy-Proto: https\r\n\
          Cluster-Proxy-Namespace: ns\r\nCluster-Proxy-Service: svc\r\nCluster-Proxy-Port: web\r\n\r\n",
        |request| {
            let request = request.expect("served");
            assert_eq!(request.routing.relay_authorization, Some(&b"Bearer t"[..]));
            assert_eq!(request.routing.proto, Some("https"));
            assert_eq!(request.routing.namespace, Some("ns"));
            assert_eq!(request.routing.service, Some("svc"));
            assert_eq!(request.routing.port, Some("web"));
            assert_eq!(request.framing, Framing::Empty);
            assert!(!request.close);
        },
    );
}

#[test]
fn framing_passes_as_it_came() {
    let head = upstream_head(
        b"POST / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .expect("served");
    assert_eq!(
        head,
        "POST / HTTP/1.1\r\nHost: echo.apps.svc:80\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: outer\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n"
    );
    parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", |r| {
        assert_eq!(r.expect("served").framing, Framing::Length(12));
    });
    parse_request(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", |r| {
        assert!(r.expect("served").close);
    });
}

#[test]
fn the_odd_and_the_bad_go_to_hyper() {
    for raw in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"CONNECT h:443 HTTP/1.1\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\n\r\n",
        // Found by the request_hyper fuzz target: the own path passed the
        // fragment on, hyper drops it.
        b"GET /a#?b=1 HTTP/1.1\r\n\r\n",
        // And a target hyper's URI parser refuses (request_hyper found it).
        b"GET /{`f HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nConnection: content-length\r\n\r\n",
    ] {
        parse_request(raw, |request| {
            assert!(request.is_none(), "{}", String::from_utf8_lossy(raw));
        });
    }
}

fn client_head(raw: &[u8], head: bool, close: bool) -> (Result<Response, ResponseError>, String) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    assert!(parsed.parse(raw).expect("parses").is_complete());
    let mut out = Vec::new();
    let result = response(&parsed, head, close, &mut out);
    (result, String::from_utf8(out).expect("utf-8"))
}

#[test]
fn responses_lose_hop_by_hop_headers_only() {
    let (result, out) = client_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Private\r\n\
          X-Private: p\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\n",
        false,
        false,
    );
    assert_eq!(
        result,
        Ok(Response {
            code: 200,
            framing: Framing::Length(5),
            reusable: true
        })
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\n"
    );
}

#[test]
fn response_framing() {
    let framing = |raw: &[u8], head| {
        client_head(raw, head, false)
            .0
            .map(|r| (r.framing, r.reusable))
    };
    assert_eq!(
        framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        Ok((Framing::Chunked, true))
    );
    assert_eq!(
        framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false
        ),
        Ok((Framing::Chunked, false))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
        Ok((Framing::Close, false))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
        Ok((Framing::Close, false))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        framing(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        ),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        framing(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        framing(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
        Ok((Framing::Length(1), false))
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", false),
        Ok((Framing::Length(1), true))
    );
    assert_eq!(
        framing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        ),
        Err(ResponseError::Length)
    );
    assert_eq!(
        framing(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        Err(ResponseError::Switch)
    );
}

#[test]
fn a_close_delimited_body_closes_the_client_connection_too() {
    let (_, out) = client_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        false,
        true,
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let (_, out) = client_head(b"HTTP/1.1 200 OK\r\n\r\n", false, false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
}
