//! The record store: objects in memory, per endpoint and namespace, with versions, merge
//! patch, secondary indexes, the LIST executor and the sequencer that orders every write.
//!
//! Reads (`open`, `list`, `index_entry`, `catalogue`) take a collection's read lock and never
//! wait for the log; writes go through the [`sequencer`], the single owner of commit order.
//! The store knows nothing of who asked or by which transport.
//!
//! Indexes: an endpoint's fields listed in the configuration (`[index]`) are indexed from the
//! start; a field used with EQUAL, IN, a range or STARTS_WITH, or as the first sort key, in a
//! LIST on a collection of at least `auto_index_min` objects is indexed automatically from then
//! on (at most [`MAX_AUTO_INDEXES`] per endpoint).

pub mod collection;
pub mod index;
pub mod merge;
pub mod record;
pub mod sequencer;

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

/// Endpoint and namespace names are looked up several times per call: a fast hasher, seeded
/// per map (names come from clients, so not predictable from outside).
type NameHasher = foldhash::fast::RandomState;

pub use collection::{Collection, ListResult};
pub use record::Record;
pub use sequencer::{Change, ChangeKind, Done, WriteOp, WRITE_QUEUE};

use crate::log::{Log, LogRecord};
use crate::query::{Fields, Group, ListQuery, Operator, Path};

/// Most automatically created indexes per endpoint.
pub const MAX_AUTO_INDEXES: usize = 16;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("object {0:?} does not exist")]
    NotFound(String),
    #[error("an object with id {0:?} already exists")]
    AlreadyExists(String),
    #[error("object is at version {actual}, not the expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    #[error("the store cannot accept writes: {0}")]
    Unavailable(String),
}

/// Store settings taken from the configuration at start.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Fields indexed from the start, per endpoint.
    pub indexes: HashMap<String, Vec<Path>>,
    /// A LIST on a collection this large indexes the fields it filters on.
    pub auto_index_min: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            indexes: HashMap::new(),
            auto_index_min: 1000,
        }
    }
}

/// One hub-stored endpoint: its indexed fields and its namespaces.
#[derive(Debug)]
pub struct EndpointData {
    indexed: RwLock<Vec<Path>>,
    auto_indexes: RwLock<usize>,
    namespaces: DashMap<String, Arc<RwLock<Collection>>, NameHasher>,
}

/// The state the sequencer writes and readers read.
#[derive(Debug)]
pub(crate) struct Shared {
    endpoints: DashMap<String, Arc<EndpointData>, NameHasher>,
    config: StoreConfig,
    /// The sequence number of the last committed (applied) change.
    last_seq: std::sync::atomic::AtomicU64,
    /// Where the sequencer hands each committed batch, in commit order (the fan-out).
    changes: parking_lot::Mutex<Option<mpsc::Sender<Vec<Change>>>>,
    /// Why the last log append failed, until one succeeds (`GET /ready` says not ready).
    log_failure: parking_lot::Mutex<Option<String>>,
    /// Whether `log_failure` is set: the sequencer reads this flag after every append instead
    /// of taking the lock.
    log_failing: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn collection(&self, endpoint: &str, namespace: &str) -> Option<Arc<RwLock<Collection>>> {
        // Clone the Arcs out so that no dashmap guard outlives this call.
        let ep = self.endpoints.get(endpoint)?.clone();
        let c = ep.namespaces.get(namespace)?.clone();
        Some(c)
    }

    pub(crate) fn open(&self, endpoint: &str, namespace: &str, id: &str) -> Option<Arc<Record>> {
        self.collection(endpoint, namespace)?
            .read()
            .get(id)
            .cloned()
    }

    /// Every live object as a log entry (its version as the sequence number), for a snapshot.
    fn entries(&self) -> Vec<LogRecord> {
        let mut out = Vec::new();
        for ep in self.endpoints.iter() {
            for ns in ep.namespaces.iter() {
                let coll = ns.value().read();
                out.reserve(coll.len());
                let endpoint: Arc<str> = ep.key().as_str().into();
                let namespace: Arc<str> = ns.key().as_str().into();
                out.extend(coll.records().map(|r| LogRecord {
                    seq: r.version,
                    created_seq: r.created_seq,
                    endpoint: endpoint.clone(),
                    namespace: namespace.clone(),
                    id: r.id.clone(),
                    state: Some(r.json.clone()),
                    published: false,
                }));
            }
        }
        out
    }

