//! A failing disk: every write the log refuses gets `UNAVAILABLE` and no acknowledgement,
//! nothing of it is applied (reads never show it, the log never brings it back), and the hub
//! takes writes again by itself once the disk works.
//!
//! Two layers:
//! - in the library, deterministic: a [`Log`] that wraps the real [`FileLog`] and refuses
//!   appends on demand, either before anything reaches the file (an injected write error) or
//!   through a real error inside the file log (the next segment file cannot be created);
//! - a real full disk: a `flowhub serve` process whose data directory is on a tiny tmpfs,
//!   filled until writes fail. Mounting needs root (or CAP_SYS_ADMIN); where it is refused the
//!   test says why and skips.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use flowhub::dispatch::Dispatcher;
use flowhub::log::file::{segment_name, Durability, FileLog};
use flowhub::log::format::MAGIC;
use flowhub::log::recovery::recover;
use flowhub::log::{Log, LogRecord};
use flowhub::protocol::{Data, ErrorCode, Method, Request};
use flowhub::store::{Store, StoreConfig};
use serde_json::{json, Value};

const ENDPOINT: &str = "disk/items";
/// Small segments, so that new segment files are created often.
const SEGMENT_BYTES: u64 = 4096;
/// The page size of tmpfs on the machines the tests run on.
const PAGE: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Library level: a log that fails on demand

/// How the next appends fail.
#[derive(Default)]
struct Faults {
    /// Appends still to refuse before the log touches the file (`usize::MAX`: until cleared).
    write_errors: AtomicUsize,
    /// Refuse the next append that starts a new segment, through a real error in the file log:
    /// a directory stands where the segment file would be created.
    segment_error: AtomicBool,
    /// Appends refused so far.
    refused: AtomicUsize,
    /// While set, an append waits (on the sequencer's thread) before doing anything, so that
    /// the writes sent meanwhile all meet in the next batch.
    hold: AtomicBool,
    /// Appends begun so far.
    entered: AtomicUsize,
}

struct FaultyLog {
    inner: FileLog,
    dir: PathBuf,
    faults: Arc<Faults>,
}

impl Log for FaultyLog {
    fn append(&mut self, batch: &[LogRecord]) -> std::io::Result<()> {
        self.faults.entered.fetch_add(1, Ordering::SeqCst);
        while self.faults.hold.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let left = self.faults.write_errors.load(Ordering::SeqCst);
        if left > 0 {
            if left != usize::MAX {
                self.faults.write_errors.store(left - 1, Ordering::SeqCst);
            }
            self.faults.refused.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        let rolls_over = self
            .inner
            .current_segment()
            .is_none_or(|(_, len)| len >= SEGMENT_BYTES);
        if rolls_over && self.faults.segment_error.swap(false, Ordering::SeqCst) {
            let blocker = self.dir.join(segment_name(batch[0].seq));
            std::fs::create_dir(&blocker).unwrap();
            let result = self.inner.append(batch);
            std::fs::remove_dir(&blocker).unwrap();
            assert!(
                result.is_err(),
                "the file log cannot create a segment where a directory is"
            );
            self.faults.refused.fetch_add(1, Ordering::SeqCst);
            return result;
        }
        self.inner.append(batch)
    }

    fn keeps_records(&self) -> bool {
        self.inner.keeps_records()
    }
}

/// A store on the log in `log_dir` (recovered first), behind a faulty log.
fn open_store(log_dir: &Path, faults: Arc<Faults>) -> Store {
    let recovered = recover(log_dir, 0, false).unwrap();
    let inner = FileLog::open(log_dir, Durability::Always, SEGMENT_BYTES, recovered.tail).unwrap();
    let log = FaultyLog {
        inner,
        dir: log_dir.to_path_buf(),
        faults,
    };
    Store::restore(
        StoreConfig::default(),
        Box::new(log),
        recovered.records,
        recovered.last_seq,
    )
    .unwrap()
}

/// A fresh data directory (kept while the first element lives), its log directory, the
/// faults its log obeys, the store on that log, and a dispatcher over the store.
fn rig() -> (tempfile::TempDir, PathBuf, Arc<Faults>, Store, Dispatcher) {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let faults = Arc::new(Faults::default());
    let store = open_store(&log_dir, faults.clone());
    let d = Dispatcher::new(store.clone(), 10_000);
    (dir, log_dir, faults, store, d)
}

/// One call through the dispatcher: the stored object(s), or the error code.
async fn call(
    d: &Dispatcher,
    method: Method,
    id: Option<&str>,
    data: Option<Value>,
) -> Result<Value, ErrorCode> {
    let mut req = Request::new(method, ENDPOINT);
    req.objectid = id.map(str::to_string);
    req.data = data;
    match d.call(req).await {
        Ok(s) => Ok(match s.data {
            Data::Stored(r) => serde_json::from_slice(r.json()).unwrap(),
            Data::StoredList(items) => Value::Array(
                items
                    .iter()
                    .map(|r| serde_json::from_slice(r.json()).unwrap())
                    .collect(),
            ),
            Data::Value(v) => v,
            Data::Json(j) => serde_json::from_str(j.get()).unwrap(),
            Data::None => Value::Null,
        }),
        Err(e) => Err(e.error.code),
    }
}

/// The acknowledged state: every object by id, as the hub answered it last.
type Model = BTreeMap<String, Value>;

/// OPEN and LIST show exactly `model`.
async fn assert_reads(d: &Dispatcher, model: &Model, when: &str) {
    let listed = match call(d, Method::List, None, None).await {
        Ok(v) => v,
        Err(ErrorCode::DoNotExist) => json!([]),
        Err(e) => panic!("{when}: LIST failed with {e}"),
    };
    let listed: Model = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["id"].as_str().unwrap().to_string(), o.clone()))
        .collect();
    assert_eq!(
        &listed, model,
        "{when}: LIST shows exactly the acknowledged writes"
    );
    for (id, object) in model {
        let opened = call(d, Method::Open, Some(id), None).await;
        assert_eq!(opened.as_ref(), Ok(object), "{when}: OPEN {id}");
    }
}

