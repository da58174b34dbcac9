//! The fan-out: subscriptions, live-query matching, the resume window and the subscribers'
//! bounded outbound queues.
//!
//! The sequencer hands every committed batch of changes, in commit order, to one fan-out
//! task ([`crate::store::Store::changes`]). It runs on the async runtime, not on a thread of
//! its own, so that waking the connections' writers is a push onto the worker's run queue
//! rather than a cross-thread wake-up per connection. For each change the task makes one
//! [`Event`], appends it to the resume [`Window`], finds the subscriptions it concerns — the
//! endpoint's subscribers in that namespace, the object's subscribers, and the live queries
//! the [`matcher`] picks — and pushes one frame per subscription onto that connection's
//! [`Outbox`]. Each frame is a short per-subscription head plus a tail serialized once per
//! change and encoding and shared by every subscriber.
//!
//! Invariants:
//! - Events reach each subscription in commit order, once: one task delivers them, in
//!   order, and a subscription's `gate` drops positions it has already covered.
//! - The fan-out never waits for a subscriber: an outbox is unbounded as a channel but
//!   bounded in bytes (`max_outbound_bytes`); a push past the bound marks the connection
//!   slow, its queue is dropped and the socket closed with [`SLOW_CLOSE_CODE`].
//! - Registration and snapshot do not race with changes: see [`session`] (register first,
//!   read the state and its position, then open the gate past that position). A resume from
//!   further back than the window reads the log on a blocking thread ([`replay`]) while the
//!   gate stays pending, never on this task.
//!
//! Never: blocks on a socket, or holds a lock while waiting.

pub mod event;
pub mod matcher;
mod replay;
pub mod session;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub use event::{Event, Live};
pub use session::Connection;
pub use window::Window;

use crate::protocol::subscribe::Target;
use crate::protocol::Encoding;
use crate::store::{ChangeKind, Store};

/// The WebSocket close code for a subscriber whose outbound queue passed its bound (the
/// code Centrifugo uses for slow consumers).
pub const SLOW_CLOSE_CODE: u16 = 3008;

/// The frames of one event made so far, by subscription id and form: subscriptions of the
/// same name on different connections (every browser running the same application names
/// its subscriptions alike, and unnamed ones are `s1`, `s2`, … on every connection) share
/// one frame, so a delivery is a reference count, not a copy.
#[derive(Default)]
struct Frames<'s> {
    /// A key seen once maps to `None`: its frame is kept (a second reference to it, which
    /// costs a shared allocation) only once a second subscription asks for it, so frames
    /// nobody shares cost no more than a copy.
    by_key: HashMap<(&'s str, u8), Option<(Message, usize)>, foldhash::fast::RandomState>,
    /// The last frame used: consecutive subscriptions usually share it, and a comparison
    /// of a short name is cheaper than hashing it.
    last: Option<((&'s str, u8), Message, usize)>,
}

impl<'s> Frames<'s> {
    fn clear(&mut self) {
        self.by_key.clear();
        self.last = None;
    }

    /// The frame of `key`, made by `make` unless it is kept already.
    fn get_or_make(
        &mut self,
        key: (&'s str, u8),
        make: impl FnOnce() -> (Message, usize),
    ) -> (Message, usize) {
        if let Some((k, m, n)) = &self.last {
            if *k == key {
                return (m.clone(), *n);
            }
        }
        match self.by_key.get_mut(&key) {
            None => {
                self.by_key.insert(key, None);
                make()
            }
            Some(Some((m, n))) => {
                let found = (m.clone(), *n);
                self.last = Some((key, m.clone(), *n));
                found
            }
            Some(slot @ None) => {
                let (m, n) = make();
                *slot = Some((m.clone(), n));
                self.last = Some((key, m.clone(), n));
                (m, n)
            }
        }
    }
}

/// An event's old and new state as trees.
type Trees = (
    Option<serde_json::Map<String, serde_json::Value>>,
    Option<serde_json::Map<String, serde_json::Value>>,
);

/// Past this many live queries to test against one change, its states are parsed once.
const PARSE_FOR: usize = 16;

/// Frames queued together, each with the bytes it was counted for (0: not counted).
type Batch = Vec<(Message, usize)>;

/// Most events delivered in one round.
const MAX_ROUND: usize = 256;

/// A gate that is not open yet: events are held until the subscription's start is known.
const PENDING: u64 = u64::MAX;

/// Fan-out settings from the configuration.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Events kept for resuming.
    pub resume_window: usize,
    /// Approximate bytes of the events kept for resuming.
    pub resume_window_bytes: usize,
    /// Bytes of events one connection may have queued before it is closed as slow.
    pub max_outbound_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Largest snapshot (objects) a subscribe may return, as `max_list_items` for LIST.
    pub max_list_items: usize,
    /// The log's segments, to resume from further back than the window (`None`: a
    /// memory-only hub, window only).
    pub log_dir: Option<std::path::PathBuf>,
}

/// Resumes read from the log at once, hub-wide: a crowd reconnecting after a restart reads
/// the disk a few at a time instead of filling the blocking pool.
const LOG_REPLAYS: usize = 2;

/// The hub's fan-out. Cloning is shallow.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
    /// Reads snapshots; the fan-out task itself holds no store (it must not keep the
    /// sequencer alive).
    store: Store,
}

struct Inner {
    config: FanoutConfig,
    /// Tells one history of positions from another: a new data directory gets a new epoch.
    epoch: String,
    /// endpoint → namespace → subscriptions.
    topics: RwLock<HashMap<String, HashMap<String, Topic>>>,
    window: RwLock<Window>,
    next_conn: AtomicU64,
    /// Permits for reading the log back ([`LOG_REPLAYS`]).
    replays: Arc<tokio::sync::Semaphore>,
}

/// The subscriptions of one collection (an endpoint in a namespace).
#[derive(Default)]
struct Topic {
    all: Vec<Arc<Sub>>,
    objects: HashMap<Arc<str>, Vec<Arc<Sub>>>,
    queries: matcher::QueryIndex,
}

impl Topic {
    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.objects.is_empty() && self.queries.is_empty()
    }
}

