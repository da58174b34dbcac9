//! Resume from the log: the events a subscription missed that are older than the resume
//! window reaches (or from before a restart), read back from the log segments still on disk
//! and matched against the subscription exactly as the fan-out matches live changes.
//!
//! Runs on a blocking thread, for one subscription, while its gate is pending (the fan-out
//! holds its live frames meanwhile). The handover: when the subscription was registered, the
//! window's `floor` and `head` were read together; every change after `head` reaches the
//! subscription held or live. This replay covers `(from, floor]` from the log and
//! `(floor, head]` from the window's events taken at the same moment, so together with the
//! held frames (those past `head`) every change after `from` goes out once, in order.
//!
//! Old state. A log record holds an object's whole new state (or a tombstone), not the one
//! before. The old state of a record is the previous record of the same object seen in the
//! read, which starts at the beginning of the segment holding `from + 1` (records before
//! `from + 1` are read as context only). When there is none, the old state is unknown, and:
//! - a CREATE (its position is the object's creation) has none anyway;
//! - for a live query an UPDATE or DELETE is classified by its new state alone: an object
//!   that matches is `enter` (with its whole state), one that does not (or is deleted) is
//!   `leave`, so the client's result ends right even if it did not hold the object;
//! - a DELETE carries `data: null` (its last state is not known), and with `patch` an
//!   UPDATE carries the whole object, not a patch.
//!
//! Published changes (a provider's, 11.7) do not record their kind in the log: one without
//! data is a DELETE, one with data an UPDATE when the object was seen before in the read
//! (and not deleted), else a CREATE; a published DELETE that carried data replays as an
//! UPDATE. They are matched with the published rule of 12.3.
//!
//! Bounded as the window path is: once the frames of the missed events pass the
//! connection's `max_outbound_bytes`, the read stops and the resume is refused
//! (`recovered: false`). Memory: the frames (at most that bound) plus the last state of the
//! subscription's objects within the segment read as context.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;

use super::{Event, Live, Sub};
use crate::log::tail::{read_range, Ended};
use crate::log::LogRecord;
use crate::protocol::subscribe::Target;
use crate::store::{Change, ChangeKind, Record};

/// What one resume from the log needs, taken when the subscription was registered.
pub(super) struct Job {
    pub log_dir: PathBuf,
    pub from: u64,
    /// The window's floor: the log is read up to here.
    pub floor: u64,
    /// The window's events after `floor`, up to its head.
    pub window: Vec<Arc<Event>>,
    pub sub: Arc<Sub>,
    /// The most bytes of frames the resume may deliver.
    pub limit: usize,
}

/// The missed frames and their bytes, or `None` when the log no longer covers `from` (or
/// the frames would not fit in `limit`).
pub(super) fn run(job: &Job) -> Option<(Vec<(Message, usize)>, usize)> {
    let sub = &job.sub;
    let mut frames = Frames {
        list: Vec::new(),
        total: 0,
        limit: job.limit,
    };
    // The last state of each object of the subscription seen in the read (None: deleted),
    // by (published, id).
    let mut last: HashMap<(bool, Arc<str>), Option<Arc<Record>>> = HashMap::new();
    let read = read_range(&job.log_dir, job.from, job.floor, |rec, in_range| {
        if *rec.endpoint != *sub.endpoint || *rec.namespace != *sub.namespace {
            return true;
        }
        if let Target::Object(id) = &sub.target {
            if **id != *rec.id {
                return true;
            }
        }
        let key = (rec.published, rec.id.clone());
        let prev = last.get(&key).cloned();
        let (ev, old_known) = event(rec, prev);
        last.insert(key, ev.new.clone());
        if !in_range {
            return true;
        }
        match live(sub, &ev, old_known) {
            Some(live) => {
                let patch = sub.patch && old_known;
                frames.push(ev.frame(sub.encoding, &sub.sid, live, patch))
            }
            None => true,
        }
    });
    match read {
        Ok(Ended::Done) => {}
        Ok(Ended::Stopped | Ended::NotCovered) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the log back for a resume; the client reloads");
            return None;
        }
    }
    for ev in &job.window {
        if ev.endpoint == sub.endpoint && ev.namespace == sub.namespace {
            if let Some(live) = sub.sees(ev, None) {
                if !frames.push(sub.frame(ev, live)) {
                    return None;
                }
            }
        }
    }
    Some((frames.list, frames.total))
}

/// The frames gathered so far, within the connection's bound.
struct Frames {
    list: Vec<(Message, usize)>,
    total: usize,
    limit: usize,
}

impl Frames {
    /// Adds a frame; `false` once the frames pass the bound (the resume is refused).
    fn push(&mut self, (msg, size): (Message, usize)) -> bool {
        self.total += size;
        self.list.push((msg, size));
        self.total <= self.limit
    }
}

/// The event of a log record, given the object's previous state in the read (`None`: not
/// seen; `Some(None)`: deleted), and whether its old state is known.
fn event(rec: LogRecord, prev: Option<Option<Arc<Record>>>) -> (Event, bool) {
    let id: Arc<str> = rec.id.clone();
    let new = rec.state.map(|json| {
        Arc::new(Record::with_json(
            id.clone(),
            rec.created_seq,
            rec.seq,
            json,
        ))
    });
    let (kind, old, known) = if rec.published {
        match (&new, &prev) {
            (None, _) => (ChangeKind::Delete, None, true),
            (Some(_), Some(Some(_))) => (ChangeKind::Update, None, true),
            (Some(_), _) => (ChangeKind::Create, None, true),
        }
    } else {
        match &new {
            Some(r) if r.created_seq == rec.seq => (ChangeKind::Create, None, true),
            Some(_) => (ChangeKind::Update, prev.clone().flatten(), prev.is_some()),
            None => (ChangeKind::Delete, prev.clone().flatten(), prev.is_some()),
        }
    };
    let change = Change {
        seq: rec.seq,
        kind,
        published: rec.published,
        endpoint: rec.endpoint.to_string(),
        namespace: rec.namespace.to_string(),
        id,
        old,
        new,
    };
    (Event::new(change), known)
}

/// How the event looks to the subscription; with an unknown old state a live query goes by
/// the new state alone (see the module's comment).
fn live(sub: &Sub, ev: &Event, old_known: bool) -> Option<Option<Live>> {
    match &sub.target {
        Target::Query(g) if !old_known => {
            let is = ev.new.as_ref().is_some_and(|r| g.matches(&r.json[..]));
            Some(Some(if is { Live::Enter } else { Live::Leave }))
        }
        _ => sub.sees(ev, None),
    }
}