/// A write that must be acknowledged; the model follows it.
async fn write_ok(
    d: &Dispatcher,
    model: &mut Model,
    method: Method,
    id: &str,
    data: Option<Value>,
) {
    let reply = call(d, method, Some(id), data)
        .await
        .unwrap_or_else(|e| panic!("{method:?} {id}: {e}"));
    if method == Method::Delete {
        model.remove(id);
    } else {
        model.insert(id.to_string(), reply);
    }
}

/// A write that must be refused with UNAVAILABLE.
async fn write_refused(d: &Dispatcher, method: Method, id: &str, data: Option<Value>) {
    assert_eq!(
        call(d, method, Some(id), data).await,
        Err(ErrorCode::Unavailable),
        "{method:?} {id} while the disk fails"
    );
}

/// The objects the log holds, as a fresh start would rebuild them.
fn logged_state(log_dir: &Path) -> Model {
    let recovered = recover(log_dir, 0, false).unwrap();
    let mut state = Model::new();
    let mut prev = 0;
    for r in recovered.records {
        assert!(r.seq > prev, "sequence numbers grow in the log");
        prev = r.seq;
        assert_eq!(&*r.endpoint, ENDPOINT);
        match r.state {
            Some(json) => state.insert(r.id.to_string(), serde_json::from_slice(&json).unwrap()),
            None => state.remove(&*r.id),
        };
    }
    state
}