/// One subscription of one connection.
pub struct Sub {
    pub id: String,
    /// The id as frames carry it.
    sid: event::Sid,
    pub endpoint: String,
    pub namespace: String,
    pub target: Target,
    /// Events go out in the encoding the subscribe frame came in.
    pub encoding: Encoding,
    pub patch: bool,
    outbox: Arc<Outbox>,
    /// [`PENDING`], or the position after which events are delivered.
    gate: AtomicU64,
    /// Frames held while the gate is pending: (position, frame, bytes).
    held: Mutex<Vec<(u64, Message, usize)>>,
    closed: AtomicBool,
}

impl Sub {
    /// The frame of `ev` for this subscription.
    fn frame(&self, ev: &Event, live: Option<Live>) -> (Message, usize) {
        ev.frame(self.encoding, &self.sid, live, self.patch)
    }

    /// How `ev` looks to this subscription: `None` if it does not concern it.
    /// `trees`: the old and the new state parsed once, when many queries test them (a field
    /// lookup in a tree is cheaper than a scan of the text).
    fn sees(&self, ev: &Event, trees: Option<&Trees>) -> Option<Option<Live>> {
        match &self.target {
            Target::Endpoint => Some(None),
            Target::Object(id) => (**id == *ev.id).then_some(None),
            Target::Query(g) => {
                let test = |old: bool| match trees {
                    Some((o, n)) => {
                        let t = if old { o } else { n };
                        t.as_ref().is_some_and(|m| g.matches(m))
                    }
                    None => {
                        let r = if old { &ev.old } else { &ev.new };
                        r.as_ref().is_some_and(|r| g.matches(&r.json[..]))
                    }
                };
                let (was, is) = if ev.published && ev.kind != ChangeKind::Delete {
                    // A provider's change carries no old state: a match is an entry when
                    // created, else a change; a non-match says nothing.
                    (ev.kind == ChangeKind::Update && test(false), test(false))
                } else {
                    (test(true), test(false))
                };
                match (was, is) {
                    (false, true) => Some(Some(Live::Enter)),
                    (true, true) => Some(Some(Live::Change)),
                    (true, false) => Some(Some(Live::Leave)),
                    (false, false) => None,
                }
            }
        }
    }

