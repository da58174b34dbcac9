//! What the frame targets share: everything a decoded client frame reaches before the
//! dispatcher looks at any state, and the error reply it is answered with.

use flowhub::protocol::frame::{parse_frame, requestid_of};
use flowhub::protocol::subscribe::Target;
use flowhub::protocol::{encode, Encoding, ErrorReply, Frame, Framing, Outcome};
use serde_json::{json, Value};

/// Objects a live query's condition is tested on (as trees and as stored JSON text).
fn probes() -> [Value; 3] {
    [
        json!({}),
        json!({"id": "3a47", "city": "Envik", "n": 5, "s": "Larss Gata", "a": ["x", 2],
            "o": {"p": [1, {"q": null}]}, "t": true, "f": 2.5}),
        json!({"city": ["Envik"], "n": "5", "a": {"0": "x"}, "o": 1e300}),
    ]
}

/// Reads a decoded frame the way a WebSocket session does, down to the checks made before
/// dispatch, and encodes the error reply it would get.
pub fn frame(value: Value, encoding: Encoding) {
    let requestid = requestid_of(&value);
    let outcome: Result<(), flowhub::protocol::FlowError> = match parse_frame(value) {
        Ok(Frame::Call { request, .. }) => flowhub::fuzzing::admit(&request),
        Ok(Frame::Subscribe { subscribe, .. }) => {
            if let Target::Query(group) = &subscribe.target {
                for probe in probes() {
                    let Value::Object(obj) = probe else { continue };
                    let text = serde_json::to_vec(&obj).expect("an object serializes");
                    assert_eq!(
                        group.matches(&obj),
                        group.matches(text.as_slice()),
                        "a live query answers alike on a tree and on its text: {obj:?}"
                    );
                }
            }
            Ok(())
        }
        Ok(Frame::Publish { publish, .. }) => {
            if let Some(data) = &publish.data {
                let _ = serde_json::to_vec(data).expect("published data serializes");
            }
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        let reply: Outcome = Err(ErrorReply::new(e));
        let bytes = encode(
            &reply,
            Framing::Ws {
                requestid: requestid.as_ref(),
            },
            encoding,
        );
        if encoding == Encoding::Json {
            assert!(std::str::from_utf8(&bytes).is_ok(), "a text reply is UTF-8");
        }
    }
}
