//! WebSocket frames of protocol v1: decoding bytes into typed frames.
//!
//! Text frames carry JSON, binary frames MessagePack; both decode to the same shapes. A frame
//! that cannot be decoded at all is answered with an error reply without a `requestid`; a frame
//! that decodes but is wrong is answered with an error reply that carries its `requestid`.

use serde_json::{Map, Value};

use super::error::FlowError;
use super::provider::{self, Answer, Provide, Publish};
use super::request::{Method, Request};
use super::subscribe::{parse_subscribe, parse_unsubscribe, Subscribe};

/// The two encodings of the wire, one per WebSocket frame kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON in text frames (and every HTTP body).
    Json,
    /// MessagePack in binary frames.
    MsgPack,
}

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A call: `type` is `"call"` or absent.
    Call {
        requestid: Option<Value>,
        request: Request,
    },
    /// `provide`: this connection serves an endpoint (SPEC 11.1).
    Provide {
        requestid: Option<Value>,
        provide: Provide,
    },
    /// `publish`: a provider announces a change to an object it keeps itself (SPEC 11.7).
    Publish {
        requestid: Option<Value>,
        publish: Publish,
    },
    /// `unprovide`: it no longer does.
    Unprovide {
        requestid: Option<Value>,
        endpoint: String,
    },
    /// `login`: the connection authenticates once; its calls may then omit `token`
    /// (SPEC 13.2).
    Login {
        requestid: Option<Value>,
        login: Login,
    },
    /// `result` or `reject`: a provider's answer to an invoke (SPEC 11.2).
    Answer {
        requestid: Option<Value>,
        callid: u64,
        answer: Answer,
    },
    /// `type: "subscribe"`: follow an object, an endpoint or a live query (SPEC section 11).
    Subscribe {
        requestid: Option<Value>,
        subscribe: Subscribe,
    },
    /// `type: "unsubscribe"`: stop a subscription of this connection.
    Unsubscribe {
        requestid: Option<Value>,
        subscription: String,
    },
}

/// What a `login` frame proves identity with. `Debug` never shows the secret.
#[derive(Clone, PartialEq)]
pub enum Login {
    /// A token from `auth/token`.
    Token(String),
    /// A user name and password: the hub issues a token and returns it.
    Password {
        username: String,
        password: super::request::Secret,
    },
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Token(_) => f.write_str("Login::Token(<hidden>)"),
            Login::Password { username, .. } => {
                write!(f, "Login::Password({username:?}, <hidden>)")
            }
        }
    }
}

/// Decodes bytes into a JSON value, refusing nesting deeper than `max_depth`.
pub fn decode(bytes: &[u8], encoding: Encoding, max_depth: usize) -> Result<Value, FlowError> {
    let value = match encoding {
        Encoding::Json => {
            serde_json::from_slice::<Value>(bytes).map_err(|e| json_error(&e, max_depth))?
        }
        Encoding::MsgPack => {
            let mut rest: &[u8] = bytes;
            let mut de = rmp_serde::Deserializer::new(&mut rest);
            // +1: the frame itself is one level; the limit applies to what it contains.
            de.set_max_depth(max_depth + 1);
            let v: Value = serde::Deserialize::deserialize(&mut de).map_err(|e| {
                if e.to_string().contains("depth limit") {
                    depth_error(max_depth)
                } else {
                    FlowError::invalid(format!("frame is not valid MessagePack: {e}"))
                }
            })?;
            drop(de);
            if !rest.is_empty() {
                return Err(FlowError::invalid(
                    "frame has bytes after its MessagePack value: one value per frame",
                ));
            }
            v
        }
    };
    if depth(&value) > max_depth {
        return Err(depth_error(max_depth));
    }
    Ok(value)
}

/// Decodes a WebSocket text frame (already known to be UTF-8) into a JSON value, refusing
/// nesting deeper than `max_depth`.
pub fn decode_text(text: &str, max_depth: usize) -> Result<Value, FlowError> {
    let value = serde_json::from_str::<Value>(text).map_err(|e| json_error(&e, max_depth))?;
    if depth(&value) > max_depth {
        return Err(depth_error(max_depth));
    }
    Ok(value)
}

fn json_error(e: &serde_json::Error, max_depth: usize) -> FlowError {
    if e.to_string().contains("recursion limit") {
        depth_error(max_depth)
    } else {
        FlowError::invalid(format!("frame is not valid JSON: {e}"))
    }
}

fn depth_error(max_depth: usize) -> FlowError {
    FlowError::invalid(format!("frame is nested deeper than {max_depth} levels"))
}

