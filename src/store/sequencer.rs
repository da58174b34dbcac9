//! The sequencer: the one owner of write order.
//!
//! Every CREATE, UPDATE and DELETE goes through one bounded queue to one thread. It drains
//! whatever is pending into a batch, checks each write against the current state (plus the
//! batch's own earlier writes), gives each a sequence number, hands the batch to the log, and
//! only when the log has accepted it applies the batch to memory and answers the callers. So
//! log order = apply order = the order in which changes will be published, and a write the log
//! refused is neither applied nor acknowledged.
//!
//! The queue is bounded ([`WRITE_QUEUE`]); when it is full, callers wait for room.
//!
//! After a batch is applied and answered, its changes go, in commit order, to the change
//! stream the fan-out reads ([`super::Store::changes`]): a bounded channel of batches. The
//! fan-out never waits on a subscriber (its per-connection queues are non-blocking), so the
//! sequencer waits there only if the fan-out task is [`CHANGE_BATCHES`] batches behind on
//! CPU alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::merge::{merge_patch, merge_text};
use super::record::Record;
use super::{Shared, StoreError};
use crate::log::{Log, LogRecord};

/// Writes that may wait for the sequencer before callers are held back.
pub const WRITE_QUEUE: usize = 4096;
/// Most writes in one batch (one log append).
const MAX_BATCH: usize = 1024;

/// Committed batches that may wait for the fan-out before the sequencer waits for it.
pub const CHANGE_BATCHES: usize = 1024;

/// Fields the hub manages; a caller's values for them are ignored.
pub const MANAGED: [&str; 4] = ["id", "created", "updated", "version"];

/// A write as the dispatcher asks for it.
#[derive(Debug)]
pub enum WriteOp {
    Create {
        endpoint: String,
        namespace: String,
        id: Option<String>,
        data: Map<String, Value>,
    },
    Update {
        endpoint: String,
        namespace: String,
        id: String,
        patch: Map<String, Value>,
        expected: Option<u64>,
    },
    Delete {
        endpoint: String,
        namespace: String,
        id: String,
        expected: Option<u64>,
    },
    /// A change a provider made to an object it keeps itself: it gets a position in the
    /// commit order and is logged, but the record store is left as it is.
    Publish {
        endpoint: String,
        namespace: String,
        id: String,
        kind: ChangeKind,
        data: Map<String, Value>,
    },
}

/// What a committed change did to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Create,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "CREATE",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
        }
    }
}

/// One committed write: what the object was and what it is now.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: u64,
    pub kind: ChangeKind,
    /// Published by a provider ([`WriteOp::Publish`]): not applied to the store; `old` is
    /// unknown (`None`) except for a DELETE, whose published data is in `old`.
    pub published: bool,
    pub endpoint: String,
    pub namespace: String,
    pub id: Arc<str>,
    pub old: Option<Arc<Record>>,
    /// `None`: the object was deleted.
    pub new: Option<Arc<Record>>,
}

pub(super) struct WriteRequest {
    pub op: WriteOp,
    pub reply: Reply,
}

/// What a write's outcome does once its batch is committed (or has failed).
pub type Done = Box<dyn FnOnce(Result<Arc<Record>, StoreError>) + Send>;

/// Where a write's outcome goes: to a task awaiting it, or straight into a function run on
/// the sequencer's thread (a WebSocket call's reply: no task waits for the commit).
pub(super) enum Reply {
    Channel(oneshot::Sender<Result<Arc<Record>, StoreError>>),
    Call(Done),
}

impl Reply {
    pub(super) fn send(self, result: Result<Arc<Record>, StoreError>) {
        match self {
            Reply::Channel(tx) => {
                let _ = tx.send(result);
            }
            Reply::Call(done) => done(result),
        }
    }
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    log: Box<dyn Log>,
    next_seq: u64,
) -> std::io::Result<(mpsc::Sender<WriteRequest>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    // Replies run on this thread ([`Reply::Call`]); one that must wait for room in a
    // connection's queue spawns a task for it, so the thread belongs to the hub's runtime.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let handle = std::thread::Builder::new()
        .name("flowhub-sequencer".into())
        .spawn(move || {
            let _entered = runtime.as_ref().map(|r| r.enter());
            run(shared, rx, log, next_seq)
        })?;
    Ok((tx, handle))
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The batch's own changes by object id (indices into the batch's changes), so that a write
/// sees the writes before it in the same batch.
/// Keyed by callers' ids: seeded per map (foldhash), like the collections' own maps.
type Overlay = HashMap<Arc<str>, Vec<usize>, foldhash::fast::RandomState>;

fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<WriteRequest>,
    mut log: Box<dyn Log>,
    mut next_seq: u64,
) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
    // The log records' names, shared from one write to the next of the same collection.
    let mut names = crate::log::format::Names::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let batch_start = next_seq;
        let mut overlay = Overlay::default();
        let mut changes: Vec<Change> = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let stamp = now();
        for w in batch.drain(..) {
            let outcome =
                prepare(&shared, &overlay, &changes, w.op, next_seq, &stamp).map(|change| {
                    next_seq += 1;
                    // A published change is no state of the store: later writes skip it.
                    if !change.published {
                        overlay
                            .entry(change.id.clone())
                            .or_default()
                            .push(changes.len());
                    }
                    changes.push(change);
                    changes.len() - 1
                });
            replies.push((w.reply, outcome));
        }
        let records: Vec<LogRecord> = if log.keeps_records() {
            changes
                .iter()
                .map(|c| LogRecord {
                    seq: c.seq,
                    created_seq: c
                        .new
                        .as_ref()
                        .or(c.old.as_ref())
                        .map_or(c.seq, |r| r.created_seq),
                    endpoint: names.endpoint(&c.endpoint),
                    namespace: names.namespace(&c.namespace),
                    id: c.id.clone(),
                    state: if c.published {
                        c.new.as_ref().or(c.old.as_ref()).map(|r| r.json.clone())
                    } else {
                        c.new.as_ref().map(|r| r.json.clone())
                    },
                    published: c.published,
                })
                .collect()
        } else {
            Vec::new()
        };
        let logged = if changes.is_empty() {
            Ok(())
        } else {
            let logged = log.append(&records);
            shared.log_appended(logged.as_ref().map(|_| ()));
            let series = crate::ops::series();
            match &logged {
                Ok(()) if !records.is_empty() => {
                    series.log_appends.increment(1);
                    series.log_records.increment(records.len() as u64);
                }
                Ok(()) => {}
                Err(_) => series.log_append_failures.increment(1),
            }
            logged
        };
        match logged {
            Ok(()) => {
                for c in changes.iter().filter(|c| !c.published) {
                    shared.apply(c);
                }
                if let Some(last) = changes.last() {
                    shared
                        .last_seq
                        .store(last.seq, std::sync::atomic::Ordering::Release);
                }
                for (reply, outcome) in replies {
                    // A delete answers with the object's last version.
                    let result = outcome.and_then(|i| {
                        let c = &changes[i];
                        c.new
                            .clone()
                            .or_else(|| c.old.clone())
                            .ok_or_else(|| StoreError::NotFound(c.id.to_string()))
                    });
                    reply.send(result);
                }
                if !changes.is_empty() {
                    // Cloned out so that the lock is not held while the channel is full.
                    let stream = shared.changes.lock().clone();
                    if let Some(tx) = stream {
                        // Room is the rule: only a full channel takes the blocking wait (which
                        // sets up a parker for this thread on every call).
                        let batch = std::mem::take(&mut changes);
                        if let Err(mpsc::error::TrySendError::Full(batch)) = tx.try_send(batch) {
                            let _ = tx.blocking_send(batch);
                        }
                    }
                }
                // Between batches the state is exactly the log up to `next_seq - 1`: the cut.
                if log.wants_snapshot(false) {
                    log.snapshot(next_seq - 1, shared.entries(), false);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = changes.len(), "log append failed; the batch is not applied");
                next_seq = batch_start;
                // Every write of the batch, even one refused on its own: it was checked
                // against the batch's earlier writes, which never happened.
                for (reply, _) in replies {
                    reply.send(Err(StoreError::Unavailable(e.to_string())));
                }
            }
        }
    }
    // A clean stop: leave a snapshot so the next start reads it instead of the whole log.
    if log.wants_snapshot(true) {
        log.snapshot(next_seq - 1, shared.entries(), true);
    }
    // The change stream ends with the writes: the fan-out task sees it closed and stops.
    shared.changes.lock().take();
}

