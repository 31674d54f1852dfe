//! The exit relay's own HTTP/1.1 path against hyper's, the path it falls
//! back to, on the same byte streams: each case goes to the relay twice,
//! once as it is (the own path takes what it serves) and once with enough
//! extra `X-Pad-*` headers that the own path hands the connection to hyper
//! (it reads at most 96 headers, hyper 100). The Service must receive the
//! same requests both times (method, target, end-to-end headers, body
//! bytes, trailers), or nothing both times with a refusal to the client.
//!
//! The corpus is the request-smuggling repertoire: CL.TE, TE.CL and TE.TE
//! framings, obfuscated `Transfer-Encoding`, repeated or signed
//! `Content-Length`, obs-fold, bare LF, NUL and other control bytes, huge
//! chunk sizes, chunk extensions and trailers, pipelined requests.

mod support;

use support::{
    exit_wire::*,
    scripted_upstream::{Answer, Recorded, ScriptedUpstream},
};

/// The headers the relay itself sends with every request: Host, the relay
/// credential and four routing headers.
const ROUTING_HEADERS: usize = 6;
/// Headers in a padded head: past the own path's 96, within hyper's 100.
const PADDED_HEADERS: usize = 97;

/// One request of a case, as raw as it goes on the wire.
struct Message {
    start: &'static [u8],
    headers: Vec<&'static [u8]>,
    /// The line ending of the start line and the header lines.
    eol: &'static [u8],
    /// What follows the head: the body, framed or not.
    body: Vec<u8>,
}

fn msg(start: &'static str, headers: &[&'static str], body: &[u8]) -> Message {
    Message {
        start: start.as_bytes(),
        headers: headers.iter().map(|h| h.as_bytes()).collect(),
        eol: b"\r\n",
        body: body.to_vec(),
    }
}

fn raw(
    start: &'static [u8],
    headers: &[&'static [u8]],
    eol: &'static [u8],
    body: &[u8],
) -> Message {
    Message {
        start,
        headers: headers.to_vec(),
        eol,
        body: body.to_vec(),
    }
}

/// The bytes of `messages` for the upstream on `port`; the first head
/// padded to [`PADDED_HEADERS`] when `padded`.
fn bytes(messages: &[Message], port: u16, padded: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let eol = message.eol;
        out.extend_from_slice(message.start);
        out.extend_from_slice(eol);
        let routing = [
            "Host: relay.example".to_owned(),
            format!(
                "Cluster-Proxy-Relay-Authorization: Bearer {}",
                relay_token()
            ),
            "Cluster-Proxy-Proto: http".to_owned(),
            format!("Cluster-Proxy-Namespace: {SERVICE_NAMESPACE}"),
            format!("Cluster-Proxy-Service: {SERVICE}"),
            format!("Cluster-Proxy-Port: {port}"),
        ];
        assert_eq!(routing.len(), ROUTING_HEADERS);
        for line in &routing {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(eol);
        }
        if padded && i == 0 {
            let pads = PADDED_HEADERS - ROUTING_HEADERS - message.headers.len();
            for pad in 0..pads {
                out.extend_from_slice(format!("X-Pad-{pad}: p").as_bytes());
                out.extend_from_slice(eol);
            }
        }
        for line in &message.headers {
            out.extend_from_slice(line);
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
        out.extend_from_slice(&message.body);
    }
    out
}

/// A request as the Service received it, with what may legitimately
/// differ between the paths left out: framing headers (the body is
/// compared decoded), header order across names and name case, the pads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AtService {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn at_service(recorded: &Recorded, port: u16) -> AtService {
    let mut headers: Vec<(String, String)> = recorded
        .head
        .headers
        .iter()
        .map(|(name, value)| {
            // Each variant has an upstream of its own.
            let value = value.replace(&format!(":{port}"), ":PORT");
            (name.to_ascii_lowercase(), value)
        })
        .filter(|(name, _)| {
            !name.starts_with("x-pad-") && name != "content-length" && name != "transfer-encoding"
        })
        .collect();
    // Stable: the values of one name keep their order.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    AtService {
        start_line: recorded.head.start_line.clone(),
        headers,
        body: recorded.body.bytes.clone(),
        trailers: recorded.body.trailers.clone(),
    }
}

/// What one path made of a case.
#[derive(Debug)]
struct Outcome {
    /// The statuses of the final responses the client read, in order.
    statuses: Vec<u16>,
    at_service: Vec<AtService>,
    /// Whether the first request reached the Service through hyper (it
    /// writes header names in lower case; the own path as they came).
    by_hyper: Option<bool>,
}

