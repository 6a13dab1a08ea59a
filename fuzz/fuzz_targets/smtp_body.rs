//! DATA/BDAT decoding: any input, any split, both framings and policies.
//! Invariants: the result does not depend on how the input is split, a
//! message accepted without a problem has only CRLF line endings and no NUL,
//! and in normalize mode the message is exactly its lines (ended by CRLF,
//! bare LF or bare CR) with one leading dot removed, joined with CRLF: the
//! mode that accepts bare-LF clients must not change their mail.
#![no_main]

use breakwater::config::BareLfPolicy;
use breakwater::smtp::body::{BodyDecoder, Framing};
use libfuzzer_sys::fuzz_target;

fn decode(input: &[u8], split: usize, framing: Framing, policy: BareLfPolicy) -> (Vec<u8>, usize, bool, Option<breakwater::smtp::body::BodyProblem>) {
    let mut decoder = BodyDecoder::new(framing, policy, 1 << 16, 5);
    let mut out = Vec::new();
    let split = split.min(input.len());
    let (a, done) = decoder.feed(&input[..split], &mut out);
    assert!(a <= split);
    let (b, done) = if done { (0, true) } else { decoder.feed(&input[split..], &mut out) };
    if framing == Framing::Chunks {
        assert!(!done);
        assert_eq!(a + b, input.len());
        decoder.finish_chunks(&mut out);
    }
    (out, a + b, done, decoder.problem())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = data[0] as usize * 4;
    let framing = if data[1] & 1 == 0 { Framing::Dot } else { Framing::Chunks };
    let policy = if data[1] & 2 == 0 { BareLfPolicy::Reject } else { BareLfPolicy::Normalize };
    let input = &data[2..];
    let whole = decode(input, input.len(), framing, policy);
    let parts = decode(input, split, framing, policy);
    assert_eq!(whole, parts, "result depends on the split");
    let (out, used, done, problem) = whole;
    if framing == Framing::Dot && done {
        assert!(input[..used].ends_with(b".\r\n"));
    }
    if framing == Framing::Dot && policy == BareLfPolicy::Normalize && done && problem.is_none() {
        assert_eq!(out, breakwater::smtp::body::normalized_reference(&input[..used - 3]), "normalize changed the mail");
    }
    if problem.is_none() && (done || framing == Framing::Chunks) {
        assert!(!out.contains(&0));
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF in accepted output");
            }
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR in accepted output");
            }
        }
    }
});
