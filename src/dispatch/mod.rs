//! The dispatcher: one call in, one outcome out, whichever transport the call came by.
//!
//! It resolves the endpoint in the [`registry`]: a method some provider serves goes to the
//! [`Router`]; the hub's own endpoints ([`system`]) are answered here; every other method goes
//! to the record store (reads directly, writes through the sequencer), and RUN that no
//! provider serves is `NO_PROVIDER`. Every error gets its `errorid` here and is logged with
//! it, so the id a client sees is the id in the hub's log — a provider's own error too.
//! Authentication sits at the top of [`Dispatcher::call_with`], before anything else is
//! looked at: the caller is identified ([`Auth::authenticate`]), the engine's own endpoints
//! (`auth/...`) are answered by it, and every other call must be allowed by the caller's
//! roles ([`Auth::authorize`]) before it reaches the router or the store.

pub mod registry;
pub mod system;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::auth::{Action, Auth, Credentials, Identity};
use crate::protocol::params::{expected_version, list_query, normalize};
use crate::protocol::provider::{
    ProviderFailure, ProviderResult, Publish, PublishKind, ResultData,
};
use crate::protocol::request::validate_objectid;
use crate::protocol::{
    Caller, Data, Encoded, ErrorCode, ErrorReply, FlowError, Method, Outcome, Request, Success,
};
use crate::router::{Deadlines, Route, RoutedRequest, Router, Waiter};
use crate::store::{ChangeKind, Record, Store, StoreError, WriteOp};

pub use registry::{EndpointInfo, Registry};

impl Encoded for Record {
    fn json(&self) -> &[u8] {
        &self.json
    }
    fn msgpack(&self) -> Bytes {
        Record::msgpack(self)
    }
}

/// Turns calls into outcomes. Cloning is shallow.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    router: Router,
    registry: Registry,
    /// Most objects one LIST reply may hold (`max_list_items`).
    max_list_items: usize,
    /// Who may call what; open mode unless [`Dispatcher::with_auth`] says otherwise.
    auth: Auth,
}

/// Gives an error its `errorid` and writes the log line that carries it.
pub fn log_error(error: FlowError, method: Option<Method>, endpoint: &str) -> ErrorReply {
    let reply = ErrorReply::new(error);
    let method = method.map_or("-", Method::as_str);
    let e = &reply.error;
    if matches!(e.code, ErrorCode::Internal | ErrorCode::Unavailable) {
        tracing::error!(errorid = %reply.errorid, errorcode = e.code.as_str(), method, endpoint, "{}", e.message);
    } else {
        tracing::info!(errorid = %reply.errorid, errorcode = e.code.as_str(), method, endpoint, "{}", e.message);
    }
    reply
}

/// Logs a provider's own error and makes the reply that passes it on unchanged.
fn log_provider_error(f: ProviderFailure, method: Method, endpoint: &str) -> ErrorReply {
    let known = ErrorCode::parse(&f.code);
    let mut reply = ErrorReply::new(FlowError::new(
        known.unwrap_or(ErrorCode::ProviderError),
        f.message,
    ));
    if let Some(id) = f.errorid {
        reply.errorid = id;
    }
    if known.is_none() {
        reply.own_code = Some(f.code.into_boxed_str());
    }
    reply.own_status = f.status;
    tracing::info!(errorid = %reply.errorid, errorcode = reply.code_name(), method = method.as_str(), endpoint, "provider: {}", reply.error.message);
    reply
}

/// Where a call's outcome goes when nobody awaits it (a WebSocket reply).
pub trait ReplySink: Send + Sync + 'static {
    fn send(self: Box<Self>, outcome: Outcome);
}

/// Turns a routed call's end into the caller's outcome (logging errors with their ids).
struct Finish {
    sink: Box<dyn ReplySink>,
    /// When the call reached the dispatcher, for its duration in the metrics.
    started: Instant,
}