fn method_of(message: &Message) -> String {
    let start = String::from_utf8_lossy(message.start);
    start
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Sends a case on a new connection and reads a final response per
/// request until the relay closes the connection.
fn run(messages: &[Message], padded: bool) -> Outcome {
    let upstream = ScriptedUpstream::start(|_| Answer::Reply(ok("served")));
    let mut client = Client::connect(relay());
    // The relay may answer and close before it has read everything.
    let _ = client.wire.send(&bytes(messages, upstream.port(), padded));
    let mut statuses = Vec::new();
    for message in messages {
        match client.try_answer(&method_of(message)) {
            Ok(Some(response)) => statuses.push(response.status()),
            Ok(None) | Err(_) => break,
        }
    }
    // Every request the Service answered was recorded before its answer;
    // one it never answered never reached the client either.
    let recorded = upstream.requests();
    Outcome {
        statuses,
        by_hyper: recorded.first().map(|first| {
            first
                .head
                .headers
                .iter()
                .any(|(name, _)| name == "x-forwarded-for")
        }),
        at_service: recorded
            .iter()
            .map(|r| at_service(r, upstream.port()))
            .collect(),
    }
}

/// Which path the own variant of a case is expected to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The own path serves it.
    Own,
    /// The own path hands it to hyper, or nothing reaches the Service.
    Either,
    /// The own path refuses what hyper serves: bytes in the chunked
    /// framing that hyper drops when it frames the body anew, and the own
    /// path, which passes the framing on as it came, must not pass on.
    OwnRefuses,
}

/// Runs `messages` both ways and requires the same outcome at the Service.
fn same_outcome(name: &str, messages: &[Message], path: Path) -> Outcome {
    let own = run(messages, false);
    let hyper = run(messages, true);
    if path == Path::OwnRefuses {
        assert!(own.at_service.is_empty(), "{name}: {own:?}");
        assert!(matches!(own.statuses[..], [400]), "{name}: {own:?}");
        assert_eq!(hyper.statuses, [200], "{name}: {hyper:?}");
        return own;
    }
    assert_ne!(
        hyper.by_hyper,
        Some(false),
        "{name}: the padded variant was not handed to hyper"
    );
    if path == Path::Own {
        assert_eq!(
            own.by_hyper,
            Some(false),
            "{name}: not served by the own path"
        );
    }
    // The one difference allowed: hyper drops the trailer fields of a
    // chunked body (its client sends trailers only to a peer that asked
    // for them with `TE: trailers`, which is hop-by-hop), while the own
    // path passes the chunked framing on as it came, trailers included. A
    // recipient may discard trailers (RFC 9110 section 6.5.1); the test
    // of the trailers case checks the own path passes them unchanged.
    let without_trailers = |outcome: &Outcome| -> Vec<AtService> {
        outcome
            .at_service
            .iter()
            .map(|seen| AtService {
                trailers: Vec::new(),
                ..seen.clone()
            })
            .collect()
    };
    assert_eq!(
        without_trailers(&own),
        without_trailers(&hyper),
        "{name}: the Service saw different requests (own {:?}, hyper {:?})",
        own.statuses,
        hyper.statuses
    );
    for (mine, theirs) in own.at_service.iter().zip(&hyper.at_service) {
        assert!(
            theirs.trailers.is_empty() || theirs.trailers == mine.trailers,
            "{name}: trailers {mine:?} {theirs:?}"
        );
    }
    let served = own.at_service.len();
    for (what, outcome) in [("own", &own), ("hyper", &hyper)] {
        // Each request the Service saw was answered with its 200; after
        // that, at most one refusal from the relay.
        let (answered, refused) = outcome
            .statuses
            .split_at(served.min(outcome.statuses.len()));
        assert!(
            answered.iter().all(|&s| s == 200),
            "{name} ({what}): {:?}",
            outcome.statuses
        );
        assert!(
            refused.len() <= 1 && refused.iter().all(|&s| s >= 400),
            "{name} ({what}): the relay answered {refused:?} without the Service"
        );
    }
    own
}

const CHUNKED: &str = "Transfer-Encoding: chunked";