    /// Delivers `ev` (already known to concern this subscription) unless the subscription
    /// has covered its position; holds it while the gate is pending.
    fn deliver<'s>(
        &'s self,
        ev: &Event,
        live: Option<Live>,
        frames: &mut Frames<'s>,
        staging: &mut Staging,
    ) {
        if self.closed.load(Ordering::Relaxed) || self.outbox.is_slow() {
            return;
        }
        let mut from = self.gate.load(Ordering::Acquire);
        if from == PENDING {
            let mut held = self.held.lock();
            from = self.gate.load(Ordering::Acquire);
            if from == PENDING {
                let (msg, size) = self.frame(ev, live);
                if self.outbox.reserve(size) {
                    held.push((ev.seq, msg, size));
                }
                return;
            }
        }
        if ev.seq <= from {
            return;
        }
        let key = (self.sid.json.as_str(), self.form(live));
        let (msg, size) = frames.get_or_make(key, || self.frame(ev, live));
        if self.outbox.reserve(size) {
            staging.stage(&self.outbox, msg, size);
        }
    }

    /// The frame's form besides the subscription id: encoding, data form and live kind.
    fn form(&self, live: Option<Live>) -> u8 {
        let live = match live {
            None => 0,
            Some(Live::Enter) => 1,
            Some(Live::Change) => 2,
            Some(Live::Leave) => 3,
        };
        live | (u8::from(self.patch) << 2) | (u8::from(self.encoding == Encoding::MsgPack) << 3)
    }

    /// Opens the gate after `position`: the reply and the catch-up frames go out first, then
    /// the held frames past `position`, then live ones.
    fn open(&self, position: u64, first: Vec<(Message, usize)>) {
        let mut held = self.held.lock();
        let mut out = first;
        for (seq, msg, size) in held.drain(..) {
            if seq > position {
                out.push((msg, size));
            } else {
                self.outbox.release(size);
            }
        }
        self.outbox.send_all(out);
        self.gate.store(position, Ordering::Release);
    }
}

/// One connection's queue of outgoing events (and subscription replies, which must not
/// overtake events). A channel whose contents are bounded in bytes by the pushes.
pub struct Outbox {
    conn: u64,
    /// Batches of frames.
    tx: mpsc::UnboundedSender<Batch>,
    /// Only the fan-out task touches it: this outbox's slot in the [`Staging`] of the batch
    /// being delivered, plus one (0: none).
    staged: AtomicUsize,
    /// Bytes of events queued and not yet written.
    queued: AtomicUsize,
    limit: usize,
    /// Set when the connection fell behind past `limit`; read on every delivery.
    is_slow: AtomicBool,
    /// The writer waiting for [`Slow`], woken when `is_slow` is set.
    slow_waker: AtomicWaker,
}

impl Outbox {
    /// Counts `size` bytes of events in, or marks the connection slow (once, with a log
    /// line) when that would pass the bound.
    fn is_slow(&self) -> bool {
        self.is_slow.load(Ordering::Relaxed)
    }

    fn reserve(&self, size: usize) -> bool {
        if self.is_slow() {
            return false;
        }
        let queued = self.queued.fetch_add(size, Ordering::AcqRel) + size;
        if queued > self.limit {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            if !self.is_slow.swap(true, Ordering::AcqRel) {
                crate::limits::breach(crate::limits::Limit::MaxOutboundBytes);
                tracing::warn!(
                    conn = self.conn,
                    queued_bytes = queued - size,
                    limit = self.limit,
                    close_code = SLOW_CLOSE_CODE,
                    "slow subscriber: its outbound queue passed max_outbound_bytes; closing the connection"
                );
                self.slow_waker.wake();
                crate::ops::series().slow_consumer_disconnects.increment(1);
            }
            return false;
        }
        true
    }

    /// Counts `size` bytes in if they fit under the bound with what is queued; unlike
    /// [`Outbox::reserve`] a refusal does not mark the connection slow.
    fn reserve_all(&self, size: usize) -> bool {
        let queued = self.queued.fetch_add(size, Ordering::AcqRel) + size;
        if queued > self.limit {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, size: usize) {
        self.queued.fetch_sub(size, Ordering::AcqRel);
    }

    /// Queues a frame whose `size` was reserved (0 for a reply, which is not counted).
    fn send(&self, msg: Message, size: usize) {
        self.send_all(vec![(msg, size)]);
    }

    fn send_all(&self, frames: Batch) {
        if frames.is_empty() {
            return;
        }
        if let Err(e) = self.tx.send(frames) {
            self.release(e.0.iter().map(|f| f.1).sum());
        }
    }
}

/// The frames of one delivery round, gathered per connection so that each connection's
/// queue takes one push (and its writer one wake-up) per round instead of one per frame.
#[derive(Default)]
struct Staging {
    slots: Vec<(Arc<Outbox>, Batch)>,
}

impl Staging {
    fn stage(&mut self, outbox: &Arc<Outbox>, msg: Message, size: usize) {
        match outbox.staged.load(Ordering::Relaxed) {
            0 => {
                self.slots.push((outbox.clone(), vec![(msg, size)]));
                outbox.staged.store(self.slots.len(), Ordering::Relaxed);
            }
            i => self.slots[i - 1].1.push((msg, size)),
        }
    }

