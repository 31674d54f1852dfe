//! The request-head reader against hyper's, the path the exit relay falls
//! back to: a request the own path forwards, hyper reads too, with the same
//! method and target, and takes the same body (as many bytes, or as many
//! chunked data bytes, ending at the same place).
#![no_main]

use cluster_relay::service_relay::fuzzing::{self, Framing, RequestHead};
use cluster_relay_fuzz::hyper_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let RequestHead::Forward(forwarded) = fuzzing::request_head(data, "echo.apps.svc:80") else {
        return;
    };
    let rest = &data[forwarded.head_len..];
    // The body as the own path frames it, when all of it is here.
    let body = match forwarded.framing {
        Framing::Empty => Some(0),
        Framing::Length(n) => usize::try_from(n).ok().filter(|&n| n <= rest.len()),
        Framing::Chunked => match fuzzing::chunked(rest, &[]) {
            Some((taken, _, true)) => Some(taken),
            _ => None,
        },
        Framing::Close => unreachable!("requests are never close-delimited"),
    };
    let Some(body_len) = body else {
        return;
    };
    // What follows the body, cut to a request hyper can read whole.
    let mut stream = data[..forwarded.head_len + body_len].to_vec();
    stream.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    let text = String::from_utf8_lossy(&stream).into_owned();
    let seen = hyper_request(&stream).unwrap_or_else(|| panic!("hyper refused {text:?}"));
    assert_eq!(seen.method, forwarded.method, "{text:?}");
    assert_eq!(seen.target, forwarded.path, "{text:?}");
    let decoded = seen
        .body
        .unwrap_or_else(|err| panic!("hyper refused the body ({err}): {text:?}"));
    let expected = match forwarded.framing {
        Framing::Chunked => fuzzing::chunked(rest, &[]).map(|(_, data, _)| data as usize),
        _ => Some(body_len),
    };
    assert_eq!(Some(decoded.len()), expected, "{text:?}");
    // After `Connection: close` neither path reads on.
    if forwarded.close {
        return;
    }
    assert_eq!(
        seen.next.as_deref(),
        Some("/next"),
        "hyper ends the body elsewhere: {text:?}"
    );
});
