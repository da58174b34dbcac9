//! One connection's subscriptions: `subscribe` and `unsubscribe`, snapshots and resume.
//!
//! A subscribe never races with changes. It runs in this order:
//! 1. the subscription is registered with its gate *pending*: from here on every matching
//!    change the fan-out task handles is framed and held in the subscription;
//! 2. its start is read: a snapshot under the collection's read lock, which gives the
//!    position of the last change applied to the collection (every later change to it has a
//!    greater position); or the resume window's events after `from`, and the window's head;
//!    or, for a plain subscribe, the window's head;
//! 3. under the subscription's lock: the reply (with the snapshot) and the missed events are
//!    queued, then the held frames whose position is past the start, and the gate opens at
//!    that position, so the fan-out task delivers directly from then on.
//!
//! A change the snapshot holds was applied before step 2 and so has a position at most the
//! snapshot's: it is dropped at the gate. A change it does not hold is applied after step 2,
//! so after step 1, and reaches the subscription held or live: no change is lost or doubled.
//!
//! The reply and the events share the connection's [`Outbox`], so the reply (and its
//! snapshot) always comes before the subscription's first event.
//!
//! A resume from further back than the window (`from` below the window's floor: the client
//! was away long, or the hub restarted) is read from the log instead, off the caller's task:
//! step 2 takes the window's floor, head and events together, a blocking thread reads the
//! log's records in `(from, floor]` ([`super::replay`]), and step 3 runs when it is done,
//! with the gate opening at the head. Until then the fan-out holds the live frames, as for
//! a snapshot. If the log no longer reaches back to `from` (or the events would not fit in
//! the connection's queue) the reply says `recovered: false`, with a snapshot if asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::{event, replay, Fanout, Outbox, Sub, PENDING};
use crate::protocol::envelope::{self, ErrorReply, Framing};
use crate::protocol::subscribe::{Subscribe, Target};
use crate::protocol::{Encoding, ErrorCode, FlowError};
use crate::query::{ListQuery, Page};
use crate::store::Record;

/// The subscriptions of one WebSocket connection; dropping it ends them all.
pub struct Connection {
    fanout: Fanout,
    outbox: Arc<Outbox>,
    subs: Arc<Mutex<HashMap<String, Arc<Sub>>>>,
    /// For ids the hub picks (`s1`, `s2`, ...).
    next_id: AtomicU64,
}

/// What a subscribe reply's `data` holds.
enum Snapshot {
    None,
    Object(Option<Arc<Record>>),
    List(Vec<Arc<Record>>, u64),
}

/// The fields of a subscription reply.
struct Reply<'a> {
    requestid: Option<&'a Value>,
    subscription: &'a str,
    epoch: Option<&'a str>,
    position: Option<u64>,
    recovered: Option<bool>,
    snapshot: Snapshot,
}

impl Connection {
    pub(super) fn new(fanout: Fanout, outbox: Arc<Outbox>) -> Connection {
        Connection {
            fanout,
            outbox,
            subs: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
        }
    }

