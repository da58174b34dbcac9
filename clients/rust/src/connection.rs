//! The connection driver: one task that connects, logs in, re-provides, and runs a reader and
//! a writer on the socket until it breaks, then reconnects with backoff.
//!
//! State shared with the [`Client`](crate::Client) handles lives in [`Shared`]:
//!
//! - `pending`: requestid → who waits for the reply. A call's entry is marked `sent` by the
//!   writer just before its frame goes to the socket. When a connection ends, every sent entry
//!   fails with `Disconnected` (never resent: it may have been a write), and unsent ones stay
//!   queued for the next connection.
//! - `providers`: endpoint → the declaration, the handler and who waits for the hub's answer.
//!   Every new connection provides each of them again before sending anything else.
//! - `running`: callid → the task handling an invocation, so a `cancel` can abort it. Tasks of
//!   a connection that ended are aborted: the hub has already failed or rerouted their calls,
//!   and it would refuse their answers on a new connection.
//!
//! - `subs`: the subscriptions (see [`crate::subscription`]); every new connection subscribes
//!   again, after the provides, each one that is not suspended, resuming from its last position.
//!
//! Locks are `std::sync::Mutex`es held for a map operation and never across an `.await`.
//!
//! Bounds: the outbound queue (`outbound_queue` frames; senders wait), calls waiting for a
//! reply (`max_calls_in_flight`; callers wait), invocations running (`max_invocations`; more
//! are rejected with `busy` so the hub moves on). The reader never waits for queue space,
//! so replies keep flowing even when the outbound queue is full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::call::Reply;
use crate::codec::{self, Incoming};
use crate::config::{ClientConfig, Credentials};
use crate::error::Error;
use crate::provider::{Answer, Handler, Invocation, Provide};
use crate::subscription::{self, SubState};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting, logging in, or waiting to retry.
    Connecting,
    /// Connected. `epoch` counts the connections made so far (1 for the first), so a change of
    /// epoch means the client reconnected.
    Connected {
        /// The connection's number, from 1.
        epoch: u64,
    },
    /// Closed for good; every operation fails with [`Error::Closed`].
    Closed,
}

/// Who waits for a reply.
pub(crate) enum Pending {
    /// A call or publish: its caller, and whether the frame went to a socket.
    Call {
        tx: oneshot::Sender<Result<Reply, Error>>,
        sent: bool,
    },
    /// A provide frame for one generation of an endpoint's registration.
    Provide { endpoint: String, generation: u64 },
    /// A subscribe frame for one generation of a subscription.
    Subscribe { key: u64, gen: u64 },
}

/// A provided endpoint.
pub(crate) struct Registration {
    pub provide: Provide,
    pub handler: Arc<dyn Handler>,
    /// Bumped by every `provide` of this endpoint, so an answer to an older provide frame
    /// cannot settle a newer one.
    pub generation: u64,
    /// The connection and generation a provide frame was last sent for (no duplicates).
    pub sent: Option<(u64, u64)>,
    /// The hub accepted it on the current connection.
    pub provided: bool,
    /// `Client::provide` calls waiting for the hub's answer.
    pub waiters: Vec<oneshot::Sender<Result<Reply, Error>>>,
}

/// An invocation being handled.
struct Running {
    epoch: u64,
    abort: AbortHandle,
}

/// What waits in the outbound queue.
pub(crate) enum Outgoing {
    /// A call or publish frame, without `requestid` and `token` (added when it is sent).
    Request {
        requestid: u64,
        frame: Map<String, Value>,
    },
    /// Send the provide frame of this endpoint's current registration.
    Provide { endpoint: String },
    /// A `result` or `reject`, only for the connection (`epoch`) its invoke came on.
    Answer { epoch: u64, frame: Value },
    /// Send the subscribe frame of this subscription, if it is due.
    Subscribe { key: u64 },
    /// Take a subscription off the hub, only on the connection (`conn`) it was made on.
    Unsubscribe { conn: u64, wire: String },
}