/// Nesting depth of a value: scalars are 0, `{}` and `[]` are 1.
pub fn depth(value: &Value) -> usize {
    // The usual call's data: an object (or array) of scalars, told without a stack.
    let scalar = |c: &Value| !matches!(c, Value::Array(_) | Value::Object(_));
    match value {
        Value::Object(o) if o.values().all(scalar) => return 1,
        Value::Array(a) if a.iter().all(scalar) => return 1,
        Value::Object(_) | Value::Array(_) => {}
        _ => return 0,
    }
    // Iterative, so that a hostile value cannot overflow the stack here either.
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Reads the `requestid` of a decoded frame, if it has a usable one (a string or a number).
pub fn requestid_of(value: &Value) -> Option<Value> {
    match value.get("requestid") {
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        _ => None,
    }
}

/// Turns a decoded value into a frame. Only the frame's shape is checked here; the dispatcher
/// validates the call itself. Errors carry no requestid; the caller pairs them with
/// [`requestid_of`].
pub fn parse_frame(value: Value) -> Result<Frame, FlowError> {
    let Value::Object(mut obj) = value else {
        return Err(FlowError::invalid("a frame must be an object"));
    };
    let kind = match take(&mut obj, "type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t),
        Some(_) => return Err(FlowError::invalid("frame type must be a string")),
    };
    let requestid = match take(&mut obj, "requestid") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => return Err(FlowError::invalid("requestid must be a string or a number")),
    };
    match kind.as_deref() {
        None | Some("call") => {}
        Some("provide") => {
            let provide = provider::parse_provide(&mut obj)?;
            return Ok(Frame::Provide { requestid, provide });
        }
        Some("publish") => {
            let publish = provider::parse_publish(&mut obj)?;
            return Ok(Frame::Publish { requestid, publish });
        }
        Some("unprovide") => {
            let endpoint = provider::parse_unprovide(&mut obj)?;
            return Ok(Frame::Unprovide {
                requestid,
                endpoint,
            });
        }
        Some("login") => {
            let token = take_string(&mut obj, "token")?.filter(|s| !s.is_empty());
            let username = take_string(&mut obj, "username")?;
            let password = take_string(&mut obj, "password")?;
            let login = match (token, username, password) {
                (Some(t), None, None) => Login::Token(t),
                (None, Some(username), Some(password)) => Login::Password {
                    username,
                    password: super::request::Secret(password),
                },
                _ => {
                    return Err(FlowError::invalid(
                        "a login frame carries either token, or username and password",
                    ))
                }
            };
            return Ok(Frame::Login { requestid, login });
        }
        Some(t @ ("result" | "reject")) => {
            let callid = provider::parse_callid(&obj)?;
            let answer = if t == "result" {
                provider::parse_result(&mut obj)?
            } else {
                provider::parse_reject(&mut obj)?
            };
            return Ok(Frame::Answer {
                requestid,
                callid,
                answer,
            });
        }
        Some("subscribe") => {
            let subscribe = parse_subscribe(obj)?;
            return Ok(Frame::Subscribe {
                requestid,
                subscribe,
            });
        }
        Some("unsubscribe") => {
            let subscription = parse_unsubscribe(obj)?;
            return Ok(Frame::Unsubscribe {
                requestid,
                subscription,
            });
        }
        Some(t) => return Err(FlowError::invalid(format!("unknown frame type {t:?}"))),
    }
    let method = match take(&mut obj, "method") {
        Some(Value::String(m)) => Method::parse(&m)?,
        Some(_) => return Err(FlowError::invalid("method must be a string")),
        None => return Err(FlowError::invalid("method is missing")),
    };
    let endpoint = take_string(&mut obj, "endpoint")?
        .ok_or_else(|| FlowError::invalid("endpoint is missing"))?;
    let endpoint = endpoint.trim_matches('/').to_string();
    let request = Request {
        method,
        endpoint,
        application: take_string(&mut obj, "application")?.filter(|s| !s.is_empty()),
        objectid: take_id(&mut obj, "objectid")?,
        namespace: take_string(&mut obj, "namespace")?.unwrap_or_default(),
        parameters: match take(&mut obj, "parameters") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(v) => Some(v),
        },
        data: take(&mut obj, "data"),
        token: take_string(&mut obj, "token")?.filter(|s| !s.is_empty()),
        timeout_ms: match take(&mut obj, "timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
            Some(_) => {
                return Err(FlowError::invalid(
                    "timeout must be a whole number of milliseconds",
                ))
            }
        },
    };
    Ok(Frame::Call { requestid, request })
}

