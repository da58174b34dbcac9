//! The router: providers, pending calls, deadlines, rerouting and cancellation (SPEC 11).
//!
//! A provider is a connection ([`Link`]) that has provided endpoints. A routed call picks one
//! of the endpoint's providers by the endpoint's [`Policy`], registers itself as pending under
//! its call id, queues an `invoke` frame on the provider's connection and waits for the
//! provider's `result` or `reject`, for the provider's connection to close, or for its
//! deadline, whichever comes first. Only the connection a call was sent to can settle it.
//!
//! Every way a call ends goes through one guard ([`Waiting`]): when the call's future is
//! dropped without an answer — deadline passed, or the caller went away and its task was
//! aborted — the guard forgets the pending call and sends the provider a `cancel`. So the
//! pending table never holds a call nobody waits for.
//!
//! The router never waits on a provider while holding a lock: picking a provider is a read of
//! the endpoint table, and an invoke waits for room in the provider's outbound queue only
//! within the call's own deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::protocol::provider::{
    encode_cancel, encode_invoke, Answer, Invoke, MethodSet, Policy, Provide, ProviderResult,
};
use crate::protocol::{Caller, Encoding, ErrorCode, FlowError, Method};

/// The router's maps are looked up on every routed call.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Most endpoints one connection may provide.
pub const MAX_PROVIDED: usize = 1024;

pub use crate::protocol::request::{is_reserved, RESERVED};

/// Where a provider's frames go: the outbound queue of its connection.
pub trait Outbox: Send + Sync {
    /// Queues a frame, waiting for room; `Err` when the connection is gone.
    fn send(
        &self,
        frame: Bytes,
        encoding: Encoding,
    ) -> Pin<Box<dyn Future<Output = Result<(), ()>> + Send + '_>>;
    /// Queues a frame if there is room now.
    fn try_send(&self, frame: Bytes, encoding: Encoding) -> Queued;
}

/// A connection as the router sees it.
pub struct Link {
    /// The hub's number for the connection (also `caller.connection` of its calls).
    pub connection: u64,
    /// The encoding of the frames it gets (that of its `provide` frames).
    encoding: parking_lot::Mutex<Encoding>,
    out: Box<dyn Outbox>,
    /// Calls sent to it and not settled yet, across its endpoints.
    in_flight: AtomicUsize,
    /// Endpoints it provides (changed under the endpoint table's write lock).
    provides: AtomicUsize,
    closed: AtomicBool,
}

impl Link {
    pub fn new(connection: u64, out: Box<dyn Outbox>) -> Arc<Link> {
        Arc::new(Link {
            connection,
            encoding: parking_lot::Mutex::new(Encoding::Json),
            out,
            in_flight: AtomicUsize::new(0),
            provides: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    fn encoding(&self) -> Encoding {
        *self.encoding.lock()
    }
}

/// One provider of one endpoint.
struct Slot {
    link: Arc<Link>,
    methods: MethodSet,
}

/// A provided endpoint.
struct Endpoint {
    application: Arc<str>,
    policy: Policy,
    /// In the order they provided it (the `first` and `last` policies use it).
    providers: Vec<Slot>,
    turn: AtomicUsize,
}

impl Endpoint {
    fn methods(&self) -> MethodSet {
        self.providers
            .iter()
            .fold(MethodSet::EMPTY, |m, s| m.union(s.methods))
    }
}

/// What the dispatcher needs to know about a provided endpoint.
#[derive(Debug, Clone)]
pub struct Route {
    pub application: Arc<str>,
    /// The methods some provider serves.
    pub methods: MethodSet,
}

/// A provided endpoint, as the registry shows it.
#[derive(Debug, Clone)]
pub struct ProvidedEndpoint {
    pub endpoint: String,
    pub application: String,
    pub policy: Policy,
    pub providers: usize,
    pub methods: MethodSet,
}

/// Whoever waits for a routed call's outcome. `settle` is called exactly once, from whichever
/// task ends the call (the provider's reader, the deadline sweeper, a closing connection);
/// a waiter that is dropped instead was cancelled (its caller went away).
pub trait Waiter: Send + Sync + 'static {
    fn settle(self: Box<Self>, call: &RoutedRequest, result: Result<ProviderResult, FlowError>);
}

/// A routed call, owned by the router while it is pending.
pub struct RoutedRequest {
    pub method: Method,
    pub endpoint: String,
    pub objectid: Option<String>,
    pub namespace: String,
    /// In their object form; `None` when there are none.
    pub parameters: Option<Map<String, Value>>,
    pub data: Option<Value>,
    pub caller: Caller,
    /// The caller's own deadline in milliseconds, if it asked for one.
    pub timeout_ms: Option<u64>,
}

impl RoutedRequest {
    /// LIST, OPEN and INDEX may be sent to another provider when theirs is lost.
    fn changes_nothing(&self) -> bool {
        matches!(self.method, Method::List | Method::Open | Method::Index)
    }
}

/// A call waiting for a provider: everything needed to answer it, send it on to another
/// provider, or cancel it.
struct Pending {
    call: RoutedRequest,
    /// The provider it was sent to last.
    link: Option<Sent>,
    /// Connections tried so far (each at most once).
    tried: Vec<u64>,
    rejected: Option<String>,
    lost: bool,
    deadline: Instant,
    limit: Duration,
    waiter: Box<dyn Waiter>,
}

impl Pending {
    fn settle(self: Box<Self>, result: Result<ProviderResult, FlowError>) {
        let Pending { call, waiter, .. } = *self;
        waiter.settle(&call, result);
    }

    fn sent_to(&self, connection: u64) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.0.connection == connection)
    }
}