    /// Registers a subscription and queues its reply (and snapshot, and missed events) on the
    /// connection's outbox. An error is for the caller to send as an error reply.
    pub fn subscribe(
        &self,
        req: Subscribe,
        requestid: Option<&Value>,
        encoding: Encoding,
    ) -> Result<(), FlowError> {
        // Authorization happened before: the WebSocket session asks the auth engine whether
        // the caller's roles grant `subscribe` on this endpoint and namespace.
        let inner = &self.fanout.inner;
        let sub = {
            let mut subs = self.subs.lock();
            if subs.len() >= inner.config.max_subscriptions {
                crate::limits::breach(crate::limits::Limit::MaxSubscriptions);
                return Err(FlowError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "this connection already holds {} subscriptions (max_subscriptions)",
                        subs.len()
                    ),
                ));
            }
            let id = match req.subscription.clone() {
                Some(id) if subs.contains_key(&id) => {
                    return Err(FlowError::invalid(format!(
                        "subscription {id:?} already exists on this connection"
                    )))
                }
                Some(id) => id,
                None => loop {
                    let id = format!("s{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                    if !subs.contains_key(&id) {
                        break id;
                    }
                },
            };
            let sub = Arc::new(Sub {
                sid: event::Sid::new(&id),
                id: id.clone(),
                endpoint: req.endpoint.clone(),
                namespace: req.namespace.clone(),
                target: req.target.clone(),
                encoding,
                patch: req.patch,
                outbox: self.outbox.clone(),
                gate: AtomicU64::new(PENDING),
                held: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            });
            subs.insert(id, sub.clone());
            sub
        };
        // 1. Registered, gate pending.
        self.fanout.register(&sub);
        if let Some((job, head)) = self.log_job(&sub, &req) {
            // 2. and 3. once the log is read, on a blocking thread.
            self.resume_from_log(job, head, req, requestid.cloned());
            return Ok(());
        }
        match self.start(&sub, &req, requestid) {
            Ok((position, first)) => {
                // 3. Reply, missed events, held events past the start; then live.
                sub.open(position, first);
                Ok(())
            }
            Err(e) => {
                self.remove(&sub.id);
                Err(e)
            }
        }
    }

    /// 2. The subscription's start: its position and the frames that go out first.
    fn start(
        &self,
        sub: &Arc<Sub>,
        req: &Subscribe,
        requestid: Option<&Value>,
    ) -> Result<(u64, Vec<(Message, usize)>), FlowError> {
        let inner = &self.fanout.inner;
        let store = &self.fanout.store;
        let mut frames = Vec::new();
        let mut recovered = None;
        let mut position = None;
        if let Some(from) = req.from {
            let same_history = req.epoch.as_deref().is_none_or(|e| e == inner.epoch);
            let missed = if same_history && from <= store.last_seq() {
                let w = inner.window.read();
                w.since(from).map(|events| (events, w.head()))
            } else {
                None
            };
            if let Some((events, head)) = missed {
                let mut total = 0;
                for ev in events {
                    if ev.endpoint == sub.endpoint && ev.namespace == sub.namespace {
                        if let Some(live) = sub.sees(&ev, None) {
                            let (msg, size) = sub.frame(&ev, live);
                            total += size;
                            frames.push((msg, size));
                        }
                    }
                }
                // The missed events count against the connection's queue like live ones;
                // more than it may hold is more than a resume can deliver: reload instead.
                if self.outbox.reserve_all(total) {
                    position = Some(from.max(head));
                } else {
                    frames.clear();
                }
            }
            recovered = Some(position.is_some());
        }
        let mut snapshot = Snapshot::None;
        if position.is_none() {
            let (snap, at) = reload(&self.fanout, sub, req)?;
            snapshot = snap;
            position = at;
        }
        let position = position.unwrap_or_else(|| inner.window.read().head());
        let reply = encode_reply(
            &Reply {
                requestid,
                subscription: &sub.id,
                epoch: Some(&inner.epoch),
                position: Some(position),
                recovered,
                snapshot,
            },
            sub.encoding,
        );
        frames.insert(0, (reply, 0));
        Ok((position, frames))
    }

    /// Step 2 for a resume from further back than the window: the log job and the window's
    /// head, taken together with the window's floor and events. `None`: the window (or a
    /// plain reload) answers.
    fn log_job(&self, sub: &Arc<Sub>, req: &Subscribe) -> Option<(replay::Job, u64)> {
        let inner = &self.fanout.inner;
        let from = req.from?;
        let log_dir = inner.config.log_dir.clone()?;
        let same_history = req.epoch.as_deref().is_none_or(|e| e == inner.epoch);
        if !same_history || from > self.fanout.store.last_seq() {
            return None;
        }
        // The read runs on the runtime's blocking pool.
        tokio::runtime::Handle::try_current().ok()?;
        let w = inner.window.read();
        if from >= w.floor() {
            return None;
        }
        let job = replay::Job {
            log_dir,
            from,
            floor: w.floor(),
            window: w.since(w.floor()).unwrap_or_default(),
            sub: sub.clone(),
            limit: inner.config.max_outbound_bytes,
        };
        Some((job, w.head()))
    }

    /// Reads the missed events from the log on a blocking thread, then queues the reply and
    /// them and opens the gate at `head`; or, when the log does not cover them, replies
    /// `recovered: false` (with a snapshot if asked). An error (a snapshot too large) is
    /// queued as the error reply and the subscription removed.
    fn resume_from_log(
        &self,
        job: replay::Job,
        head: u64,
        req: Subscribe,
        requestid: Option<Value>,
    ) {
        let (fanout, outbox, subs) = (self.fanout.clone(), self.outbox.clone(), self.subs.clone());
        let sub = job.sub.clone();
        tokio::spawn(async move {
            let read = {
                let _permit = fanout.inner.replays.clone().acquire_owned().await.ok();
                tokio::task::spawn_blocking(move || replay::run(&job))
                    .await
                    .ok()
                    .flatten()
            };
            let resumed =
                read.and_then(|(frames, total)| outbox.reserve_all(total).then_some(frames));
            let recovered = resumed.is_some();
            let outcome = match resumed {
                Some(frames) => Ok((head, Snapshot::None, frames)),
                None => reload(&fanout, &sub, &req)
                    .map(|(snap, at)| (at.unwrap_or(head), snap, Vec::new())),
            };
            match outcome {
                Ok((position, snapshot, mut frames)) => {
                    let reply = encode_reply(
                        &Reply {
                            requestid: requestid.as_ref(),
                            subscription: &sub.id,
                            epoch: Some(&fanout.inner.epoch),
                            position: Some(position),
                            recovered: Some(recovered),
                            snapshot,
                        },
                        sub.encoding,
                    );
                    frames.insert(0, (reply, 0));
                    sub.open(position, frames);
                }
                Err(e) => {
                    let removed = {
                        let mut subs = subs.lock();
                        let ours = subs.get(&sub.id).is_some_and(|s| Arc::ptr_eq(s, &sub));
                        ours.then(|| subs.remove(&sub.id)).flatten()
                    };
                    fanout.unregister(removed.as_ref().unwrap_or(&sub));
                    outbox.send(error_frame(e, requestid.as_ref(), sub.encoding), 0);
                }
            }
        });
    }

    /// Ends a subscription of this connection and queues the reply after its events.
    pub fn unsubscribe(
        &self,
        id: &str,
        requestid: Option<&Value>,
        encoding: Encoding,
    ) -> Result<(), FlowError> {
        if !self.remove(id) {
            return Err(FlowError::not_found(format!(
                "no subscription {id:?} on this connection"
            )));
        }
        let reply = encode_reply(
            &Reply {
                requestid,
                subscription: id,
                epoch: None,
                position: None,
                recovered: None,
                snapshot: Snapshot::None,
            },
            encoding,
        );
        self.outbox.send(reply, 0);
        Ok(())
    }

    fn remove(&self, id: &str) -> bool {
        let sub = self.subs.lock().remove(id);
        match sub {
            Some(sub) => {
                self.fanout.unregister(&sub);
                true
            }
            None => false,
        }
    }

    /// The subscriptions this connection holds.
    pub fn len(&self) -> usize {
        self.subs.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let subs: Vec<Arc<Sub>> = self.subs.lock().drain().map(|(_, s)| s).collect();
        for sub in subs {
            self.fanout.unregister(&sub);
        }
    }
}