/// State shared between the client handles, the driver and the handler tasks.
pub(crate) struct Shared {
    pub config: ClientConfig,
    pub out_tx: mpsc::Sender<Outgoing>,
    pub next_id: AtomicU64,
    pub next_generation: AtomicU64,
    pub pending: Mutex<HashMap<u64, Pending>>,
    pub providers: Mutex<HashMap<String, Registration>>,
    pub subs: Mutex<HashMap<u64, SubState>>,
    running: Mutex<HashMap<u64, Running>>,
    /// Bounds the calls waiting for a reply.
    pub in_flight: Semaphore,
    pub state: watch::Sender<ConnectionState>,
    /// Set to `true` to close the client.
    pub shutdown: watch::Sender<bool>,
}

/// Locks a mutex, recovering from poisoning: the maps stay consistent because no code
/// panics while holding these locks, and a client must keep working regardless.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Shared state and the receiving end of its outbound queue.
    pub fn new(config: ClientConfig) -> (Arc<Shared>, mpsc::Receiver<Outgoing>) {
        let (out_tx, out_rx) = mpsc::channel(config.outbound_queue.max(1));
        let shared = Shared {
            in_flight: Semaphore::new(config.max_calls_in_flight.max(1)),
            config,
            out_tx,
            next_id: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            providers: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            state: watch::Sender::new(ConnectionState::Connecting),
            shutdown: watch::Sender::new(false),
        };
        (Arc::new(shared), out_rx)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an answer from the reader, which must not wait: if the queue is full, a task
    /// waits for room instead.
    fn queue_answer(self: &Arc<Self>, epoch: u64, frame: Value) {
        self.queue_outgoing(Outgoing::Answer { epoch, frame });
    }

    /// Queues a frame without waiting (from the reader, or a `Drop`): if the queue is full, a
    /// task waits for room instead (when there is a runtime to run it).
    pub fn queue_outgoing(&self, item: Outgoing) {
        match self.out_tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let tx = self.out_tx.clone();
                    rt.spawn(async move {
                        let _ = tx.send(item).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A connection that stayed up this long starts the backoff sequence over; one that ends
/// sooner (a hub that accepts and drops at once) keeps the delays growing.
const STABLE: Duration = Duration::from_secs(5);

/// Runs the connection until the client is closed. `first` hears how the first connection
/// attempt went (unless `wait_for_hub`, which keeps trying until one succeeds).
pub(crate) async fn drive(
    shared: Arc<Shared>,
    mut out_rx: mpsc::Receiver<Outgoing>,
    mut first: Option<oneshot::Sender<Result<(), Error>>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut attempt: u32 = 0;
    let mut epoch: u64 = 0;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let connected = tokio::select! {
            r = connect(&shared) => r,
            _ = shutdown.changed() => break,
        };
        match connected {
            Ok((ws, token)) => {
                epoch += 1;
                tracing::info!(url = %shared.config.url, epoch, "connected to the hub");
                shared
                    .state
                    .send_replace(ConnectionState::Connected { epoch });
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                let began = Instant::now();
                let closing = session(&shared, ws, token, epoch, &mut out_rx, &mut shutdown).await;
                if began.elapsed() >= STABLE {
                    attempt = 0;
                }
                if closing {
                    break; // `close_all` fails what waits with `Closed`
                }
                end_of_connection(&shared, epoch);
                shared.state.send_replace(ConnectionState::Connecting);
                tracing::warn!(url = %shared.config.url, epoch, "lost the connection to the hub; reconnecting");
            }
            Err(e) => {
                let fatal = matches!(e, Error::Config(_));
                if let Some(f) = first.take() {
                    if fatal || !shared.config.wait_for_hub {
                        let _ = f.send(Err(e));
                        break;
                    }
                    first = Some(f);
                }
                tracing::warn!(error = %e, attempt, "cannot reach the hub; retrying");
            }
        }
        let delay = shared.config.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    close_all(&shared, &mut out_rx);
}

/// Opens a socket and logs in: the socket and the token to send in frames.
async fn connect(shared: &Shared) -> Result<(Ws, Option<String>), Error> {
    let config = &shared.config;
    let attempt = async {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
            config.url.as_str(),
            Some(ws_config),
            true,
        )
        .await
        .map_err(|e| Error::Connect {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        let token = match &config.credentials {
            Credentials::None => None,
            Credentials::Token(t) => Some(t.clone()),
            Credentials::Password { username, password } => {
                Some(login(shared, &mut ws, username, password).await?)
            }
        };
        Ok((ws, token))
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Connect {
                url: config.url.clone(),
                reason: format!("no connection within {:?}", config.connect_timeout),
            })
        })
}

/// `CREATE` on `auth/token` with the user name and password; the reply's `data.token`.
pub(crate) async fn login<S>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
    username: &str,
    password: &str,
) -> Result<String, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let url = &shared.config.url;
    let lost = |reason: String| Error::Connect {
        url: url.clone(),
        reason,
    };
    let id = shared.next_id();
    let frame = json!({"type": "call", "requestid": id, "endpoint": "auth/token", "method": "CREATE",
                       "namespace": "", "data": {"username": username, "password": password}});
    let msg = codec::encode(&frame, shared.config.encoding).map_err(Error::Invalid)?;
    ws.send(msg)
        .await
        .map_err(|e| lost(format!("login: {e}")))?;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| lost(format!("login: {e}")))?;
        let Incoming::Frame(Value::Object(reply)) = codec::decode(msg) else {
            continue;
        };
        if reply.get("requestid").and_then(Value::as_u64) != Some(id) {
            continue;
        }
        return match Reply::from_envelope(reply) {
            Ok(r) => r
                .data
                .get("token")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::Protocol("the login reply has no data.token".into())),
            Err(Error::Hub(e)) => Err(Error::Login(e)),
            Err(e) => Err(e),
        };
    }
    Err(lost("the hub closed the connection during login".into()))
}

