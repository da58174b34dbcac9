//! Calls and their replies, and published changes.
//!
//! A [`Call`] is the seed's call (`method`, `objectid`, `namespace`, `parameters`, `data`) on
//! one endpoint, plus an optional deadline. The client adds `type`, `requestid` and `token`
//! when it sends the frame (section 2 of `protocol/SPEC.md`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::error::Error;

/// One of the seven methods of the Flow API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// List the objects of an endpoint (sorting, condition, pagination in `parameters`).
    List,
    /// Open one object.
    Open,
    /// Update one object (a JSON merge patch in `data`).
    Update,
    /// Delete one object.
    Delete,
    /// Search information about one object, or the endpoint's catalogue.
    Index,
    /// Create an object from `data`.
    Create,
    /// Run a method or flow on an object with `data` as its argument.
    Run,
}

impl Method {
    /// All seven, in the seed's order.
    pub const ALL: [Method; 7] = [
        Method::List,
        Method::Open,
        Method::Update,
        Method::Delete,
        Method::Index,
        Method::Create,
        Method::Run,
    ];

    /// The name on the wire (`"LIST"`, …).
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
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = Error;

    /// Parses a method name in any case, surrounding white space ignored (as the hub does).
    fn from_str(s: &str) -> Result<Method, Error> {
        let s = s.trim();
        Method::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::Invalid(format!("unknown method {s:?}")))
    }
}

/// A call to build and pass to [`Client::call`](crate::Client::call).
///
/// ```
/// use std::time::Duration;
/// use flowhub_client::{Call, Method};
/// use serde_json::json;
///
/// let list = Call::list("address/address")
///     .namespace("tenant-1")
///     .parameters(json!({"sorting.by": "streetNumber", "pagination.size": 10}));
/// let reboot = Call::run("inventory/device", "dev-1", json!({"action": "reboot"}))
///     .timeout(Duration::from_secs(2));
/// let open = Call::new(Method::Open, "inventory/device").objectid("dev-1");
/// # let _ = (list, reboot, open);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// The endpoint, e.g. `inventory/device`.
    pub endpoint: String,
    /// The object id, for methods on one object.
    pub objectid: Option<String>,
    /// The namespace; `""` is the default one.
    pub namespace: String,
    /// Parameters in any form the hub accepts (section 6.1): an object, a list of pairs or text.
    pub parameters: Option<Value>,
    /// The data: the object to create, the patch, the RUN argument.
    pub data: Option<Value>,
    /// The HTTP application the call is addressed to; rarely needed over WebSocket.
    pub application: Option<String>,
    /// The call's deadline. It is sent to the hub as the frame's `timeout` (so a provider is
    /// cancelled when it passes) and the client waits one second longer for the hub's
    /// `PROVIDER_TIMEOUT` before giving up itself. `None`: the client's `call_timeout`, and the
    /// hub's own deadline for routed calls.
    pub timeout: Option<Duration>,
}

impl Call {
    /// A call of `method` on `endpoint` with nothing else set.
    pub fn new(method: Method, endpoint: impl Into<String>) -> Call {
        Call {
            method,
            endpoint: endpoint.into(),
            objectid: None,
            namespace: String::new(),
            parameters: None,
            data: None,
            application: None,
            timeout: None,
        }
    }

    /// LIST on `endpoint`.
    pub fn list(endpoint: impl Into<String>) -> Call {
        Call::new(Method::List, endpoint)
    }

    /// OPEN of `objectid`.
    pub fn open(endpoint: impl Into<String>, objectid: impl Into<String>) -> Call {
        Call::new(Method::Open, endpoint).objectid(objectid)
    }

    /// CREATE of `data` (an object; its `id`, if any, becomes the object's id).
    pub fn create(endpoint: impl Into<String>, data: Value) -> Call {
        Call::new(Method::Create, endpoint).data(data)
    }

