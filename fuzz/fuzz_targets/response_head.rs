//! The response-head rewriter: a head passed to the client parses, frames
//! its body as the relay does, and reads back unchanged.
#![no_main]

use cluster_relay::service_relay::fuzzing::{self, Framing, ResponseHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (head, close) in [(false, false), (false, true), (true, false)] {
        check(data, head, close);
    }
});

fn check(data: &[u8], head: bool, close: bool) {
    let ResponseHead::Rewritten {
        head_len,
        code,
        framing,
        reusable,
        client_head,
    } = fuzzing::response_head(data, head, close)
    else {
        return;
    };
    assert!(head_len <= data.len());
    assert!(!(reusable && framing == Framing::Close));
    let interim = (100..200).contains(&code);
    match fuzzing::response_head(&client_head, head, false) {
        ResponseHead::Rewritten {
            head_len: again_len,
            code: again_code,
            framing: again,
            ..
        } => {
            assert_eq!(again_len, client_head.len(), "bytes after the head");
            assert_eq!(again_code, code);
            // The client frames the body as the relay does.
            assert_eq!(
                again,
                framing,
                "{:?}",
                String::from_utf8_lossy(&client_head)
            );
        }
        // `Connection: close` added to a head of 96 headers: more than the
        // reader takes, within hyper's 100.
        ResponseHead::Refused if parses_with_more_headers(&client_head) => return,
        other => panic!(
            "the client's head reads back as {other:?}: {:?}",
            String::from_utf8_lossy(&client_head)
        ),
    }
    if !interim && (close || framing == Framing::Close) {
        let text = String::from_utf8_lossy(&client_head).to_ascii_lowercase();
        assert!(text.contains("\r\nconnection: close\r\n"), "{text:?}");
    }
}

fn parses_with_more_headers(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    matches!(
        httparse::Response::new(&mut headers).parse(head),
        Ok(httparse::Status::Complete(_))
    )
}