/// Runs one connection until it breaks (`false`) or the client closes (`true`).
async fn session(
    shared: &Arc<Shared>,
    ws: Ws,
    token: Option<String>,
    epoch: u64,
    out_rx: &mut mpsc::Receiver<Outgoing>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    // Milliseconds since `started` at which the hub was last heard from.
    let heard = AtomicU64::new(0);
    let ping = shared.config.ping_interval.max(Duration::from_millis(10));
    let closing = {
        let reader = read_loop(shared, &mut stream, epoch, started, &heard);
        let writer = write_loop(shared, &mut sink, epoch, token.as_deref(), out_rx, ping);
        let watchdog = async {
            loop {
                tokio::time::sleep(ping).await;
                let silent = (started.elapsed().as_millis() as u64)
                    .saturating_sub(heard.load(Ordering::Relaxed));
                if silent > 2 * ping.as_millis() as u64 {
                    tracing::warn!(silent_ms = silent, "the hub stopped answering pings");
                    return;
                }
            }
        };
        tokio::select! {
            _ = reader => false,
            r = writer => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "writing to the hub failed");
                }
                false
            }
            _ = watchdog => false,
            _ = shutdown.changed() => true,
        }
    };
    if closing {
        // Say goodbye, and give the hub a moment to answer the close frame.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = sink.send(Message::Close(None)).await;
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    closing
}

/// Reads frames until the socket ends; answers what it can without waiting.
async fn read_loop<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    epoch: u64,
    started: Instant,
    heard: &AtomicU64,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "reading from the hub failed");
                return;
            }
        };
        heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let frame = match codec::decode(msg) {
            Incoming::Frame(Value::Object(f)) => f,
            Incoming::Frame(other) => {
                tracing::warn!(frame = %truncate(&other), "ignoring a frame that is not an object");
                continue;
            }
            Incoming::Garbage(why) => {
                tracing::warn!(%why, "ignoring a frame from the hub");
                continue;
            }
            Incoming::Close => return,
            Incoming::Control => continue,
        };
        match frame.get("type").and_then(Value::as_str) {
            Some("reply") | None => on_reply(shared, frame),
            Some("invoke") => on_invoke(shared, epoch, frame),
            Some("cancel") => on_cancel(shared, epoch, &frame),
            Some("event") => subscription::on_event(shared, epoch, frame),
            Some(other) => tracing::debug!(
                r#type = other,
                "ignoring a frame of a kind this client does not know"
            ),
        }
    }
}