/// The object's state as of this point in the batch.
fn current(
    shared: &Shared,
    overlay: &Overlay,
    changes: &[Change],
    endpoint: &str,
    namespace: &str,
    id: &str,
) -> Option<Arc<Record>> {
    let in_batch = overlay.get(id).and_then(|idx| {
        idx.iter()
            .rev()
            .map(|&i| &changes[i])
            .find(|c| c.endpoint == endpoint && c.namespace == namespace)
    });
    match in_batch {
        Some(c) => c.new.clone(),
        None => shared.open(endpoint, namespace, id),
    }
}

fn prepare(
    shared: &Shared,
    overlay: &Overlay,
    changes: &[Change],
    op: WriteOp,
    seq: u64,
    stamp: &str,
) -> Result<Change, StoreError> {
    match op {
        WriteOp::Create {
            endpoint,
            namespace,
            id,
            data,
        } => {
            let id: Arc<str> = match id {
                Some(id) => id.into(),
                None => uuid::Uuid::new_v4().to_string().into(),
            };
            if current(shared, overlay, changes, &endpoint, &namespace, &id).is_some() {
                return Err(StoreError::AlreadyExists(id.to_string()));
            }
            let mut fields = Map::with_capacity(data.len() + 4);
            fields.insert("id".into(), Value::String(id.to_string()));
            fields.insert("created".into(), Value::String(stamp.to_string()));
            fields.insert("updated".into(), Value::String(stamp.to_string()));
            fields.insert("version".into(), Value::from(seq));
            for (k, v) in data {
                if !MANAGED.contains(&k.as_str()) {
                    fields.insert(k, v);
                }
            }
            let record = Arc::new(Record::new(id.clone(), seq, seq, fields));
            Ok(Change {
                seq,
                kind: ChangeKind::Create,
                published: false,
                endpoint,
                namespace,
                id,
                old: None,
                new: Some(record),
            })
        }
        WriteOp::Update {
            endpoint,
            namespace,
            id,
            mut patch,
            expected,
        } => {
            let old = current(shared, overlay, changes, &endpoint, &namespace, &id)
                .ok_or(StoreError::NotFound(id))?;
            check_version(&old, expected)?;
            for m in MANAGED {
                patch.shift_remove(m);
            }
            let set = [
                ("updated", Value::String(stamp.to_string())),
                ("version", Value::from(seq)),
            ];
            // The stored text, patched as text; should it not parse (a fault, logged by
            // `fields`), as a tree from an empty object.
            let record = match merge_text(&old.json, &patch, &set) {
                Some(json) => Record::with_json(old.id.clone(), old.created_seq, seq, json.into()),
                None => {
                    let mut fields = old.fields();
                    merge_patch(&mut fields, &patch);
                    for (k, v) in set {
                        fields.insert(k.into(), v);
                    }
                    Record::new(old.id.clone(), old.created_seq, seq, fields)
                }
            };
            let record = Arc::new(record);
            Ok(Change {
                seq,
                kind: ChangeKind::Update,
                published: false,
                endpoint,
                namespace,
                id: old.id.clone(),
                old: Some(old),
                new: Some(record),
            })
        }
        WriteOp::Delete {
            endpoint,
            namespace,
            id,
            expected,
        } => {
            let old = current(shared, overlay, changes, &endpoint, &namespace, &id)
                .ok_or(StoreError::NotFound(id))?;
            check_version(&old, expected)?;
            Ok(Change {
                seq,
                kind: ChangeKind::Delete,
                published: false,
                endpoint,
                namespace,
                id: old.id.clone(),
                old: Some(old),
                new: None,
            })
        }
        WriteOp::Publish {
            endpoint,
            namespace,
            id,
            kind,
            data,
        } => {
            let id: Arc<str> = id.into();
            let record = Some(Arc::new(Record::new(id.clone(), seq, seq, data)));
            let (old, new) = match kind {
                ChangeKind::Delete => (record, None),
                _ => (None, record),
            };
            Ok(Change {
                seq,
                kind,
                published: true,
                endpoint,
                namespace,
                id,
                old,
                new,
            })
        }
    }
}

fn check_version(old: &Record, expected: Option<u64>) -> Result<(), StoreError> {
    match expected {
        Some(v) if v != old.version => Err(StoreError::Conflict {
            expected: v,
            actual: old.version,
        }),
        _ => Ok(()),
    }
}
