//! Subscriptions: following an object, an endpoint or a live query (protocol SPEC section 12),
//! with automatic resume after a reconnect.
//!
//! Each subscription keeps, in [`Shared`], the last position it put in its queue toward the
//! application (`delivered`) and the hub's epoch. The connection driver sends a `subscribe`
//! frame for every subscription that is not on the hub (`Phase::Idle`): on a new connection
//! that frame carries `from` + `epoch`, so the hub sends exactly the changes missed. Events are
//! deduplicated by position (a position at or below `delivered` is dropped), so none reaches
//! the application twice.
//!
//! Every (re)subscribe uses a fresh name on the wire (`c<key>.<generation>`), so late events of
//! an earlier registration are recognised and dropped.
//!
//! **Bounds.** Each subscription's queue holds at most `buffer` events. The connection reader
//! never waits for the application: when an event finds the queue full, the client
//! unsubscribes on the hub and drops that event and the ones after it (`Phase::Suspended`).
//! Once the application has emptied the queue, the client subscribes again from the last
//! position it queued, and the hub replays what was dropped; if the hub can no longer do that
//! (`recovered: false`) the application gets a [`SubscriptionItem::Reset`].

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::call::{ChangeKind, Reply};
use crate::connection::{encode_bounded, lock, Outgoing, Pending, Shared};
use crate::error::Error;

/// How many events a subscription buffers for the application unless
/// [`Subscribe::buffer`] says otherwise.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1024;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Every object of the endpoint in the namespace.
    Endpoint,
    /// One object.
    Object(String),
    /// A live query: the objects matching a LIST condition tree (`condition.values`,
    /// protocol SPEC 6.3).
    Query(Value),
}

/// A subscription to build and pass to [`Client::subscribe`](crate::Client::subscribe).
///
/// ```
/// use flowhub_client::Subscribe;
/// use serde_json::json;
///
/// // Every change of address/address in namespace tenant-1, with the current objects first.
/// let all = Subscribe::endpoint("address/address").namespace("tenant-1").snapshot(true);
/// // One object; UPDATE events carry merge patches.
/// let one = Subscribe::object("inventory/device", "dev-1").patch(true);
/// // A live query: objects enter, change inside and leave the result.
/// let envik = Subscribe::endpoint("address/address")
///     .condition(json!({"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}]}));
/// # let _ = (all, one, envik);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// The endpoint, e.g. `address/address`.
    pub endpoint: String,
    /// The namespace; `""` is the default one.
    pub namespace: String,
    /// An endpoint, one object or a live query.
    pub target: Target,
    /// Ask for the current state in the reply (and in every [`SubscriptionItem::Reset`]).
    pub snapshot: bool,
    /// UPDATE events carry an RFC 7386 merge patch instead of the whole object.
    pub patch: bool,
    /// How many events may wait for the application (at least 1); see
    /// [`Client::subscribe`](crate::Client::subscribe) for what happens when it is full.
    pub buffer: usize,
    /// Start after this position of an earlier subscription instead of now.
    pub from: Option<u64>,
    /// The epoch `from` belongs to.
    pub epoch: Option<String>,
}

impl Subscribe {
    /// Every object of `endpoint` (in the default namespace until [`namespace`](Self::namespace)).
    pub fn endpoint(endpoint: impl Into<String>) -> Subscribe {
        Subscribe {
            endpoint: endpoint.into(),
            namespace: String::new(),
            target: Target::Endpoint,
            snapshot: false,
            patch: false,
            buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            from: None,
            epoch: None,
        }
    }

    /// One object of `endpoint`.
    pub fn object(endpoint: impl Into<String>, objectid: impl Into<String>) -> Subscribe {
        let mut s = Subscribe::endpoint(endpoint);
        s.target = Target::Object(objectid.into());
        s
    }

