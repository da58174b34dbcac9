//! The typed call that every transport produces and the dispatcher consumes.
//!
//! A WebSocket call frame and an HTTP request both become one [`Request`]; from here on a call
//! behaves the same whichever way it came.

use serde_json::Value;

use serde::{Deserialize, Serialize};

use super::error::FlowError;

/// The seven methods of the Flow API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    List,
    Open,
    Update,
    Delete,
    Index,
    Create,
    Run,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::List,
        Method::Open,
        Method::Update,
        Method::Delete,
        Method::Index,
        Method::Create,
        Method::Run,
    ];

    /// Parses a method name; case does not matter (`list` and `LIST` are the same method).
    pub fn parse(s: &str) -> Result<Method, FlowError> {
        let s = s.trim();
        Method::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            FlowError::invalid(format!(
                "unknown method {s:?}: expected one of LIST, OPEN, UPDATE, DELETE, INDEX, CREATE, RUN"
            ))
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::List => "LIST",
            Method::Open => "OPEN",
            Method::Update => "UPDATE",
            Method::Delete => "DELETE",
            Method::Index => "INDEX",
            Method::Create => "CREATE",
            Method::Run => "RUN",
        }
    }

    /// Whether the seed requires an object id for this method (INDEX takes one optionally:
    /// without it, it describes the whole endpoint).
    pub fn needs_objectid(self) -> bool {
        matches!(
            self,
            Method::Open | Method::Update | Method::Delete | Method::Run
        )
    }

    /// Whether the seed requires `data` for this method.
    pub fn needs_data(self) -> bool {
        matches!(self, Method::Create | Method::Update | Method::Run)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that must never be printed: `Debug` shows `<hidden>`, serializing writes nothing.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<hidden>")
    }
}

/// Endpoint names under these prefixes are the hub's own: they cannot be provided, and the
/// record store keeps none of them for normal calls.
pub const RESERVED: [&str; 2] = ["hub/", "auth/"];

/// Whether an endpoint name is reserved for the hub's own endpoints.
pub fn is_reserved(endpoint: &str) -> bool {
    RESERVED.iter().any(|p| endpoint.starts_with(p))
}

/// The HTTP application of an endpoint nobody declared one for: its first segment
/// (`address/address` is served under `/api/address/...`).
pub fn default_application(endpoint: &str) -> &str {
    endpoint.split('/').next().unwrap_or(endpoint)
}

/// Longest endpoint name accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 200;
/// Longest object id accepted, in bytes.
pub const MAX_OBJECTID_LEN: usize = 200;
/// Longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;

/// One call, whatever transport it came by.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    /// The endpoint, e.g. `address/address`: one or more `/`-separated segments.
    pub endpoint: String,
    /// The HTTP `<application>` segment the call was addressed to, if any.
    pub application: Option<String>,
    pub objectid: Option<String>,
    /// The tenant partition; the empty string is the default namespace.
    pub namespace: String,
    /// Raw parameters in any of the accepted forms; see [`super::params`].
    pub parameters: Option<Value>,
    pub data: Option<Value>,
    /// The authentication token, kept for the auth engine; never logged.
    pub token: Option<String>,
    /// The caller's deadline for a routed call, in milliseconds (SPEC 11.4); it can only
    /// shorten the configured one.
    pub timeout_ms: Option<u64>,
}

/// Who makes a call, as a provider sees it in `invoke` (SPEC 11.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    /// The authenticated user; `None` while authentication is off.
    pub user: Option<String>,
    pub roles: Vec<String>,
    /// The hub's number for the caller's WebSocket; `None` over HTTP.
    pub connection: Option<u64>,
}

impl Request {
    /// A request with only method and endpoint set; the rest defaults to empty.
    pub fn new(method: Method, endpoint: impl Into<String>) -> Request {
        Request {
            method,
            endpoint: endpoint.into(),
            application: None,
            objectid: None,
            namespace: String::new(),
            parameters: None,
            data: None,
            token: None,
            timeout_ms: None,
        }
    }

    /// Checks the shape rules of the seed that do not depend on state: names are well formed,
    /// the object id and data are there when the method needs them.
    pub fn validate(&self) -> Result<(), FlowError> {
        validate_endpoint(&self.endpoint)?;
        if let Some(app) = &self.application {
            validate_segment("application", app)?;
        }
        if self.namespace.len() > MAX_NAMESPACE_LEN {
            return Err(FlowError::invalid(format!(
                "namespace is longer than {MAX_NAMESPACE_LEN} bytes"
            )));
        }
        if self.namespace.chars().any(char::is_control) {
            return Err(FlowError::invalid("namespace contains control characters"));
        }
        match &self.objectid {
            Some(id) => validate_objectid(id)?,
            None if self.method.needs_objectid() => {
                return Err(FlowError::invalid(format!(
                    "{} needs an objectid",
                    self.method.as_str()
                )))
            }
            None => {}
        }
        if self.method.needs_data() && matches!(self.data, None | Some(Value::Null)) {
            return Err(FlowError::invalid(format!(
                "{} needs data",
                self.method.as_str()
            )));
        }
        Ok(())
    }
}