/// A call frame as it is read straight from JSON text ([`parse_call_text`]).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallText<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    requestid: Option<Value>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    endpoint: Option<String>,
    application: Option<String>,
    objectid: Option<Value>,
    namespace: Option<String>,
    parameters: Option<Value>,
    /// Present (even as `null`) or absent, as the general reader tells them apart.
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
    token: Option<String>,
    timeout: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

/// A call frame's JSON text read straight into its request, without building the frame as a
/// JSON object first: the common frame's fast way. `None` for anything else — another frame
/// type, a field this reader does not know, a field of the wrong type, too deep a nesting,
/// not JSON at all: [`decode_text`] and [`parse_frame`] then read it and give the error, so
/// both ways accept exactly the same calls and answer the same.
pub fn parse_call_text(text: &str, max_depth: usize) -> Option<(Option<Value>, Request)> {
    // A struct would also be read from an array, by position.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    // Another frame type named near the start (as clients write it) is left alone before it is
    // read: its data may be large, and reading it here would read it twice.
    let head = &text.as_bytes()[..text.len().min(128)];
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if has(b"\"type\"") && !has(b"\"call\"") {
        return None;
    }
    let f: CallText = serde_json::from_str(text).ok()?;
    if f.kind.as_deref().is_some_and(|k| k != "call") {
        return None;
    }
    let requestid = match f.requestid {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => return None,
    };
    let deepest = [&f.parameters, &f.data, &f.objectid, &f.timeout]
        .into_iter()
        .flatten()
        .map(depth)
        .max()
        .unwrap_or(0);
    if deepest + 1 > max_depth {
        return None;
    }
    let method = Method::parse(f.method.as_deref()?).ok()?;
    let endpoint = f.endpoint?.trim_matches('/').to_string();
    let request = Request {
        method,
        endpoint,
        application: f.application.filter(|s| !s.is_empty()),
        objectid: id_value(f.objectid, "objectid").ok()?,
        namespace: f.namespace.unwrap_or_default(),
        parameters: match f.parameters {
            None => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(v) => Some(v),
        },
        data: f.data,
        token: f.token.filter(|s| !s.is_empty()),
        timeout_ms: match f.timeout {
            None => None,
            Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
            Some(_) => return None,
        },
    };
    Some((requestid, request))
}

/// Takes a field's value out of a frame, leaving null behind: cheaper than removing the key
/// from an order-preserving map, and the frame is dropped once read.
fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.get_mut(key).map(Value::take)
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, FlowError> {
    match take(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FlowError::invalid(format!("{key} must be a string"))),
    }
}

