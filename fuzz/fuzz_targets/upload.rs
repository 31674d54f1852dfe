//! A request body relayed from the client to a Service, however it comes
//! in reads: the Service gets exactly the body's bytes as they came (a
//! prefix of the client's), the rest stays for the next request, and
//! chunked data past the limit never goes whole.
#![no_main]

use cluster_relay::service_relay::fuzzing::{self, Framing, Uploaded};
use libfuzzer_sys::fuzz_target;

// The first byte: bit 0, chunked (else a Content-Length); bit 1, a limit
// on chunked data; the rest, the size of each read from the client less
// one. Then two bytes: the Content-Length or the limit. Then what the
// client sends.
fuzz_target!(|data: &[u8]| {
    let [flags, high, low, client @ ..] = data else {
        return;
    };
    let number = u64::from(u16::from_be_bytes([*high, *low]));
    let framing = match (flags & 1 != 0, number) {
        (true, _) => Framing::Chunked,
        (false, 0) => return,
        (false, n) => Framing::Length(n),
    };
    let limit = (flags & 3 == 3).then_some(number);
    let cuts: Vec<usize> = (0..client.len())
        .step_by(usize::from(flags >> 2) + 1)
        .collect();
    let (outcome, upstream) = fuzzing::upload(client, &cuts, framing, limit);
    assert!(client.starts_with(&upstream), "the body changed on its way");
    match outcome {
        Uploaded::Whole { left } => {
            assert_eq!(upstream.len() + left, client.len());
            match framing {
                Framing::Length(n) => assert_eq!(upstream.len() as u64, n),
                _ => {
                    let (taken, data, done) =
                        fuzzing::chunked(&upstream, &[]).expect("sound framing");
                    assert!(done && taken == upstream.len());
                    assert!(limit.is_none_or(|limit| data <= limit));
                }
            }
        }
        Uploaded::TooLarge => assert!(limit.is_some() && framing == Framing::Chunked),
        Uploaded::Framing => {
            assert_eq!(framing, Framing::Chunked);
            assert!(fuzzing::chunked(&client, &[]).is_none());
        }
        Uploaded::Client => {
            // The client's bytes ran out before the body did.
            if let Framing::Length(n) = framing {
                assert!((client.len() as u64) < n);
            }
        }
    }
});
