//! Provider frames (SPEC section 11): `provide`, `unprovide`, `result` and `reject` from a
//! provider's connection; `invoke` and `cancel` from the hub to it.
//!
//! Parsing checks shapes only; the router decides what a frame means for the calls in flight.

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::FlowError;
use super::frame::Encoding;
use super::request::{validate_endpoint, Caller, Method};

/// A set of methods, as a provider declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u8);

impl MethodSet {
    pub const ALL: MethodSet = MethodSet(0x7f);
    pub const EMPTY: MethodSet = MethodSet(0);

    fn bit(m: Method) -> u8 {
        1 << (Method::ALL.iter().position(|x| *x == m).unwrap_or(0))
    }
    pub fn with(self, m: Method) -> MethodSet {
        MethodSet(self.0 | Self::bit(m))
    }
    pub fn contains(self, m: Method) -> bool {
        self.0 & Self::bit(m) != 0
    }
    pub fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The methods in catalogue order.
    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().filter(move |m| self.contains(*m))
    }
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Method::as_str).collect()
    }
}

/// How a call picks one of an endpoint's providers (SPEC 11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Fewest calls in flight, ties in turn.
    #[default]
    Balanced,
    RoundRobin,
    Random,
    First,
    Last,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Balanced,
        Policy::RoundRobin,
        Policy::Random,
        Policy::First,
        Policy::Last,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Balanced => "balanced",
            Policy::RoundRobin => "roundrobin",
            Policy::Random => "random",
            Policy::First => "first",
            Policy::Last => "last",
        }
    }

    pub fn parse(s: &str) -> Result<Policy, FlowError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                FlowError::invalid(format!(
                    "unknown policy {s:?}: expected balanced, roundrobin, random, first or last"
                ))
            })
    }
}

/// `provide`: this connection serves an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Provide {
    pub endpoint: String,
    /// `None`: the endpoint's first segment.
    pub application: Option<String>,
    pub methods: MethodSet,
    pub policy: Policy,
    pub token: Option<String>,
}

/// `publish`: a provider announces a change to an object it keeps itself (SPEC 11.7).
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub endpoint: String,
    pub namespace: String,
    pub objectid: String,
    pub kind: PublishKind,
    /// The object's new state (CREATE, UPDATE) or last state (DELETE, optional).
    pub data: Option<Map<String, Value>>,
    pub token: Option<String>,
}

/// What a published change did to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    Create,
    Update,
    Delete,
}

pub(super) fn parse_publish(obj: &mut Map<String, Value>) -> Result<Publish, FlowError> {
    let string = |obj: &mut Map<String, Value>, key: &str| match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FlowError::invalid(format!("{key} must be a string"))),
    };
    let endpoint = string(obj, "endpoint")?
        .ok_or_else(|| FlowError::invalid("endpoint is missing"))?
        .trim_matches('/')
        .to_string();
    let namespace = string(obj, "namespace")?.unwrap_or_default();
    let objectid = match obj.remove("objectid") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(FlowError::invalid("publish needs an objectid"))
        }
        Some(_) => return Err(FlowError::invalid("objectid must be a string")),
    };
    let kind = match string(obj, "kind")?.as_deref().map(str::trim) {
        Some(k) if k.eq_ignore_ascii_case("CREATE") => PublishKind::Create,
        Some(k) if k.eq_ignore_ascii_case("UPDATE") => PublishKind::Update,
        Some(k) if k.eq_ignore_ascii_case("DELETE") => PublishKind::Delete,
        Some(k) => {
            return Err(FlowError::invalid(format!(
                "unknown kind {k:?}: expected CREATE, UPDATE or DELETE"
            )))
        }
        None => return Err(FlowError::invalid("kind is missing")),
    };
    let data = match obj.remove("data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(_) => return Err(FlowError::invalid("data of publish must be a JSON object")),
    };
    if data.is_none() && kind != PublishKind::Delete {
        return Err(FlowError::invalid(
            "publish of a CREATE or UPDATE needs data: the object's new state",
        ));
    }
    let token = string(obj, "token")?.filter(|t| !t.is_empty());
    let publish = Publish {
        endpoint,
        namespace,
        objectid,
        kind,
        data,
        token,
    };
    // The same name rules as a call's.
    let mut check = super::request::Request::new(super::request::Method::Open, &publish.endpoint);
    check.namespace.clone_from(&publish.namespace);
    check.objectid = Some(publish.objectid.clone());
    check.validate()?;
    Ok(publish)
}

/// A provider's answer to an invoke.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Result(ProviderResult),
    /// "Not me": try another provider. The reason goes into the final `NO_PROVIDER` message.
    Reject(String),
}