    /// Makes this a live query on the condition tree (replaces an object id).
    pub fn condition(mut self, condition: Value) -> Subscribe {
        self.target = Target::Query(condition);
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Subscribe {
        self.namespace = namespace.into();
        self
    }

    /// Asks for the current state in the reply: [`Subscription::snapshot`].
    pub fn snapshot(mut self, snapshot: bool) -> Subscribe {
        self.snapshot = snapshot;
        self
    }

    /// UPDATE events carry merge patches ([`Event::patch`]).
    pub fn patch(mut self, patch: bool) -> Subscribe {
        self.patch = patch;
        self
    }

    /// How many events may wait for the application.
    pub fn buffer(mut self, events: usize) -> Subscribe {
        self.buffer = events.max(1);
        self
    }

    /// Continues an earlier subscription: the events after `position` of `epoch` come first
    /// (the reply's `recovered` says whether the hub could; if not, a
    /// [`SubscriptionItem::Reset`] comes first).
    pub fn resume_from(mut self, position: u64, epoch: impl Into<String>) -> Subscribe {
        self.from = Some(position);
        self.epoch = Some(epoch.into());
        self
    }
}

/// For live queries: what the change did to the query's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Live {
    /// The object came into the result (created matching, or updated into the match).
    Enter,
    /// It changed and still matches.
    Change,
    /// It left the result (deleted, or updated out of the match).
    Leave,
}

/// One committed change, as the hub's `event` frame carries it (protocol SPEC 12.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The subscription's id ([`Subscription::id`]).
    pub subscription: String,
    /// What the write did to the object.
    pub kind: ChangeKind,
    /// Live queries only: enter, change or leave.
    pub live: Option<Live>,
    /// The object's endpoint.
    pub endpoint: String,
    /// The object's namespace (`""` for the default one).
    pub namespace: String,
    /// The object's id.
    pub objectid: String,
    /// The object's new version (for a DELETE, the position of the delete).
    pub version: u64,
    /// The change's position in the hub's change sequence; increases along a subscription.
    pub position: u64,
    /// The whole new state (a DELETE: the last state), or the merge patch when `patch`.
    pub data: Value,
    /// `data` is an RFC 7386 merge patch from the previous version.
    pub patch: bool,
}

impl Event {
    /// `data` deserialized into `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.data).map_err(|e| Error::Protocol(format!("event data: {e}")))
    }

    fn from_frame(f: &Map<String, Value>, subscription: &str) -> Result<Event, String> {
        let text = |k: &str| match f.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            None | Some(Value::Null) if k == "namespace" => Ok(String::new()),
            _ => Err(format!("the event has no {k}")),
        };
        let number = |k: &str| {
            f.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("the event has no {k}"))
        };
        let kind = match f.get("kind").and_then(Value::as_str) {
            Some("CREATE") => ChangeKind::Create,
            Some("UPDATE") => ChangeKind::Update,
            Some("DELETE") => ChangeKind::Delete,
            other => return Err(format!("an event of kind {other:?}")),
        };
        let live = match f.get("live").and_then(Value::as_str) {
            None => None,
            Some("enter") => Some(Live::Enter),
            Some("change") => Some(Live::Change),
            Some("leave") => Some(Live::Leave),
            Some(other) => return Err(format!("an event with live {other:?}")),
        };
        Ok(Event {
            subscription: subscription.to_string(),
            kind,
            live,
            endpoint: text("endpoint")?,
            namespace: text("namespace")?,
            objectid: text("objectid")?,
            version: number("version")?,
            position: number("position")?,
            data: f.get("data").cloned().unwrap_or(Value::Null),
            patch: f.get("patch").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// The state a subscribe reply carries when asked with [`Subscribe::snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// For an object: its state, or `null` if it does not exist. For an endpoint or a live
    /// query: the list of objects (natural order).
    pub data: Value,
    /// For an endpoint or a live query: the number of objects.
    pub count: Option<u64>,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone)]
pub enum SubscriptionItem {
    /// A change, in commit order, each one once.
    Event(Event),
    /// The hub could not resume the subscription where the application left off (another
    /// epoch — a hub with a new or wiped data directory —, a gap older than the log the hub
    /// keeps, or too much missed at once): changes were missed, and the application must
    /// reload its state. Events buffered before it were dropped (they describe the state being
    /// replaced); the events that follow start after `position`. With
    /// [`Subscribe::snapshot`] the state comes with it.
    Reset {
        /// Where the events that follow start.
        position: u64,
        /// The hub's epoch now.
        epoch: String,
        /// The current state, if the subscription asked for snapshots.
        snapshot: Option<Snapshot>,
    },
    /// The hub refused to take the subscription back after a reconnect (its rights were
    /// withdrawn, say). Nothing follows.
    Ended(Error),
}