impl Waiter for Finish {
    fn settle(self: Box<Self>, call: &RoutedRequest, result: Result<ProviderResult, FlowError>) {
        let outcome = match routed(result) {
            Ok(s) => Ok(s),
            Err(Fail::Hub(e)) => Err(log_error(e, Some(call.method), &call.endpoint)),
            Err(Fail::Provider(f)) => Err(log_provider_error(f, call.method, &call.endpoint)),
        };
        count(&call.endpoint, call.method, &outcome, self.started);
        self.sink.send(outcome);
    }
}

/// Counts a call in the metrics (`ops::calls`).
fn count(endpoint: &str, method: Method, outcome: &Outcome, started: Instant) {
    let result = match outcome {
        Ok(_) => Ok(()),
        Err(e) => Err(e.code()),
    };
    crate::ops::calls::record(endpoint, method, result, started);
}

/// A provider's answer as the caller's reply.
fn routed(result: Result<ProviderResult, FlowError>) -> Result<Success, Fail> {
    match result? {
        ProviderResult::Ok { data, count } => Ok(Success {
            data: match data {
                None => Data::None,
                Some(ResultData::Value(v)) => Data::Value(v),
                Some(ResultData::Json(j)) => Data::Json(j),
            },
            count,
        }),
        ProviderResult::Err(f) => Err(Fail::Provider(f)),
    }
}

/// The checks a call to a provider passes: its shape, its application, its parameters.
fn admit_routed(req: &Request, route: &Route) -> Result<Map<String, Value>, FlowError> {
    req.validate()?;
    if let Some(app) = &req.application {
        if **app != *route.application {
            return Err(FlowError::not_found(format!(
                "endpoint {} is served by application {}, not {app}",
                req.endpoint, route.application
            )));
        }
    }
    match &req.parameters {
        Some(p) => normalize(p),
        None => Ok(Map::new()),
    }
}

/// Why a call failed: the hub's error, or a provider's own, passed on unchanged.
enum Fail {
    Hub(FlowError),
    Provider(ProviderFailure),
}

impl From<FlowError> for Fail {
    fn from(e: FlowError) -> Fail {
        Fail::Hub(e)
    }
}

/// What a call needs once the checks that answer at once are passed ([`Dispatcher::plan`]).
enum Next {
    /// Answered already: the hub's own endpoints, store reads.
    Done(Success),
    /// A write, answered when the sequencer has committed it.
    Write(WriteOp),
    /// A call to a provider.
    Routed(RoutedRequest),
    /// A call to the authentication engine's endpoints (`auth/...`), by this identity
    /// (`None` for a login, which brings its credentials as its data).
    Auth(Option<Identity>),
}

/// A call's result as its outcome, its error logged with its id.
fn outcome_of(result: Result<Success, Fail>, method: Method, endpoint: &str) -> Outcome {
    match result {
        Ok(s) => Ok(s),
        Err(Fail::Hub(e)) => Err(log_error(e, Some(method), endpoint)),
        Err(Fail::Provider(f)) => Err(log_provider_error(f, method, endpoint)),
    }
}

/// A login: CREATE on auth/token with a user name (and password) as data.
fn is_login(req: &Request) -> bool {
    req.endpoint == crate::auth::TOKEN_ENDPOINT
        && req.method == Method::Create
        && req.token.is_none()
        && req
            .data
            .as_ref()
            .is_some_and(|d| d.get("username").is_some())
}

impl Dispatcher {
    /// A dispatcher with a router of its own and the default call deadline.
    pub fn new(store: Store, max_list_items: usize) -> Dispatcher {
        let deadlines = Deadlines::from_config(&crate::config::Config::default());
        Dispatcher::with_router(store, Router::new(deadlines), max_list_items)
    }

    pub fn with_router(store: Store, router: Router, max_list_items: usize) -> Dispatcher {
        let registry = Registry::new(store.clone(), router.clone());
        Dispatcher {
            auth: Auth::open(store.clone()),
            store,
            router,
            registry,
            max_list_items,
        }
    }