    fn flush(&mut self) {
        let mut delivered = 0u64;
        for (outbox, frames) in self.slots.drain(..) {
            outbox.staged.store(0, Ordering::Relaxed);
            delivered += frames.len() as u64;
            outbox.send_all(frames);
        }
        // One increment per round, not per event.
        if delivered > 0 {
            crate::ops::series().events_delivered.increment(delivered);
        }
    }
}

/// A future that resolves once its connection is marked slow. Polling it costs two atomic
/// operations (the writer polls it on every wake-up), not a lock.
pub struct Slow(Arc<Outbox>);

impl std::future::Future for Slow {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let outbox = &self.0;
        if outbox.is_slow.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        outbox.slow_waker.register(cx.waker());
        // Marked between the load and the registration: the wake may have missed the waker.
        if outbox.is_slow.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

/// The receiving end of an [`Outbox`], read by the connection's writer.
pub struct Outgoing {
    rx: mpsc::UnboundedReceiver<Batch>,
    /// The rest of the batch being written.
    batch: std::vec::IntoIter<(Message, usize)>,
    outbox: Arc<Outbox>,
}

impl Outgoing {
    /// The next frame; never resolves once the connection's subscriptions are gone.
    pub async fn recv(&mut self) -> Message {
        loop {
            if let Some(m) = self.next_ready() {
                return m;
            }
            match self.rx.recv().await {
                Some(batch) => self.batch = batch.into_iter(),
                None => std::future::pending().await,
            }
        }
    }

    fn next_ready(&mut self) -> Option<Message> {
        let (msg, size) = self.batch.next()?;
        self.outbox.release(size);
        Some(msg)
    }

    /// A frame if one is ready.
    pub fn try_recv(&mut self) -> Option<Message> {
        if let Some(m) = self.next_ready() {
            return Some(m);
        }
        self.batch = self.rx.try_recv().ok()?.into_iter();
        self.next_ready()
    }

    /// Resolves when the connection is too slow and must be closed with
    /// [`SLOW_CLOSE_CODE`].
    pub fn slow(&self) -> Slow {
        Slow(self.outbox.clone())
    }

    /// Drops every queued frame (the connection is being closed).
    pub fn discard(&mut self) {
        self.rx.close();
        while self.next_ready().is_some() {}
        while let Ok(batch) = self.rx.try_recv() {
            self.outbox.release(batch.iter().map(|f| f.1).sum());
        }
    }
}

impl Fanout {
    /// Starts the fan-out task on the store's change stream (call it inside the runtime).
    /// `epoch` names the history the positions belong to. The task ends when the sequencer
    /// stops.
    pub fn start(store: &Store, config: FanoutConfig, epoch: String) -> std::io::Result<Fanout> {
        let mut changes = store.changes();
        let inner = Arc::new(Inner {
            window: RwLock::new(Window::new(
                store.last_seq(),
                config.resume_window,
                config.resume_window_bytes,
            )),
            config,
            epoch,
            topics: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            replays: Arc::new(tokio::sync::Semaphore::new(LOG_REPLAYS)),
        });
        let task = inner.clone();
        tokio::spawn(async move {
            while let Some(batch) = changes.recv().await {
                let mut events: Vec<Arc<Event>> =
                    batch.into_iter().map(|c| Arc::new(Event::new(c))).collect();
                // Whatever else is committed already goes in the same round (one push per
                // connection per round).
                while events.len() < MAX_ROUND {
                    match changes.try_recv() {
                        Ok(more) => {
                            events.extend(more.into_iter().map(|c| Arc::new(Event::new(c))))
                        }
                        Err(_) => break,
                    }
                }
                task.publish(events);
                // A large batch to many subscribers is a long stretch of work: let the
                // worker run the writers it has just woken.
                tokio::task::yield_now().await;
            }
        });
        Ok(Fanout {
            inner,
            store: store.clone(),
        })
    }

    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// A new connection's subscription state and the queue its writer drains.
    pub fn connect(&self) -> (Connection, Outgoing) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Arc::new(Outbox {
            conn: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            queued: AtomicUsize::new(0),
            limit: self.inner.config.max_outbound_bytes,
            is_slow: AtomicBool::new(false),
            slow_waker: AtomicWaker::new(),
            staged: AtomicUsize::new(0),
        });
        let conn = Connection::new(self.clone(), outbox.clone());
        let out = Outgoing {
            rx,
            batch: Vec::new().into_iter(),
            outbox,
        };
        (conn, out)
    }