/// The bounded queue between the connection reader and the application.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
}

struct QueueState {
    items: VecDeque<SubscriptionItem>,
    closed: bool,
    /// The subscription was taken off the hub because this queue was full; the next poll that
    /// finds the queue empty asks for it again.
    suspended: bool,
    waker: Option<Waker>,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                closed: false,
                suspended: false,
                waker: None,
            }),
            capacity: capacity.max(1),
        }
    }

    fn wake(mut s: std::sync::MutexGuard<'_, QueueState>) {
        let w = s.waker.take();
        drop(s);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Queues an event unless the queue is full or closed (`false`: the event is dropped).
    fn push_event(&self, ev: Event) -> bool {
        let mut s = lock(&self.state);
        if s.closed || s.items.len() >= self.capacity {
            return false;
        }
        s.items.push_back(SubscriptionItem::Event(ev));
        Queue::wake(s);
        true
    }

    /// Replaces whatever waits with a reset.
    fn push_reset(&self, item: SubscriptionItem) {
        let mut s = lock(&self.state);
        if s.closed {
            return;
        }
        s.items.clear();
        s.items.push_back(item);
        Queue::wake(s);
    }

    /// Queues a last item and closes.
    fn push_end(&self, item: SubscriptionItem) {
        let mut s = lock(&self.state);
        if !s.closed {
            s.items.push_back(item);
            s.closed = true;
        }
        Queue::wake(s);
    }

    fn suspend(&self) {
        lock(&self.state).suspended = true;
    }

    pub(crate) fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        Queue::wake(s);
    }

    fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// The next item, or why there is none (registering `waker` for the next push).
    fn pop(&self, waker: &Waker) -> Pop {
        let mut s = lock(&self.state);
        if let Some(item) = s.items.pop_front() {
            return Pop::Item(item);
        }
        if s.closed {
            return Pop::Closed;
        }
        s.waker = Some(waker.clone());
        Pop::Empty {
            resume: std::mem::take(&mut s.suspended),
        }
    }
}

/// What [`Queue::pop`] found.
enum Pop {
    Item(SubscriptionItem),
    Closed,
    /// Nothing yet; `resume`: the subscription was suspended and may now come back.
    Empty {
        resume: bool,
    },
}

/// Where a subscription stands toward the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not on the hub: a subscribe frame is due on the current (or next) connection.
    Idle,
    /// A subscribe frame went out on connection `conn` (the client's connection count).
    Active { conn: u64 },
    /// Taken off the hub because the application fell behind; waits for it to catch up.
    Suspended,
}

/// A subscription as the connection driver keeps it.
pub(crate) struct SubState {
    spec: Subscribe,
    queue: Arc<Queue>,
    /// Bumped by each subscribe frame: the wire name is `c<key>.<gen>`.
    gen: u64,
    pub(crate) phase: Phase,
    /// The hub's epoch that `delivered` belongs to.
    epoch: Option<String>,
    /// The last position queued for the application (an event's, or a reply's start).
    delivered: Option<u64>,
    /// `Client::subscribe` waiting for the first reply.
    first: Option<oneshot::Sender<Result<Start, Error>>>,
}

impl SubState {
    fn wire(key: u64, gen: u64) -> String {
        format!("c{key}.{gen}")
    }
}

/// The first reply, for [`Client::subscribe`](crate::Client::subscribe).
pub(crate) struct Start {
    position: u64,
    epoch: String,
    recovered: Option<bool>,
    snapshot: Option<Snapshot>,
}

/// `c<key>.<gen>` → (key, gen).
fn parse_wire(s: &str) -> Option<(u64, u64)> {
    let (key, gen) = s.strip_prefix('c')?.split_once('.')?;
    Some((key.parse().ok()?, gen.parse().ok()?))
}

fn stable_id(key: u64) -> String {
    format!("c{key}")
}

