//! The request-head reader and rewriter: whatever a client sends, a head
//! the own path forwards is one the Service reads the same way (method,
//! target, framing), carries one Host and none of the relay's or the hop's
//! headers, and reads back unchanged through the rewriter.
#![no_main]

use cluster_relay::service_relay::fuzzing::{self, MAX_HEADERS, RequestHead};
use libfuzzer_sys::fuzz_target;

const AUTHORITY: &str = "echo.apps.svc:80";

/// Header names the Service must never get from the client's hop.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let complete = matches!(
        httparse::Request::new(&mut headers).parse(data),
        Ok(httparse::Status::Complete(_))
    );
    // The loop waits for what it takes to be the end of a head: a head
    // httparse finds complete must be seen as complete.
    assert!(
        !complete || fuzzing::head_complete(data),
        "a whole head not seen as one"
    );
    let RequestHead::Forward(forwarded) = fuzzing::request_head(data, AUTHORITY) else {
        return;
    };
    assert!(complete);
    let up = &forwarded.upstream_head;
    let mut up_headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut parsed = httparse::Request::new(&mut up_headers);
    match parsed.parse(up) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, up.len(), "bytes after the head"),
        other => panic!(
            "the rewritten head does not parse: {other:?} {:?}",
            String::from_utf8_lossy(up)
        ),
    }
    assert_eq!(parsed.method, Some(forwarded.method.as_str()));
    assert_eq!(parsed.path, Some(forwarded.path.as_str()));
    assert_eq!(parsed.version, Some(1));
    let hosts: Vec<&[u8]> = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    assert_eq!(hosts, [AUTHORITY.as_bytes()]);
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        assert!(
            !name.starts_with("cluster-proxy-"),
            "{name} reached the Service"
        );
        assert!(!HOP.contains(&name.as_str()), "{name} reached the Service");
    }
    // The Service frames the body as the relay did: the rewritten head
    // reads back with the same framing.
    // The relay adds up to four headers: a head at its limit reads back
    // as too long for it (hyper, with 100, takes it).
    if parsed.headers.len() > MAX_HEADERS {
        return;
    }
    match fuzzing::request_head(up, AUTHORITY) {
        RequestHead::Forward(again) => {
            assert_eq!(again.framing, forwarded.framing);
            assert_eq!(again.head_len, up.len());
            assert_eq!(
                (again.method, again.path),
                (forwarded.method, forwarded.path)
            );
        }
        other => panic!("the rewritten head reads back as {other:?}"),
    }
});
