//! The `subscribe` and `unsubscribe` frames of protocol v1 (SPEC section 12): decoding them
//! into typed requests. What a subscription does is the fan-out's business (`src/fanout/`).

use serde_json::{Map, Value};

use super::error::FlowError;
use super::request::{validate_endpoint, validate_objectid, MAX_NAMESPACE_LEN};
use crate::query::Group;

/// Longest subscription id accepted, in bytes.
pub const MAX_SUBSCRIPTION_LEN: usize = 128;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Every object of the endpoint in the namespace.
    Endpoint,
    /// One object.
    Object(String),
    /// A live query: the objects matching the condition (the LIST `condition.values` tree).
    Query(Group),
}

/// A decoded `subscribe` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// The client's name for the subscription; the hub picks one when absent.
    pub subscription: Option<String>,
    pub endpoint: String,
    pub namespace: String,
    pub target: Target,
    /// Send the current state (the object, or the LIST result) in the reply.
    pub snapshot: bool,
    /// Resume: the last position the client saw.
    pub from: Option<u64>,
    /// The epoch the `from` position belongs to.
    pub epoch: Option<String>,
    /// Events of UPDATE carry the merge patch instead of the whole object.
    pub patch: bool,
    pub token: Option<String>,
}

/// Decodes the fields of a `subscribe` frame (`type` and `requestid` already taken).
pub fn parse_subscribe(mut obj: Map<String, Value>) -> Result<Subscribe, FlowError> {
    let subscription = subscription_id(obj.remove("subscription"), false)?;
    let endpoint = match obj.remove("endpoint") {
        Some(Value::String(s)) => s.trim_matches('/').to_string(),
        None | Some(Value::Null) => return Err(FlowError::invalid("endpoint is missing")),
        Some(_) => return Err(FlowError::invalid("endpoint must be a string")),
    };
    validate_endpoint(&endpoint)?;
    let namespace = match obj.remove("namespace") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(FlowError::invalid("namespace must be a string")),
    };
    if namespace.len() > MAX_NAMESPACE_LEN {
        return Err(FlowError::invalid(format!(
            "namespace is longer than {MAX_NAMESPACE_LEN} bytes"
        )));
    }
    if namespace.chars().any(char::is_control) {
        return Err(FlowError::invalid("namespace contains control characters"));
    }
    let objectid = match obj.remove("objectid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Some(_) => return Err(FlowError::invalid("objectid must be a string")),
    };
    if let Some(id) = &objectid {
        validate_objectid(id)?;
    }
    let condition = match obj.remove("condition") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => {
            let v: Value = serde_json::from_str(&s).map_err(|e| {
                FlowError::params(format!("condition.values is not valid JSON: {e}"))
            })?;
            Some(Group::parse(&v).map_err(FlowError::params)?)
        }
        Some(v) => Some(Group::parse(&v).map_err(FlowError::params)?),
    };
    let target = match (objectid, condition) {
        (Some(_), Some(_)) => {
            return Err(FlowError::invalid(
                "a subscription follows an objectid or a condition, not both",
            ))
        }
        (Some(id), None) => Target::Object(id),
        (None, Some(g)) => Target::Query(g),
        (None, None) => Target::Endpoint,
    };
    let from = match obj.remove("from") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            FlowError::invalid(format!("from must be a non-negative integer, not {v}"))
        })?),
    };
    let epoch = match obj.remove("epoch") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(FlowError::invalid("epoch must be a string")),
    };
    let token = match obj.remove("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s).filter(|s| !s.is_empty()),
        Some(_) => return Err(FlowError::invalid("token must be a string")),
    };
    Ok(Subscribe {
        subscription,
        endpoint,
        namespace,
        target,
        snapshot: flag(&obj, "snapshot")?,
        from,
        epoch,
        patch: flag(&obj, "patch")?,
        token,
    })
}

/// Decodes the subscription id of an `unsubscribe` frame.
pub fn parse_unsubscribe(mut obj: Map<String, Value>) -> Result<String, FlowError> {
    subscription_id(obj.remove("subscription"), true)?
        .ok_or_else(|| FlowError::invalid("subscription is missing"))
}

fn subscription_id(v: Option<Value>, required: bool) -> Result<Option<String>, FlowError> {
    let id = match v {
        None | Some(Value::Null) if !required => return Ok(None),
        None | Some(Value::Null) => return Err(FlowError::invalid("subscription is missing")),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(_) => return Err(FlowError::invalid("subscription must be a string")),
    };
    if id.is_empty() || id.len() > MAX_SUBSCRIPTION_LEN || id.chars().any(char::is_control) {
        return Err(FlowError::invalid(format!(
            "subscription must be 1 to {MAX_SUBSCRIPTION_LEN} bytes without control characters"
        )));
    }
    Ok(Some(id))
}

fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, FlowError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(FlowError::invalid(format!(
            "{key} must be true or false, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sub(v: Value) -> Result<Subscribe, FlowError> {
        parse_subscribe(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn the_three_targets() {
        let s = sub(json!({"endpoint": "/a/b/", "objectid": 7})).unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.target),
            ("a/b", Target::Object("7".into()))
        );
        let s = sub(json!({"endpoint": "a/b", "snapshot": true})).unwrap();
        assert!(s.snapshot && s.target == Target::Endpoint && !s.patch);
        let s = sub(json!({"endpoint": "a/b", "condition":
            "{\"items\":[{\"key\":\"city\",\"operator\":\"EQUAL\",\"value\":\"Envik\"}]}"}))
        .unwrap();
        assert!(matches!(s.target, Target::Query(_)));
    }

    #[test]
    fn bad_fields_are_errors() {
        for bad in [
            json!({}),
            json!({"endpoint": 3}),
            json!({"endpoint": "a//b"}),
            json!({"endpoint": "a/b", "objectid": "x", "condition": {}}),
            json!({"endpoint": "a/b", "condition": {"logic": "XOR"}}),
            json!({"endpoint": "a/b", "condition": "{"}),
            json!({"endpoint": "a/b", "from": -1}),
            json!({"endpoint": "a/b", "from": "12"}),
            json!({"endpoint": "a/b", "snapshot": "yes"}),
            json!({"endpoint": "a/b", "subscription": ""}),
            json!({"endpoint": "a/b", "subscription": []}),
            json!({"endpoint": "a/b", "epoch": 5}),
        ] {
            assert!(sub(bad.clone()).is_err(), "{bad}");
        }
        assert!(parse_unsubscribe(Map::new()).is_err());
    }
}