/// A call sent to a provider counts in its calls in flight (the `balanced` policy reads
/// them) until the call leaves it, however that happens.
struct Sent(Arc<Link>);

impl Sent {
    fn new(link: Arc<Link>) -> Sent {
        link.in_flight.fetch_add(1, Ordering::Relaxed);
        Sent(link)
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a frame queued without waiting came to.
pub enum Queued {
    Sent,
    /// No room now; the frame comes back.
    Full(Bytes),
    Gone,
}

/// The deadlines of routed calls.
#[derive(Debug, Clone)]
pub struct Deadlines {
    pub default: Duration,
    pub per_endpoint: FastMap<String, Duration>,
}

impl Deadlines {
    pub fn from_config(config: &crate::config::Config) -> Deadlines {
        Deadlines {
            default: Duration::from_millis(config.call_timeout_ms),
            per_endpoint: config
                .call_timeout
                .iter()
                .map(|(e, ms)| (e.clone(), Duration::from_millis(*ms)))
                .collect(),
        }
    }
}

/// The router. Cloning is shallow.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: RwLock<FastMap<String, Endpoint>>,
    /// Number of provided endpoints, read without the lock on every call.
    provided: AtomicUsize,
    pending: DashMap<u64, Box<Pending>, foldhash::fast::RandomState>,
    next_call: AtomicU64,
    deadlines: Deadlines,
    /// Wakes the deadline sweeper when the first call is pending.
    sweeper: Arc<tokio::sync::Notify>,
    sweeper_started: AtomicBool,
    sweeper_idle: AtomicBool,
}

impl Router {
    pub fn new(deadlines: Deadlines) -> Router {
        Router {
            inner: Arc::new(Inner {
                endpoints: RwLock::new(FastMap::default()),
                provided: AtomicUsize::new(0),
                pending: DashMap::with_hasher(foldhash::fast::RandomState::default()),
                next_call: AtomicU64::new(1),
                deadlines,
                sweeper: Arc::new(tokio::sync::Notify::new()),
                sweeper_started: AtomicBool::new(false),
                sweeper_idle: AtomicBool::new(false),
            }),
        }
    }

    /// The provided endpoint of this name, if any. Cheap when nothing is provided.
    pub fn lookup(&self, endpoint: &str) -> Option<Route> {
        if self.inner.provided.load(Ordering::Acquire) == 0 {
            return None;
        }
        let endpoints = self.inner.endpoints.read();
        endpoints.get(endpoint).map(|e| Route {
            application: e.application.clone(),
            methods: e.methods(),
        })
    }

    /// Whether `connection` provides `endpoint`.
    pub fn provides(&self, connection: u64, endpoint: &str) -> bool {
        let endpoints = self.inner.endpoints.read();
        endpoints
            .get(endpoint)
            .is_some_and(|e| e.providers.iter().any(|s| s.link.connection == connection))
    }