    /// The number of subscriptions registered, hub-wide.
    pub fn subscriptions(&self) -> usize {
        self.inner
            .topics
            .read()
            .values()
            .flat_map(|ns| ns.values())
            .map(|t| {
                t.all.len() + t.objects.values().map(Vec::len).sum::<usize>() + t.queries.len()
            })
            .sum()
    }

    /// Bytes of change events queued for the connections that hold subscriptions, not yet
    /// written (for the metrics; walks every subscription).
    pub fn queued_bytes(&self) -> usize {
        let topics = self.inner.topics.read();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for t in topics.values().flat_map(|ns| ns.values()) {
            let subs = t.all.iter().chain(t.objects.values().flatten());
            for sub in subs.chain(t.queries.iter()) {
                if seen.insert(sub.outbox.conn) {
                    bytes += sub.outbox.queued.load(Ordering::Relaxed);
                }
            }
        }
        bytes
    }

    fn register(&self, sub: &Arc<Sub>) {
        let mut topics = self.inner.topics.write();
        let topic = topics
            .entry(sub.endpoint.clone())
            .or_default()
            .entry(sub.namespace.clone())
            .or_default();
        match &sub.target {
            Target::Endpoint => topic.all.push(sub.clone()),
            Target::Object(id) => topic
                .objects
                .entry(Arc::from(id.as_str()))
                .or_default()
                .push(sub.clone()),
            Target::Query(g) => topic.queries.insert(sub.clone(), g),
        }
    }

    fn unregister(&self, sub: &Arc<Sub>) {
        sub.closed.store(true, Ordering::Relaxed);
        let mut topics = self.inner.topics.write();
        let Some(by_ns) = topics.get_mut(&sub.endpoint) else {
            return;
        };
        if let Some(topic) = by_ns.get_mut(&sub.namespace) {
            match &sub.target {
                Target::Endpoint => topic.all.retain(|s| !Arc::ptr_eq(s, sub)),
                Target::Object(id) => {
                    if let Some(list) = topic.objects.get_mut(id.as_str()) {
                        list.retain(|s| !Arc::ptr_eq(s, sub));
                        if list.is_empty() {
                            topic.objects.remove(id.as_str());
                        }
                    }
                }
                Target::Query(g) => topic.queries.remove(sub, g),
            }
            if topic.is_empty() {
                by_ns.remove(&sub.namespace);
            }
        }
        if by_ns.is_empty() {
            topics.remove(&sub.endpoint);
        }
    }
}

impl Inner {
    /// Runs on the fan-out task: one committed batch, in commit order.
    fn publish(&self, events: Vec<Arc<Event>>) {
        {
            let mut w = self.window.write();
            for ev in &events {
                w.push(ev.clone());
            }
        }
        let topics = self.topics.read();
        let mut frames = Frames::default();
        let mut staging = Staging::default();
        for ev in &events {
            let Some(topic) = topics.get(&ev.endpoint).and_then(|n| n.get(&ev.namespace)) else {
                continue;
            };
            frames.clear();
            for sub in &topic.all {
                sub.deliver(ev, None, &mut frames, &mut staging);
            }
            if let Some(subs) = topic.objects.get(&ev.id) {
                for sub in subs {
                    sub.deliver(ev, None, &mut frames, &mut staging);
                }
            }
            let old = ev.old.as_ref().map(|r| &r.json[..]);
            let new = ev.new.as_ref().map(|r| &r.json[..]);
            let mut candidates = Vec::new();
            topic
                .queries
                .candidates(old, new, |sub| candidates.push(sub));
            let trees: Option<Trees> = (candidates.len() > PARSE_FOR).then(|| {
                (
                    ev.old.as_ref().map(|r| r.fields()),
                    ev.new.as_ref().map(|r| r.fields()),
                )
            });
            for sub in candidates {
                if let Some(live) = sub.sees(ev, trees.as_ref()) {
                    sub.deliver(ev, live, &mut frames, &mut staging);
                }
            }
        }
        staging.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogRecord, MemoryOnly};
    use crate::protocol::subscribe::parse_subscribe;
    use crate::store::{StoreConfig, WriteOp};
    use serde_json::{json, Value};