/// Registers a subscription, queues its subscribe frame and waits for the first reply.
pub(crate) async fn subscribe(
    shared: &Arc<Shared>,
    spec: Subscribe,
) -> Result<Subscription, Error> {
    let key = shared.next_id();
    let queue = Arc::new(Queue::new(spec.buffer));
    let (tx, rx) = oneshot::channel();
    lock(&shared.subs).insert(
        key,
        SubState {
            queue: queue.clone(),
            gen: 0,
            phase: Phase::Idle,
            epoch: spec.epoch.clone(),
            delivered: spec.from,
            first: Some(tx),
            spec,
        },
    );
    // Forgets the subscription (on the hub too) if this future ends without a handle.
    let mut guard = Forget {
        shared: shared.clone(),
        key: Some(key),
    };
    shared
        .out_tx
        .send(Outgoing::Subscribe { key })
        .await
        .map_err(|_| Error::Closed)?;
    let wait = shared.config.call_timeout;
    let start = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(r)) => r?,
        Ok(Err(_)) => return Err(Error::Closed),
        Err(_) => return Err(Error::Timeout(wait)),
    };
    guard.key = None;
    Ok(Subscription {
        shared: shared.clone(),
        key: Some(key),
        id: stable_id(key),
        queue,
        snapshot: start.snapshot,
        position: start.position,
        epoch: start.epoch,
        recovered: start.recovered,
    })
}

/// Removes a subscription and takes it off the hub, without waiting.
struct Forget {
    shared: Arc<Shared>,
    key: Option<u64>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            forget(&self.shared, key);
        }
    }
}

/// Removes the subscription `key`; if the hub has it, queues an unsubscribe for its connection.
fn forget(shared: &Shared, key: u64) -> Option<(Phase, String)> {
    let removed = lock(&shared.subs).remove(&key)?;
    removed.queue.close();
    let wire = SubState::wire(key, removed.gen);
    if let Phase::Active { conn } = removed.phase {
        shared.queue_outgoing(Outgoing::Unsubscribe {
            conn,
            wire: wire.clone(),
        });
    }
    Some((removed.phase, wire))
}

/// The subscribe frame of `key`, if it is due (`Idle`); marks it `Active` on `conn`.
pub(crate) fn subscribe_message(
    shared: &Shared,
    key: u64,
    conn: u64,
    token: Option<&str>,
) -> Option<Message> {
    let mut subs = lock(&shared.subs);
    let sub = subs.get_mut(&key)?;
    if sub.phase != Phase::Idle {
        return None;
    }
    sub.gen += 1;
    let requestid = shared.next_id();
    let spec = &sub.spec;
    let mut f = Map::new();
    f.insert("type".into(), json!("subscribe"));
    f.insert("requestid".into(), json!(requestid));
    f.insert("subscription".into(), json!(SubState::wire(key, sub.gen)));
    f.insert("endpoint".into(), json!(spec.endpoint));
    f.insert("namespace".into(), json!(spec.namespace));
    match &spec.target {
        Target::Endpoint => {}
        Target::Object(id) => {
            f.insert("objectid".into(), json!(id));
        }
        Target::Query(c) => {
            f.insert("condition".into(), c.clone());
        }
    }
    f.insert("snapshot".into(), json!(spec.snapshot));
    f.insert("patch".into(), json!(spec.patch));
    if let Some(from) = sub.delivered {
        f.insert("from".into(), json!(from));
        if let Some(e) = &sub.epoch {
            f.insert("epoch".into(), json!(e));
        }
    }
    if let Some(t) = token {
        f.insert("token".into(), json!(t));
    }
    match encode_bounded(shared, &Value::Object(f)) {
        Ok(msg) => {
            sub.phase = Phase::Active { conn };
            lock(&shared.pending).insert(requestid, Pending::Subscribe { key, gen: sub.gen });
            Some(msg)
        }
        Err(why) => {
            let err = Error::Invalid(why);
            if let Some(sub) = subs.remove(&key) {
                match sub.first {
                    Some(tx) => {
                        let _ = tx.send(Err(err));
                    }
                    None => sub.queue.push_end(SubscriptionItem::Ended(err)),
                }
            }
            None
        }
    }
}

