//! The crash test: a real `flowhub serve` process (durability `always`) under many concurrent
//! writers, over WebSocket and over HTTP, is killed with SIGKILL at random moments, cycle after
//! cycle, and restarted on the same data directory. After every restart:
//!
//! - every acknowledged write is there with its final acknowledged value and version;
//! - a write that was in flight when the hub died is either wholly there (its object equals the
//!   value sent) or not at all;
//! - a deleted object stays deleted unless it was created again;
//! - no version goes backwards: every write acknowledged after a restart has a version above
//!   every version seen before it.
//!
//! Each writer owns its objects and sends one write at a time, so the final value of every
//! object is well defined. The run is seeded (the seed is printed; `FLOWHUB_CRASH_SEED=<n>`
//! repeats its writes and kill delays, though the kill moments still depend on timing);
//! `FLOWHUB_CRASH_CYCLES=<n>` changes the number of kills.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Only there so that a broken hub fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);
const WS_WRITERS: usize = 16;
const HTTP_WRITERS: usize = 4;
/// Objects each writer owns.
const OBJECTS_PER_WRITER: usize = 6;
const WS_ENDPOINT: &str = "crash/ws";
const HTTP_ENDPOINT: &str = "crash/http";
/// The HTTP collection path of `HTTP_ENDPOINT` (application `crash`).
const HTTP_PATH: &str = "/api/crash/crash/http/";
const DEFAULT_CYCLES: usize = 15;
/// No new cycle starts after this long, so that the test stays well under a minute.
const BUDGET: Duration = Duration::from_secs(40);
/// Longest time the writers run before the kill.
const MAX_KILL_DELAY_MS: u64 = 1200;
/// The hub's managed fields, left out when values are compared.
const MANAGED: [&str; 4] = ["id", "created", "updated", "version"];

/// SplitMix64: small, seeded, good enough to pick writes and kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------------
// The hub process

