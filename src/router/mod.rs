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

use std::collections::HashMap;
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

/// Most endpoints one connection may provide.
pub const MAX_PROVIDED: usize = 1024;

/// Endpoint names under these prefixes are the hub's own and cannot be provided.
pub const RESERVED: [&str; 2] = ["hub/", "auth/"];

/// Whether an endpoint name is reserved for the hub's own endpoints.
pub fn is_reserved(endpoint: &str) -> bool {
    RESERVED.iter().any(|p| endpoint.starts_with(p))
}

/// Where a provider's frames go: the outbound queue of its connection.
pub trait Outbox: Send + Sync {
    /// Queues a frame, waiting for room; `Err` when the connection is gone.
    fn send(
        &self,
        frame: Bytes,
        encoding: Encoding,
    ) -> Pin<Box<dyn Future<Output = Result<(), ()>> + Send + '_>>;
    /// Queues a frame if there is room now; `false` when full or gone.
    fn try_send(&self, frame: Bytes, encoding: Encoding) -> bool;
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

/// How a pending call ended, as its waiter learns it.
enum Settled {
    Answer(Answer),
    /// The provider's connection closed.
    Lost,
}

struct Pending {
    link: Arc<Link>,
    tx: oneshot::Sender<Settled>,
}

/// A call to route, borrowed from the dispatcher's request.
pub struct RoutedCall<'a> {
    pub method: Method,
    pub endpoint: &'a str,
    pub objectid: Option<&'a str>,
    pub namespace: &'a str,
    pub parameters: Option<&'a Map<String, Value>>,
    pub data: Option<&'a Value>,
    pub caller: &'a Caller,
    pub timeout_ms: Option<u64>,
}

/// The deadlines of routed calls.
#[derive(Debug, Clone)]
pub struct Deadlines {
    pub default: Duration,
    pub per_endpoint: HashMap<String, Duration>,
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
    endpoints: RwLock<HashMap<String, Endpoint>>,
    /// Number of provided endpoints, read without the lock on every call.
    provided: AtomicUsize,
    pending: DashMap<u64, Pending, foldhash::fast::RandomState>,
    next_call: AtomicU64,
    deadlines: Deadlines,
}