    /// Every provided endpoint, sorted by name.
    pub fn endpoints(&self) -> Vec<ProvidedEndpoint> {
        let endpoints = self.inner.endpoints.read();
        let mut all: Vec<ProvidedEndpoint> = endpoints
            .iter()
            .map(|(name, e)| ProvidedEndpoint {
                endpoint: name.clone(),
                application: e.application.to_string(),
                policy: e.policy,
                providers: e.providers.len(),
                methods: e.methods(),
            })
            .collect();
        all.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        all
    }

    /// Number of calls waiting for a provider's answer (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.inner.pending.len()
    }

    /// Registers `link` as a provider of an endpoint; returns the reply's data.
    pub fn provide(
        &self,
        link: &Arc<Link>,
        p: Provide,
        encoding: Encoding,
    ) -> Result<Value, FlowError> {
        if is_reserved(&p.endpoint) {
            return Err(FlowError::invalid(format!(
                "endpoint {} is reserved for the hub's own endpoints (hub/, auth/)",
                p.endpoint
            )));
        }
        if link.closed.load(Ordering::Acquire) {
            return Err(FlowError::invalid("the connection is closing"));
        }
        *link.encoding.lock() = encoding;
        let application: Arc<str> = p
            .application
            .as_deref()
            .unwrap_or_else(|| crate::protocol::request::default_application(&p.endpoint))
            .into();
        let mut endpoints = self.inner.endpoints.write();
        let already = endpoints.get(&p.endpoint).is_some_and(|e| {
            e.providers
                .iter()
                .any(|s| s.link.connection == link.connection)
        });
        if !already && link.provides.load(Ordering::Relaxed) >= MAX_PROVIDED {
            return Err(FlowError::too_large(format!(
                "a connection may provide at most {MAX_PROVIDED} endpoints"
            )));
        }
        let e = endpoints
            .entry(p.endpoint.clone())
            .or_insert_with(|| Endpoint {
                application: application.clone(),
                policy: p.policy,
                providers: Vec::new(),
                turn: AtomicUsize::new(0),
            });
        let alone = e.providers.len() == 1 && e.providers[0].link.connection == link.connection;
        if e.providers.is_empty() || alone {
            // The only provider may change what the endpoint is.
            e.application = application;
            e.policy = p.policy;
        } else if e.application != application {
            return Err(FlowError::new(
                ErrorCode::Conflict,
                format!(
                    "endpoint {} is provided for application {}, not {application}",
                    p.endpoint, e.application
                ),
            ));
        } else if e.policy != p.policy {
            return Err(FlowError::new(
                ErrorCode::Conflict,
                format!(
                    "endpoint {} is provided with policy {}, not {}",
                    p.endpoint,
                    e.policy.as_str(),
                    p.policy.as_str()
                ),
            ));
        }
        match e
            .providers
            .iter_mut()
            .find(|s| s.link.connection == link.connection)
        {
            Some(slot) => slot.methods = p.methods,
            None => {
                link.provides.fetch_add(1, Ordering::Relaxed);
                e.providers.push(Slot {
                    link: link.clone(),
                    methods: p.methods,
                });
            }
        }
        let reply = json!({
            "endpoint": p.endpoint,
            "application": &*e.application,
            "methods": p.methods.names(),
            "policy": e.policy.as_str(),
            "providers": e.providers.len(),
        });
        tracing::info!(
            endpoint = %p.endpoint,
            application = %e.application,
            connection = link.connection,
            methods = ?p.methods.names(),
            "endpoint provided"
        );
        self.inner
            .provided
            .store(endpoints.len(), Ordering::Release);
        Ok(reply)
    }

    /// Removes `connection` from the providers of an endpoint; returns the reply's data.
    pub fn unprovide(&self, connection: u64, endpoint: &str) -> Result<Value, FlowError> {
        let mut endpoints = self.inner.endpoints.write();
        let Some(e) = endpoints.get_mut(endpoint) else {
            return Err(not_providing(endpoint));
        };
        let Some(at) = e
            .providers
            .iter()
            .position(|s| s.link.connection == connection)
        else {
            return Err(not_providing(endpoint));
        };
        let slot = e.providers.remove(at);
        slot.link.provides.fetch_sub(1, Ordering::Relaxed);
        let left = e.providers.len();
        if left == 0 {
            endpoints.remove(endpoint);
        }
        self.inner
            .provided
            .store(endpoints.len(), Ordering::Release);
        tracing::info!(%endpoint, connection, "endpoint unprovided");
        Ok(json!({"endpoint": endpoint, "providers": left}))
    }