fn highest_version(model: &Model) -> u64 {
    model
        .values()
        .map(|o| o["version"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_appends_are_unavailable_and_leave_nothing_behind() {
    let (_dir, log_dir, faults, store, d) = rig();
    let mut model = Model::new();

    // A healthy start.
    for i in 0..10 {
        let id = format!("a{i}");
        write_ok(
            &d,
            &mut model,
            Method::Create,
            &id,
            Some(json!({"n": i, "tag": "x"})),
        )
        .await;
    }
    write_ok(
        &d,
        &mut model,
        Method::Update,
        "a1",
        Some(json!({"n": 101, "tag": null})),
    )
    .await;
    write_ok(&d, &mut model, Method::Delete, "a9", None).await;
    assert_reads(&d, &model, "healthy").await;

    // The disk fails until further notice: CREATE, UPDATE and DELETE are refused, one by one
    // and many at once, and reads show nothing of them.
    faults.write_errors.store(usize::MAX, Ordering::SeqCst);
    write_refused(&d, Method::Create, "b0", Some(json!({"n": 0}))).await;
    write_refused(&d, Method::Create, "a9", Some(json!({"n": 9}))).await;
    write_refused(
        &d,
        Method::Update,
        "a2",
        Some(json!({"n": 102, "tag": null})),
    )
    .await;
    write_refused(&d, Method::Delete, "a3", None).await;
    // A write that fails on its own keeps its own error.
    assert_eq!(
        call(&d, Method::Update, Some("nobody"), Some(json!({"n": 1}))).await,
        Err(ErrorCode::DoNotExist)
    );
    // Each object once: see `writes_of_a_refused_batch_are_all_unavailable` for writes that
    // meet in one batch.
    let burst: Vec<_> = (0..64)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let (method, id, data) = match i {
                    0..=8 if i % 2 == 0 => {
                        (Method::Update, format!("a{i}"), Some(json!({"n": -i})))
                    }
                    0..=8 => (Method::Delete, format!("a{i}"), None),
                    _ => (Method::Create, format!("c{i}"), Some(json!({"n": i}))),
                };
                call(&d, method, Some(&id), data).await
            })
        })
        .collect();
    for t in burst {
        assert_eq!(t.await.unwrap(), Err(ErrorCode::Unavailable));
    }
    assert_reads(&d, &model, "while the disk fails").await;
    assert!(faults.refused.load(Ordering::SeqCst) >= 5);

    // The disk works again: the same writes go through, with versions above every earlier one.
    faults.write_errors.store(0, Ordering::SeqCst);
    let before = highest_version(&model);
    write_ok(&d, &mut model, Method::Create, "b0", Some(json!({"n": 0}))).await;
    write_ok(&d, &mut model, Method::Create, "a9", Some(json!({"n": 9}))).await;
    write_ok(
        &d,
        &mut model,
        Method::Update,
        "a2",
        Some(json!({"n": 102, "tag": null})),
    )
    .await;
    write_ok(&d, &mut model, Method::Delete, "a3", None).await;
    assert!(model["b0"]["version"].as_u64().unwrap() > before);
    assert_reads(&d, &model, "after the disk recovered").await;

    // One refused append among many concurrent writes: the writes of that batch get
    // UNAVAILABLE, the others are acknowledged, and reads show exactly the acknowledged ones.
    faults.write_errors.store(1, Ordering::SeqCst);
    let mixed: Vec<_> = (0..64)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let id = format!("m{i}");
                (
                    id.clone(),
                    call(&d, Method::Create, Some(&id), Some(json!({"m": i}))).await,
                )
            })
        })
        .collect();
    let mut refused = 0;
    for t in mixed {
        match t.await.unwrap() {
            (id, Ok(object)) => {
                model.insert(id, object);
            }
            (_, Err(ErrorCode::Unavailable)) => refused += 1,
            (id, Err(e)) => panic!("CREATE {id}: {e}"),
        }
    }
    assert!(refused > 0, "the first batch was refused");
    assert_eq!(faults.write_errors.load(Ordering::SeqCst), 0);
    assert_reads(&d, &model, "after one refused batch").await;

    // A real error inside the file log: the next segment file cannot be created. The write is
    // refused; the one after it starts the segment and goes through.
    faults.segment_error.store(true, Ordering::SeqCst);
    let refused_before = faults.refused.load(Ordering::SeqCst);
    let mut n = 0;
    while faults.segment_error.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("s{n}");
        let data = json!({"pad": "p".repeat(900)});
        match call(&d, Method::Create, Some(&id), Some(data)).await {
            Ok(object) => {
                model.insert(id, object);
            }
            Err(e) => {
                assert_eq!(e, ErrorCode::Unavailable, "CREATE {id}");
                assert!(!faults.segment_error.load(Ordering::SeqCst));
            }
        }
        assert!(
            n < 100,
            "a new segment is started within 100 writes of 900 bytes"
        );
    }
    assert_eq!(faults.refused.load(Ordering::SeqCst), refused_before + 1);
    assert_reads(&d, &model, "after a failed segment start").await;
    write_ok(
        &d,
        &mut model,
        Method::Create,
        "after-segment",
        Some(json!({"ok": true})),
    )
    .await;
    write_ok(
        &d,
        &mut model,
        Method::Update,
        "a0",
        Some(json!({"n": 1000})),
    )
    .await;
    assert_reads(&d, &model, "after a failed segment start").await;

    // Fail again just before the stop, so that the log's last act was a refusal.
    faults.write_errors.store(3, Ordering::SeqCst);
    for i in 0..3 {
        write_refused(&d, Method::Create, &format!("last{i}"), Some(json!({}))).await;
    }
    drop(d);
    store.close().await;

    // The log holds exactly the acknowledged writes, and a fresh start shows them.
    assert_eq!(
        logged_state(&log_dir),
        model,
        "the log holds exactly the acknowledged writes"
    );
    let store = open_store(&log_dir, Arc::new(Faults::default()));
    let d = Dispatcher::new(store.clone(), 10_000);
    assert_reads(&d, &model, "after a restart").await;
    let top = highest_version(&model);
    let again = call(&d, Method::Create, Some("last0"), Some(json!({})))
        .await
        .unwrap();
    assert!(
        again["version"].as_u64().unwrap() > top,
        "versions keep growing"
    );
    drop(d);
    store.close().await;
}

