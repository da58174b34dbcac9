//! The response envelope, the same over WebSocket and HTTP, and its two encodings.
//!
//! Replies are written straight into bytes: a stored object's JSON (or MessagePack) form is
//! copied in as it is, so an OPEN or a LIST page never re-serializes the objects it returns.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use uuid::Uuid;

use super::error::{ErrorCode, FlowError};
use super::frame::Encoding;

/// A value that already knows its encoded forms (the store's records implement it).
pub trait Encoded: Send + Sync {
    /// The value as JSON text.
    fn json(&self) -> &[u8];
    /// The value as MessagePack.
    fn msgpack(&self) -> Bytes;
}

/// What goes into `data`.
pub enum Data {
    /// No `data` field.
    None,
    /// A value built for this reply.
    Value(Value),
    /// JSON text passed through as it came (a provider's result), checked but not parsed.
    Json(Box<serde_json::value::RawValue>),
    /// One stored value, copied in as encoded.
    Stored(Arc<dyn Encoded>),
    /// A list of stored values, copied in as encoded.
    StoredList(Vec<Arc<dyn Encoded>>),
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::None => f.write_str("None"),
            Data::Value(v) => write!(f, "Value({v})"),
            Data::Json(j) => write!(f, "Json({})", j.get()),
            Data::Stored(_) => f.write_str("Stored(..)"),
            Data::StoredList(l) => write!(f, "StoredList({} items)", l.len()),
        }
    }
}

/// A successful reply.
#[derive(Debug)]
pub struct Success {
    pub data: Data,
    /// LIST: the number of matches before pagination.
    pub count: Option<u64>,
}

impl Success {
    pub fn value(v: Value) -> Success {
        Success {
            data: Data::Value(v),
            count: None,
        }
    }
}

/// A failed reply: the error and the id under which it was logged.
#[derive(Debug, Clone)]
pub struct ErrorReply {
    pub error: FlowError,
    pub errorid: Uuid,
    /// A provider's own error code, written in place of `error.code`'s name (SPEC 11.2).
    pub own_code: Option<Box<str>>,
    /// The HTTP status a provider chose, in place of the code's class.
    pub own_status: Option<u16>,
}

impl ErrorReply {
    /// Gives the error a fresh `errorid`. The caller logs it (see `dispatch::log_error`).
    pub fn new(error: FlowError) -> ErrorReply {
        ErrorReply {
            error,
            errorid: Uuid::new_v4(),
            own_code: None,
            own_status: None,
        }
    }
    pub fn code(&self) -> ErrorCode {
        self.error.code
    }
    /// The `errorcode` as written on the wire.
    pub fn code_name(&self) -> &str {
        self.own_code.as_deref().unwrap_or(self.error.code.as_str())
    }
    /// The HTTP status of a response carrying this error.
    pub fn http_status(&self) -> u16 {
        self.own_status.unwrap_or(self.error.code.http_status())
    }
}

/// The result of one call.
pub type Outcome = Result<Success, ErrorReply>;

/// Where a reply goes: over HTTP the bare envelope; over WebSocket a frame with `type` and the
/// call's `requestid`.
#[derive(Debug, Clone, Copy)]
pub enum Framing<'a> {
    Http,
    Ws { requestid: Option<&'a Value> },
}