/// The hub's answer to a subscribe frame.
pub(crate) fn on_reply(shared: &Shared, key: u64, gen: u64, mut reply: Map<String, Value>) {
    let mut subs = lock(&shared.subs);
    let Some(sub) = subs.get_mut(&key) else {
        return;
    };
    if sub.gen != gen {
        return; // a later subscribe frame of this subscription decides
    }
    if reply.get("success") != Some(&Value::Bool(true)) {
        let err = match Reply::from_envelope(reply) {
            Err(e) => e,
            Ok(_) => Error::Protocol("a failed subscribe reply".into()),
        };
        if let Some(sub) = subs.remove(&key) {
            match sub.first {
                Some(tx) => {
                    let _ = tx.send(Err(err));
                }
                None => {
                    tracing::error!(subscription = %stable_id(key), error = %err, "the hub refused to resume a subscription");
                    sub.queue.push_end(SubscriptionItem::Ended(err));
                }
            }
        }
        return;
    }
    let (Some(position), Some(epoch)) = (
        reply.get("position").and_then(Value::as_u64),
        reply
            .get("epoch")
            .and_then(Value::as_str)
            .map(str::to_string),
    ) else {
        tracing::warn!(subscription = %stable_id(key), "a subscribe reply without position or epoch");
        return;
    };
    let recovered = reply.get("recovered").and_then(Value::as_bool);
    let snapshot = if sub.spec.snapshot && reply.contains_key("data") {
        Some(Snapshot {
            count: reply.get("count").and_then(Value::as_u64),
            data: reply.remove("data").unwrap_or(Value::Null),
        })
    } else {
        None
    };
    // Resumed: the missed events follow, after `delivered`. A fresh start without a `from`
    // (only the first subscribe) or a failed resume: events start after `position`.
    let resumed = recovered == Some(true) && sub.delivered.is_some();
    let reset = sub.delivered.is_some() && !resumed;
    if !resumed {
        sub.delivered = Some(position);
    }
    sub.epoch = Some(epoch.clone());
    if reset {
        tracing::warn!(subscription = %stable_id(key), position, "the hub could not resume the subscription; the application must reload");
        sub.queue.push_reset(SubscriptionItem::Reset {
            position,
            epoch: epoch.clone(),
            snapshot: snapshot.clone(),
        });
    }
    if let Some(tx) = sub.first.take() {
        let _ = tx.send(Ok(Start {
            position: sub.delivered.unwrap_or(position),
            epoch,
            recovered,
            snapshot,
        }));
    }
}

/// An `event` frame from the hub on connection `conn`.
pub(crate) fn on_event(shared: &Shared, conn: u64, frame: Map<String, Value>) {
    let Some((key, gen)) = frame
        .get("subscription")
        .and_then(Value::as_str)
        .and_then(parse_wire)
    else {
        tracing::debug!("an event for a subscription this client does not know");
        return;
    };
    let mut subs = lock(&shared.subs);
    let Some(sub) = subs.get_mut(&key) else {
        return; // unsubscribed meanwhile
    };
    if sub.gen != gen || sub.phase != (Phase::Active { conn }) {
        return; // an earlier registration's
    }
    let ev = match Event::from_frame(&frame, &stable_id(key)) {
        Ok(ev) => ev,
        Err(why) => {
            tracing::warn!(subscription = %stable_id(key), %why, "ignoring an event this client cannot read");
            return;
        }
    };
    if sub.delivered.is_some_and(|d| ev.position <= d) {
        return; // already delivered
    }
    let position = ev.position;
    if sub.queue.push_event(ev) {
        sub.delivered = Some(position);
    } else {
        // The application is behind: stop the flow on the hub rather than buffer without
        // bound, and resume from `delivered` when it has caught up.
        tracing::warn!(
            subscription = %stable_id(key),
            buffer = sub.spec.buffer,
            after = ?sub.delivered,
            "the application does not keep up with a subscription; suspending it until its buffer is empty"
        );
        let wire = SubState::wire(key, sub.gen);
        sub.gen += 1; // later events of `wire` are dropped
        sub.phase = Phase::Suspended;
        sub.queue.suspend();
        shared.queue_outgoing(Outgoing::Unsubscribe { conn, wire });
    }
}

