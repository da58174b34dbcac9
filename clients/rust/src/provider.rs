//! Serving endpoints: what a provider declares ([`Provide`]), what its handler is given
//! ([`Invocation`]) and what it answers ([`Answer`]). Section 11 of `protocol/SPEC.md`.
//!
//! Each invocation runs in a task of its own, so a slow call does not hold up others; the hub
//! may `cancel` one (its deadline passed, or its caller went away), and the client then aborts
//! that task at its next `.await` and answers nothing.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::call::Method;

/// How the hub picks among several providers of one endpoint (section 11.3). Every provider
/// of an endpoint must declare the same policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The provider with the fewest calls in flight; ties in turn.
    #[default]
    Balanced,
    /// Each in turn.
    RoundRobin,
    /// Any, uniformly.
    Random,
    /// The earliest provider (the others are hot standbys).
    First,
    /// The most recent provider.
    Last,
}

impl Policy {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Balanced => "balanced",
            Policy::RoundRobin => "roundrobin",
            Policy::Random => "random",
            Policy::First => "first",
            Policy::Last => "last",
        }
    }
}

/// What a provider declares for one endpoint.
///
/// ```
/// use flowhub_client::{Method, Policy, Provide};
///
/// let p = Provide::new("inventory/device")
///     .application("inventory")
///     .methods([Method::Run, Method::List, Method::Open])
///     .policy(Policy::First);
/// # let _ = p;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Provide {
    /// The endpoint, e.g. `inventory/device`.
    pub endpoint: String,
    /// The HTTP application segment; `None`: the endpoint's first segment.
    pub application: Option<String>,
    /// The methods served; `None`: all seven. Methods no provider serves go to the hub's store.
    pub methods: Option<Vec<Method>>,
    /// How calls are spread over the endpoint's providers; `None`: the hub's default.
    pub policy: Option<Policy>,
}

impl Provide {
    /// Serve every method of `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Provide {
        Provide {
            endpoint: endpoint.into(),
            application: None,
            methods: None,
            policy: None,
        }
    }

    /// Sets the application.
    pub fn application(mut self, application: impl Into<String>) -> Provide {
        self.application = Some(application.into());
        self
    }

    /// Serve only `methods`.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Provide {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Sets the policy.
    pub fn policy(mut self, policy: Policy) -> Provide {
        self.policy = Some(policy);
        self
    }

    /// Whether this declaration covers `method`.
    pub(crate) fn serves(&self, method: Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(&method))
    }

    pub(crate) fn frame(&self) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("type".into(), json!("provide"));
        f.insert("endpoint".into(), json!(self.endpoint));
        if let Some(a) = &self.application {
            f.insert("application".into(), json!(a));
        }
        if let Some(m) = &self.methods {
            f.insert(
                "methods".into(),
                m.iter().map(|m| json!(m.as_str())).collect(),
            );
        }
        if let Some(p) = self.policy {
            f.insert("policy".into(), json!(p.as_str()));
        }
        f
    }
}

/// Who made a call, as the hub tells the provider.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Caller {
    /// The caller's user name (`None` while the hub's authentication is off).
    pub user: Option<String>,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// The hub's number for the caller's WebSocket (`None` for a call over HTTP).
    pub connection: Option<u64>,
}

/// One call routed to this provider (an `invoke` frame).
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The hub's id for the call; the client answers with it.
    pub callid: u64,
    /// The method.
    pub method: Method,
    /// The endpoint called.
    pub endpoint: String,
    /// The endpoint's application.
    pub application: String,
    /// The object id, if the call has one.
    pub objectid: Option<String>,
    /// The namespace (`""` for the default one).
    pub namespace: String,
    /// The parameters in their object form, if any.
    pub parameters: Option<Value>,
    /// The data, if any.
    pub data: Option<Value>,
    /// Who called.
    pub caller: Caller,
    /// Time left before the hub gives up on the call, as of its arrival.
    pub timeout: Option<Duration>,
    /// When the invoke frame arrived (with `timeout`, the deadline).
    pub received: Instant,
}