/// A short rendering of a value for a log line.
fn truncate(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn on_reply(shared: &Arc<Shared>, reply: Map<String, Value>) {
    let Some(id) = reply.get("requestid").and_then(Value::as_u64) else {
        // The hub could not tie this to a frame of ours: a frame it could not read, or a result
        // for a call that was already over (cancelled, timed out). Nothing waits for it.
        let reply = truncate(&Value::Object(reply));
        tracing::debug!(%reply, "a reply without a requestid");
        return;
    };
    let entry = lock(&shared.pending).remove(&id);
    match entry {
        None => tracing::debug!(requestid = id, "a reply nobody waits for any more"),
        Some(Pending::Call { tx, .. }) => {
            let _ = tx.send(Reply::from_envelope(reply));
        }
        Some(Pending::Subscribe { key, gen }) => subscription::on_reply(shared, key, gen, reply),
        Some(Pending::Provide {
            endpoint,
            generation,
        }) => {
            let result = Reply::from_envelope(reply);
            let mut providers = lock(&shared.providers);
            let Some(reg) = providers.get_mut(&endpoint) else {
                return;
            };
            if reg.generation != generation {
                return; // a newer provide of the endpoint is on its way; its reply decides
            }
            match result {
                Ok(r) => {
                    reg.provided = true;
                    tracing::debug!(%endpoint, "provided");
                    for w in reg.waiters.drain(..) {
                        let _ = w.send(Ok(r.clone()));
                    }
                }
                Err(e) if !reg.waiters.is_empty() => {
                    // Refused when first asked: the caller of `provide` hears why, and the
                    // endpoint is not provided again after a reconnect.
                    if let Some(reg) = providers.remove(&endpoint) {
                        for w in reg.waiters {
                            let _ = w.send(Err(e.clone()));
                        }
                    }
                }
                Err(e) => {
                    reg.provided = false;
                    tracing::error!(%endpoint, error = %e, "the hub refused to take this endpoint back after a reconnect; trying again on the next connection");
                }
            }
        }
    }
}

fn on_invoke(shared: &Arc<Shared>, epoch: u64, frame: Map<String, Value>) {
    let inv = match Invocation::from_frame(&frame) {
        Ok(inv) => inv,
        Err((Some(callid), why)) => {
            tracing::warn!(callid, %why, "an invoke this client cannot read");
            let answer = Answer::error(
                "PROVIDER_ERROR",
                format!("the provider cannot read the call: {why}"),
            );
            shared.queue_answer(epoch, answer.frame(callid));
            return;
        }
        Err((None, why)) => {
            tracing::warn!(%why, "ignoring an invoke without a callid");
            return;
        }
    };
    let callid = inv.callid;
    let handler = lock(&shared.providers)
        .get(&inv.endpoint)
        .filter(|r| r.provide.serves(inv.method))
        .map(|r| r.handler.clone());
    let Some(handler) = handler else {
        let reason = format!("{} on {} is not provided here", inv.method, inv.endpoint);
        shared.queue_answer(epoch, Answer::reject(reason).frame(callid));
        return;
    };
    let mut running = lock(&shared.running);
    if running.len() >= shared.config.max_invocations {
        drop(running);
        tracing::debug!(
            callid,
            "rejecting an invocation: max_invocations are running"
        );
        shared.queue_answer(epoch, Answer::reject("busy").frame(callid));
        return;
    }
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        let answer = std::panic::AssertUnwindSafe(async move { handler.call(inv).await })
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(callid, "a handler panicked");
                Answer::error("PROVIDER_ERROR", "the provider's handler panicked")
            });
        let current = {
            let mut running = lock(&task_shared.running);
            match running.get(&callid) {
                Some(r) if r.epoch == epoch => running.remove(&callid).is_some(),
                _ => false,
            }
        };
        if current {
            let _ = task_shared
                .out_tx
                .send(Outgoing::Answer {
                    epoch,
                    frame: answer.frame(callid),
                })
                .await;
        }
    });
    // Inserted under the same lock the task takes when it finishes, so a task that ends at
    // once still finds (and removes) its own entry.
    running.insert(
        callid,
        Running {
            epoch,
            abort: task.abort_handle(),
        },
    );
}