    /// The same dispatcher with this authentication engine.
    pub fn with_auth(mut self, auth: Auth) -> Dispatcher {
        self.auth = auth;
        self
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Runs a call whose outcome goes to `sink` instead of being awaited. A call to a provider
    /// (authenticated by a token or the session's login) is checked and handed to the router
    /// here, and answered from the provider's side: no task waits for it. Any other call runs
    /// in a task of its own.
    pub fn call_sink(
        &self,
        mut request: Request,
        caller: Caller,
        creds: Credentials,
        sink: Box<dyn ReplySink>,
    ) {
        let started = Instant::now();
        let route = self
            .router
            .lookup(&request.endpoint)
            .filter(|r| r.methods.contains(request.method) && creds.basic.is_none());
        let Some(route) = route else {
            self.call_unrouted(request, caller, creds, sink, started);
            return;
        };
        let admitted = self
            .auth
            .authenticate_now(request.token.as_deref(), &creds)
            .and_then(|who| {
                self.auth.authorize(
                    &who,
                    Action::Call(request.method),
                    &request.endpoint,
                    &request.namespace,
                )?;
                Ok((who.caller(&caller), admit_routed(&request, &route)?))
            });
        let (caller, params) = match admitted {
            Ok(a) => a,
            Err(e) => {
                let outcome = Err(log_error(e, Some(request.method), &request.endpoint));
                count(&request.endpoint, request.method, &outcome, started);
                sink.send(outcome);
                return;
            }
        };
        let call = RoutedRequest {
            method: request.method,
            endpoint: std::mem::take(&mut request.endpoint),
            objectid: request.objectid.take(),
            namespace: std::mem::take(&mut request.namespace),
            parameters: (!params.is_empty()).then_some(params),
            data: request.data.take(),
            caller,
            timeout_ms: request.timeout_ms,
        };
        self.router.start(call, Box::new(Finish { sink, started }));
    }

    /// A call no provider serves, whose outcome goes to `sink`. Whatever answers at once (an
    /// OPEN, the checks of a write) is answered here, on the caller's task; a write goes to
    /// the sequencer with its reply attached, so no task waits for the commit. A LIST or an
    /// INDEX (which may read a whole collection), a call whose authentication must wait (a
    /// password to hash) and one to the authentication engine run in a task of their own.
    fn call_unrouted(
        &self,
        mut request: Request,
        caller: Caller,
        creds: Credentials,
        sink: Box<dyn ReplySink>,
        started: Instant,
    ) {
        // LIST and INDEX may read a whole collection: they run in a task, so that the reader
        // goes on and one connection's queries run side by side, as they always did.
        let answers_at_once = creds.basic.is_none()
            && !is_login(&request)
            && !matches!(request.method, Method::List | Method::Index);
        let planned = answers_at_once.then(|| {
            self.auth
                .authenticate_now(request.token.as_deref(), &creds)
                .map_err(Fail::Hub)
                .and_then(|who| self.plan(&mut request, &caller, Some(who)))
        });
        // Copy (it holds only `started`): every branch below ends with it.
        let finish = move |result: Result<Success, Fail>,
                           method: Method,
                           endpoint: &str,
                           sink: Box<dyn ReplySink>| {
            let outcome = outcome_of(result, method, endpoint);
            count(endpoint, method, &outcome, started);
            sink.send(outcome);
        };
        match planned {
            Some(Ok(Next::Done(s))) => finish(Ok(s), request.method, &request.endpoint, sink),
            Some(Err(f)) => finish(Err(f), request.method, &request.endpoint, sink),
            Some(Ok(Next::Write(op))) => {
                let method = request.method;
                let endpoint = request.endpoint;
                self.store.submit(
                    op,
                    Box::new(move |result| {
                        let result = store_outcome(result).map_err(Fail::Hub);
                        finish(result, method, &endpoint, sink);
                    }),
                );
            }
            Some(Ok(Next::Routed(call))) => {
                self.router.start(call, Box::new(Finish { sink, started }));
            }
            Some(Ok(Next::Auth(who))) => {
                let auth = self.auth.clone();
                tokio::spawn(async move {
                    let result =
                        crate::auth::endpoints::call(&auth, &request, who.as_ref(), &creds).await;
                    finish(
                        result.map_err(Fail::Hub),
                        request.method,
                        &request.endpoint,
                        sink,
                    );
                });
            }
            None => {
                let d = self.clone();
                tokio::spawn(async move {
                    let outcome = d.call_with(request, &caller, &creds).await;
                    sink.send(outcome);
                });
            }
        }
    }

    /// A provider's `publish`: the change gets a position in the hub's change sequence (it is
    /// logged, never applied to the record store) and goes to the subscribers like a store
    /// change. Only a connection that provides the endpoint may publish for it.
    pub async fn publish(&self, connection: u64, p: Publish) -> Outcome {
        let endpoint = p.endpoint.clone();
        self.publish_checked(connection, p)
            .await
            .map_err(|e| log_error(e, None, &endpoint))
    }

    async fn publish_checked(&self, connection: u64, p: Publish) -> Result<Success, FlowError> {
        if !self.router.provides(connection, &p.endpoint) {
            return Err(FlowError::new(
                ErrorCode::Forbidden,
                format!(
                    "only a provider of {} may publish its changes: provide it on this connection first",
                    p.endpoint
                ),
            ));
        }
        let kind = match p.kind {
            PublishKind::Create => ChangeKind::Create,
            PublishKind::Update => ChangeKind::Update,
            PublishKind::Delete => ChangeKind::Delete,
        };
        let position = self
            .store
            .publish(&p.endpoint, &p.namespace, &p.objectid, kind, p.data)
            .await
            .map_err(|e| match e {
                e @ StoreError::Unavailable(_) => {
                    FlowError::new(ErrorCode::Unavailable, e.to_string())
                }
                e => FlowError::internal(e.to_string()),
            })?;
        Ok(Success::value(serde_json::json!({
            "endpoint": p.endpoint,
            "namespace": p.namespace,
            "objectid": p.objectid,
            "position": position,
        })))
    }

    /// Runs one call from an anonymous caller (HTTP) to its outcome.
    pub async fn call(&self, request: Request) -> Outcome {
        self.call_from(request, &Caller::default()).await
    }

    /// Runs one call with no credentials but its token to its outcome.
    pub async fn call_from(&self, request: Request, caller: &Caller) -> Outcome {
        self.call_with(request, caller, &Credentials::default())
            .await
    }

    /// Runs one call to its outcome: authenticated by its token or `creds`, authorized by
    /// the caller's roles, then routed.
    pub async fn call_with(
        &self,
        mut request: Request,
        caller: &Caller,
        creds: &Credentials,
    ) -> Outcome {
        let started = Instant::now();
        let result = self.route(&mut request, caller, creds).await;
        let outcome = outcome_of(result, request.method, &request.endpoint);
        count(&request.endpoint, request.method, &outcome, started);
        outcome
    }

    async fn route(
        &self,
        req: &mut Request,
        caller: &Caller,
        creds: &Credentials,
    ) -> Result<Success, Fail> {
        // A login (CREATE on auth/token with a user name and password as data) is the one
        // call that brings its credentials in its data; the engine checks them itself.
        let who = if is_login(req) {
            None
        } else {
            Some(self.auth.authenticate(req.token.as_deref(), creds).await?)
        };
        match self.plan(req, caller, who)? {
            Next::Done(s) => Ok(s),
            Next::Write(op) => Ok(store_outcome(self.store.write(op).await)?),
            Next::Routed(call) => routed(self.router.call(call).await),
            Next::Auth(who) => {
                Ok(crate::auth::endpoints::call(&self.auth, req, who.as_ref(), creds).await?)
            }
        }
    }

    /// Everything about a call that answers at once, given who makes it: authorization,
    /// validation, the hub's own endpoints, store reads. What must wait (a write's commit, a
    /// provider's answer, the authentication engine) is returned as the next step.
    fn plan(
        &self,
        req: &mut Request,
        caller: &Caller,
        who: Option<Identity>,
    ) -> Result<Next, Fail> {
        if crate::auth::is_auth_endpoint(&req.endpoint) {
            return Ok(Next::Auth(who));
        }
        let Some(who) = who else {
            return Err(FlowError::internal("a call without an identity").into());
        };
        let caller = &who.caller(caller);
        // System endpoints check their own calls: `hub/endpoint` takes endpoint names, with
        // their `/`, as object ids.
        if registry::SYSTEM.contains(&req.endpoint.as_str()) {
            self.auth.authorize(
                &who,
                Action::Call(req.method),
                &req.endpoint,
                &req.namespace,
            )?;
            return Ok(Next::Done(system::call(&self.registry, req)?));
        }
        req.validate()?;
        if crate::router::is_reserved(&req.endpoint) {
            return Err(FlowError::not_found(format!(
                "endpoint {} does not exist (hub/ and auth/ name the hub's own endpoints)",
                req.endpoint
            ))
            .into());
        }
        self.auth.authorize(
            &who,
            Action::Call(req.method),
            &req.endpoint,
            &req.namespace,
        )?;
        let route = self.router.lookup(&req.endpoint);
        let known = match &route {
            Some(r) => Some(std::borrow::Cow::Borrowed(&*r.application)),
            None => self.registry.application(&req.endpoint),
        };
        if let (Some(app), Some(owner)) = (&req.application, &known) {
            if app != owner {
                return Err(FlowError::not_found(format!(
                    "endpoint {} is served by application {owner}, not {app}",
                    req.endpoint
                ))
                .into());
            }
        }
        let params = match &req.parameters {
            Some(p) => normalize(p)?,
            None => Map::new(),
        };
        if route
            .as_ref()
            .is_some_and(|r| r.methods.contains(req.method))
        {
            return Ok(Next::Routed(RoutedRequest {
                method: req.method,
                endpoint: req.endpoint.clone(),
                objectid: req.objectid.clone(),
                namespace: req.namespace.clone(),
                parameters: (!params.is_empty()).then_some(params),
                data: req.data.take(),
                caller: caller.clone(),
                timeout_ms: req.timeout_ms,
            }));
        }
        // The data moves into the write; everything else is read in place.
        let data = req.data.take();
        let req = &*req;
        let ep = req.endpoint.as_str();
        if req.method == Method::Run {
            return Err(FlowError::new(
                ErrorCode::NoProvider,
                format!("no provider serves RUN on {ep}"),
            )
            .into());
        }
        if known.is_none() && req.method != Method::Create {
            return Err(FlowError::not_found(format!("Endpoint {ep} does not exist")).into());
        }
        Ok(self.store_method(req, &params, data, known.is_some())?)
    }

    /// A method on the record store; `known`: the endpoint exists.
    fn store_method(
        &self,
        req: &Request,
        params: &Map<String, Value>,
        data: Option<Value>,
        known: bool,
    ) -> Result<Next, FlowError> {
        let ns = req.namespace.as_str();
        let ep = req.endpoint.as_str();
        match req.method {
            Method::List => {
                let mut query = list_query(params)?;
                // Ask for one more than a reply may hold: if it comes, the page is too big,
                // and no more than that was ever collected.
                let max = self.max_list_items;
                if query.page.size.is_none_or(|s| s > max) {
                    query.page.size = Some(max + 1);
                }
                let result = self.store.list(ep, ns, &query);
                if result.items.len() > max {
                    crate::limits::breach(crate::limits::Limit::MaxListItems);
                    return Err(FlowError::too_large(format!(
                        "LIST would return more than {max} objects ({} match); paginate with pagination.size and pagination.from",
                        result.count
                    )));
                }
                Ok(Next::Done(Success {
                    data: Data::StoredList(
                        result
                            .items
                            .into_iter()
                            .map(|r| r as Arc<dyn Encoded>)
                            .collect(),
                    ),
                    count: Some(result.count),
                }))
            }
            Method::Open => {
                let id = objectid(req)?;
                let record = self.store.open(ep, ns, id).ok_or_else(object_missing)?;
                Ok(Next::Done(stored(record)))
            }
            Method::Index => match &req.objectid {
                Some(id) => {
                    let entry = self
                        .store
                        .index_entry(ep, ns, id)
                        .ok_or_else(object_missing)?;
                    Ok(Next::Done(Success::value(entry)))
                }
                None => Ok(Next::Done(Success::value(self.store.catalogue(ep, ns)))),
            },
            Method::Create => {
                if let (Some(app), false) = (&req.application, known) {
                    let owner = registry::stored_application(ep);
                    if app != owner {
                        return Err(FlowError::not_found(format!(
                            "a new endpoint {ep} belongs to application {owner}, not {app}"
                        )));
                    }
                }
                let mut data = object_data(req, data)?;
                let id = match (req.objectid.as_deref(), data.get("id")) {
                    (Some(a), Some(Value::String(b))) if a != b => {
                        return Err(FlowError::invalid(format!(
                            "objectid {a:?} and data.id {b:?} differ"
                        )))
                    }
                    (Some(a), _) => Some(a.to_string()),
                    (None, Some(Value::String(b))) => Some(b.clone()),
                    (None, None | Some(Value::Null)) => None,
                    (None, Some(_)) => return Err(FlowError::invalid("data.id must be a string")),
                };
                if let Some(id) = &id {
                    validate_objectid(id)?;
                }
                data.shift_remove("id");
                let op = WriteOp::Create {
                    endpoint: ep.into(),
                    namespace: ns.into(),
                    id,
                    data,
                };
                Ok(Next::Write(op))
            }
            Method::Update => {
                let patch = object_data(req, data)?;
                let expected = match expected_version(params)? {
                    Some(v) => Some(v),
                    None => match patch.get("version") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(v.as_u64().ok_or_else(|| {
                            FlowError::invalid("data.version (the expected version) must be a non-negative integer")
                        })?),
                    },
                };
                let op = WriteOp::Update {
                    endpoint: ep.into(),
                    namespace: ns.into(),
                    id: objectid(req)?.into(),
                    patch,
                    expected,
                };
                Ok(Next::Write(op))
            }
            Method::Delete => {
                let op = WriteOp::Delete {
                    endpoint: ep.into(),
                    namespace: ns.into(),
                    id: objectid(req)?.into(),
                    expected: expected_version(params)?,
                };
                Ok(Next::Write(op))
            }
            Method::Run => unreachable!("RUN was answered above"),
        }
    }
}