/// The state to reload from when nothing is resumed: a snapshot and its position if the
/// subscribe asked for one, else nothing (the subscription starts at the window's head).
fn reload(
    fanout: &Fanout,
    sub: &Sub,
    req: &Subscribe,
) -> Result<(Snapshot, Option<u64>), FlowError> {
    if !req.snapshot {
        return Ok((Snapshot::None, None));
    }
    let inner = &fanout.inner;
    let store = &fanout.store;
    let max = inner.config.max_list_items;
    let (snap, at) = match &sub.target {
        Target::Object(id) => {
            let (r, at) = store.open_at(&sub.endpoint, &sub.namespace, id);
            (Snapshot::Object(r), at)
        }
        target => {
            let query = ListQuery {
                condition: match target {
                    Target::Query(g) => Some(g.clone()),
                    _ => None,
                },
                sort: Vec::new(),
                page: Page {
                    from: 0,
                    size: Some(max + 1),
                },
            };
            let (result, at) = store.list_at(&sub.endpoint, &sub.namespace, &query);
            if result.items.len() > max {
                crate::limits::breach(crate::limits::Limit::MaxListItems);
                return Err(FlowError::too_large(format!(
                        "the snapshot would hold more than {max} objects ({} match); subscribe without a snapshot and LIST with pagination",
                        result.count
                    )));
            }
            (Snapshot::List(result.items, result.count), at)
        }
    };
    Ok((snap, Some(at)))
}

/// An error reply to a subscribe, queued after the fact (a resume from the log decides late).
fn error_frame(e: FlowError, requestid: Option<&Value>, encoding: Encoding) -> Message {
    let reply = ErrorReply::new(e);
    tracing::info!(
        errorid = %reply.errorid,
        code = reply.code_name(),
        message = %reply.error,
        "subscribe refused"
    );
    let bytes = envelope::encode(&Err(reply), Framing::Ws { requestid }, encoding);
    match encoding {
        Encoding::Json => match Utf8Bytes::try_from(bytes) {
            Ok(s) => Message::Text(s),
            Err(_) => Message::text("{\"type\":\"reply\",\"status\":0,\"success\":false}"),
        },
        Encoding::MsgPack => Message::Binary(bytes),
    }
}