fn on_cancel(shared: &Arc<Shared>, epoch: u64, frame: &Map<String, Value>) {
    let Some(callid) = frame.get("callid").and_then(Value::as_u64) else {
        tracing::warn!("ignoring a cancel without a callid");
        return;
    };
    let reason = frame.get("reason").and_then(Value::as_str).unwrap_or("");
    let mut running = lock(&shared.running);
    match running.get(&callid) {
        Some(r) if r.epoch == epoch => {
            if let Some(r) = running.remove(&callid) {
                r.abort.abort();
            }
            tracing::debug!(callid, reason, "call cancelled by the hub");
        }
        _ => tracing::debug!(callid, reason, "a cancel for a call that is already over"),
    }
}

/// Sends provides for every registration, then the outbound queue and pings, until the
/// socket fails.
async fn write_loop<S>(
    shared: &Arc<Shared>,
    sink: &mut S,
    epoch: u64,
    token: Option<&str>,
    out_rx: &mut mpsc::Receiver<Outgoing>,
    ping: Duration,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let endpoints: Vec<String> = lock(&shared.providers).keys().cloned().collect();
    for endpoint in endpoints {
        if let Some(msg) = provide_message(shared, epoch, token, &endpoint) {
            sink.send(msg).await?;
        }
    }
    for key in subscription::due(shared) {
        if let Some(msg) = subscription::subscribe_message(shared, key, epoch, token) {
            sink.send(msg).await?;
        }
    }
    let mut pings = tokio::time::interval(ping);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    loop {
        let item = tokio::select! {
            item = out_rx.recv() => item,
            _ = pings.tick() => {
                sink.send(Message::Ping(Default::default())).await?;
                continue;
            }
        };
        let Some(item) = item else {
            return Ok(());
        };
        let msg = match item {
            Outgoing::Request { requestid, frame } => {
                request_message(shared, requestid, frame, token)
            }
            Outgoing::Provide { endpoint } => provide_message(shared, epoch, token, &endpoint),
            Outgoing::Answer { epoch: e, frame } if e == epoch => answer_message(shared, frame),
            Outgoing::Answer { .. } => None, // its connection is gone, and with it the call
            Outgoing::Subscribe { key } => {
                subscription::subscribe_message(shared, key, epoch, token)
            }
            Outgoing::Unsubscribe { conn, wire } if conn == epoch => {
                let frame = json!({"type": "unsubscribe", "subscription": wire});
                encode_bounded(shared, &frame).ok()
            }
            Outgoing::Unsubscribe { .. } => None, // gone with its connection
        };
        if let Some(msg) = msg {
            sink.send(msg).await?;
        }
    }
}

/// Encodes `frame` in the client's encoding within `max_frame_bytes`.
pub(crate) fn encode_bounded(shared: &Shared, frame: &Value) -> Result<Message, String> {
    let msg = codec::encode(frame, shared.config.encoding)?;
    if msg.len() > shared.config.max_frame_bytes {
        return Err(format!(
            "the frame is {} bytes, over max_frame_bytes ({})",
            msg.len(),
            shared.config.max_frame_bytes
        ));
    }
    Ok(msg)
}

/// The message for a queued call, with `requestid` and `token`; `None` if nobody waits for it
/// any more or it cannot be sent (its caller then hears why).
fn request_message(
    shared: &Shared,
    requestid: u64,
    frame: Map<String, Value>,
    token: Option<&str>,
) -> Option<Message> {
    let mut full = Map::with_capacity(frame.len() + 2);
    let mut rest = frame.into_iter();
    if let Some((k, v)) = rest.next() {
        full.insert(k, v); // `type` first, as in the spec's examples
    }
    full.insert("requestid".into(), json!(requestid));
    if let Some(t) = token {
        full.insert("token".into(), json!(t));
    }
    full.extend(rest);
    let msg = encode_bounded(shared, &Value::Object(full));
    let mut pending = lock(&shared.pending);
    match (pending.get_mut(&requestid), msg) {
        (Some(Pending::Call { sent, .. }), Ok(msg)) => {
            *sent = true;
            Some(msg)
        }
        (Some(Pending::Call { .. }), Err(why)) => {
            if let Some(Pending::Call { tx, .. }) = pending.remove(&requestid) {
                let _ = tx.send(Err(Error::Invalid(why)));
            }
            None
        }
        _ => None,
    }
}