/// The connection `conn` ended: its subscriptions are due again on the next one.
pub(crate) fn end_of_connection(shared: &Shared, conn: u64) {
    for sub in lock(&shared.subs).values_mut() {
        if sub.phase == (Phase::Active { conn }) {
            sub.phase = Phase::Idle;
        }
    }
}

/// Keys of the subscriptions due on a new connection.
pub(crate) fn due(shared: &Shared) -> Vec<u64> {
    let mut keys: Vec<u64> = lock(&shared.subs)
        .iter()
        .filter(|(_, s)| s.phase == Phase::Idle)
        .map(|(k, _)| *k)
        .collect();
    keys.sort_unstable();
    keys
}

/// The client closed: every subscription's stream ends.
pub(crate) fn close_all(shared: &Shared) {
    let subs: Vec<SubState> = lock(&shared.subs).drain().map(|(_, s)| s).collect();
    for sub in subs {
        if let Some(tx) = sub.first {
            let _ = tx.send(Err(Error::Closed));
        }
        sub.queue.close();
    }
}

/// A subscription: a stream of [`SubscriptionItem`]s (see
/// [`Client::subscribe`](crate::Client::subscribe)).
///
/// Read it with [`next`](Self::next) or as a [`futures_util::Stream`]. It follows the client
/// through reconnects; it ends (`None`) when the client is closed, after
/// [`SubscriptionItem::Ended`], or after [`unsubscribe`](Self::unsubscribe). Dropping it
/// unsubscribes in the background.
pub struct Subscription {
    shared: Arc<Shared>,
    key: Option<u64>,
    id: String,
    queue: Arc<Queue>,
    snapshot: Option<Snapshot>,
    position: u64,
    epoch: String,
    recovered: Option<bool>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("position", &self.position)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Subscription {
    /// The client's name for this subscription; events carry it in [`Event::subscription`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state the subscribe reply carried, with [`Subscribe::snapshot`]: the events that
    /// follow are exactly the changes after it.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// Takes the snapshot out of the handle.
    pub fn take_snapshot(&mut self) -> Option<Snapshot> {
        self.snapshot.take()
    }

    /// The position of the last item this handle returned (an event's, a reset's), or where
    /// the subscription started. With [`epoch`](Self::epoch) it is what
    /// [`Subscribe::resume_from`] takes to continue in another process.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The hub's epoch that [`position`](Self::position) belongs to.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The first reply's `recovered`: `None` without [`Subscribe::resume_from`].
    pub fn recovered(&self) -> Option<bool> {
        self.recovered
    }

    /// How many items wait in the buffer.
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// The next item; `None` when the subscription is over.
    pub async fn next(&mut self) -> Option<SubscriptionItem> {
        poll_fn(|cx| self.poll_item(cx)).await
    }

    /// The next item if one is buffered, without waiting.
    pub fn try_next(&mut self) -> Option<SubscriptionItem> {
        let waker = Waker::noop();
        match self.poll_item(&mut Context::from_waker(waker)) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionItem>> {
        match self.queue.pop(cx.waker()) {
            Pop::Item(item) => {
                match &item {
                    SubscriptionItem::Event(ev) => self.position = ev.position,
                    SubscriptionItem::Reset {
                        position, epoch, ..
                    } => {
                        self.position = *position;
                        self.epoch.clone_from(epoch);
                    }
                    SubscriptionItem::Ended(_) => {}
                }
                Poll::Ready(Some(item))
            }
            Pop::Closed => Poll::Ready(None),
            Pop::Empty { resume } => {
                if resume {
                    self.resume();
                }
                Poll::Pending
            }
        }
    }

    /// The buffer is empty after a suspension: subscribe again from the last position queued.
    fn resume(&self) {
        let Some(key) = self.key else { return };
        {
            let mut subs = lock(&self.shared.subs);
            let Some(sub) = subs.get_mut(&key) else {
                return;
            };
            if sub.phase != Phase::Suspended {
                return;
            }
            sub.phase = Phase::Idle;
        }
        tracing::debug!(subscription = %self.id, "the application caught up; resuming the subscription");
        self.shared.queue_outgoing(Outgoing::Subscribe { key });
    }

    /// Ends the subscription and waits for the hub to confirm (when it has it on the current
    /// connection): no event comes after this. Items still buffered are dropped.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        let Some(key) = self.key.take() else {
            return Ok(());
        };
        let Some((phase, wire)) = forget_quietly(&self.shared, key) else {
            return Ok(());
        };
        let Phase::Active { conn } = phase else {
            return Ok(());
        };
        if *self.shared.state.borrow() != (crate::ConnectionState::Connected { epoch: conn }) {
            return Ok(()); // that connection is gone, and the subscription with it
        }
        let mut frame = Map::new();
        frame.insert("type".into(), json!("unsubscribe"));
        frame.insert("subscription".into(), json!(wire));
        match crate::client::request(&self.shared, frame, self.shared.config.call_timeout).await {
            Ok(_) | Err(Error::Disconnected) => Ok(()),
            Err(e) if e.errorcode() == Some("DO_NOT_EXIST") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Removes the subscription without queueing an unsubscribe: its phase and wire name.
fn forget_quietly(shared: &Shared, key: u64) -> Option<(Phase, String)> {
    let removed = lock(&shared.subs).remove(&key)?;
    removed.queue.close();
    Some((removed.phase, SubState::wire(key, removed.gen)))
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            forget(&self.shared, key);
        }
    }
}

impl futures_util::Stream for Subscription {
    type Item = SubscriptionItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubscriptionItem>> {
        self.get_mut().poll_item(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        assert_eq!(parse_wire(&SubState::wire(17, 3)), Some((17, 3)));
        assert_eq!(parse_wire("s1"), None);
        assert_eq!(parse_wire("c1"), None);
        assert_eq!(parse_wire("cx.1"), None);
    }

    #[test]
    fn events_read_as_in_the_spec() {
        let f = json!({"type":"event","subscription":"c1.1","kind":"UPDATE","live":"enter",
            "endpoint":"address/address","namespace":"","objectid":"b93a","version":813,
            "position":813,"patch":true,"data":{"city":"Envik"}});
        let ev = Event::from_frame(f.as_object().unwrap(), "c1").unwrap();
        assert_eq!(ev.kind, ChangeKind::Update);
        assert_eq!(ev.live, Some(Live::Enter));
        assert_eq!((ev.version, ev.position), (813, 813));
        assert!(ev.patch);
        assert_eq!(ev.subscription, "c1");
        let bad = json!({"kind":"MOVE","endpoint":"a/b","objectid":"x","version":1,"position":1});
        assert!(Event::from_frame(bad.as_object().unwrap(), "c1").is_err());
        let no_pos = json!({"kind":"CREATE","endpoint":"a/b","objectid":"x","version":1});
        assert!(Event::from_frame(no_pos.as_object().unwrap(), "c1").is_err());
    }

    fn ev(position: u64) -> Event {
        Event {
            subscription: "c1".into(),
            kind: ChangeKind::Create,
            live: None,
            endpoint: "a/b".into(),
            namespace: String::new(),
            objectid: format!("o{position}"),
            version: position,
            position,
            data: Value::Null,
            patch: false,
        }
    }

    #[test]
    fn the_queue_is_bounded_and_a_reset_replaces_what_waits() {
        let q = Queue::new(2);
        assert!(q.push_event(ev(1)));
        assert!(q.push_event(ev(2)));
        assert!(!q.push_event(ev(3)), "full");
        q.push_reset(SubscriptionItem::Reset {
            position: 9,
            epoch: "e".into(),
            snapshot: None,
        });
        assert_eq!(q.len(), 1);
        let w = Waker::noop();
        assert!(matches!(
            q.pop(w),
            Pop::Item(SubscriptionItem::Reset { position: 9, .. })
        ));
        q.suspend();
        assert!(matches!(q.pop(w), Pop::Empty { resume: true }));
        assert!(matches!(q.pop(w), Pop::Empty { resume: false }));
        q.push_end(SubscriptionItem::Ended(Error::Closed));
        assert!(matches!(q.pop(w), Pop::Item(SubscriptionItem::Ended(_))));
        assert!(matches!(q.pop(w), Pop::Closed));
    }
}