    /// UPDATE of `objectid` with the merge patch `patch`.
    pub fn update(endpoint: impl Into<String>, objectid: impl Into<String>, patch: Value) -> Call {
        Call::new(Method::Update, endpoint)
            .objectid(objectid)
            .data(patch)
    }

    /// DELETE of `objectid`.
    pub fn delete(endpoint: impl Into<String>, objectid: impl Into<String>) -> Call {
        Call::new(Method::Delete, endpoint).objectid(objectid)
    }

    /// INDEX of the endpoint (add [`objectid`](Self::objectid) for one object's entry).
    pub fn index(endpoint: impl Into<String>) -> Call {
        Call::new(Method::Index, endpoint)
    }

    /// RUN on `objectid` with the argument `data`.
    pub fn run(endpoint: impl Into<String>, objectid: impl Into<String>, data: Value) -> Call {
        Call::new(Method::Run, endpoint)
            .objectid(objectid)
            .data(data)
    }

    /// Sets the object id.
    pub fn objectid(mut self, objectid: impl Into<String>) -> Call {
        self.objectid = Some(objectid.into());
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Call {
        self.namespace = namespace.into();
        self
    }

    /// Sets the parameters.
    pub fn parameters(mut self, parameters: Value) -> Call {
        self.parameters = Some(parameters);
        self
    }

    /// Sets the data.
    pub fn data(mut self, data: Value) -> Call {
        self.data = Some(data);
        self
    }

    /// Sets the application.
    pub fn application(mut self, application: impl Into<String>) -> Call {
        self.application = Some(application.into());
        self
    }

    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = Some(timeout);
        self
    }

    /// The frame without `requestid` and `token`, which the connection adds.
    pub(crate) fn frame(&self) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("type".into(), json!("call"));
        f.insert("endpoint".into(), json!(self.endpoint));
        f.insert("method".into(), json!(self.method.as_str()));
        if let Some(id) = &self.objectid {
            f.insert("objectid".into(), json!(id));
        }
        f.insert("namespace".into(), json!(self.namespace));
        if let Some(p) = &self.parameters {
            f.insert("parameters".into(), p.clone());
        }
        if let Some(d) = &self.data {
            f.insert("data".into(), d.clone());
        }
        if let Some(a) = &self.application {
            f.insert("application".into(), json!(a));
        }
        if let Some(t) = self.timeout {
            f.insert(
                "timeout".into(),
                json!(t.as_millis().min(u64::MAX as u128) as u64),
            );
        }
        f
    }
}

/// A successful reply: the envelope's `data` and `count`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// `data`, or `Value::Null` when the reply has none.
    pub data: Value,
    /// `count` (LIST: the number of matches before pagination).
    pub count: Option<u64>,
}

impl Reply {
    /// `data` deserialized into `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.data).map_err(|e| Error::Protocol(format!("data: {e}")))
    }

    /// Reads a reply envelope: `success: true` is a `Reply`, `false` an [`Error::Hub`].
    pub(crate) fn from_envelope(mut env: Map<String, Value>) -> Result<Reply, Error> {
        match env.get("success") {
            Some(Value::Bool(true)) => Ok(Reply {
                data: env.remove("data").unwrap_or(Value::Null),
                count: env.get("count").and_then(Value::as_u64),
            }),
            Some(Value::Bool(false)) => Err(Error::Hub(crate::error::HubError {
                errorcode: match env.remove("errorcode") {
                    Some(Value::String(s)) => s,
                    _ => "INTERNAL".into(),
                },
                message: match env.remove("message") {
                    Some(Value::String(s)) => s,
                    _ => String::new(),
                },
                errorid: match env.remove("errorid") {
                    Some(Value::String(s)) => Some(s),
                    _ => None,
                },
            })),
            _ => Err(Error::Protocol("a reply without a boolean success".into())),
        }
    }
}

/// What kind of change a [`Publish`] announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The object was created.
    Create,
    /// The object was changed.
    Update,
    /// The object was deleted.
    Delete,
}

impl ChangeKind {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "CREATE",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
        }
    }
}

