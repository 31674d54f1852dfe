//! A response relayed from a Service to the client, however it comes in
//! reads: the client gets the head as rewritten and the body as framed,
//! ending where its own reading ends (nothing for it to take as a second
//! response), and an upstream connection is kept only when the response
//! ended exactly at the end of what the Service sent.
#![no_main]

use cluster_relay::service_relay::fuzzing::{self, Downloaded, Framing, ResponseHead};
use libfuzzer_sys::fuzz_target;

// The first byte: bit 0, the request was a HEAD; bit 1, the client
// connection closes after it; the rest, the size of each read from the
// Service less one. Then what the Service sends.
fuzz_target!(|data: &[u8]| {
    let Some((&flags, upstream)) = data.split_first() else {
        return;
    };
    let (head, close_asked) = (flags & 1 != 0, flags & 2 != 0);
    let cuts: Vec<usize> = (0..upstream.len())
        .step_by(usize::from(flags >> 2) + 1)
        .collect();
    let (outcome, client) = fuzzing::download(upstream, &cuts, head, close_asked);
    let Downloaded::Relayed {
        reusable,
        close,
        left,
        ..
    } = outcome
    else {
        return;
    };
    // The client reads what it got as interim heads, then one final
    // response: that must take every byte, no more and no fewer.
    let mut at = 0;
    let framing = loop {
        match fuzzing::response_head(&client[at..], head, false) {
            ResponseHead::Rewritten {
                head_len,
                code,
                framing,
                ..
            } => {
                at += head_len;
                if !(100..200).contains(&code) {
                    break framing;
                }
            }
            // The relay adds `Connection: close` to a head at its limit
            // of 96: more than it reads back, fewer than hyper's 100.
            ResponseHead::Refused if parses_with_more_headers(&client[at..]) => return,
            other => panic!(
                "the client cannot read its response: {other:?}: {:?}",
                String::from_utf8_lossy(&client)
            ),
        }
    };
    let body = &client[at..];
    match framing {
        Framing::Empty => assert!(body.is_empty(), "a body after a bodiless head"),
        Framing::Length(n) => assert_eq!(body.len() as u64, n),
        Framing::Chunked => {
            let (taken, _, done) =
                fuzzing::chunked(body, &[]).expect("chunked as the client reads it");
            assert!(
                done && taken == body.len(),
                "the client's chunked body does not end at its end"
            );
        }
        Framing::Close => assert!(
            close,
            "a close-delimited body on a connection that stays open"
        ),
    }
    if reusable {
        assert_eq!(
            left, 0,
            "an upstream connection kept with bytes read past the response"
        );
        assert_ne!(framing, Framing::Close);
    }
    if close_asked {
        assert!(close);
    }
});

fn parses_with_more_headers(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    matches!(
        httparse::Response::new(&mut headers).parse(head),
        Ok(httparse::Status::Complete(_))
    )
}