#[test]
fn plain_requests_are_the_same_either_way() {
    let cases = [
        (
            "GET",
            vec![msg(
                "GET /plain?a=1&b=%2F HTTP/1.1",
                &["X-Multi: 1", "Accept: */*", "X-Multi: 2"],
                b"",
            )],
        ),
        (
            "POST with Content-Length",
            vec![msg("POST /cl HTTP/1.1", &["Content-Length: 5"], b"hello")],
        ),
        (
            "chunked",
            vec![msg(
                "POST /te HTTP/1.1",
                &[CHUNKED],
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )],
        ),
        (
            "zero Content-Length",
            vec![msg("PUT /zero HTTP/1.1", &["Content-Length: 0"], b"")],
        ),
        ("HEAD", vec![msg("HEAD /head HTTP/1.1", &[], b"")]),
        (
            "Content-Length with a leading zero",
            vec![msg("POST /05 HTTP/1.1", &["Content-Length: 05"], b"hello")],
        ),
        (
            "Transfer-Encoding in capitals",
            vec![msg(
                "POST /TE HTTP/1.1",
                &["Transfer-Encoding: CHUNKED"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "Transfer-Encoding with whitespace around",
            vec![msg(
                "POST /te-ws HTTP/1.1",
                &["Transfer-Encoding: \tchunked \t"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "obs-text in a value",
            vec![raw(
                b"GET /obs-text HTTP/1.1",
                &[b"X-Latin: caf\xe9"],
                b"\r\n",
                b"",
            )],
        ),
        (
            "hop-by-hop and listed headers",
            vec![msg(
                "GET /hop HTTP/1.1",
                &[
                    "Connection: keep-alive, X-Listed",
                    "X-Listed: 1",
                    "Keep-Alive: 5",
                    "TE: trailers",
                    "Proxy-Connection: x",
                ],
                b"",
            )],
        ),
        (
            "Cluster-Proxy-Authorization restored",
            vec![msg(
                "GET /auth HTTP/1.1",
                &[
                    "Authorization: Bearer apiserver",
                    "Cluster-Proxy-Authorization: Bearer user",
                    "Cluster-Proxy-Other: forged",
                    "Cluster-Proxy-: forged",
                ],
                b"",
            )],
        ),
        (
            "two Host headers",
            vec![msg("GET /hosts HTTP/1.1", &["Host: second.example"], b"")],
        ),
        (
            "lower-case method",
            vec![msg("get /lower HTTP/1.1", &[], b"")],
        ),
    ];
    for (name, messages) in &cases {
        same_outcome(name, messages, Path::Own);
    }
}

#[test]
fn smuggling_framings_are_the_same_either_way() {
    // What a front end that framed by the other header would take as a
    // second request.
    let smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        (
            "CL.TE",
            vec![msg(
                "POST /cl-te HTTP/1.1",
                &["Content-Length: 6", CHUNKED],
                smuggled,
            )],
        ),
        (
            "TE.CL",
            vec![msg(
                "POST /te-cl HTTP/1.1",
                &[CHUNKED, "Content-Length: 4"],
                b"14\r\nGPOST / HTTP/1.1\r\n\r\n\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE.TE: chunked twice",
            vec![msg(
                "POST /te-te HTTP/1.1",
                &[CHUNKED, CHUNKED],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE.TE: chunked and another",
            vec![msg(
                "POST /te-x HTTP/1.1",
                &[CHUNKED, "Transfer-Encoding: x"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE: chunked, identity",
            vec![msg(
                "POST /te-ci HTTP/1.1",
                &["Transfer-Encoding: chunked, identity"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE: identity, chunked",
            vec![msg(
                "POST /te-ic HTTP/1.1",
                &["Transfer-Encoding: identity, chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE: gzip, chunked",
            vec![msg(
                "POST /te-gz HTTP/1.1",
                &["Transfer-Encoding: gzip, chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE: xchunked",
            vec![msg(
                "POST /te-xc HTTP/1.1",
                &["Transfer-Encoding: xchunked", "Content-Length: 5"],
                b"hello",
            )],
        ),
        (
            "TE: chunked with a vertical tab",
            vec![raw(
                b"POST /te-vt HTTP/1.1",
                &[b"Transfer-Encoding: chunked\x0b"],
                b"\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE with a space before the colon",
            vec![msg(
                "POST /te-sp HTTP/1.1",
                &["Transfer-Encoding : chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "TE folded",
            vec![msg(
                "POST /te-fold HTTP/1.1",
                &["Transfer-Encoding:", " chunked"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "Transfer_Encoding",
            vec![msg(
                "POST /te-underscore HTTP/1.1",
                &["Transfer_Encoding: chunked", "Content-Length: 5"],
                b"hello",
            )],
        ),
        (
            "Connection lists Content-Length",
            vec![msg(
                "POST /conn-cl HTTP/1.1",
                &["Content-Length: 5", "Connection: Content-Length"],
                b"hello",
            )],
        ),
        (
            "Connection lists Transfer-Encoding",
            vec![msg(
                "POST /conn-te HTTP/1.1",
                &[CHUNKED, "Connection: transfer-encoding"],
                b"5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        (
            "Content-Length: +5",
            vec![msg(
                "POST /plus HTTP/1.1",
                &["Content-Length: +5"],
                b"hello",
            )],
        ),
        (
            "Content-Length: -1",
            vec![msg(
                "POST /minus HTTP/1.1",
                &["Content-Length: -1"],
                b"hello",
            )],
        ),
        (
            "Content-Length: 5, 5",
            vec![msg(
                "POST /list HTTP/1.1",
                &["Content-Length: 5, 5"],
                b"hello",
            )],
        ),
        (
            "Content-Length: 5, 6",
            vec![msg(
                "POST /list-differs HTTP/1.1",
                &["Content-Length: 5, 6"],
                b"hello!",
            )],
        ),
        (
            "Content-Length twice, equal",
            vec![msg(
                "POST /twice HTTP/1.1",
                &["Content-Length: 5", "Content-Length: 5"],
                b"hello",
            )],
        ),
        (
            "Content-Length twice, different",
            vec![msg(
                "POST /twice-differs HTTP/1.1",
                &["Content-Length: 5", "Content-Length: 6"],
                b"hello!",
            )],
        ),
        (
            "Content-Length in hex",
            vec![msg(
                "POST /hex HTTP/1.1",
                &["Content-Length: 0x5"],
                b"hello",
            )],
        ),
        (
            "Content-Length past u64",
            vec![msg(
                "POST /huge-cl HTTP/1.1",
                &["Content-Length: 99999999999999999999"],
                b"hello",
            )],
        ),
        (
            "Content-Length with a space inside",
            vec![msg(
                "POST /cl-space HTTP/1.1",
                &["Content-Length: 5 5"],
                b"hello",
            )],
        ),
    ];
    for (name, messages) in &cases {
        same_outcome(name, messages, Path::Either);
    }
}

#[test]
fn odd_bytes_in_heads_are_the_same_either_way() {
    let cases = [
        (
            "obs-fold",
            vec![msg("GET /fold HTTP/1.1", &["X-Folded: a", " b"], b"")],
        ),
        (
            "obs-fold with a tab",
            vec![msg("GET /fold-tab HTTP/1.1", &["X-Folded: a", "\tb"], b"")],
        ),
        (
            "bare LF",
            vec![raw(
                b"POST /bare-lf HTTP/1.1",
                &[b"Content-Length: 5"],
                b"\n",
                b"hello",
            )],
        ),
        (
            "NUL in a value",
            vec![raw(b"GET /nul HTTP/1.1", &[b"X-Nul: a\0b"], b"\r\n", b"")],
        ),
        (
            "NUL in a name",
            vec![raw(
                b"GET /nul-name HTTP/1.1",
                &[b"X-N\0l: a"],
                b"\r\n",
                b"",
            )],
        ),
        (
            "NUL in the target",
            vec![raw(b"GET /a\0b HTTP/1.1", &[], b"\r\n", b"")],
        ),
        (
            "bare CR in a value",
            vec![raw(b"GET /cr HTTP/1.1", &[b"X-Cr: a\rb"], b"\r\n", b"")],
        ),
        (
            "DEL in a value",
            vec![raw(b"GET /del HTTP/1.1", &[b"X-Del: a\x7fb"], b"\r\n", b"")],
        ),
        (
            "escape in a value",
            vec![raw(b"GET /esc HTTP/1.1", &[b"X-Esc: a\x1bb"], b"\r\n", b"")],
        ),
        (
            "tab in a value",
            vec![raw(b"GET /tab HTTP/1.1", &[b"X-Tab: a\tb"], b"\r\n", b"")],
        ),
        (
            "two spaces in the request line",
            vec![raw(b"GET  /two-spaces HTTP/1.1", &[], b"\r\n", b"")],
        ),
        (
            "a fragment in the target",
            vec![msg("GET /a#?b=1 HTTP/1.1", &[], b"")],
        ),
        (
            "absolute form",
            vec![msg("GET http://elsewhere.example/abs HTTP/1.1", &[], b"")],
        ),
        (
            "HTTP/1.0",
            vec![msg(
                "GET /one-oh HTTP/1.0",
                &["Connection: keep-alive"],
                b"",
            )],
        ),
        (
            "Expect: 100-continue",
            vec![msg(
                "POST /expect HTTP/1.1",
                &["Expect: 100-continue", "Content-Length: 5"],
                b"hello",
            )],
        ),
    ];
    for (name, messages) in &cases {
        same_outcome(name, messages, Path::Either);
    }
}

#[test]
fn chunked_bodies_are_the_same_either_way() {
    use Path::{Either, Own, OwnRefuses};
    let cases: [(&str, &[u8], Path); 20] = [
        (
            "extensions",
            b"5;ext=1\r\nhello\r\n6;n=\"quoted; value\"\r\n world\r\n0;last\r\n\r\n",
            Own,
        ),
        (
            "extension after whitespace",
            b"5 ;ext\r\nhello\r\n0\r\n\r\n",
            Own,
        ),
        (
            "trailers",
            b"5\r\nhello\r\n0\r\nX-Trailer: t\r\nX-Other: o\r\n\r\n",
            Own,
        ),
        (
            "a framing header as trailer",
            b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n",
            Own,
        ),
        (
            "leading zeros in a size",
            b"0000000000000000000005\r\nhello\r\n0\r\n\r\n",
            Own,
        ),
        ("upper-case hex", b"A\r\n0123456789\r\n0\r\n\r\n", Own),
        (
            "a size past u64",
            b"10000000000000005\r\nhello\r\n0\r\n\r\n",
            Either,
        ),
        (
            "a size of 17 hex digits",
            b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            Either,
        ),
        ("a negative size", b"-5\r\nhello\r\n0\r\n\r\n", Either),
        ("a size with 0x", b"0x5\r\nhello\r\n0\r\n\r\n", Either),
        ("no size", b"\r\nhello\r\n0\r\n\r\n", Either),
        ("bare LF after the size", b"5\nhello\r\n0\r\n\r\n", Either),
        ("bare LF after the data", b"5\r\nhello\n0\r\n\r\n", Either),
        (
            "a digit after whitespace after the last size",
            b"5\r\nhello\r\n0 1\r\n\r\n",
            Either,
        ),
        (
            "data longer than its size",
            b"5\r\nhello!\r\n0\r\n\r\n",
            Either,
        ),
        (
            "NUL in an extension",
            b"5;a=\0\r\nhello\r\n0\r\n\r\n",
            OwnRefuses,
        ),
        (
            "a bare CR in an extension",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            Either,
        ),
        (
            "a trailer line without a colon",
            b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
            Either,
        ),
        (
            "a trailer with NUL",
            b"5\r\nhello\r\n0\r\nX-T: a\0b\r\n\r\n",
            Either,
        ),
        (
            "a folded trailer",
            b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n",
            Either,
        ),
    ];
    for (name, body, path) in cases {
        let own = same_outcome(
            name,
            &[msg("POST /chunks HTTP/1.1", &[CHUNKED], body)],
            path,
        );
        if name == "trailers" {
            let trailers = &own.at_service.first().expect("served").trailers;
            let expected =
                [("X-Trailer", "t"), ("X-Other", "o")].map(|(n, v)| (n.to_owned(), v.to_owned()));
            assert_eq!(
                trailers, &expected,
                "the own path passes trailers as they came"
            );
        }
    }
}

#[test]
fn pipelined_requests_are_the_same_either_way() {
    let get = || msg("GET /second HTTP/1.1", &[], b"");
    let cases = [
        (
            "GET, GET",
            vec![msg("GET /first HTTP/1.1", &[], b""), get()],
        ),
        (
            "Content-Length, GET",
            vec![
                msg("POST /first HTTP/1.1", &["Content-Length: 5"], b"hello"),
                get(),
            ],
        ),
        (
            "chunked with a trailer, GET",
            vec![
                msg(
                    "POST /first HTTP/1.1",
                    &[CHUNKED],
                    b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
                ),
                get(),
            ],
        ),
        (
            "GET, then a folded head",
            vec![
                msg("GET /first HTTP/1.1", &[], b""),
                msg("GET /folded HTTP/1.1", &["X-F: a", " b"], b""),
            ],
        ),
        (
            "GET, then CL.TE",
            vec![
                msg("GET /first HTTP/1.1", &[], b""),
                msg(
                    "POST /cl-te HTTP/1.1",
                    &["Content-Length: 6", CHUNKED],
                    b"0\r\n\r\nG",
                ),
                get(),
            ],
        ),
        (
            "a body shorter than declared eats the next head",
            vec![
                msg("POST /short HTTP/1.1", &["Content-Length: 7"], b"hello"),
                get(),
            ],
        ),
        (
            "close, then GET",
            vec![
                msg("GET /first HTTP/1.1", &["Connection: close"], b""),
                get(),
            ],
        ),
    ];
    for (name, messages) in &cases {
        same_outcome(name, messages, Path::Either);
    }
}