struct HubProcess {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl HubProcess {
    /// `flowhub serve` on `data`, with a clean environment: durability `always`, port 0, JSON
    /// logs.
    fn command(data: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowhub"));
        cmd.arg("serve")
            .env_clear()
            .env("FLOWHUB_LISTEN", "127.0.0.1:0")
            .env("FLOWHUB_LOG_FORMAT", "json")
            .env("FLOWHUB_DATA_DIR", data)
            .env("FLOWHUB_DURABILITY", "always")
            .env("FLOWHUB_AUTH", "none")
            // Small segments, so that kills also land around the start of a new segment.
            .env("FLOWHUB_SEGMENT_BYTES", "131072")
            // Frequent snapshots and compactions, so that kills also land in the middle of them.
            .env("FLOWHUB_SNAPSHOT_MIN_BYTES", "262144")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Starts the hub and kills it `after` later, whatever it is doing (reading the log back,
    /// opening it, listening).
    fn start_and_kill(data: &Path, after: Duration) {
        let mut child = Self::command(data).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(after);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the hub and waits for the line with its address.
    fn start(data: &Path) -> HubProcess {
        let (child, addr, stderr) = common::spawn_serve(Self::command(data).stderr(Stdio::piped()));
        HubProcess {
            child,
            addr,
            stderr,
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill9(&mut self) {
        // `Child::kill` sends SIGKILL on Unix.
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "killed, not exited: {status}");
    }

    /// SIGTERM, and wait for a clean exit.
    async fn stop(&mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "clean exit: {status}\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the hub did not stop within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// How many log lines contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.stderr.lock().unwrap().matches(needle).count()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Clients that report a dead hub instead of panicking

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Why a call got no reply.
#[derive(Debug)]
enum CallError {
    /// The connection failed: the hub is gone. The write may or may not have been committed.
    Gone(String),
    /// The hub is alive but did not answer within [`WAIT`]: a bug.
    Hung,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Gone(why) => write!(f, "the hub is gone ({why})"),
            CallError::Hung => write!(f, "no reply within 30 s"),
        }
    }
}

enum Conn {
    Ws { ws: Box<WsStream>, next_id: u64 },
    Http(SocketAddr),
}

impl Conn {
    async fn open(addr: SocketAddr, http: bool) -> Result<Conn, CallError> {
        if http {
            return Ok(Conn::Http(addr));
        }
        let url = format!("ws://{addr}/ws");
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
            Err(_) => Err(CallError::Hung),
            Ok(Err(e)) => Err(CallError::Gone(e.to_string())),
            Ok(Ok((ws, _))) => Ok(Conn::Ws {
                ws: Box::new(ws),
                next_id: 0,
            }),
        }
    }

    /// One call; the reply envelope (with `httpStatus` added for HTTP).
    async fn call(
        &mut self,
        endpoint: &str,
        method: &str,
        id: Option<&str>,
        data: Option<&Value>,
    ) -> Result<Value, CallError> {
        match self {
            Conn::Ws { ws, next_id } => {
                *next_id += 1;
                let rid = format!("r{next_id}");
                let mut frame = json!({"requestid": rid, "endpoint": endpoint, "method": method});
                if let Some(id) = id {
                    frame["objectid"] = json!(id);
                }
                if let Some(d) = data {
                    frame["data"] = d.clone();
                }
                let exchange = async {
                    ws.send(Message::text(frame.to_string()))
                        .await
                        .map_err(|e| CallError::Gone(e.to_string()))?;
                    loop {
                        match ws.next().await {
                            None => return Err(CallError::Gone("end of stream".into())),
                            Some(Err(e)) => return Err(CallError::Gone(e.to_string())),
                            Some(Ok(Message::Text(t))) => {
                                let v: Value = serde_json::from_str(&t).unwrap();
                                if v["requestid"] == json!(rid) {
                                    return Ok(v);
                                }
                            }
                            Some(Ok(Message::Close(_))) => {
                                return Err(CallError::Gone("closed".into()))
                            }
                            Some(Ok(_)) => {}
                        }
                    }
                };
                tokio::time::timeout(WAIT, exchange)
                    .await
                    .unwrap_or(Err(CallError::Hung))
            }
            Conn::Http(addr) => {
                let verb = match method {
                    "DELETE" => "DELETE",
                    "UPDATE" => "PATCH",
                    _ => "POST",
                };
                let body = data.map(Value::to_string).unwrap_or_default();
                let mut req = format!(
                    "{verb} {HTTP_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                     Flow-Request-Method: {method}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n",
                    body.len()
                );
                if let Some(id) = id {
                    req.push_str(&format!("Flow-Request-ObjectId: {id}\r\n"));
                }
                req.push_str("\r\n");
                req.push_str(&body);
                let addr = *addr;
                let exchange = async move {
                    let gone = |e: std::io::Error| CallError::Gone(e.to_string());
                    let mut s = TcpStream::connect(addr).await.map_err(gone)?;
                    s.write_all(req.as_bytes()).await.map_err(gone)?;
                    let mut raw = Vec::new();
                    s.read_to_end(&mut raw).await.map_err(gone)?;
                    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return Err(CallError::Gone("no complete reply".into()));
                    };
                    let head = String::from_utf8_lossy(&raw[..split]).to_string();
                    let status: u64 = head
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let Ok(mut v) = serde_json::from_slice::<Value>(&raw[split + 4..]) else {
                        // A body cut short by the kill.
                        return Err(CallError::Gone("incomplete body".into()));
                    };
                    v["httpStatus"] = json!(status);
                    Ok(v)
                };
                tokio::time::timeout(WAIT, exchange)
                    .await
                    .unwrap_or(Err(CallError::Hung))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model: what each object must be

#[derive(Debug, Clone, PartialEq)]
enum State {
    Absent,
    Present {
        fields: Map<String, Value>,
        version: u64,
    },
}

/// A write sent but not acknowledged when the hub died: its object as it would be if the
/// write was committed.
#[derive(Debug, Clone)]
enum Pending {
    Create(Map<String, Value>),
    Update(Map<String, Value>),
    Delete,
}

#[derive(Debug)]
struct Obj {
    endpoint: &'static str,
    id: String,
    /// The state every acknowledged write leaves.
    state: State,
    /// The object's highest known version (also after it was deleted).
    last_version: u64,
    pending: Option<Pending>,
}

/// The user's fields of a stored object (the managed ones left out).
fn user_fields(object: &Value) -> Map<String, Value> {
    let mut m = object.as_object().cloned().unwrap_or_default();
    for k in MANAGED {
        m.shift_remove(k);
    }
    m
}

/// A merge patch of flat fields: `null` removes, anything else replaces.
fn merged(fields: &Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    let mut out = fields.clone();
    for (k, v) in patch {
        if v.is_null() {
            out.shift_remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn same_fields(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// Writers

struct Writer {
    n: usize,
    http: bool,
    objects: Vec<Obj>,
    rng: Rng,
    counter: u64,
    /// Acknowledged writes, all cycles.
    acked: u64,
    acked_this_cycle: u64,
}

impl Writer {
    fn new(n: usize, http: bool, seed: u64) -> Writer {
        let endpoint = if http { HTTP_ENDPOINT } else { WS_ENDPOINT };
        Writer {
            n,
            http,
            objects: (0..OBJECTS_PER_WRITER)
                .map(|k| Obj {
                    endpoint,
                    id: format!("w{n}-o{k}"),
                    state: State::Absent,
                    last_version: 0,
                    pending: None,
                })
                .collect(),
            rng: Rng(seed ^ (n as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)),
            counter: 0,
            acked: 0,
            acked_this_cycle: 0,
        }
    }

    /// A value of varying size, so that records, batches and tears vary.
    fn pad(&mut self) -> Value {
        let len = match self.rng.below(8) {
            0 => 0,
            1 => 2000 + self.rng.below(3000),
            _ => self.rng.below(100),
        } as usize;
        let c = char::from(b'a' + (self.counter % 26) as u8);
        json!(c.to_string().repeat(len))
    }

    /// Writes until the hub is gone. Every acknowledged write is checked against the model as
    /// it comes; `floor` is the highest version seen before this cycle.
    async fn run(mut self, addr: SocketAddr, floor: u64) -> Result<Writer, String> {
        self.acked_this_cycle = 0;
        let mut conn = match Conn::open(addr, self.http).await {
            Ok(c) => c,
            Err(CallError::Gone(_)) => return Ok(self),
            Err(CallError::Hung) => return Err(format!("writer {}: connect hung", self.n)),
        };
        loop {
            let i = self.rng.below(self.objects.len() as u64) as usize;
            self.counter += 1;
            let counter = self.counter;
            let (method, data, pending) = match &self.objects[i].state {
                State::Absent => {
                    let mut fields = Map::new();
                    fields.insert("w".into(), json!(self.n));
                    fields.insert("n".into(), json!(counter));
                    fields.insert("pad".into(), self.pad());
                    if self.rng.below(2) == 0 {
                        fields.insert("tag".into(), json!(format!("t{counter}")));
                    }
                    (
                        "CREATE",
                        Some(Value::Object(fields.clone())),
                        Pending::Create(fields),
                    )
                }
                State::Present { fields, .. } if self.rng.below(10) < 7 => {
                    let fields = fields.clone();
                    let mut patch = Map::new();
                    patch.insert("n".into(), json!(counter));
                    match self.rng.below(3) {
                        0 => patch.insert("tag".into(), Value::Null),
                        1 => patch.insert("tag".into(), json!(format!("t{counter}"))),
                        _ => patch.insert("pad".into(), self.pad()),
                    };
                    let result = merged(&fields, &patch);
                    (
                        "UPDATE",
                        Some(Value::Object(patch)),
                        Pending::Update(result),
                    )
                }
                State::Present { .. } => ("DELETE", None, Pending::Delete),
            };
            let obj = &mut self.objects[i];
            let reply = match conn
                .call(obj.endpoint, method, Some(&obj.id), data.as_ref())
                .await
            {
                Ok(r) => r,
                Err(CallError::Gone(_)) => {
                    obj.pending = Some(pending);
                    return Ok(self);
                }
                Err(CallError::Hung) => {
                    return Err(format!("writer {}: {method} {} hung", self.n, obj.id))
                }
            };
            let what = format!("writer {}: {method} {} ({counter})", self.n, obj.id);
            if reply["success"] != json!(true) {
                return Err(format!("{what} was refused: {reply}"));
            }
            if self.http && reply["httpStatus"] != json!(200) {
                return Err(format!("{what}: HTTP status of a success: {reply}"));
            }
            let object = &reply["data"];
            let Some(version) = object["version"].as_u64() else {
                return Err(format!("{what}: no version in {reply}"));
            };
            if object["id"] != json!(obj.id) {
                return Err(format!("{what}: the reply names another object: {reply}"));
            }
            match pending {
                Pending::Create(expected) | Pending::Update(expected) => {
                    if version <= floor || version <= obj.last_version {
                        return Err(format!(
                            "{what}: version {version} is not above {} (every version seen \
                             before this start) and {} (the object's last)",
                            floor, obj.last_version
                        ));
                    }
                    if !same_fields(&user_fields(object), &expected) {
                        return Err(format!(
                            "{what}: stored {object}, expected {}",
                            Value::Object(expected)
                        ));
                    }
                    obj.state = State::Present {
                        fields: expected,
                        version,
                    };
                    obj.last_version = version;
                }
                Pending::Delete => {
                    if version != obj.last_version {
                        return Err(format!(
                            "{what}: the delete answered version {version}, the object was at {}",
                            obj.last_version
                        ));
                    }
                    obj.state = State::Absent;
                }
            }
            self.acked += 1;
            self.acked_this_cycle += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking a restarted hub

#[derive(Debug, Default)]
struct Verified {
    objects: usize,
    present: usize,
    in_flight_committed: usize,
    in_flight_lost: usize,
}

/// Every object of `endpoint` the hub holds, by id.
async fn list(conn: &mut Conn, endpoint: &str) -> Map<String, Value> {
    let reply = conn
        .call(endpoint, "LIST", None, None)
        .await
        .unwrap_or_else(|e| panic!("LIST {endpoint} after a restart: {e}"));
    if reply["errorcode"] == json!("DO_NOT_EXIST") {
        return Map::new();
    }
    assert_eq!(reply["success"], json!(true), "LIST {endpoint}: {reply}");
    let items = reply["data"].as_array().unwrap();
    assert_eq!(reply["count"].as_u64(), Some(items.len() as u64), "{reply}");
    let mut out = Map::new();
    for item in items {
        let id = item["id"].as_str().unwrap().to_string();
        assert!(
            out.insert(id.clone(), item.clone()).is_none(),
            "{id} listed twice"
        );
    }
    out
}

/// Checks the restarted hub against the model, settles every in-flight write (committed or
/// not), and raises `floor` to the highest version seen.
async fn verify(hub: &HubProcess, writers: &mut [Writer], floor: &mut u64) -> Verified {
    let mut conn = Conn::open(hub.addr, false)
        .await
        .unwrap_or_else(|e| panic!("connect after a restart: {e}"));
    let mut stored = Map::new();
    for endpoint in [WS_ENDPOINT, HTTP_ENDPOINT] {
        for (id, item) in list(&mut conn, endpoint).await {
            stored.insert(format!("{endpoint} {id}"), item);
        }
    }
    let mut v = Verified::default();
    let mut high = *floor;
    for w in writers.iter_mut() {
        for obj in &mut w.objects {
            v.objects += 1;
            let actual = stored.remove(&format!("{} {}", obj.endpoint, obj.id));
            let pending = obj.pending.take();
            // OPEN reads the same state as LIST.
            let open = conn
                .call(obj.endpoint, "OPEN", Some(&obj.id), None)
                .await
                .unwrap_or_else(|e| panic!("OPEN {} after a restart: {e}", obj.id));
            match &actual {
                Some(object) => assert_eq!(&open["data"], object, "OPEN and LIST differ"),
                None => assert_eq!(open["errorcode"], json!("DO_NOT_EXIST"), "{open}"),
            }
            let fail = |why: &str| -> ! {
                panic!(
                    "{} {} after a restart: {why}\n  stored: {}\n  acknowledged: {:?}\n  \
                     in flight: {:?}\nhub log:\n{}",
                    obj.endpoint,
                    obj.id,
                    actual.as_ref().map_or("nothing".into(), Value::to_string),
                    obj.state,
                    pending,
                    hub.log()
                )
            };
            match &actual {
                None => match (&obj.state, &pending) {
                    (State::Absent, _) => {}
                    (State::Present { .. }, Some(Pending::Delete)) => {
                        obj.state = State::Absent;
                        v.in_flight_committed += 1;
                        continue;
                    }
                    (State::Present { .. }, _) => fail("an acknowledged object is missing"),
                },
                Some(object) => {
                    v.present += 1;
                    let fields = user_fields(object);
                    let Some(version) = object["version"].as_u64() else {
                        fail("no version")
                    };
                    high = high.max(version);
                    let acked = matches!(&obj.state, State::Present { fields: f, version: n }
                        if *n == version && same_fields(f, &fields));
                    if !acked {
                        let sent = match &pending {
                            Some(Pending::Create(f) | Pending::Update(f)) => {
                                same_fields(f, &fields)
                            }
                            _ => false,
                        };
                        if !sent {
                            fail(match obj.state {
                                State::Absent => "a deleted or never acknowledged object is there with a value that was never sent",
                                State::Present { .. } => "the object is not at its last acknowledged value, nor at the value in flight",
                            });
                        }
                        if version <= obj.last_version {
                            fail("the in-flight write is there with a version that went backwards");
                        }
                        obj.state = State::Present { fields, version };
                        obj.last_version = version;
                        v.in_flight_committed += 1;
                        continue;
                    }
                }
            }
            if pending.is_some() {
                v.in_flight_lost += 1;
            }
        }
    }
    if let Some((key, object)) = stored.iter().next() {
        panic!(
            "after a restart the hub holds {key} that no writer ever wrote: {object}\nhub log:\n{}",
            hub.log()
        );
    }
    *floor = high;
    v
}

fn max_version(writers: &[Writer]) -> u64 {
    writers
        .iter()
        .flat_map(|w| &w.objects)
        .map(|o| o.last_version)
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let seed = std::env::var("FLOWHUB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cycles: usize = std::env::var("FLOWHUB_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    println!("crash test seed {seed} (FLOWHUB_CRASH_SEED={seed} repeats it), {cycles} cycles");
    let data = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed);
    let mut writers: Vec<Writer> = (0..WS_WRITERS + HTTP_WRITERS)
        .map(|n| Writer::new(n, n >= WS_WRITERS, seed.wrapping_add(n as u64)))
        .collect();
    let mut floor = 0u64;
    let started = Instant::now();
    let mut kills = 0;
    let mut checked = 0;
    let mut committed = 0;
    let mut lost = 0;
    let mut torn = 0;
    let mut snapshots = 0;
    let mut kills_at_start = 0;
    for cycle in 0..cycles {
        if started.elapsed() > BUDGET {
            println!("time budget spent: stopping after {cycle} cycles");
            break;
        }
        // Now and then a kill while the hub is still starting.
        if rng.below(4) == 0 {
            HubProcess::start_and_kill(data.path(), Duration::from_millis(rng.below(40)));
            kills_at_start += 1;
        }
        let mut hub = HubProcess::start(data.path());
        let v = verify(&hub, &mut writers, &mut floor).await;
        checked += v.objects;
        committed += v.in_flight_committed;
        lost += v.in_flight_lost;
        // Now and then a kill right away, mostly in the middle of heavy writing.
        let delay = match rng.below(8) {
            0 => rng.below(20),
            _ => 20 + rng.below(MAX_KILL_DELAY_MS - 20),
        };
        let tasks: Vec<_> = writers
            .drain(..)
            .map(|w| tokio::spawn(w.run(hub.addr, floor)))
            .collect();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        hub.kill9();
        kills += 1;
        torn += hub.count("cutting a torn");
        snapshots += hub.count("snapshot written");
        for t in tasks {
            let w = tokio::time::timeout(WAIT, t)
                .await
                .expect("a writer stops once the hub is gone")
                .expect("a writer does not panic")
                .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", hub.log()));
            writers.push(w);
        }
        let acked: u64 = writers.iter().map(|w| w.acked_this_cycle).sum();
        let in_flight = writers
            .iter()
            .flat_map(|w| &w.objects)
            .filter(|o| o.pending.is_some())
            .count();
        println!(
            "cycle {cycle}: {} objects at the start ({} present, {} in-flight writes committed, \
             {} not), kill after {delay} ms: {acked} writes acknowledged, {in_flight} in flight",
            v.objects, v.present, v.in_flight_committed, v.in_flight_lost
        );
        floor = floor.max(max_version(&writers));
    }

    // The last kill's restart, then a clean stop and one more start: the same state each time.
    let mut hub = HubProcess::start(data.path());
    let v = verify(&hub, &mut writers, &mut floor).await;
    checked += v.objects;
    committed += v.in_flight_committed;
    lost += v.in_flight_lost;
    torn += hub.count("cutting a torn");
    let settled: Vec<State> = writers
        .iter()
        .flat_map(|w| &w.objects)
        .map(|o| o.state.clone())
        .collect();
    hub.stop().await;
    snapshots += hub.count("snapshot written");
    let hub = HubProcess::start(data.path());
    let v = verify(&hub, &mut writers, &mut floor).await;
    assert_eq!(v.in_flight_committed + v.in_flight_lost, 0);
    let after: Vec<State> = writers
        .iter()
        .flat_map(|w| &w.objects)
        .map(|o| o.state.clone())
        .collect();
    assert_eq!(settled, after, "a clean stop and start change nothing");
    checked += v.objects;
    drop(hub);

    let acked: u64 = writers.iter().map(|w| w.acked).sum();
    println!(
        "crash test: seed {seed}, {kills} kills under writes and {kills_at_start} while starting \
         in {:.1} s, {acked} acknowledged writes, \
         {checked} object checks after restarts, {committed} in-flight writes found committed \
         and {lost} not, {torn} torn tails cut, {snapshots} snapshots written, highest version \
         {floor}",
        started.elapsed().as_secs_f64()
    );
    assert!(acked > 0, "the writers got writes acknowledged");
}