impl Invocation {
    /// When the hub gives up on this call, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| self.received + t)
    }

    /// A parameter by key from the object form (`None` when absent).
    pub fn parameter(&self, key: &str) -> Option<&Value> {
        self.parameters.as_ref()?.get(key)
    }

    /// Reads an invoke frame. `Err` carries the callid (when there is a usable one) and why
    /// the frame cannot be served.
    pub(crate) fn from_frame(f: &Map<String, Value>) -> Result<Invocation, (Option<u64>, String)> {
        let callid = f
            .get("callid")
            .and_then(Value::as_u64)
            .ok_or((None, "an invoke without an integer callid".to_string()))?;
        let bad = |why: String| (Some(callid), why);
        let text = |key: &str| match f.get(key) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if key == "objectid" => Ok(Some(n.to_string())),
            Some(other) => Err(bad(format!("{key} must be a string, not {other}"))),
        };
        let method = text("method")?
            .ok_or_else(|| bad("an invoke without a method".into()))?
            .parse::<Method>()
            .map_err(|e| bad(e.to_string()))?;
        let endpoint =
            text("endpoint")?.ok_or_else(|| bad("an invoke without an endpoint".into()))?;
        let caller = match f.get("caller") {
            Some(Value::Object(c)) => Caller {
                user: c.get("user").and_then(Value::as_str).map(str::to_string),
                roles: c
                    .get("roles")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                connection: c.get("connection").and_then(Value::as_u64),
            },
            _ => Caller::default(),
        };
        Ok(Invocation {
            callid,
            method,
            application: text("application")?.unwrap_or_default(),
            objectid: text("objectid")?,
            namespace: text("namespace")?.unwrap_or_default(),
            parameters: f.get("parameters").filter(|v| !v.is_null()).cloned(),
            data: f.get("data").filter(|v| !v.is_null()).cloned(),
            caller,
            timeout: f
                .get("timeout")
                .and_then(Value::as_u64)
                .map(Duration::from_millis),
            received: Instant::now(),
            endpoint,
        })
    }
}

/// What a handler answers to an [`Invocation`].
///
/// ```
/// use flowhub_client::Answer;
/// use serde_json::json;
///
/// let ok = Answer::ok(json!({"rebooting": true}));
/// let page = Answer::list(vec![json!({"id": "a"})], 40);
/// let failed = Answer::error("OUT_OF_STOCK", "no such part").with_status(409);
/// let not_me = Answer::reject("busy");
/// # let _ = (ok, page, failed, not_me);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Success: the caller's reply carries `data` and `count`.
    Success {
        /// The reply's `data` (`None`: the reply has no `data`).
        data: Option<Value>,
        /// The reply's `count` (LIST: the matches before pagination).
        count: Option<u64>,
    },
    /// Failure, passed to the caller unchanged.
    Error {
        /// A code of the catalogue or the provider's own (up to 64 characters).
        errorcode: String,
        /// For humans.
        message: String,
        /// The HTTP status of the caller's reply (400–599); `None`: the code's default.
        status: Option<u16>,
        /// A UUID the provider logged this error with; `None`: the hub makes one.
        errorid: Option<String>,
    },
    /// "Not me": the hub tries another provider, and the caller gets `NO_PROVIDER` with this
    /// reason when every provider has rejected the call.
    Reject {
        /// Why, for the hub's log and the caller's message.
        reason: String,
    },
}

impl Answer {
    /// Success with `data`.
    pub fn ok(data: Value) -> Answer {
        Answer::Success {
            data: Some(data),
            count: None,
        }
    }

    /// Success with no data.
    pub fn empty() -> Answer {
        Answer::Success {
            data: None,
            count: None,
        }
    }

    /// A LIST page: `items` and the number of matches before pagination.
    pub fn list(items: Vec<Value>, count: u64) -> Answer {
        Answer::Success {
            data: Some(Value::Array(items)),
            count: Some(count),
        }
    }

    /// A failure with the provider's code and message.
    pub fn error(errorcode: impl Into<String>, message: impl Into<String>) -> Answer {
        Answer::Error {
            errorcode: errorcode.into(),
            message: message.into(),
            status: None,
            errorid: None,
        }
    }

    /// Sets the HTTP status of a failure (no effect on other answers).
    pub fn with_status(mut self, http_status: u16) -> Answer {
        if let Answer::Error { status, .. } = &mut self {
            *status = Some(http_status);
        }
        self
    }

    /// Sets the errorid of a failure (no effect on other answers).
    pub fn with_errorid(mut self, id: impl Into<String>) -> Answer {
        if let Answer::Error { errorid, .. } = &mut self {
            *errorid = Some(id.into());
        }
        self
    }

    /// Rejects the call with `reason`.
    pub fn reject(reason: impl Into<String>) -> Answer {
        Answer::Reject {
            reason: reason.into(),
        }
    }

    /// The `result` or `reject` frame answering call `callid`.
    pub(crate) fn frame(self, callid: u64) -> Value {
        match self {
            Answer::Success { data, count } => {
                let mut f = Map::new();
                f.insert("type".into(), json!("result"));
                f.insert("callid".into(), json!(callid));
                f.insert("success".into(), json!(true));
                if let Some(d) = data {
                    f.insert("data".into(), d);
                }
                if let Some(c) = count {
                    f.insert("count".into(), json!(c));
                }
                Value::Object(f)
            }
            Answer::Error {
                errorcode,
                message,
                status,
                errorid,
            } => {
                let mut f = Map::new();
                f.insert("type".into(), json!("result"));
                f.insert("callid".into(), json!(callid));
                f.insert("success".into(), json!(false));
                f.insert("errorcode".into(), json!(errorcode));
                f.insert("message".into(), json!(message));
                if let Some(s) = status {
                    f.insert("status".into(), json!(s));
                }
                if let Some(id) = errorid {
                    f.insert("errorid".into(), json!(id));
                }
                Value::Object(f)
            }
            Answer::Reject { reason } => {
                json!({"type": "reject", "callid": callid, "reason": reason})
            }
        }
    }
}