    /// A connection closed: it provides nothing any more, and the calls waiting for its
    /// answers are lost (LIST, OPEN and INDEX move on to another provider, the rest fail).
    pub fn connection_closed(&self, link: &Link) {
        link.closed.store(true, Ordering::SeqCst);
        {
            let mut endpoints = self.inner.endpoints.write();
            endpoints.retain(|name, e| {
                let before = e.providers.len();
                e.providers.retain(|s| s.link.connection != link.connection);
                if e.providers.len() != before {
                    tracing::info!(endpoint = %name, connection = link.connection, "provider gone");
                }
                !e.providers.is_empty()
            });
            self.inner
                .provided
                .store(endpoints.len(), Ordering::Release);
        }
        for callid in self.pending_where(|p| p.sent_to(link.connection)) {
            if let Some((_, p)) = self
                .inner
                .pending
                .remove_if(&callid, |_, p| p.sent_to(link.connection))
            {
                self.lost(callid, p);
            }
        }
    }

    /// A caller's connection closed: its calls are cancelled and their providers told.
    pub fn caller_gone(&self, connection: u64) {
        let mine = |p: &Pending| p.call.caller.connection == Some(connection);
        for callid in self.pending_where(mine) {
            if let Some((_, p)) = self.inner.pending.remove_if(&callid, |_, p| mine(p)) {
                cancel(callid, &p, "caller gone");
            }
        }
    }

    /// Cancels one call if it is still pending (its caller stopped waiting).
    pub fn cancel(&self, callid: u64) {
        if let Some((_, p)) = self.inner.pending.remove(&callid) {
            cancel(callid, &p, "caller gone");
        }
    }

    fn pending_where(&self, f: impl Fn(&Pending) -> bool) -> Vec<u64> {
        self.inner
            .pending
            .iter()
            .filter(|p| f(p.value()))
            .map(|p| *p.key())
            .collect()
    }

    /// A provider's `result` or `reject`: settles the call if `connection` is the one it was
    /// sent to and it still waits; a reject sends it on to the next provider.
    pub fn answer(&self, connection: u64, callid: u64, answer: Answer) -> Result<(), FlowError> {
        let Some((_, mut p)) = self
            .inner
            .pending
            .remove_if(&callid, |_, p| p.sent_to(connection))
        else {
            return Err(FlowError::not_found(format!(
                "no call {callid} is waiting for an answer from this connection"
            )));
        };
        match answer {
            Answer::Result(r) => p.settle(Ok(r)),
            Answer::Reject(reason) => {
                tracing::debug!(callid, connection, %reason, "call rejected");
                crate::ops::series().provider_rejects.increment(1);
                p.lost = false;
                p.rejected = Some(reason);
                self.dispatch(callid, p);
            }
        }
        Ok(())
    }

