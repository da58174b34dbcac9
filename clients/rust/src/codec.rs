//! Frames ↔ WebSocket messages: JSON in text messages, MessagePack in binary ones.

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::config::Encoding;

/// Encodes one frame as a message in `encoding`.
pub(crate) fn encode(frame: &Value, encoding: Encoding) -> Result<Message, String> {
    match encoding {
        Encoding::Json => serde_json::to_string(frame)
            .map(Message::text)
            .map_err(|e| e.to_string()),
        Encoding::MessagePack => rmp_serde::to_vec_named(frame)
            .map(|b| Message::Binary(b.into()))
            .map_err(|e| e.to_string()),
    }
}

/// What a message from the hub holds.
pub(crate) enum Incoming {
    /// A frame (not necessarily an object: the caller checks).
    Frame(Value),
    /// A data message that does not decode; the reason, for the log.
    Garbage(String),
    /// The hub closes the socket.
    Close,
    /// Ping, pong or a raw frame: nothing for the client to act on.
    Control,
}

/// Decodes a message from the hub. Never panics, whatever the bytes.
pub(crate) fn decode(msg: Message) -> Incoming {
    match msg {
        Message::Text(t) => match serde_json::from_str(t.as_str()) {
            Ok(v) => Incoming::Frame(v),
            Err(e) => Incoming::Garbage(format!("a text frame that is not JSON: {e}")),
        },
        Message::Binary(b) => match rmp_serde::from_slice(&b) {
            Ok(v) => Incoming::Frame(v),
            Err(e) => Incoming::Garbage(format!("a binary frame that is not MessagePack: {e}")),
        },
        Message::Close(_) => Incoming::Close,
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_encodings_round_trip_and_garbage_is_reported() {
        let v = json!({"type": "reply", "requestid": 7, "data": {"a": [1, 2.5, null, "x"]}});
        for enc in [Encoding::Json, Encoding::MessagePack] {
            let m = encode(&v, enc).unwrap();
            match decode(m) {
                Incoming::Frame(back) => assert_eq!(back, v),
                _ => panic!("{enc:?} did not round-trip"),
            }
        }
        assert!(matches!(
            decode(Message::text("{nope")),
            Incoming::Garbage(_)
        ));
        assert!(matches!(
            decode(Message::Binary(vec![0xc1, 0xff, 0x00].into())),
            Incoming::Garbage(_)
        ));
    }
}