impl From<Result<Value, Answer>> for Answer {
    /// `Ok(data)` is [`Answer::ok`]; `Err(answer)` is that answer (an error or a reject), so a
    /// handler can use `?` on its own fallible steps and map failures to answers.
    fn from(r: Result<Value, Answer>) -> Answer {
        match r {
            Ok(data) => Answer::ok(data),
            Err(answer) => answer,
        }
    }
}

/// The future a [`Handler`] returns.
pub type BoxAnswer = Pin<Box<dyn Future<Output = Answer> + Send + 'static>>;

/// Serves the invocations of one provided endpoint.
///
/// Any `Fn(Invocation) -> impl Future<Output = Answer>` that is `Send + Sync + 'static` is a
/// handler; implement the trait yourself to keep state in a struct.
///
/// ```
/// use flowhub_client::{Answer, Handler, Invocation};
/// use serde_json::json;
///
/// fn assert_handler<H: Handler>(_: H) {}
/// assert_handler(|inv: Invocation| async move {
///     match inv.objectid {
///         Some(id) => Answer::ok(json!({"id": id})),
///         None => Answer::error("INVALID_REQUEST", "needs an objectid"),
///     }
/// });
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Answers one invocation. A panic in it answers `PROVIDER_ERROR`.
    fn call(&self, invocation: Invocation) -> BoxAnswer;
}

impl<F, Fut> Handler for F
where
    F: Fn(Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    fn call(&self, invocation: Invocation) -> BoxAnswer {
        Box::pin(self(invocation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provide_frames() {
        let p = Provide::new("inventory/device")
            .application("inventory")
            .methods([Method::Run, Method::List])
            .policy(Policy::RoundRobin);
        assert_eq!(
            Value::Object(p.frame()),
            json!({"type": "provide", "endpoint": "inventory/device", "application": "inventory",
                   "methods": ["RUN", "LIST"], "policy": "roundrobin"})
        );
        assert!(p.serves(Method::Run) && !p.serves(Method::Open));
        assert!(Provide::new("a/b").serves(Method::Delete));
        assert_eq!(
            Value::Object(Provide::new("a/b").frame()),
            json!({"type": "provide", "endpoint": "a/b"})
        );
    }

    #[test]
    fn invoke_frames_read_as_in_the_spec() {
        let Value::Object(f) = json!({"type":"invoke","callid":17,"method":"RUN","endpoint":"inventory/device",
            "application":"inventory","objectid":"3a47","namespace":"","parameters":{"dry":true},
            "data":{"action":"reboot"},"caller":{"user":null,"roles":[],"connection":4},"timeout":9998})
        else {
            unreachable!()
        };
        let inv = Invocation::from_frame(&f).unwrap();
        assert_eq!(inv.callid, 17);
        assert_eq!(inv.method, Method::Run);
        assert_eq!(inv.endpoint, "inventory/device");
        assert_eq!(inv.application, "inventory");
        assert_eq!(inv.objectid.as_deref(), Some("3a47"));
        assert_eq!(inv.parameter("dry"), Some(&json!(true)));
        assert_eq!(inv.data, Some(json!({"action": "reboot"})));
        assert_eq!(inv.caller.connection, Some(4));
        assert_eq!(inv.caller.user, None);
        assert_eq!(inv.timeout, Some(Duration::from_millis(9998)));
        assert!(inv.deadline().is_some());

        let Value::Object(f) = json!({"callid": 3, "method": "DANCE", "endpoint": "a"}) else {
            unreachable!()
        };
        assert_eq!(Invocation::from_frame(&f).unwrap_err().0, Some(3));
        let Value::Object(f) = json!({"callid": "x"}) else {
            unreachable!()
        };
        assert_eq!(Invocation::from_frame(&f).unwrap_err().0, None);
        let Value::Object(f) = json!({"callid": 4, "method": "LIST", "endpoint": 5}) else {
            unreachable!()
        };
        assert!(Invocation::from_frame(&f).is_err());
    }

    #[test]
    fn answers_become_result_and_reject_frames() {
        assert_eq!(
            Answer::ok(json!({"rebooting": true})).frame(17),
            json!({"type":"result","callid":17,"success":true,"data":{"rebooting":true}})
        );
        assert_eq!(
            Answer::list(vec![json!({"id":"a"})], 40).frame(18),
            json!({"type":"result","callid":18,"success":true,"data":[{"id":"a"}],"count":40})
        );
        assert_eq!(
            Answer::error("OUT_OF_STOCK", "no such part")
                .with_status(409)
                .frame(19),
            json!({"type":"result","callid":19,"success":false,"errorcode":"OUT_OF_STOCK",
                   "message":"no such part","status":409})
        );
        assert_eq!(
            Answer::reject("busy").frame(20),
            json!({"type":"reject","callid":20,"reason":"busy"})
        );
        assert_eq!(
            Answer::from(Err::<Value, _>(Answer::reject("x"))),
            Answer::reject("x")
        );
    }
}