    /// Routes one call to a provider and waits for its answer. Dropping the future cancels
    /// the call (the provider is told).
    pub async fn call(&self, call: RoutedRequest) -> Result<ProviderResult, FlowError> {
        struct Oneshot(oneshot::Sender<Result<ProviderResult, FlowError>>);
        impl Waiter for Oneshot {
            fn settle(
                self: Box<Self>,
                _: &RoutedRequest,
                result: Result<ProviderResult, FlowError>,
            ) {
                let _ = self.0.send(result);
            }
        }
        struct CancelOnDrop<'a>(&'a Router, u64);
        impl Drop for CancelOnDrop<'_> {
            fn drop(&mut self) {
                self.0.cancel(self.1);
            }
        }
        let (tx, rx) = oneshot::channel();
        let callid = self.start(call, Box::new(Oneshot(tx)));
        let _cancel = CancelOnDrop(self, callid);
        rx.await.unwrap_or_else(|_| {
            Err(FlowError::internal(
                "the router dropped a call without answering it",
            ))
        })
    }

    /// Starts routing a call; `waiter` learns how it ends. Returns its call id.
    pub fn start(&self, call: RoutedRequest, waiter: Box<dyn Waiter>) -> u64 {
        let limit = self
            .inner
            .deadlines
            .per_endpoint
            .get(call.endpoint.as_str())
            .copied()
            .unwrap_or(self.inner.deadlines.default);
        let limit = match call.timeout_ms {
            Some(ms) => limit.min(Duration::from_millis(ms)),
            None => limit,
        };
        let callid = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        crate::ops::series().routed_calls.increment(1);
        self.ensure_sweeper();
        let p = Box::new(Pending {
            call,
            link: None,
            tried: Vec::new(),
            rejected: None,
            lost: false,
            deadline: Instant::now() + limit,
            limit,
            waiter,
        });
        self.dispatch(callid, p);
        callid
    }

    /// Sends a pending call to the next provider, or settles it when there is none.
    fn dispatch(&self, callid: u64, mut p: Box<Pending>) {
        loop {
            let Some((link, application)) = self.pick(&p.call, &p.tried) else {
                let e = p.exhausted();
                p.settle(Err(e));
                return;
            };
            p.tried.push(link.connection);
            let encoding = link.encoding();
            let left = p.deadline.saturating_duration_since(Instant::now());
            let c = &p.call;
            let frame = encode_invoke(
                &Invoke {
                    kind: "invoke",
                    callid,
                    method: c.method.as_str(),
                    endpoint: &c.endpoint,
                    application: &application,
                    objectid: c.objectid.as_deref(),
                    namespace: &c.namespace,
                    parameters: c.parameters.as_ref().filter(|p| !p.is_empty()),
                    data: c.data.as_ref(),
                    caller: &c.caller,
                    timeout: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                },
                encoding,
            );
            let deadline = p.deadline;
            p.link = Some(Sent::new(link.clone()));
            // Pending before the invoke leaves: the answer may come back at once.
            self.inner.pending.insert(callid, p);
            if self.inner.sweeper_idle.swap(false, Ordering::AcqRel) {
                self.inner.sweeper.notify_one();
            }
            let gone = match link.out.try_send(frame, encoding) {
                Queued::Sent => false,
                Queued::Gone => true,
                Queued::Full(frame) => {
                    // The provider is not reading: wait for room, within the deadline.
                    let router = self.clone();
                    tokio::spawn(async move {
                        let sent =
                            tokio::time::timeout_at(deadline, link.out.send(frame, encoding)).await;
                        if matches!(sent, Ok(Err(()))) {
                            router.lost_if_pending(callid, link.connection);
                        }
                        // Past the deadline the sweeper answers the call.
                    });
                    return;
                }
            };
            // A connection that closed after the pick may have scanned the pending calls
            // before this one was in.
            if !gone && !link.closed.load(Ordering::SeqCst) {
                return;
            }
            match self
                .inner
                .pending
                .remove_if(&callid, |_, p| p.sent_to(link.connection))
            {
                Some((_, back)) => {
                    p = back;
                    if !p.call.changes_nothing() {
                        let e = lost_error(&p.call.endpoint);
                        p.settle(Err(e));
                        return;
                    }
                    p.lost = true;
                }
                // Someone else settled it meanwhile.
                None => return,
            }
        }
    }

    fn lost_if_pending(&self, callid: u64, connection: u64) {
        if let Some((_, p)) = self
            .inner
            .pending
            .remove_if(&callid, |_, p| p.sent_to(connection))
        {
            self.lost(callid, p);
        }
    }

    /// The provider of a pending call (already removed from the table) is gone.
    fn lost(&self, callid: u64, mut p: Box<Pending>) {
        if p.call.changes_nothing() {
            p.lost = true;
            self.dispatch(callid, p);
        } else {
            let e = lost_error(&p.call.endpoint);
            p.settle(Err(e));
        }
    }

    /// Starts the task that fails calls past their deadline, once.
    fn ensure_sweeper(&self) {
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let notify = self.inner.sweeper.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let router = Router { inner };
                if router.inner.pending.is_empty() {
                    router.inner.sweeper_idle.store(true, Ordering::Release);
                    // A call that came in meanwhile finds the flag set and wakes us; Notify
                    // keeps the wake-up if it comes before we wait.
                    if router.inner.pending.is_empty() {
                        drop(router);
                        notify.notified().await;
                        continue;
                    }
                    router.inner.sweeper_idle.store(false, Ordering::Release);
                }
                router.sweep(Instant::now());
                drop(router);
                tokio::time::sleep(SWEEP_EVERY).await;
            }
        });
    }

    /// Fails every call whose deadline has passed.
    fn sweep(&self, now: Instant) {
        for callid in self.pending_where(|p| p.deadline <= now) {
            if let Some((_, p)) = self
                .inner
                .pending
                .remove_if(&callid, |_, p| p.deadline <= now)
            {
                cancel(callid, &p, "timeout");
                crate::ops::series().provider_timeouts.increment(1);
                let e = FlowError::new(
                    ErrorCode::ProviderTimeout,
                    format!(
                        "the provider of {} did not answer within {} ms",
                        p.call.endpoint,
                        p.limit.as_millis()
                    ),
                );
                p.settle(Err(e));
            }
        }
    }

    /// Picks a provider serving the call's method that has not been tried.
    fn pick(&self, call: &RoutedRequest, tried: &[u64]) -> Option<(Arc<Link>, Arc<str>)> {
        let endpoints = self.inner.endpoints.read();
        let e = endpoints.get(call.endpoint.as_str())?;
        let eligible = |s: &Slot| {
            s.methods.contains(call.method)
                && !tried.contains(&s.link.connection)
                && !s.link.closed.load(Ordering::Relaxed)
        };
        let n = e.providers.len();
        let chosen: Option<&Slot> = match e.policy {
            Policy::First => e.providers.iter().find(|s| eligible(s)),
            Policy::Last => e.providers.iter().rev().find(|s| eligible(s)),
            Policy::RoundRobin | Policy::Balanced | Policy::Random => {
                let start = match e.policy {
                    Policy::Random => random_index(n),
                    _ => e.turn.fetch_add(1, Ordering::Relaxed) % n.max(1),
                };
                let mut in_turn = (0..n).map(|i| &e.providers[(start + i) % n]);
                if e.policy == Policy::Balanced {
                    // Fewest in flight; among equals the first in turn.
                    in_turn
                        .filter(|s| eligible(s))
                        .min_by_key(|s| s.link.in_flight.load(Ordering::Relaxed))
                } else {
                    in_turn.find(|s| eligible(s))
                }
            }
        };
        chosen.map(|s| (s.link.clone(), e.application.clone()))
    }
}