/// What a `result` frame carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderResult {
    Ok {
        data: Option<ResultData>,
        count: Option<u64>,
    },
    Err(ProviderFailure),
}

/// A successful result's data: parsed, or (from a JSON provider) its JSON text as it came,
/// checked for depth, to be copied into the caller's reply without being parsed.
#[derive(Debug, Clone)]
pub enum ResultData {
    Value(Value),
    Json(Box<serde_json::value::RawValue>),
}

impl PartialEq for ResultData {
    fn eq(&self, other: &ResultData) -> bool {
        let value = |d: &ResultData| match d {
            ResultData::Value(v) => v.clone(),
            ResultData::Json(j) => serde_json::from_str(j.get()).unwrap_or(Value::Null),
        };
        value(self) == value(other)
    }
}

/// Reads the commonest provider frame, a successful `result` in JSON, without building a
/// value for it: its `data` stays JSON text. `None` when the frame is anything else (another
/// type, a failure, a duplicate or mistyped field, data nested too deep): the caller then
/// reads it the general way, which gives every error its message.
pub fn parse_result_text(text: &str, max_depth: usize) -> Option<(Option<Value>, u64, Answer)> {
    #[derive(serde::Deserialize)]
    struct Fast<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        callid: u64,
        success: bool,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
        count: Option<u64>,
        requestid: Option<Value>,
    }
    let f: Fast<'_> = serde_json::from_str(text).ok()?;
    if f.kind != "result" || !f.success {
        return None;
    }
    if !matches!(
        f.requestid,
        None | Some(Value::String(_) | Value::Number(_))
    ) {
        return None;
    }
    // The frame is level 1; its data may nest max_depth - 1 more.
    let data = match f.data {
        Some(raw) if raw.get() != "null" => {
            if json_depth(raw.get()) >= max_depth {
                return None;
            }
            Some(ResultData::Json(raw.to_owned()))
        }
        _ => None,
    };
    Some((
        f.requestid,
        f.callid,
        Answer::Result(ProviderResult::Ok {
            data,
            count: f.count,
        }),
    ))
}

/// Nesting depth of valid JSON text (scalars 0, `[]` and `{}` 1), by a scan of its brackets
/// outside strings.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A provider's own error, passed to the caller unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderFailure {
    pub code: String,
    pub message: String,
    pub errorid: Option<Uuid>,
    pub status: Option<u16>,
}

/// Longest error code a provider may send.
pub const MAX_CODE_LEN: usize = 64;

pub(super) fn parse_provide(obj: &mut Map<String, Value>) -> Result<Provide, FlowError> {
    let endpoint = match obj.remove("endpoint") {
        Some(Value::String(s)) => s.trim_matches('/').to_string(),
        Some(_) => return Err(FlowError::invalid("endpoint must be a string")),
        None => return Err(FlowError::invalid("endpoint is missing")),
    };
    validate_endpoint(&endpoint)?;
    let application = match obj.remove("application") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            validate_endpoint(&s)
                .ok()
                .filter(|()| !s.contains('/'))
                .ok_or_else(|| {
                    FlowError::invalid(format!(
                        "application {s:?} must be one name of letters, digits, _, - or ."
                    ))
                })?;
            Some(s)
        }
        Some(_) => return Err(FlowError::invalid("application must be a string")),
    };
    let methods = match obj.remove("methods") {
        None | Some(Value::Null) => MethodSet::ALL,
        Some(Value::Array(list)) => {
            let mut set = MethodSet::EMPTY;
            for m in list {
                match m {
                    Value::String(s) => set = set.with(Method::parse(&s)?),
                    _ => return Err(FlowError::invalid("methods must be a list of method names")),
                }
            }
            if set.is_empty() {
                return Err(FlowError::invalid("methods must name at least one method"));
            }
            set
        }
        Some(_) => return Err(FlowError::invalid("methods must be a list of method names")),
    };
    let policy = match obj.remove("policy") {
        None | Some(Value::Null) => Policy::Balanced,
        Some(Value::String(s)) => Policy::parse(&s)?,
        Some(_) => return Err(FlowError::invalid("policy must be a string")),
    };
    let token = match obj.remove("token") {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    Ok(Provide {
        endpoint,
        application,
        methods,
        policy,
        token,
    })
}

pub(super) fn parse_unprovide(obj: &mut Map<String, Value>) -> Result<String, FlowError> {
    match obj.remove("endpoint") {
        Some(Value::String(s)) => {
            let s = s.trim_matches('/').to_string();
            validate_endpoint(&s)?;
            Ok(s)
        }
        Some(_) => Err(FlowError::invalid("endpoint must be a string")),
        None => Err(FlowError::invalid("endpoint is missing")),
    }
}