fn encode_reply(r: &Reply<'_>, encoding: Encoding) -> Message {
    match encoding {
        Encoding::Json => {
            let mut out = Vec::with_capacity(256);
            out.extend_from_slice(b"{\"type\":\"reply\"");
            if let Some(rid) = r.requestid {
                out.extend_from_slice(b",\"requestid\":");
                let _ = serde_json::to_writer(&mut out, rid);
            }
            out.extend_from_slice(b",\"status\":0,\"success\":true,\"subscription\":");
            let _ = serde_json::to_writer(&mut out, r.subscription);
            if let Some(e) = r.epoch {
                out.extend_from_slice(b",\"epoch\":");
                let _ = serde_json::to_writer(&mut out, e);
            }
            if let Some(p) = r.position {
                out.extend_from_slice(format!(",\"position\":{p}").as_bytes());
            }
            if let Some(rec) = r.recovered {
                out.extend_from_slice(format!(",\"recovered\":{rec}").as_bytes());
            }
            match &r.snapshot {
                Snapshot::None => {}
                Snapshot::Object(o) => {
                    out.extend_from_slice(b",\"data\":");
                    match o {
                        Some(rec) => out.extend_from_slice(&rec.json),
                        None => out.extend_from_slice(b"null"),
                    }
                }
                Snapshot::List(items, count) => {
                    out.extend_from_slice(b",\"data\":[");
                    for (i, rec) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(&rec.json);
                    }
                    out.extend_from_slice(format!("],\"count\":{count}").as_bytes());
                }
            }
            out.extend_from_slice(b",\"dataType\":\"JSON\"}");
            // Built from valid UTF-8 pieces only (serde_json output and stored JSON text).
            match String::from_utf8(out) {
                Ok(s) => Message::Text(Utf8Bytes::from(s)),
                Err(_) => Message::text("{\"type\":\"reply\",\"status\":0,\"success\":false}"),
            }
        }
        Encoding::MsgPack => {
            let mut n = 5; // type, status, success, subscription, dataType
            n += u32::from(r.requestid.is_some())
                + u32::from(r.epoch.is_some())
                + u32::from(r.position.is_some())
                + u32::from(r.recovered.is_some());
            n += match r.snapshot {
                Snapshot::None => 0,
                Snapshot::Object(_) => 1,
                Snapshot::List(..) => 2,
            };
            let mut out = Vec::with_capacity(256);
            let w = &mut out;
            let _ = rmp::encode::write_map_len(w, n);
            let _ = rmp::encode::write_str(w, "type");
            let _ = rmp::encode::write_str(w, "reply");
            if let Some(rid) = r.requestid {
                let _ = rmp::encode::write_str(w, "requestid");
                let _ = rmp_serde::encode::write_named(w, rid);
            }
            let _ = rmp::encode::write_str(w, "status");
            let _ = rmp::encode::write_uint(w, 0);
            let _ = rmp::encode::write_str(w, "success");
            let _ = rmp::encode::write_bool(w, true);
            let _ = rmp::encode::write_str(w, "subscription");
            let _ = rmp::encode::write_str(w, r.subscription);
            if let Some(e) = r.epoch {
                let _ = rmp::encode::write_str(w, "epoch");
                let _ = rmp::encode::write_str(w, e);
            }
            if let Some(p) = r.position {
                let _ = rmp::encode::write_str(w, "position");
                let _ = rmp::encode::write_uint(w, p);
            }
            if let Some(rec) = r.recovered {
                let _ = rmp::encode::write_str(w, "recovered");
                let _ = rmp::encode::write_bool(w, rec);
            }
            match &r.snapshot {
                Snapshot::None => {}
                Snapshot::Object(o) => {
                    let _ = rmp::encode::write_str(w, "data");
                    match o {
                        Some(rec) => w.extend_from_slice(&rec.msgpack()),
                        None => {
                            let _ = rmp::encode::write_nil(w);
                        }
                    }
                }
                Snapshot::List(items, count) => {
                    let _ = rmp::encode::write_str(w, "data");
                    let _ = rmp::encode::write_array_len(w, items.len() as u32);
                    for rec in items {
                        w.extend_from_slice(&rec.msgpack());
                    }
                    let _ = rmp::encode::write_str(w, "count");
                    let _ = rmp::encode::write_uint(w, *count);
                }
            }
            let _ = rmp::encode::write_str(w, "dataType");
            let _ = rmp::encode::write_str(w, "JSON");
            Message::Binary(Bytes::from(out))
        }
    }
}