/// How often the deadline sweeper looks for calls past their deadline (while any call is
/// pending): a deadline is kept to within this much.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

impl Pending {
    /// The error of a call no provider is left to try.
    fn exhausted(&self) -> FlowError {
        let ep = &self.call.endpoint;
        if self.lost {
            lost_error(ep)
        } else if let Some(reason) = &self.rejected {
            FlowError::new(
                ErrorCode::NoProvider,
                format!(
                    "every provider of {ep} rejected the call ({} tried; last reason: {})",
                    self.tried.len(),
                    if reason.is_empty() {
                        "none given"
                    } else {
                        reason
                    }
                ),
            )
        } else {
            FlowError::new(
                ErrorCode::NoProvider,
                format!("no provider serves {} on {ep}", self.call.method),
            )
        }
    }
}

fn lost_error(endpoint: &str) -> FlowError {
    FlowError::new(
        ErrorCode::ProviderLost,
        format!("the provider of {endpoint} went away during the call"),
    )
}

/// Tells the provider of a call, dropped from the table unanswered, to stop working on it.
fn cancel(callid: u64, p: &Pending, reason: &'static str) {
    let Some(Sent(link)) = &p.link else { return };
    let encoding = link.encoding();
    // A full queue drops the cancel: the provider's answer will be refused anyway.
    let _ = link
        .out
        .try_send(encode_cancel(callid, reason, encoding), encoding);
    tracing::debug!(
        callid,
        connection = link.connection,
        reason,
        "call cancelled"
    );
}

fn not_providing(endpoint: &str) -> FlowError {
    FlowError::not_found(format!(
        "this connection does not provide endpoint {endpoint}"
    ))
}

/// A uniformly random index below `n` (0 when `n` is 0), from a per-thread xorshift generator.
fn random_index(n: usize) -> usize {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    if n == 0 {
        return 0;
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as usize
    })
}