    /// Records how the last log append ended (sequencer thread only): an error makes the
    /// store unwritable until an append succeeds again.
    fn log_appended(&self, result: Result<(), &std::io::Error>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(()) => {
                if self.log_failing.load(Ordering::Relaxed) {
                    *self.log_failure.lock() = None;
                    self.log_failing.store(false, Ordering::Relaxed);
                }
            }
            Err(e) => {
                *self.log_failure.lock() = Some(e.to_string());
                self.log_failing.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Applies one committed change (sequencer thread only).
    fn apply(&self, change: &Change) {
        let coll = self.collection_or_create(&change.endpoint, &change.namespace);
        let mut coll = coll.write();
        match &change.new {
            Some(r) => coll.put(r.clone()),
            None => {
                coll.remove(&change.id);
            }
        }
        coll.last_seq = change.seq;
    }

    /// The collection of `endpoint` in `namespace`, created (with the endpoint) if new.
    fn collection_or_create(&self, endpoint: &str, namespace: &str) -> Arc<RwLock<Collection>> {
        let ep = match self.endpoints.get(endpoint) {
            Some(ep) => ep.clone(),
            None => self
                .endpoints
                .entry(endpoint.to_string())
                .or_insert_with(|| {
                    Arc::new(EndpointData {
                        indexed: RwLock::new(
                            self.config
                                .indexes
                                .get(endpoint)
                                .cloned()
                                .unwrap_or_default(),
                        ),
                        auto_indexes: RwLock::new(0),
                        namespaces: DashMap::default(),
                    })
                })
                .clone(),
        };
        let coll = match ep.namespaces.get(namespace) {
            Some(c) => c.clone(),
            None => ep
                .namespaces
                .entry(namespace.to_string())
                .or_insert_with(|| Arc::new(RwLock::new(Collection::new(&ep.indexed.read()))))
                .clone(),
        };
        coll
    }
}

/// The record store. Cloning is shallow: every clone reaches the same state and sequencer.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writes: mpsc::Sender<sequencer::WriteRequest>,
    /// The sequencer thread, joined by [`Store::close`].
    sequencer: Arc<parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Store {
    /// A store whose sequencer hands every batch to `log`; sequence numbers start after
    /// `last_seq`.
    pub fn new(config: StoreConfig, log: Box<dyn Log>, last_seq: u64) -> Store {
        match Store::restore(config, log, Vec::new(), last_seq) {
            Ok(s) => s,
            // Only a failure to start a thread gets here.
            Err(e) => panic!("cannot start the store: {e}"),
        }
    }

    /// A store holding the state that `records` (the log read back, in commit order) leave,
    /// whose sequencer continues after `last_seq` and hands every batch to `log`.
    pub fn restore(
        config: StoreConfig,
        log: Box<dyn Log>,
        records: impl IntoIterator<Item = LogRecord>,
        last_seq: u64,
    ) -> Result<Store, String> {
        let shared = Arc::new(Shared {
            endpoints: DashMap::default(),
            config,
            last_seq: std::sync::atomic::AtomicU64::new(last_seq),
            changes: parking_lot::Mutex::new(None),
            log_failure: parking_lot::Mutex::new(None),
            log_failing: std::sync::atomic::AtomicBool::new(false),
        });
        // Records come in long runs of one collection (a snapshot is written collection by
        // collection, and its decoder shares one endpoint and namespace name across a run):
        // the collection being filled is taken out of its lock and filled as a plain value, and
        // put back when the run ends, so that a record costs neither a lookup nor a lock.
        // Nothing else sees the store before this returns.
        type Run = (Arc<str>, Arc<str>, Arc<RwLock<Collection>>, Collection);
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        let put_back = |run: Option<Run>| {
            if let Some((_, _, shared_coll, filled)) = run {
                *shared_coll.write() = filled;
            }
        };
        let mut current: Option<Run> = None;
        for rec in records {
            // A provider's published change holds a position but no state of the store.
            if rec.published {
                continue;
            }
            let in_run = matches!(&current, Some((e, n, _, _)) if same(e, &rec.endpoint) && same(n, &rec.namespace));
            if !in_run {
                put_back(current.take());
                let c = shared.collection_or_create(&rec.endpoint, &rec.namespace);
                let filled = std::mem::take(&mut *c.write());
                current = Some((rec.endpoint.clone(), rec.namespace.clone(), c, filled));
            }
            let Some((_, _, _, coll)) = current.as_mut() else {
                continue;
            };
            coll.last_seq = rec.seq;
            match rec.state {
                None => {
                    coll.remove(&rec.id);
                }
                Some(json) => {
                    // Written by the hub and checked by its CRC; a non-object would be a bug.
                    if json.first() != Some(&b'{') {
                        return Err(format!(
                            "log record {} does not hold a JSON object",
                            rec.seq
                        ));
                    }
                    coll.put(Arc::new(Record::with_json(
                        rec.id,
                        rec.created_seq,
                        rec.seq,
                        json,
                    )));
                }
            }
        }
        put_back(current.take());
        let (writes, handle) = sequencer::spawn(shared.clone(), log, last_seq + 1)
            .map_err(|e| format!("cannot start the sequencer thread: {e}"))?;
        Ok(Store {
            shared,
            writes,
            sequencer: Arc::new(parking_lot::Mutex::new(Some(handle))),
        })
    }

    /// Waits until the sequencer has committed every write queued before the last clone of
    /// this store is dropped and has closed the log. Call it on the last clone.
    pub async fn close(self) {
        let handle = self.sequencer.lock().take();
        drop(self);
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Why writes are refused: the error of the last log append, while no append has
    /// succeeded since. `None` when the log takes writes.
    pub fn log_failure(&self) -> Option<String> {
        if !self
            .shared
            .log_failing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        self.shared.log_failure.lock().clone()
    }

    /// The number of objects stored, in every endpoint and namespace (a read lock on each
    /// collection in turn; for the metrics).
    pub fn objects(&self) -> usize {
        let mut n = 0;
        for ep in self.shared.endpoints.iter() {
            for ns in ep.namespaces.iter() {
                n += ns.value().read().len();
            }
        }
        n
    }

    /// Whether a hub-stored endpoint of this name exists (in any namespace).
    pub fn has_endpoint(&self, endpoint: &str) -> bool {
        self.shared.endpoints.contains_key(endpoint)
    }

    /// The names of every hub-stored endpoint, sorted.
    pub fn endpoints(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .endpoints
            .iter()
            .map(|e| e.key().clone())
            .collect();
        names.sort();
        names
    }

    pub fn open(&self, endpoint: &str, namespace: &str, id: &str) -> Option<Arc<Record>> {
        self.shared.open(endpoint, namespace, id)
    }

    /// The sequence number of the last committed change (0 for a new hub).
    pub fn last_seq(&self) -> u64 {
        self.shared
            .last_seq
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The stream of committed changes: every batch the sequencer commits from now on, in
    /// commit order, through a channel of [`sequencer::CHANGE_BATCHES`] batches. There is one
    /// stream; asking again replaces it. It closes when the sequencer stops.
    pub fn changes(&self) -> mpsc::Receiver<Vec<Change>> {
        let (tx, rx) = mpsc::channel(sequencer::CHANGE_BATCHES);
        *self.shared.changes.lock() = Some(tx);
        rx
    }

    /// OPEN together with the position it reflects: the sequence number of the last change
    /// applied to the object's collection when it was read (0: none yet). Every later change
    /// to that collection has a greater sequence number.
    pub fn open_at(&self, endpoint: &str, namespace: &str, id: &str) -> (Option<Arc<Record>>, u64) {
        match self.shared.collection(endpoint, namespace) {
            Some(c) => {
                let c = c.read();
                (c.get(id).cloned(), c.last_seq)
            }
            None => (None, 0),
        }
    }

    /// LIST together with the position it reflects, as [`Store::open_at`].
    pub fn list_at(&self, endpoint: &str, namespace: &str, query: &ListQuery) -> (ListResult, u64) {
        let Some(coll) = self.shared.collection(endpoint, namespace) else {
            let empty = ListResult {
                items: Vec::new(),
                count: 0,
            };
            return (empty, 0);
        };
        self.auto_index(endpoint, &coll, query);
        let c = coll.read();
        (c.list(query), c.last_seq)
    }

    /// Passes a change a provider made to an object it keeps itself through the sequencer:
    /// it gets the next position in the commit order, is logged, and reaches subscribers like
    /// a change of the store, but the record store is not touched. `data` is the object's
    /// new state (for a DELETE, its last state or nothing). Returns the change's position.
    pub async fn publish(
        &self,
        endpoint: &str,
        namespace: &str,
        id: &str,
        kind: ChangeKind,
        data: Option<Map<String, Value>>,
    ) -> Result<u64, StoreError> {
        let op = WriteOp::Publish {
            endpoint: endpoint.to_string(),
            namespace: namespace.to_string(),
            id: id.to_string(),
            kind,
            data: data.unwrap_or_default(),
        };
        self.write(op).await.map(|r| r.version)
    }

    /// Runs a LIST; an endpoint that exists but has nothing in this namespace lists empty.
    pub fn list(&self, endpoint: &str, namespace: &str, query: &ListQuery) -> ListResult {
        let Some(coll) = self.shared.collection(endpoint, namespace) else {
            return ListResult {
                items: Vec::new(),
                count: 0,
            };
        };
        self.auto_index(endpoint, &coll, query);
        let result = coll.read().list(query);
        result
    }

    /// Indexes the fields a LIST filters on, when the collection is large enough to gain.
    fn auto_index(&self, endpoint: &str, coll: &Arc<RwLock<Collection>>, query: &ListQuery) {
        if query.condition.is_none() && query.sort.is_empty() {
            return;
        }
        let wanted: Vec<Path> = {
            let c = coll.read();
            if c.len() < self.shared.config.auto_index_min {
                return;
            }
            let mut paths = Vec::new();
            if let Some(cond) = &query.condition {
                indexable_paths(cond, &mut paths);
            }
            // The first sort key: an unfiltered sorted page then reads the index in order.
            if let Some(first) = query.sort.first() {
                if !paths.contains(&first.path) {
                    paths.push(first.path.clone());
                }
            }
            paths.retain(|p| !c.is_indexed(p));
            paths
        };
        if wanted.is_empty() {
            return;
        }
        let Some(ep) = self.shared.endpoints.get(endpoint).map(|e| e.clone()) else {
            return;
        };
        for path in wanted {
            {
                let mut auto = ep.auto_indexes.write();
                let mut indexed = ep.indexed.write();
                if !indexed.contains(&path) {
                    if *auto >= MAX_AUTO_INDEXES {
                        continue;
                    }
                    *auto += 1;
                    indexed.push(path.clone());
                    tracing::info!(endpoint, field = %path, "indexing a field that LIST filters or sorts on");
                }
            }
            let colls: Vec<Arc<RwLock<Collection>>> =
                ep.namespaces.iter().map(|c| c.value().clone()).collect();
            for c in colls {
                c.write().add_index(path.clone());
            }
        }
    }

    /// INDEX with an object id: the object's search entry.
    pub fn index_entry(&self, endpoint: &str, namespace: &str, id: &str) -> Option<Value> {
        let coll = self.shared.collection(endpoint, namespace)?;
        let c = coll.read();
        let r = c.get(id)?;
        let mut terms = Map::new();
        for p in c.indexed_paths() {
            if let Some(v) = r.json.field(p) {
                terms.insert(p.to_string(), v.to_value());
            }
        }
        Some(json!({
            "id": &*r.id,
            "_name": r.display_name(),
            "version": r.version,
            "updated": r.updated(),
            "terms": terms,
        }))
    }

    /// INDEX without an object id: the endpoint's catalogue in this namespace.
    pub fn catalogue(&self, endpoint: &str, namespace: &str) -> Value {
        let coll = self.shared.collection(endpoint, namespace);
        let empty = RwLock::new(Collection::default());
        let guard = match &coll {
            Some(c) => c.read(),
            None => empty.read(),
        };
        let fields: Vec<Value> = guard
            .stats()
            .into_iter()
            .map(|(path, t)| {
                let parsed = Path::parse(&path);
                let index = parsed.as_ref().and_then(|p| guard.index(p));
                let mut types = Map::new();
                for (name, n) in [
                    ("null", t.null),
                    ("boolean", t.boolean),
                    ("number", t.number),
                    ("string", t.string),
                    ("array", t.array),
                    ("object", t.object),
                ] {
                    if n > 0 {
                        types.insert(name.into(), n.into());
                    }
                }
                json!({
                    "field": path,
                    "count": t.total(),
                    "types": types,
                    "indexed": index.is_some(),
                    "distinct": index.map(|i| i.distinct()),
                })
            })
            .collect();
        json!({
            "endpoint": endpoint,
            "namespace": namespace,
            "count": guard.len(),
            "fields": fields,
        })
    }

    /// Sends a write to the sequencer and waits for its commit.
    pub async fn write(&self, op: WriteOp) -> Result<Arc<Record>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let reply = sequencer::Reply::Channel(reply);
        self.writes
            .send(sequencer::WriteRequest { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the sequencer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the sequencer has stopped".into()))?
    }

    /// Sends a write to the sequencer; `done` gets its outcome on the sequencer's thread once
    /// its batch is committed or has failed, and must return quickly (it holds up the next
    /// batch). No task waits for the commit. While the queue is full, a task waits for room.
    pub fn submit(&self, op: WriteOp, done: Done) {
        use mpsc::error::TrySendError;
        let stopped = || StoreError::Unavailable("the sequencer has stopped".into());
        let request = sequencer::WriteRequest {
            op,
            reply: sequencer::Reply::Call(done),
        };
        match self.writes.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request)) => {
                let writes = self.writes.clone();
                tokio::spawn(async move {
                    if let Err(mpsc::error::SendError(request)) = writes.send(request).await {
                        request.reply.send(Err(stopped()));
                    }
                });
            }
            Err(TrySendError::Closed(request)) => request.reply.send(Err(stopped())),
        }
    }
}

fn indexable_paths(g: &Group, out: &mut Vec<Path>) {
    for item in &g.items {
        let narrows = matches!(
            item.op,
            Operator::Equal
                | Operator::In
                | Operator::Greater
                | Operator::GreaterOrEqual
                | Operator::Less
                | Operator::LessOrEqual
                | Operator::StartsWith
        );
        if narrows && !out.contains(&item.path) {
            out.push(item.path.clone());
        }
    }
    for sub in &g.subgroups {
        indexable_paths(sub, out);
    }
}