    fn config() -> FanoutConfig {
        FanoutConfig {
            resume_window: 100,
            resume_window_bytes: 1 << 20,
            max_outbound_bytes: 1 << 20,
            max_subscriptions: 8,
            max_list_items: 100,
            log_dir: None,
        }
    }

    async fn next(out: &mut Outgoing) -> Value {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), out.recv())
            .await
            .expect("a frame");
        match m {
            Message::Text(t) => serde_json::from_str(&t).expect("JSON"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn published_changes_reach_subscribers_without_touching_the_store() {
        let store = Store::new(StoreConfig::default(), Box::new(MemoryOnly), 0);
        let fanout = Fanout::start(&store, config(), "e1".into()).expect("fan-out task");
        let (conn, mut out) = fanout.connect();
        let sub = parse_subscribe(
            json!({"endpoint": "ext/device", "condition": {"items": [
                {"key": "site", "operator": "EQUAL", "value": "x"}]}})
            .as_object()
            .cloned()
            .expect("object"),
        )
        .expect("a subscribe");
        conn.subscribe(sub, None, Encoding::Json)
            .expect("subscribed");
        let reply = next(&mut out).await;
        assert_eq!(
            (reply["epoch"].as_str(), reply["position"].as_u64()),
            (Some("e1"), Some(0))
        );
        let data = json!({"id": "d1", "site": "x"}).as_object().cloned();
        let seq = store
            .publish("ext/device", "", "d1", ChangeKind::Create, data)
            .await
            .expect("published");
        let ev = next(&mut out).await;
        assert_eq!(ev["position"], seq);
        assert_eq!(
            (ev["kind"].as_str(), ev["live"].as_str()),
            (Some("CREATE"), Some("enter"))
        );
        assert_eq!(ev["data"], json!({"id": "d1", "site": "x"}));
        assert!(
            store.open("ext/device", "", "d1").is_none(),
            "the store is untouched"
        );
        // A store write to the same id right after is unaffected by the published change.
        let r = store
            .write(WriteOp::Create {
                endpoint: "ext/device".into(),
                namespace: String::new(),
                id: Some("d1".into()),
                data: json!({"site": "y"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            })
            .await
            .expect("created");
        assert_eq!(r.version, seq + 1, "one sequence for both");
        let gone = store
            .publish(
                "ext/device",
                "",
                "d1",
                ChangeKind::Delete,
                json!({"site": "x"}).as_object().cloned(),
            )
            .await
            .expect("published");
        let ev = next(&mut out).await;
        assert_eq!(
            (ev["position"].as_u64(), ev["live"].as_str()),
            (Some(gone), Some("leave"))
        );
        assert_eq!(fanout.subscriptions(), 1);
        drop(conn);
        assert_eq!(
            fanout.subscriptions(),
            0,
            "a dropped connection ends its subscriptions"
        );
    }

    #[test]
    fn a_start_skips_published_records() {
        let rec = |seq: u64, published: bool| LogRecord {
            seq,
            created_seq: seq,
            endpoint: "a/b".into(),
            namespace: "".into(),
            id: format!("o{seq}").into(),
            state: Some(bytes::Bytes::from(format!("{{\"id\":\"o{seq}\"}}"))),
            published,
        };
        let store = Store::restore(
            StoreConfig::default(),
            Box::new(MemoryOnly),
            vec![rec(1, false), rec(2, true)],
            2,
        )
        .expect("restored");
        assert!(store.open("a/b", "", "o1").is_some());
        assert!(store.open("a/b", "", "o2").is_none());
        assert_eq!(store.last_seq(), 2);
    }
}
