//! WebSocket text frames: JSON decoding (depth limit), the fast readers of a call and of a
//! provider's `result` (each must agree with the general reader), every frame type, and the
//! checks of a call before dispatch.
#![no_main]

use flowhub::protocol::frame::{decode, decode_text, parse_call_text, parse_frame};
use flowhub::protocol::provider::parse_result_text;
use flowhub::protocol::{Encoding, Frame};
use libfuzzer_sys::fuzz_target;

const MAX_DEPTH: usize = 32;

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8 (tungstenite closes the socket with 1007 otherwise).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fast = parse_result_text(text, MAX_DEPTH);
    let decoded = decode_text(text, MAX_DEPTH);
    // An HTTP body goes through `decode`: it must agree with the text path.
    assert_eq!(
        decoded.is_ok(),
        decode(data, Encoding::Json, MAX_DEPTH).is_ok(),
        "decode and decode_text agree"
    );
    if let Some((requestid, callid, answer)) = fast {
        // The fast path only takes frames the general path reads to the same answer.
        let value = match &decoded {
            Ok(v) => v.clone(),
            Err(e) => panic!("the fast result reader took a frame the general one refuses: {e}"),
        };
        match parse_frame(value) {
            Ok(Frame::Answer {
                requestid: r,
                callid: c,
                answer: a,
            }) => {
                assert_eq!((requestid, callid), (r, c));
                assert_eq!(answer, a);
            }
            other => panic!("the fast result reader disagrees: {other:?}"),
        }
    }
    if let Some((requestid, request)) = parse_call_text(text, MAX_DEPTH) {
        let general = decoded.clone().and_then(parse_frame);
        match general {
            Ok(Frame::Call {
                requestid: r,
                request: q,
            }) => assert_eq!(
                (requestid, request),
                (r, q),
                "the fast call reader disagrees"
            ),
            other => panic!("the fast call reader took a frame the general one reads as {other:?}"),
        }
    }
    if let Ok(value) = decoded {
        flowhub_fuzz::frame(value, Encoding::Json);
    }
});