/// Encodes a reply. Field order follows the seed: `status`, `success`, then `data`/`count` or
/// `message`/`errorcode`, then `dataType`, then `errorid`.
pub fn encode(outcome: &Outcome, framing: Framing<'_>, encoding: Encoding) -> Bytes {
    match encoding {
        Encoding::Json => encode_json(outcome, framing),
        Encoding::MsgPack => encode_msgpack(outcome, framing),
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes a string's JSON escape without the surrounding quotes.
fn push_json_str_body(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    push_json_str(out, s);
    // Drop the closing quote, then the opening one.
    out.pop();
    out.remove(start);
}

fn encode_json(outcome: &Outcome, framing: Framing<'_>) -> Bytes {
    let mut out = Vec::with_capacity(match outcome {
        Ok(Success {
            data: Data::Stored(s),
            ..
        }) => s.json().len() + 96,
        Ok(Success {
            data: Data::StoredList(l),
            ..
        }) => l.iter().map(|s| s.json().len() + 1).sum::<usize>() + 96,
        _ => 160,
    });
    out.push(b'{');
    if let Framing::Ws { requestid } = framing {
        out.extend_from_slice(b"\"type\":\"reply\",");
        if let Some(id) = requestid {
            out.extend_from_slice(b"\"requestid\":");
            let _ = serde_json::to_writer(&mut out, id);
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"status\":0,");
    match outcome {
        Ok(success) => {
            out.extend_from_slice(b"\"success\":true,");
            match &success.data {
                Data::None => {}
                Data::Value(v) => {
                    out.extend_from_slice(b"\"data\":");
                    let _ = serde_json::to_writer(&mut out, v);
                    out.push(b',');
                }
                Data::Json(j) => {
                    out.extend_from_slice(b"\"data\":");
                    out.extend_from_slice(j.get().as_bytes());
                    out.push(b',');
                }
                Data::Stored(s) => {
                    out.extend_from_slice(b"\"data\":");
                    out.extend_from_slice(s.json());
                    out.push(b',');
                }
                Data::StoredList(list) => {
                    out.extend_from_slice(b"\"data\":[");
                    for (i, s) in list.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(s.json());
                    }
                    out.extend_from_slice(b"],");
                }
            }
            if let Some(count) = success.count {
                out.extend_from_slice(b"\"count\":");
                out.extend_from_slice(count.to_string().as_bytes());
                out.push(b',');
            }
            out.extend_from_slice(b"\"dataType\":\"JSON\"}");
        }
        Err(err) => {
            out.extend_from_slice(b"\"success\":false,\"message\":");
            push_json_str(&mut out, &err.error.message);
            out.extend_from_slice(b",\"errorcode\":\"");
            push_json_str_body(&mut out, err.code_name());
            out.extend_from_slice(b"\",\"dataType\":\"JSON\",\"errorid\":\"");
            out.extend_from_slice(err.errorid.hyphenated().to_string().as_bytes());
            out.extend_from_slice(b"\"}");
        }
    }
    Bytes::from(out)
}

fn encode_msgpack(outcome: &Outcome, framing: Framing<'_>) -> Bytes {
    use rmp::encode as mp;
    let mut out: Vec<u8> = Vec::with_capacity(128);
    let mut fields: u32 = 3; // status, success, dataType
    let requestid = match framing {
        Framing::Ws { requestid } => {
            fields += 1 + u32::from(requestid.is_some());
            requestid
        }
        Framing::Http => None,
    };
    match outcome {
        Ok(s) => fields += u32::from(!matches!(s.data, Data::None)) + u32::from(s.count.is_some()),
        Err(_) => fields += 3,
    }
    // Writes into a Vec cannot fail; the results are ignored for that reason.
    let _ = mp::write_map_len(&mut out, fields);
    if let Framing::Ws { .. } = framing {
        let _ = mp::write_str(&mut out, "type");
        let _ = mp::write_str(&mut out, "reply");
        if let Some(id) = requestid {
            let _ = mp::write_str(&mut out, "requestid");
            let _ = rmp_serde::encode::write(&mut out, id);
        }
    }
    let _ = mp::write_str(&mut out, "status");
    let _ = mp::write_uint(&mut out, 0);
    let _ = mp::write_str(&mut out, "success");
    let _ = mp::write_bool(&mut out, outcome.is_ok());
    match outcome {
        Ok(success) => {
            match &success.data {
                Data::None => {}
                Data::Value(v) => {
                    let _ = mp::write_str(&mut out, "data");
                    let _ = rmp_serde::encode::write(&mut out, v);
                }
                Data::Json(j) => {
                    // Checked JSON text: it parses.
                    let v: Value = serde_json::from_str(j.get()).unwrap_or(Value::Null);
                    let _ = mp::write_str(&mut out, "data");
                    let _ = rmp_serde::encode::write(&mut out, &v);
                }
                Data::Stored(s) => {
                    let _ = mp::write_str(&mut out, "data");
                    out.extend_from_slice(&s.msgpack());
                }
                Data::StoredList(list) => {
                    let _ = mp::write_str(&mut out, "data");
                    let _ = mp::write_array_len(&mut out, list.len() as u32);
                    for s in list {
                        out.extend_from_slice(&s.msgpack());
                    }
                }
            }
            if let Some(count) = success.count {
                let _ = mp::write_str(&mut out, "count");
                let _ = mp::write_uint(&mut out, count);
            }
            let _ = mp::write_str(&mut out, "dataType");
            let _ = mp::write_str(&mut out, "JSON");
        }
        Err(err) => {
            let _ = mp::write_str(&mut out, "message");
            let _ = mp::write_str(&mut out, &err.error.message);
            let _ = mp::write_str(&mut out, "errorcode");
            let _ = mp::write_str(&mut out, err.code_name());
            let _ = mp::write_str(&mut out, "dataType");
            let _ = mp::write_str(&mut out, "JSON");
            let _ = mp::write_str(&mut out, "errorid");
            let _ = mp::write_str(&mut out, &err.errorid.hyphenated().to_string());
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Raw(Value);
    impl Encoded for Raw {
        fn json(&self) -> &[u8] {
            Box::leak(serde_json::to_vec(&self.0).unwrap().into_boxed_slice())
        }
        fn msgpack(&self) -> Bytes {
            Bytes::from(rmp_serde::to_vec_named(&self.0).unwrap())
        }
    }

    fn both(outcome: &Outcome, framing: Framing<'_>) -> (Value, Value) {
        let j: Value = serde_json::from_slice(&encode(outcome, framing, Encoding::Json)).unwrap();
        let m: Value = rmp_serde::from_slice(&encode(outcome, framing, Encoding::MsgPack)).unwrap();
        (j, m)
    }

    #[test]
    fn the_seed_error_envelope() {
        let outcome: Outcome = Err(ErrorReply::new(FlowError::not_found(
            "Object does not exist",
        )));
        let (j, m) = both(&outcome, Framing::Http);
        assert_eq!(j, m);
        assert_eq!(j["status"], 0);
        assert_eq!(j["success"], false);
        assert_eq!(j["errorcode"], "DO_NOT_EXIST");
        assert_eq!(j["dataType"], "JSON");
        assert!(Uuid::parse_str(j["errorid"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn lists_and_requestids_encode_the_same_in_both() {
        let list = Data::StoredList(vec![
            Arc::new(Raw(json!({"id": "a", "n": 1}))),
            Arc::new(Raw(json!({"id": "b", "n": 2.5}))),
        ]);
        let outcome: Outcome = Ok(Success {
            data: list,
            count: Some(12),
        });
        let rid = json!("r1");
        let (j, m) = both(
            &outcome,
            Framing::Ws {
                requestid: Some(&rid),
            },
        );
        assert_eq!(j, m);
        assert_eq!(
            j,
            json!({"type": "reply", "requestid": "r1", "status": 0, "success": true,
                "data": [{"id": "a", "n": 1}, {"id": "b", "n": 2.5}], "count": 12, "dataType": "JSON"})
        );
    }
}