/// The provide frame of `endpoint`'s current registration, unless already sent on this
/// connection.
fn provide_message(
    shared: &Shared,
    epoch: u64,
    token: Option<&str>,
    endpoint: &str,
) -> Option<Message> {
    let mut providers = lock(&shared.providers);
    let reg = providers.get_mut(endpoint)?;
    if reg.sent == Some((epoch, reg.generation)) {
        return None;
    }
    let requestid = shared.next_id();
    let mut frame = reg.provide.frame();
    frame.insert("requestid".into(), json!(requestid));
    if let Some(t) = token {
        frame.insert("token".into(), json!(t));
    }
    match encode_bounded(shared, &Value::Object(frame)) {
        Ok(msg) => {
            reg.sent = Some((epoch, reg.generation));
            lock(&shared.pending).insert(
                requestid,
                Pending::Provide {
                    endpoint: endpoint.to_string(),
                    generation: reg.generation,
                },
            );
            Some(msg)
        }
        Err(why) => {
            if let Some(reg) = providers.remove(endpoint) {
                for w in reg.waiters {
                    let _ = w.send(Err(Error::Invalid(why.clone())));
                }
            }
            None
        }
    }
}

/// The message for a handler's answer; an answer too large to send becomes an error answer.
fn answer_message(shared: &Shared, frame: Value) -> Option<Message> {
    match encode_bounded(shared, &frame) {
        Ok(msg) => Some(msg),
        Err(why) => {
            let callid = frame.get("callid").and_then(Value::as_u64)?;
            tracing::error!(callid, %why, "a handler's answer is too large to send");
            let answer = Answer::error(
                "PROVIDER_ERROR",
                format!("the provider's answer cannot be sent: {why}"),
            );
            encode_bounded(shared, &answer.frame(callid)).ok()
        }
    }
}

/// After a connection ends: its sent calls fail, its provides and invocations are over.
fn end_of_connection(shared: &Shared, epoch: u64) {
    let lost: Vec<Pending> = lock(&shared.pending)
        .extract_if(|_, p| !matches!(p, Pending::Call { sent: false, .. }))
        .map(|(_, p)| p)
        .collect();
    let mut failed = 0usize;
    for p in lost {
        if let Pending::Call { tx, .. } = p {
            failed += 1;
            let _ = tx.send(Err(Error::Disconnected));
        }
    }
    if failed > 0 {
        tracing::debug!(failed, epoch, "calls in flight failed with the connection");
    }
    for reg in lock(&shared.providers).values_mut() {
        reg.sent = None;
        reg.provided = false;
    }
    for (_, r) in lock(&shared.running).drain() {
        r.abort.abort();
    }
    subscription::end_of_connection(shared, epoch);
}

/// The client is closed: everything waiting fails with `Closed` and nothing is kept.
fn close_all(shared: &Shared, out_rx: &mut mpsc::Receiver<Outgoing>) {
    shared.state.send_replace(ConnectionState::Closed);
    out_rx.close();
    while out_rx.try_recv().is_ok() {}
    for (_, p) in lock(&shared.pending).drain() {
        if let Pending::Call { tx, .. } = p {
            let _ = tx.send(Err(Error::Closed));
        }
    }
    // Clearing the registrations also drops handlers that hold a `Client`, which would
    // otherwise keep each other alive.
    let registrations: Vec<Registration> =
        lock(&shared.providers).drain().map(|(_, r)| r).collect();
    for reg in registrations {
        for w in reg.waiters {
            let _ = w.send(Err(Error::Closed));
        }
    }
    for (_, r) in lock(&shared.running).drain() {
        r.abort.abort();
    }
    subscription::close_all(shared);
}