/// A write's commit as the call's result.
fn store_outcome(result: Result<Arc<Record>, StoreError>) -> Result<Success, FlowError> {
    match result {
        Ok(record) => Ok(stored(record)),
        Err(StoreError::NotFound(_)) => Err(object_missing()),
        Err(e @ StoreError::AlreadyExists(_)) => {
            Err(FlowError::new(ErrorCode::AlreadyExists, e.to_string()))
        }
        Err(e @ StoreError::Conflict { .. }) => {
            Err(FlowError::new(ErrorCode::Conflict, e.to_string()))
        }
        Err(e @ StoreError::Unavailable(_)) => {
            Err(FlowError::new(ErrorCode::Unavailable, e.to_string()))
        }
    }
}

fn stored(record: Arc<Record>) -> Success {
    Success {
        data: Data::Stored(record),
        count: None,
    }
}

fn object_missing() -> FlowError {
    FlowError::not_found("Object does not exist")
}

fn objectid(req: &Request) -> Result<&str, FlowError> {
    req.objectid
        .as_deref()
        .ok_or_else(|| FlowError::invalid(format!("{} needs an objectid", req.method)))
}

/// The call's data, which must be an object.
fn object_data(req: &Request, data: Option<Value>) -> Result<Map<String, Value>, FlowError> {
    match data {
        Some(Value::Object(o)) => Ok(o),
        Some(other) => Err(FlowError::invalid(format!(
            "data of {} must be a JSON object, not {}",
            req.method,
            type_name(&other)
        ))),
        None => Err(FlowError::invalid(format!("{} needs data", req.method))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