impl Router {
    pub fn new(deadlines: Deadlines) -> Router {
        Router {
            inner: Arc::new(Inner {
                endpoints: RwLock::new(HashMap::new()),
                provided: AtomicUsize::new(0),
                pending: DashMap::with_hasher(foldhash::fast::RandomState::default()),
                next_call: AtomicU64::new(1),
                deadlines,
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

    /// Whether some provider serves `method` on `endpoint`. Cheap when nothing is provided.
    pub fn serves(&self, endpoint: &str, method: Method) -> bool {
        if self.inner.provided.load(Ordering::Acquire) == 0 {
            return false;
        }
        let endpoints = self.inner.endpoints.read();
        endpoints
            .get(endpoint)
            .is_some_and(|e| e.providers.iter().any(|s| s.methods.contains(method)))
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
            .unwrap_or_else(|| crate::dispatch::registry::stored_application(&p.endpoint))
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
    /// answers are lost (their callers retry or fail at once).
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
        let lost: Vec<u64> = self
            .inner
            .pending
            .iter()
            .filter(|p| p.link.connection == link.connection)
            .map(|p| *p.key())
            .collect();
        for callid in lost {
            if let Some((_, p)) = self.inner.pending.remove(&callid) {
                let _ = p.tx.send(Settled::Lost);
            }
        }
    }

    /// A provider's `result` or `reject`: settles the call if `connection` is the one it was
    /// sent to and it still waits.
    pub fn answer(&self, connection: u64, callid: u64, answer: Answer) -> Result<(), FlowError> {
        match self
            .inner
            .pending
            .remove_if(&callid, |_, p| p.link.connection == connection)
        {
            Some((_, p)) => {
                // The waiter may have given up this very moment; then nobody needs the answer.
                let _ = p.tx.send(Settled::Answer(answer));
                Ok(())
            }
            None => Err(FlowError::not_found(format!(
                "no call {callid} is waiting for an answer from this connection"
            ))),
        }
    }

    /// Routes one call to a provider and waits for its answer.
    pub async fn call(&self, call: RoutedCall<'_>) -> Result<ProviderResult, FlowError> {
        let limit = self
            .inner
            .deadlines
            .per_endpoint
            .get(call.endpoint)
            .copied()
            .unwrap_or(self.inner.deadlines.default);
        let limit = match call.timeout_ms {
            Some(ms) => limit.min(Duration::from_millis(ms)),
            None => limit,
        };
        let deadline = Instant::now() + limit;
        let callid = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        let mut tried: Vec<u64> = Vec::new();
        let mut rejected: Option<String> = None;
        let mut lost = false;
        loop {
            let Some((link, application)) = self.pick(&call, &tried) else {
                return Err(if lost {
                    FlowError::new(
                        ErrorCode::ProviderLost,
                        format!(
                            "the provider of {} went away during the call",
                            call.endpoint
                        ),
                    )
                } else if let Some(reason) = rejected {
                    FlowError::new(
                        ErrorCode::NoProvider,
                        format!(
                            "every provider of {} rejected the call ({} tried; last reason: {})",
                            call.endpoint,
                            tried.len(),
                            if reason.is_empty() {
                                "none given"
                            } else {
                                &reason
                            }
                        ),
                    )
                } else {
                    FlowError::new(
                        ErrorCode::NoProvider,
                        format!("no provider serves {} on {}", call.method, call.endpoint),
                    )
                });
            };
            tried.push(link.connection);
            let (tx, rx) = oneshot::channel();
            self.inner.pending.insert(
                callid,
                Pending {
                    link: link.clone(),
                    tx,
                },
            );
            link.in_flight.fetch_add(1, Ordering::Relaxed);
            let mut waiting = Waiting {
                router: &self.inner,
                callid,
                link: &link,
                reason: "caller gone",
                settled: false,
            };
            // The connection may have closed between the pick and the insert; its closing
            // scan of the pending calls may have missed this one.
            let settled = if link.closed.load(Ordering::SeqCst) {
                waiting.forget();
                Settled::Lost
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                let encoding = link.encoding();
                let frame = encode_invoke(
                    &Invoke {
                        kind: "invoke",
                        callid,
                        method: call.method.as_str(),
                        endpoint: call.endpoint,
                        application: &application,
                        objectid: call.objectid,
                        namespace: call.namespace,
                        parameters: call.parameters.filter(|p| !p.is_empty()),
                        data: call.data,
                        caller: call.caller,
                        timeout: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    },
                    encoding,
                );
                let waited = tokio::time::timeout_at(deadline, async {
                    if link.out.send(frame, encoding).await.is_err() {
                        return Ok(Settled::Lost);
                    }
                    rx.await
                })
                .await;
                match waited {
                    Err(_elapsed) => {
                        waiting.reason = "timeout";
                        drop(waiting);
                        return Err(FlowError::new(
                            ErrorCode::ProviderTimeout,
                            format!(
                                "the provider of {} did not answer within {} ms",
                                call.endpoint,
                                limit.as_millis()
                            ),
                        ));
                    }
                    // The pending entry went without a word: only a closing connection
                    // does that.
                    Ok(Err(_)) => Settled::Lost,
                    Ok(Ok(s)) => s,
                }
            };
            waiting.settled = true;
            drop(waiting);
            match settled {
                Settled::Answer(Answer::Result(r)) => return Ok(r),
                Settled::Answer(Answer::Reject(reason)) => {
                    tracing::debug!(callid, connection = link.connection, %reason, "call rejected");
                    lost = false;
                    rejected = Some(reason);
                }
                Settled::Lost => {
                    self.inner.pending.remove(&callid);
                    if !call.method_changes_nothing() {
                        return Err(FlowError::new(
                            ErrorCode::ProviderLost,
                            format!(
                                "the provider of {} went away during the call",
                                call.endpoint
                            ),
                        ));
                    }
                    lost = true;
                }
            }
        }
    }

    /// Picks a provider serving the call's method that has not been tried.
    fn pick(&self, call: &RoutedCall<'_>, tried: &[u64]) -> Option<(Arc<Link>, Arc<str>)> {
        let endpoints = self.inner.endpoints.read();
        let e = endpoints.get(call.endpoint)?;
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

impl RoutedCall<'_> {
    /// LIST, OPEN and INDEX may be sent to another provider when theirs is lost.
    fn method_changes_nothing(&self) -> bool {
        matches!(self.method, Method::List | Method::Open | Method::Index)
    }
}

/// A call sent to a provider and not yet settled. Dropped unsettled (deadline, caller gone),
/// it forgets the pending call and tells the provider.
struct Waiting<'a> {
    router: &'a Inner,
    callid: u64,
    link: &'a Arc<Link>,
    reason: &'static str,
    settled: bool,
}

impl Waiting<'_> {
    fn forget(&mut self) {
        self.router.pending.remove(&self.callid);
        self.settled = true;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.link.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.settled {
            return;
        }
        // Still pending: nobody answered. If the answer raced in, it is simply dropped.
        if self.router.pending.remove(&self.callid).is_some() {
            let encoding = self.link.encoding();
            let frame = encode_cancel(self.callid, self.reason, encoding);
            // A full queue drops the cancel: the provider's answer will be refused anyway.
            let _ = self.link.out.try_send(frame, encoding);
            tracing::debug!(
                callid = self.callid,
                connection = self.link.connection,
                reason = self.reason,
                "call cancelled"
            );
        }
    }
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