/// A change to an object that a provider keeps in its own store, announced to the hub so that
/// subscribers of the endpoint or the object see it (see
/// [`Client::publish`](crate::Client::publish)).
///
/// ```
/// use flowhub_client::{ChangeKind, Publish};
/// use serde_json::json;
///
/// let p = Publish::new(ChangeKind::Update, "inventory/device", "dev-1")
///     .data(json!({"id": "dev-1", "name": "core switch", "status": "rebooting"}));
/// # let _ = p;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// CREATE, UPDATE or DELETE.
    pub kind: ChangeKind,
    /// The endpoint the object belongs to.
    pub endpoint: String,
    /// The namespace; `""` is the default one.
    pub namespace: String,
    /// The object's id.
    pub objectid: String,
    /// The object's new state (CREATE, UPDATE) or last state (DELETE).
    pub data: Value,
    /// How long to wait for the hub's reply; `None`: the client's `call_timeout`.
    pub timeout: Option<Duration>,
}

impl Publish {
    /// A change of `kind` to `objectid` of `endpoint`, with `data` `{}` until set.
    pub fn new(kind: ChangeKind, endpoint: impl Into<String>, objectid: impl Into<String>) -> Self {
        Publish {
            kind,
            endpoint: endpoint.into(),
            namespace: String::new(),
            objectid: objectid.into(),
            data: json!({}),
            timeout: None,
        }
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the object's state.
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// Sets how long to wait for the reply.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn frame(&self) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("type".into(), json!("publish"));
        f.insert("endpoint".into(), json!(self.endpoint));
        f.insert("namespace".into(), json!(self.namespace));
        f.insert("objectid".into(), json!(self.objectid));
        f.insert("kind".into(), json!(self.kind.as_str()));
        f.insert("data".into(), self.data.clone());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_like_the_hub() {
        assert_eq!(" run ".parse::<Method>().unwrap(), Method::Run);
        assert_eq!("List".parse::<Method>().unwrap(), Method::List);
        assert!("FETCH".parse::<Method>().is_err());
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>().unwrap(), m);
        }
    }

    #[test]
    fn call_frames_carry_only_what_was_set() {
        let f = Call::list("a/b").frame();
        assert_eq!(
            Value::Object(f),
            json!({"type": "call", "endpoint": "a/b", "method": "LIST", "namespace": ""})
        );
        let f = Call::run("a/b", "x", json!({"go": 1}))
            .namespace("n")
            .parameters(json!("dry=true"))
            .timeout(Duration::from_millis(1500))
            .frame();
        assert_eq!(
            Value::Object(f),
            json!({"type": "call", "endpoint": "a/b", "method": "RUN", "objectid": "x",
                   "namespace": "n", "parameters": "dry=true", "data": {"go": 1}, "timeout": 1500})
        );
    }

    #[test]
    fn envelopes_become_replies_or_errors() {
        let ok = json!({"type": "reply", "requestid": 1, "status": 0, "success": true,
                        "data": [1, 2], "count": 7, "dataType": "JSON"});
        let Value::Object(ok) = ok else {
            unreachable!()
        };
        let r = Reply::from_envelope(ok).unwrap();
        assert_eq!(r.data, json!([1, 2]));
        assert_eq!(r.count, Some(7));
        assert_eq!(r.data_as::<Vec<u32>>().unwrap(), vec![1, 2]);

        let err =
            json!({"success": false, "errorcode": "CONFLICT", "message": "m", "errorid": "e"});
        let Value::Object(err) = err else {
            unreachable!()
        };
        let e = Reply::from_envelope(err).unwrap_err();
        assert_eq!(e.errorcode(), Some("CONFLICT"));
        assert_eq!(e.hub().unwrap().errorid.as_deref(), Some("e"));

        let Value::Object(bad) = json!({"success": "yes"}) else {
            unreachable!()
        };
        assert!(matches!(Reply::from_envelope(bad), Err(Error::Protocol(_))));
    }
}