/// Where a WebSocket call's outcome goes: a channel the test reads.
struct Sink(tokio::sync::mpsc::UnboundedSender<flowhub::protocol::Outcome>);

impl flowhub::dispatch::ReplySink for Sink {
    fn send(self: Box<Self>, outcome: flowhub::protocol::Outcome) {
        let _ = self.0.send(outcome);
    }
}

/// A write as a WebSocket session makes it: handed to the sequencer with its reply attached
/// (`Dispatcher::call_sink`), no task waiting for the commit.
fn write_attached(
    d: &Dispatcher,
    method: Method,
    id: &str,
    data: Value,
    replies: &tokio::sync::mpsc::UnboundedSender<flowhub::protocol::Outcome>,
) {
    let mut req = Request::new(method, ENDPOINT);
    req.objectid = Some(id.to_string());
    req.data = Some(data);
    d.call_sink(
        req,
        flowhub::protocol::Caller::default(),
        flowhub::auth::Credentials::default(),
        Box::new(Sink(replies.clone())),
    );
}

/// The version of a stored object in an outcome, or its error code.
fn version_of(outcome: flowhub::protocol::Outcome) -> Result<u64, ErrorCode> {
    match outcome {
        Ok(s) => match s.data {
            Data::Stored(r) => {
                let object: Value = serde_json::from_slice(r.json()).unwrap();
                Ok(object["version"].as_u64().unwrap())
            }
            _ => panic!("a write answers with its object"),
        },
        Err(e) => Err(e.error.code),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_with_their_reply_attached_are_refused_and_acknowledged_like_awaited_ones() {
    let (_dir, _, faults, store, d) = rig();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();

    write_attached(&d, Method::Create, "a", json!({"n": 1}), &tx);
    let v1 = version_of(rx.recv().await.unwrap()).expect("the CREATE is acknowledged");

    // A refused append: UNAVAILABLE, and nothing of it is applied.
    faults.write_errors.store(1, Ordering::SeqCst);
    write_attached(&d, Method::Update, "a", json!({"n": 2}), &tx);
    assert_eq!(
        version_of(rx.recv().await.unwrap()),
        Err(ErrorCode::Unavailable)
    );
    assert_eq!(
        call(&d, Method::Open, Some("a"), None).await.unwrap()["n"],
        1,
        "the refused UPDATE left nothing behind"
    );

    // The disk works again: the next write is acknowledged, with a higher version.
    write_attached(&d, Method::Update, "a", json!({"n": 3}), &tx);
    let v2 = version_of(rx.recv().await.unwrap()).expect("the UPDATE is acknowledged");
    assert!(v2 > v1);

    // More writes than the sequencer's queue holds while it is held in an append: those that
    // find it full wait for room in tasks of their own, and every one is acknowledged once.
    faults.hold.store(true, Ordering::SeqCst);
    let entered = faults.entered.load(Ordering::SeqCst);
    write_attached(&d, Method::Create, "held", json!({}), &tx);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while faults.entered.load(Ordering::SeqCst) == entered {
        assert!(
            std::time::Instant::now() < deadline,
            "the sequencer reaches the log"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let many = flowhub::store::WRITE_QUEUE + 500;
    for i in 0..many {
        write_attached(&d, Method::Create, &format!("q{i}"), json!({"i": i}), &tx);
    }
    faults.hold.store(false, Ordering::SeqCst);
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..=many {
        let v = version_of(rx.recv().await.unwrap()).expect("every queued write is acknowledged");
        assert!(versions.insert(v), "version {v} given twice");
    }
    assert_eq!(
        call(&d, Method::Open, Some(&format!("q{}", many - 1)), None)
            .await
            .unwrap()["i"],
        many - 1
    );
    drop(d);
    store.close().await;
}

/// Writes that meet in one refused batch: none of them happened, so each gets UNAVAILABLE,
/// even where an earlier write of the same batch would have changed its answer (a second
/// CREATE of one id, an UPDATE after a DELETE).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_of_a_refused_batch_are_all_unavailable() {
    let (_dir, log_dir, faults, store, d) = rig();
    let mut model = Model::new();
    write_ok(&d, &mut model, Method::Create, "x", Some(json!({"n": 1}))).await;

    // Hold the sequencer in an append, queue the writes behind it, then fail them all.
    faults.hold.store(true, Ordering::SeqCst);
    let entered = faults.entered.load(Ordering::SeqCst);
    let spawn = |method: Method, id: &'static str, data: Option<Value>| {
        let d = d.clone();
        tokio::spawn(async move { call(&d, method, Some(id), data).await })
    };
    let held = spawn(Method::Create, "first", Some(json!({})));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while faults.entered.load(Ordering::SeqCst) == entered {
        assert!(
            std::time::Instant::now() < deadline,
            "the sequencer reaches the log"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    faults.write_errors.store(usize::MAX, Ordering::SeqCst);
    let mut queued = Vec::new();
    for (method, id, data) in [
        (Method::Create, "dup", Some(json!({"n": 1}))),
        (Method::Create, "dup", Some(json!({"n": 2}))),
        (Method::Delete, "x", None),
        (Method::Update, "x", Some(json!({"n": 2}))),
    ] {
        queued.push((method, id, spawn(method, id, data)));
        // In this order into the queue (the order only sharpens the check).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    faults.hold.store(false, Ordering::SeqCst);
    assert_eq!(held.await.unwrap(), Err(ErrorCode::Unavailable));
    for (method, id, t) in queued {
        assert_eq!(
            t.await.unwrap(),
            Err(ErrorCode::Unavailable),
            "{method:?} {id} in a refused batch"
        );
    }
    assert_reads(&d, &model, "after the refused batch").await;
    faults.write_errors.store(0, Ordering::SeqCst);
    drop(d);
    store.close().await;
    assert_eq!(logged_state(&log_dir), model);
}

// ---------------------------------------------------------------------------------------------
// A real full disk

mod full_disk {
    use std::io::Write;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(30);
    /// Size of the tiny filesystem.
    const FS_BYTES: u64 = 1 << 20;
    /// Objects this large need new pages of the filesystem for every write.
    const PAD: usize = 12 * 1024;
    const PATH: &str = "/api/disk/disk/full/";

    /// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
    pub struct Mount {
        pub dir: tempfile::TempDir,
    }

    impl Mount {
        /// Mounts a tmpfs of `bytes`; `Err` says why it cannot be done here.
        pub fn tmpfs(bytes: u64) -> Result<Mount, String> {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(dir.path())
                .output()
                .map_err(|e| format!("cannot run mount: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "mount -t tmpfs failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(Mount { dir })
        }

        pub fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // A process may still hold a file there: detach it instead.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(self.dir.path())
                    .status();
            }
        }
    }

    /// Fills the filesystem of `path` to the last byte; returns the bytes written.
    pub fn fill(path: &Path) -> u64 {
        let mut f = std::fs::File::create(path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Down to the byte: one more byte at a time until nothing fits.
        while let Ok(1) = f.write(&[0]) {
            written += 1;
        }
        written
    }

    pub struct HubProcess {
        child: Child,
        pub addr: SocketAddr,
        stderr: Arc<Mutex<String>>,
    }

    impl HubProcess {
        /// A hub whose segments grow as written (not preallocated): every segment start and
        /// every record needs room on the disk.
        pub fn start(data: &Path) -> HubProcess {
            HubProcess::start_with(data, false)
        }

        pub fn start_with(data: &Path, preallocate: bool) -> HubProcess {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowhub"));
            cmd.arg("serve")
                .env_clear()
                .env("FLOWHUB_LISTEN", "127.0.0.1:0")
                .env("FLOWHUB_LOG_FORMAT", "json")
                .env("FLOWHUB_DATA_DIR", data)
                .env("FLOWHUB_DURABILITY", "always")
                // Every write of a large object starts a new segment file.
                .env("FLOWHUB_SEGMENT_BYTES", "4096")
                .env("FLOWHUB_PREALLOCATE", preallocate.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let (child, addr, stderr) = crate::common::spawn_serve(&mut cmd);
            HubProcess {
                child,
                addr,
                stderr,
            }
        }

        pub fn kill9(&mut self) {
            self.child.kill().unwrap();
            let _ = self.child.wait().unwrap();
        }

        pub async fn stop(&mut self) {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success());
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    assert!(status.success(), "clean exit: {status}\n{}", self.log());
                    return;
                }
                assert!(Instant::now() < deadline, "the hub stops:\n{}", self.log());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        pub fn log(&self) -> String {
            self.stderr.lock().unwrap().clone()
        }

        /// One HTTP call: the status and the envelope.
        pub async fn http(&self, verb: &str, method: &str, id: &str, body: &Value) -> (u16, Value) {
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            let req = format!(
                "{verb} {PATH} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
                 Flow-Request-Method: {method}\r\nFlow-Request-ObjectId: {id}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.addr,
                body.len()
            );
            let exchange = async {
                let mut s = TcpStream::connect(self.addr).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).await.unwrap();
                raw
            };
            let raw = tokio::time::timeout(WAIT, exchange)
                .await
                .expect("an HTTP reply within 30 s");
            let split = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a complete HTTP head");
            let head = String::from_utf8_lossy(&raw[..split]).to_string();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let envelope = serde_json::from_slice(&raw[split + 4..]).unwrap_or_else(|e| {
                panic!(
                    "{method} {id}: body is not JSON ({e}): {head}\n{}",
                    self.log()
                )
            });
            (status, envelope)
        }

        /// A CREATE of a large object: `Some(object)` if acknowledged, `None` if refused with
        /// UNAVAILABLE (HTTP 503); anything else fails the test.
        pub async fn create(&self, id: &str) -> Option<Value> {
            self.create_sized(id, PAD).await
        }

        pub async fn create_sized(&self, id: &str, pad: usize) -> Option<Value> {
            let body = json!({"pad": "f".repeat(pad)});
            self.outcome("CREATE", self.http("POST", "CREATE", id, &body).await)
        }

        pub async fn update(&self, id: &str, n: u64) -> Option<Value> {
            let body = json!({"n": n, "pad": "u".repeat(PAD)});
            self.outcome("UPDATE", self.http("PATCH", "UPDATE", id, &body).await)
        }

        pub async fn delete(&self, id: &str) -> Option<Value> {
            self.outcome(
                "DELETE",
                self.http("DELETE", "DELETE", id, &Value::Null).await,
            )
        }

        fn outcome(&self, what: &str, (status, v): (u16, Value)) -> Option<Value> {
            match status {
                200 => {
                    assert_eq!(v["success"], true, "{what}: {v}");
                    Some(v["data"].clone())
                }
                503 => {
                    assert_eq!(v["success"], false, "{what}: {v}");
                    assert_eq!(v["errorcode"], "UNAVAILABLE", "{what}: {v}");
                    assert!(v.get("data").is_none(), "{what}: {v}");
                    None
                }
                _ => panic!("{what}: HTTP {status} {v}\nhub log:\n{}", self.log()),
            }
        }

        /// The stored object `id`, or `None` if the hub has no such object.
        pub async fn open(&self, id: &str) -> Option<Value> {
            let (status, v) = self.http("GET", "OPEN", id, &Value::Null).await;
            match status {
                200 => Some(v["data"].clone()),
                404 => None,
                _ => panic!("OPEN {id}: HTTP {status} {v}"),
            }
        }

        /// Every stored object, by id.
        pub async fn list(&self) -> std::collections::BTreeMap<String, Value> {
            let req = format!(
                "GET {PATH} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            );
            let mut s = TcpStream::connect(self.addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
                .await
                .unwrap()
                .unwrap();
            let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let status: u16 = String::from_utf8_lossy(&raw[..split])
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            if status == 404 {
                return Default::default();
            }
            let v: Value = serde_json::from_slice(&raw[split + 4..]).unwrap();
            assert_eq!(v["success"], true, "LIST: {v}");
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["id"].as_str().unwrap().to_string(), o.clone()))
                .collect()
        }
    }

    impl Drop for HubProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn filler(mount: &Mount, n: u32) -> PathBuf {
        mount.path().join(format!("filler-{n}"))
    }

    pub const SIZE: u64 = FS_BYTES;
}

/// The length of the newest log segment, `None` when there is none.
fn newest_segment_len(log_dir: &Path) -> Option<u64> {
    let newest = flowhub::log::recovery::segments(log_dir).unwrap().pop()?;
    Some(std::fs::metadata(newest).unwrap().len())
}

/// Gives one page of the filesystem back, taken off the end of a filler file.
fn free_one_page(filler: &Path) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(filler)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - PAGE as u64).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_recovers_when_space_is_back() {
    use full_disk::{fill, filler, HubProcess, Mount};

    let mount = match Mount::tmpfs(full_disk::SIZE) {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED a_full_disk_refuses_writes_and_recovers_when_space_is_back: {why}");
            return;
        }
    };
    let data = mount.path().join("data");
    let log_dir = data.join("log");
    // Room for a few objects only: a filler takes most of the filesystem.
    std::fs::write(
        filler(&mount, 0),
        vec![1u8; (full_disk::SIZE - 160 * 1024) as usize],
    )
    .unwrap();
    let mut hub = HubProcess::start(&data);
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let mut refused: Vec<String> = Vec::new();
    let mut refused_writes = 0;

    // Write until the disk is full: every write is acknowledged or refused with 503.
    let mut n = 0;
    while refused.is_empty() {
        n += 1;
        assert!(n < 100, "the disk fills within 100 writes");
        let id = format!("o{n}");
        match hub.create(&id).await {
            Some(object) => {
                model.insert(id, object);
            }
            None => {
                refused.push(id);
                refused_writes += 1;
            }
        }
    }
    let existing: Vec<String> = model.keys().cloned().collect();
    assert!(existing.len() >= 6, "{} objects fit", existing.len());
    // Now to the last byte.
    fill(&filler(&mount, 1));
    if newest_segment_len(&log_dir) == Some(MAGIC.len() as u64) {
        // The refused write started a segment but its record did not fit: that segment's
        // page still has room for small writes. Fill it with one mid-sized object (one page
        // given back for it), so that the next write must start a new segment.
        free_one_page(&filler(&mount, 0));
        let object = hub
            .create_sized("mid", 5000)
            .await
            .expect("a mid-sized CREATE");
        model.insert("mid".into(), object);
        assert!(
            hub.create("o-next").await.is_none(),
            "CREATE on a full disk"
        );
        refused.push("o-next".into());
        refused_writes += 1;
    }
    // The last write could not even start its segment: not one page is free.
    assert_eq!(
        newest_segment_len(&log_dir),
        Some(0),
        "a segment torn at creation"
    );

    // Every write is refused, large or small, and reads show none of them.
    for round in 0..3 {
        let id = format!("x{round}");
        assert!(hub.create(&id).await.is_none(), "CREATE on a full disk");
        refused.push(id);
        let target = &existing[round];
        assert!(
            hub.update(target, round as u64).await.is_none(),
            "UPDATE on a full disk"
        );
        let target = &existing[existing.len() - 1 - round];
        assert!(hub.delete(target).await.is_none(), "DELETE on a full disk");
        refused_writes += 3;
    }
    for id in &refused {
        assert_eq!(hub.open(id).await, None, "refused CREATE {id} is not there");
    }
    assert_eq!(
        hub.list().await,
        model,
        "reads show the acknowledged writes"
    );

    // A crash while the disk is full, and a start on the full disk (the newest segment is
    // one torn at creation).
    hub.kill9();
    let mut hub = HubProcess::start(&data);
    assert_eq!(hub.list().await, model, "after a restart on the full disk");
    assert!(
        hub.create("y0").await.is_none(),
        "still full after the restart"
    );
    refused.push("y0".into());
    refused_writes += 1;

    // A clean stop on the full disk (its snapshot finds no room), and a start after it.
    hub.stop().await;
    let mut hub = HubProcess::start(&data);
    assert_eq!(
        hub.list().await,
        model,
        "after a clean stop on the full disk"
    );
    assert!(hub.delete(&existing[0]).await.is_none(), "still full");
    refused_writes += 1;

    // One page of room: a new segment can start (its magic fits) but the record cannot. The
    // write is refused, and its torn bytes are cut off the log again.
    free_one_page(&filler(&mount, 0));
    assert!(
        hub.create("p0").await.is_none(),
        "CREATE larger than the room"
    );
    refused.push("p0".into());
    refused_writes += 1;
    assert_eq!(newest_segment_len(&log_dir), Some(MAGIC.len() as u64));
    let on_disk = recover(&log_dir, 0, false).unwrap();
    assert!(
        on_disk.torn.is_none(),
        "a refused write leaves no torn bytes behind: {:?}",
        on_disk.torn
    );

    // Space comes back: writes go through again without a restart.
    std::fs::remove_file(filler(&mount, 1)).unwrap();
    std::fs::remove_file(filler(&mount, 0)).unwrap();
    let mut healed = 0;
    for i in 0..5 {
        let id = format!("z{i}");
        let object = hub.create(&id).await.unwrap_or_else(|| {
            panic!(
                "CREATE {id} after space came back was refused\n{}",
                hub.log()
            )
        });
        model.insert(id, object);
        healed += 1;
    }
    let target = existing[0].clone();
    let updated = hub
        .update(&target, 7)
        .await
        .expect("UPDATE after space came back");
    model.insert(target, updated);
    let gone = existing[1].clone();
    hub.delete(&gone)
        .await
        .expect("DELETE after space came back");
    model.remove(&gone);
    healed += 2;
    assert_eq!(hub.list().await, model);

    // Nothing refused comes back after a crash, and a clean stop keeps the same state.
    hub.kill9();
    let mut hub = HubProcess::start(&data);
    assert_eq!(
        hub.list().await,
        model,
        "after a crash: exactly the acknowledged writes"
    );
    for id in &refused {
        assert_eq!(hub.open(id).await, None, "refused {id} stays absent");
    }
    hub.stop().await;
    let hub = HubProcess::start(&data);
    assert_eq!(hub.list().await, model, "after a clean stop");
    println!(
        "full disk: {} objects stored, {refused_writes} writes refused with 503 ({} CREATEs), \
         {healed} writes acknowledged after space came back without a restart, 5 starts",
        model.len(),
        refused.len()
    );
    drop(hub);
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_preallocated_segments_refuses_writes_and_recovers() {
    use full_disk::{fill, filler, HubProcess, Mount};

    let mount = match Mount::tmpfs(full_disk::SIZE) {
        Ok(m) => m,
        Err(why) => {
            println!(
                "SKIPPED a_full_disk_with_preallocated_segments_refuses_writes_and_recovers: {why}"
            );
            return;
        }
    };
    let data = mount.path().join("data");
    std::fs::write(
        filler(&mount, 0),
        vec![1u8; (full_disk::SIZE - 160 * 1024) as usize],
    )
    .unwrap();
    let mut hub = HubProcess::start_with(&data, true);
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let mut refused: Vec<String> = Vec::new();
    // Until the disk is full (the spare segments, then the segments themselves, find no
    // room): every write is acknowledged or refused with 503.
    let mut n = 0;
    while refused.is_empty() {
        n += 1;
        assert!(n < 200, "the disk fills within 200 writes");
        let id = format!("o{n}");
        match hub.create(&id).await {
            Some(object) => {
                model.insert(id, object);
            }
            None => refused.push(id),
        }
    }
    assert!(model.len() >= 6, "{} objects fit", model.len());
    fill(&filler(&mount, 1));
    // A write may still fit in room the log already holds (the rest of a page, or of a
    // preallocated segment); once that is used up, every write is refused.
    let existing: Vec<String> = model.keys().cloned().collect();
    let mut refused_now = 0;
    for (round, target) in existing.iter().take(6).enumerate() {
        let id = format!("x{round}");
        match hub.create(&id).await {
            Some(object) => {
                model.insert(id, object);
            }
            None => {
                refused.push(id);
                refused_now += 1;
            }
        }
        match hub.delete(target).await {
            Some(_) => {
                model.remove(target);
            }
            None => refused_now += 1,
        }
    }
    assert!(
        refused_now >= 6,
        "writes on a full disk are refused: {refused_now}"
    );
    assert_eq!(
        hub.list().await,
        model,
        "reads show the acknowledged writes"
    );
    // A crash on the full disk, a start on it.
    hub.kill9();
    let mut hub = HubProcess::start_with(&data, true);
    assert_eq!(hub.list().await, model, "after a restart on the full disk");
    // Space comes back: writes go through again without a restart.
    std::fs::remove_file(filler(&mount, 1)).unwrap();
    std::fs::remove_file(filler(&mount, 0)).unwrap();
    for i in 0..20 {
        let id = format!("z{i}");
        let object = hub.create(&id).await.unwrap_or_else(|| {
            panic!(
                "CREATE {id} after space came back was refused\n{}",
                hub.log()
            )
        });
        model.insert(id, object);
    }
    hub.kill9();
    let hub = HubProcess::start_with(&data, true);
    assert_eq!(
        hub.list().await,
        model,
        "after a crash: exactly the acknowledged writes"
    );
    for id in &refused {
        assert_eq!(hub.open(id).await, None, "refused {id} stays absent");
    }
    drop(hub);
    drop(mount);
}