pub(super) fn parse_callid(obj: &Map<String, Value>) -> Result<u64, FlowError> {
    match obj.get("callid") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| FlowError::invalid("callid must be a non-negative integer")),
        Some(_) => Err(FlowError::invalid("callid must be a non-negative integer")),
        None => Err(FlowError::invalid("callid is missing")),
    }
}

pub(super) fn parse_result(obj: &mut Map<String, Value>) -> Result<Answer, FlowError> {
    let success = match obj.get("success") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(FlowError::invalid("success must be true or false")),
        None => return Err(FlowError::invalid("success is missing")),
    };
    if success {
        let count = match obj.remove("count") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .ok_or_else(|| FlowError::invalid("count must be a non-negative integer"))?,
            ),
            Some(_) => return Err(FlowError::invalid("count must be a non-negative integer")),
        };
        let data = match obj.remove("data") {
            None | Some(Value::Null) => None,
            Some(v) => Some(ResultData::Value(v)),
        };
        return Ok(Answer::Result(ProviderResult::Ok { data, count }));
    }
    let code = match obj.remove("errorcode") {
        None | Some(Value::Null) => "PROVIDER_ERROR".to_string(),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= MAX_CODE_LEN && s.chars().all(|c| !c.is_control()) =>
        {
            s
        }
        Some(_) => {
            return Err(FlowError::invalid(format!(
                "errorcode must be a string of 1 to {MAX_CODE_LEN} characters"
            )))
        }
    };
    let message = match obj.remove("message") {
        None | Some(Value::Null) => "the provider failed the call".to_string(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(FlowError::invalid("message must be a string")),
    };
    let errorid = match obj.remove("errorid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(Uuid::parse_str(&s).map_err(|_| FlowError::invalid("errorid must be a UUID"))?)
        }
        Some(_) => return Err(FlowError::invalid("errorid must be a UUID")),
    };
    let status = match obj.remove("status") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s @ 400..=599) => Some(s as u16),
            _ => {
                return Err(FlowError::invalid(
                    "status must be an HTTP status from 400 to 599",
                ))
            }
        },
        Some(_) => {
            return Err(FlowError::invalid(
                "status must be an HTTP status from 400 to 599",
            ))
        }
    };
    Ok(Answer::Result(ProviderResult::Err(ProviderFailure {
        code,
        message,
        errorid,
        status,
    })))
}

pub(super) fn parse_reject(obj: &mut Map<String, Value>) -> Result<Answer, FlowError> {
    match obj.remove("reason") {
        None | Some(Value::Null) => Ok(Answer::Reject(String::new())),
        Some(Value::String(s)) => Ok(Answer::Reject(s.chars().take(200).collect())),
        Some(_) => Err(FlowError::invalid("reason must be a string")),
    }
}

/// The parts of an `invoke` frame.
#[derive(Debug, Serialize)]
pub struct Invoke<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub callid: u64,
    pub method: &'static str,
    pub endpoint: &'a str,
    pub application: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objectid: Option<&'a str>,
    pub namespace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a Value>,
    pub caller: &'a Caller,
    /// Milliseconds left before the hub gives up.
    pub timeout: u64,
}

#[derive(Serialize)]
struct Cancel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    callid: u64,
    reason: &'a str,
}

fn encode_frame<T: Serialize>(frame: &T, encoding: Encoding) -> bytes::Bytes {
    let bytes = match encoding {
        Encoding::Json => serde_json::to_vec(frame).unwrap_or_default(),
        Encoding::MsgPack => rmp_serde::to_vec_named(frame).unwrap_or_default(),
    };
    bytes::Bytes::from(bytes)
}

/// Encodes an `invoke` frame for a provider that speaks `encoding`.
pub fn encode_invoke(invoke: &Invoke<'_>, encoding: Encoding) -> bytes::Bytes {
    encode_frame(invoke, encoding)
}