/// Endpoint names: 1 to 8 segments of letters, digits, `_`, `-` and `.`, separated by `/`.
pub fn validate_endpoint(endpoint: &str) -> Result<(), FlowError> {
    if endpoint.is_empty() {
        return Err(FlowError::invalid("endpoint is missing"));
    }
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(FlowError::invalid(format!(
            "endpoint is longer than {MAX_ENDPOINT_LEN} bytes"
        )));
    }
    // One pass over the bytes: the name is checked on every call.
    let mut segments = 1;
    let mut start = 0;
    let bytes = endpoint.as_bytes();
    let mut ok = true;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            ok &= segment_ok(&bytes[start..i]);
            segments += 1;
            start = i + 1;
        } else {
            ok &= name_byte(b);
        }
    }
    ok &= segment_ok(&bytes[start..]);
    if segments > 8 {
        return Err(FlowError::invalid("endpoint has more than 8 segments"));
    }
    if !ok {
        return Err(FlowError::invalid(format!(
            "invalid endpoint {endpoint:?}: segments are non-empty and use only letters, digits, '_', '-' and '.'"
        )));
    }
    Ok(())
}

/// A segment's own rules, its characters aside: not empty, not `.` or `..`.
fn segment_ok(seg: &[u8]) -> bool {
    !seg.is_empty() && seg != b"." && seg != b".."
}

/// The characters of endpoint and application names: letters, digits, `_`, `-` and `.`.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn validate_segment(what: &str, seg: &str) -> Result<(), FlowError> {
    let ok = segment_ok(seg.as_bytes()) && seg.bytes().all(name_byte);
    if ok {
        Ok(())
    } else {
        Err(FlowError::invalid(format!("invalid {what} name {seg:?}")))
    }
}

/// Object ids: 1 to 200 bytes, no `/` (the HTTP path could not address it) and no control
/// characters.
pub fn validate_objectid(id: &str) -> Result<(), FlowError> {
    if id.is_empty() {
        return Err(FlowError::invalid("objectid is empty"));
    }
    if id.len() > MAX_OBJECTID_LEN {
        return Err(FlowError::invalid(format!(
            "objectid is longer than {MAX_OBJECTID_LEN} bytes"
        )));
    }
    if id.contains('/') || id.chars().any(char::is_control) {
        return Err(FlowError::invalid(
            "objectid may not contain '/' or control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_follow_the_rules() {
        for good in [
            "a",
            "a/b",
            "my-app/v1.2/items_x",
            "a/b/c/d/e/f/g/h",
            "..a/b..",
        ] {
            assert!(validate_endpoint(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/./b",
            "a/../b",
            "a b",
            "a/é",
            "a?b",
            "a/b/c/d/e/f/g/h/i",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad:?}");
        }
        assert!(validate_endpoint(&"a".repeat(MAX_ENDPOINT_LEN + 1)).is_err());
    }

    #[test]
    fn methods_parse_in_any_case() {
        assert_eq!(Method::parse("list").unwrap(), Method::List);
        assert_eq!(Method::parse(" OPEN ").unwrap(), Method::Open);
        assert!(Method::parse("FETCH").is_err());
    }

    #[test]
    fn endpoint_names() {
        assert!(validate_endpoint("address/address").is_ok());
        assert!(validate_endpoint("scheduler/queue").is_ok());
        assert!(validate_endpoint("a").is_ok());
        assert!(validate_endpoint("").is_err());
        assert!(validate_endpoint("a//b").is_err());
        assert!(validate_endpoint("a/../b").is_err());
        assert!(validate_endpoint("a/b c").is_err());
    }

    #[test]
    fn required_fields_per_method() {
        let mut r = Request::new(Method::Open, "inventory/device");
        assert!(r.validate().is_err());
        r.objectid = Some("x".into());
        assert!(r.validate().is_ok());
        let mut c = Request::new(Method::Create, "inventory/device");
        assert!(c.validate().is_err());
        c.data = Some(serde_json::json!({}));
        assert!(c.validate().is_ok());
    }
}