/// Object ids may come as strings or as integers; the empty string means "none", as in the
/// seed's call template (`"objectid": ""`).
fn take_id(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, FlowError> {
    id_value(take(obj, key), key)
}

fn id_value(value: Option<Value>, key: &str) -> Result<Option<String>, FlowError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        Some(_) => Err(FlowError::invalid(format!("{key} must be a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_nesting_flat_or_not() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!("s")), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a": 1, "b": "x", "c": null})), 1);
        assert_eq!(depth(&json!([1, 2, 3])), 1);
        assert_eq!(depth(&json!({"a": 1, "b": {"c": 1}})), 2);
        assert_eq!(depth(&json!([1, [2, [3]]])), 3);
        assert_eq!(depth(&json!({"a": [{"b": [{}]}]})), 5);
    }

    #[test]
    fn a_seed_call_with_endpoint_and_requestid_parses() {
        let v = json!({"requestid": 7, "endpoint": "inventory/device", "method": "OPEN",
            "objectid": "3a47", "token": "t", "namespace": "", "parameters": ""});
        let Ok(Frame::Call { requestid, request }) = parse_frame(v) else {
            panic!("not a call")
        };
        assert_eq!(requestid, Some(json!(7)));
        assert_eq!(request.method, Method::Open);
        assert_eq!(request.objectid.as_deref(), Some("3a47"));
        assert_eq!(request.parameters, None);
    }

    #[test]
    fn deep_nesting_is_refused_in_both_encodings() {
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!([v]);
        }
        let text = serde_json::to_vec(&v).unwrap();
        assert!(decode(&text, Encoding::Json, 32).is_err());
        assert!(decode(&text, Encoding::Json, 64).is_ok());
        let mut bin = rmp_serde::to_vec(&v).unwrap();
        bin.push(0xc0);
        assert!(
            decode(&bin, Encoding::MsgPack, 64).is_err(),
            "trailing bytes are refused"
        );
        bin.pop();
        assert!(decode(&bin, Encoding::MsgPack, 32).is_err());
        assert_eq!(decode(&bin, Encoding::MsgPack, 64).unwrap(), v);
        let deep = "[".repeat(100_000);
        assert!(decode(deep.as_bytes(), Encoding::Json, 32).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b"\xff\xff"[..],
            b"{",
            b"",
            b"\xc1",
            b"\xdd\xff\xff\xff\xff",
        ] {
            let _ = decode(bytes, Encoding::Json, 32);
            let _ = decode(bytes, Encoding::MsgPack, 32);
        }
        assert!(parse_frame(json!([1])).is_err());
        assert!(parse_frame(json!({"method": 3, "endpoint": "a/b"})).is_err());
        assert!(parse_frame(json!({"method": "LIST"})).is_err());
    }

    /// Every call frame the fast reader takes, it reads as the general reader does; every
    /// frame the general reader refuses, the fast one leaves to it.
    fn agrees(text: &str) {
        let general = decode_text(text, 8).and_then(parse_frame);
        match (parse_call_text(text, 8), general) {
            (
                Some((requestid, request)),
                Ok(Frame::Call {
                    requestid: r,
                    request: q,
                }),
            ) => {
                assert_eq!((requestid, request), (r, q), "{text}");
            }
            (Some(fast), other) => panic!("{text}: fast {fast:?}, general {other:?}"),
            (None, _) => {}
        }
    }

    #[test]
    fn the_fast_call_reader_agrees_with_the_general_one() {
        let frames = [
            r#"{"type":"call","requestid":1,"endpoint":"a/b","method":"UPDATE","objectid":"w0","data":{"value":"x"}}"#,
            r#"{"requestid":"r","endpoint":"/a/b/","method":"OPEN","objectid":7,"token":"","namespace":null,"parameters":" "}"#,
            r#"{"endpoint":"a","method":"LIST","parameters":{"condition":"x = 1"},"timeout":250,"application":"app"}"#,
            r#"{"endpoint":"a","method":"CREATE","data":null}"#,
            r#"{"endpoint":"a","method":"CREATE","objectid":"","data":{"a":[1,{"b":null}]}}"#,
            r#"{"endpoint":"a","method":"CREATE","objectid":-3}"#,
            r#"{"endpoint":"a","method":"CREATE","objectid":1.5}"#,
            r#"{"endpoint":"a","method":"open"}"#,
            r#"{"endpoint":"a","method":"FETCH"}"#,
            r#"{"endpoint":"a","method":null}"#,
            r#"{"endpoint":"a"}"#,
            r#"{"method":"OPEN"}"#,
            r#"{"endpoint":5,"method":"OPEN"}"#,
            r#"{"endpoint":"a","method":"OPEN","requestid":[1]}"#,
            r#"{"endpoint":"a","method":"OPEN","requestid":null}"#,
            r#"{"endpoint":"a","method":"OPEN","timeout":-1}"#,
            r#"{"endpoint":"a","method":"OPEN","timeout":1.5}"#,
            r#"{"endpoint":"a","method":"OPEN","type":"subscribe"}"#,
            r#"{"endpoint":"a","method":"OPEN","type":5}"#,
            r#"{"endpoint":"a","method":"OPEN","extra":true}"#,
            r#"{"endpoint":"a","method":"OPEN","endpoint":"b"}"#,
            r#"{"endpoint":"a","method":"CREATE","data":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}"#,
            r#"{"endpoint":"a","method":"CREATE","data":{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}}"#,
            r#"["call",1,"OPEN"]"#,
            r#"  {"endpoint":"a\/b","method":"OPEN","objectid":"\u00e9"}"#,
            r#"{"endpoint":"a","method":"OPEN""#,
            "",
            "null",
        ];
        for text in frames {
            agrees(text);
        }
        // The common frames do take the fast way.
        assert!(parse_call_text(frames[0], 8).is_some());
        assert!(parse_call_text(frames[1], 8).is_some());
        assert!(parse_call_text(frames[3], 8).is_some());
    }

    #[test]
    fn the_fast_call_reader_agrees_on_every_conformance_vector() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/vectors");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let script: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for step in script["steps"].as_array().into_iter().flatten() {
                let send = match &step["send"] {
                    Value::String(raw) => raw.clone(),
                    Value::Null => continue,
                    v => v.to_string(),
                };
                agrees(&send);
                seen += 1;
            }
        }
        assert!(seen > 100, "only {seen} frames");
    }
}