/// Encodes a `cancel` frame.
pub fn encode_cancel(callid: u64, reason: &str, encoding: Encoding) -> bytes::Bytes {
    encode_frame(
        &Cancel {
            kind: "cancel",
            callid,
            reason,
        },
        encoding,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn provide_defaults_to_every_method_and_balanced() {
        let p = parse_provide(&mut obj(json!({"endpoint": "/inventory/device/"}))).unwrap();
        assert_eq!(p.endpoint, "inventory/device");
        assert_eq!(p.methods, MethodSet::ALL);
        assert_eq!(p.policy, Policy::Balanced);
        assert_eq!(p.application, None);
        let p = parse_provide(&mut obj(
            json!({"endpoint": "a/b", "methods": ["run", "LIST"],
            "policy": "first", "application": "app"}),
        ))
        .unwrap();
        assert_eq!(p.methods.names(), vec!["LIST", "RUN"]);
        assert_eq!(p.policy, Policy::First);
        for bad in [
            json!({}),
            json!({"endpoint": 3}),
            json!({"endpoint": "a/b", "methods": []}),
            json!({"endpoint": "a/b", "methods": ["FLY"]}),
            json!({"endpoint": "a/b", "methods": "RUN"}),
            json!({"endpoint": "a/b", "policy": "loudest"}),
            json!({"endpoint": "a/b", "application": "x/y"}),
        ] {
            assert!(parse_provide(&mut obj(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn results_pass_the_providers_code_through_and_check_shapes() {
        let a = parse_result(&mut obj(
            json!({"success": false, "errorcode": "OUT_OF_STOCK",
            "message": "none left", "status": 409}),
        ))
        .unwrap();
        let Answer::Result(ProviderResult::Err(f)) = a else {
            panic!("{a:?}")
        };
        assert_eq!(
            (f.code.as_str(), f.message.as_str(), f.status),
            ("OUT_OF_STOCK", "none left", Some(409))
        );
        let a = parse_result(&mut obj(json!({"success": true, "data": [1], "count": 9}))).unwrap();
        assert_eq!(
            a,
            Answer::Result(ProviderResult::Ok {
                data: Some(ResultData::Value(json!([1]))),
                count: Some(9)
            })
        );
        for bad in [
            json!({}),
            json!({"success": "yes"}),
            json!({"success": true, "count": -1}),
            json!({"success": false, "errorcode": ""}),
            json!({"success": false, "status": 200}),
            json!({"success": false, "errorid": "nope"}),
        ] {
            assert!(parse_result(&mut obj(bad.clone())).is_err(), "{bad}");
        }
        assert!(parse_callid(&obj(json!({"callid": -3}))).is_err());
        assert_eq!(parse_callid(&obj(json!({"callid": 12}))).unwrap(), 12);
    }

    #[test]
    fn the_fast_result_reader_agrees_with_the_general_one_or_steps_aside() {
        let text = r#"{"type":"result","callid":7,"success":true,"data":{"a":[1,{"b":"}]\"["}]},"count":2,"requestid":"r"}"#;
        let (rid, callid, fast) = parse_result_text(text, 32).unwrap();
        let Ok(crate::protocol::Frame::Answer {
            requestid, answer, ..
        }) = crate::protocol::frame::parse_frame(serde_json::from_str(text).unwrap())
        else {
            panic!("not an answer")
        };
        assert_eq!((rid, callid), (requestid, 7));
        assert_eq!(fast, answer);
        assert_eq!(json_depth(r#"{"a":[1,{"b":"}]\"["}]}"#), 3);
        for other in [
            r#"{"type":"result","callid":7,"success":false,"errorcode":"X"}"#,
            r#"{"type":"reject","callid":7}"#,
            r#"{"type":"result","callid":7,"callid":8,"success":true}"#,
            r#"{"type":"result","callid":-1,"success":true}"#,
            r#"{"type":"result","callid":7,"success":true,"count":-2}"#,
            r#"{"type":"result","callid":7,"success":true,"requestid":[1]}"#,
            r#"{"type":"result","callid":7,"success":true,"data":[[[[1]]]]}"#,
        ] {
            let depth = 4;
            assert!(parse_result_text(other, depth).is_none(), "{other}");
        }
    }

    #[test]
    fn invoke_encodes_alike_in_both_encodings() {
        let caller = Caller::default();
        let params = obj(json!({"dry": true}));
        let data = json!({"action": "reboot"});
        let inv = Invoke {
            kind: "invoke",
            callid: 5,
            method: "RUN",
            endpoint: "inventory/device",
            application: "inventory",
            objectid: Some("3a47"),
            namespace: "",
            parameters: Some(&params),
            data: Some(&data),
            caller: &caller,
            timeout: 900,
        };
        let j: Value = serde_json::from_slice(&encode_invoke(&inv, Encoding::Json)).unwrap();
        let m: Value = rmp_serde::from_slice(&encode_invoke(&inv, Encoding::MsgPack)).unwrap();
        assert_eq!(j, m);
        assert_eq!(
            j["caller"],
            json!({"user": null, "roles": [], "connection": null})
        );
        let c: Value =
            serde_json::from_slice(&encode_cancel(5, "timeout", Encoding::Json)).unwrap();
        assert_eq!(
            c,
            json!({"type": "cancel", "callid": 5, "reason": "timeout"})
        );
    }
}
