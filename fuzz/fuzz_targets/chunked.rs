//! The chunked scanner: the same answer however the body is cut into
//! reads, never more than the body, and never a body hyper's decoder reads
//! differently (a body the scanner accepts, hyper decodes to as many data
//! bytes, ending at the same place).
#![no_main]

use cluster_relay::service_relay::fuzzing;
use cluster_relay_fuzz::hyper_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let whole = fuzzing::chunked(body, &[]);
    let len = body.len();
    let every: Vec<usize> = (1..len).collect();
    for cuts in [
        &[1][..],
        &[len / 2],
        &[len.saturating_sub(1)],
        &[1, len / 3, len / 2],
        &every,
    ] {
        assert_eq!(fuzzing::chunked(body, cuts), whole, "cut at {cuts:?}");
    }
    let Some((taken, data, done)) = whole else {
        return;
    };
    assert!(taken <= body.len());
    assert!(data <= taken as u64);
    assert!(done || taken == body.len());
    if !done {
        return;
    }
    // hyper, the fallback path, reads the same body the same way.
    let mut request = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let head = request.len();
    request.extend_from_slice(&body[..taken]);
    request.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    let seen = hyper_request(&request).unwrap_or_else(|| {
        panic!(
            "hyper refused {:?}",
            String::from_utf8_lossy(&request[head..])
        )
    });
    assert_eq!(
        seen.body.as_ref().map(Vec::len),
        Ok(data as usize),
        "{:?}",
        String::from_utf8_lossy(&request[head..])
    );
    assert_eq!(
        seen.next.as_deref(),
        Some("/next"),
        "hyper ends the body elsewhere"
    );
});
