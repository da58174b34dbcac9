//! Scenario `fanout`: one writer, 1,000 subscribers of one endpoint. Deliveries per second and
//! the hub's CPU per delivery, next to a bare broadcaster built from the same crates (each
//! frame copied to every socket, no logic: the floor) and deepstream 7 record subscriptions
//! (the peer). Then the cost of matching a change against 10,000 live queries.
//!
//! The bare broadcaster is this program itself, started again as a child process
//! (`flowhub-bench --broadcaster`), so that its CPU is read from `/proc` like the hub's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::hub::{self, cpu_seconds, Hub};
use crate::report::{num, times, Table};
use crate::stats::{ratio, round};
use crate::{ws, Plan, Res};

const ENDPOINT: &str = "bench/fanout";
/// The same, for subscriptions named differently on every connection.
const NAMED: &str = "bench/fanoutnamed";
const SUBSCRIBERS: usize = 1000;
/// Smaller subscriber counts measured for the cost-per-delivery curve (with 1,000 above).
const SWEEP: [usize; 2] = [10, 100];
/// Only there so that a broken system fails the run instead of hanging it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Deliveries per second and CPU per delivery of one system over its rounds.
#[derive(Default, Clone, Copy)]
struct Fig {
    deliveries: u64,
    secs: f64,
    cpu: f64,
}

impl Fig {
    fn add(&mut self, o: Fig) {
        self.deliveries += o.deliveries;
        self.secs += o.secs;
        self.cpu += o.cpu;
    }
    fn per_sec(&self) -> Option<f64> {
        (self.secs > 0.0).then(|| self.deliveries as f64 / self.secs)
    }
    fn cpu_us(&self) -> Option<f64> {
        (self.deliveries > 0 && self.cpu.is_finite())
            .then(|| self.cpu * 1e6 / self.deliveries as f64)
    }
    fn json(&self) -> Value {
        json!({
            "deliveries": self.deliveries,
            "seconds": round(self.secs, 3),
            "per_sec": self.per_sec().map(|v| round(v, 1)),
            "cpu_us_per_delivery": self.cpu_us().map(|v| round(v, 3)),
        })
    }
}

/// Subscribers that count the frames they read (after their subscription reply).
struct Subscribers {
    n: usize,
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Subscribers {
    /// Opens `n` WebSockets to `url`; each sends `subscribe` (if any) and waits for one frame
    /// (the reply) before it counts.
    async fn open(
        url: &str,
        n: usize,
        subscribe: impl Fn(usize) -> Option<String>,
    ) -> Res<Subscribers> {
        let count = Arc::new(AtomicU64::new(0));
        let (ready_tx, mut ready_rx) = mpsc::channel::<Res<()>>(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .map_err(|e| format!("WebSocket connect to {url}: {e}"))?;
            let count = count.clone();
            let ready = ready_tx.clone();
            let subscribe = subscribe(i);
            tasks.push(tokio::spawn(async move {
                if let Some(frame) = subscribe {
                    let r = async {
                        ws.send(Message::text(frame)).await?;
                        let reply = ws::recv(&mut ws).await?;
                        if !ws::succeeded(&reply) {
                            return Err(ws::failure("subscribe", &reply));
                        }
                        Ok(())
                    }
                    .await;
                    let failed = r.is_err();
                    let _ = ready.send(r).await;
                    if failed {
                        return;
                    }
                } else {
                    let _ = ready.send(Ok(())).await;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(m, Message::Text(_) | Message::Binary(_)) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for _ in 0..n {
            ready_rx.recv().await.ok_or("a subscriber task ended")??;
        }
        Ok(Subscribers { n, count, tasks })
    }

    /// Waits until `target` frames have been counted since `start` (the count is reset).
    async fn wait(&self, target: u64) -> Res<()> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while self.count.load(Ordering::Relaxed) < target {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {target} deliveries within {}s",
                    self.count.load(Ordering::Relaxed),
                    DELIVERY_TIMEOUT.as_secs()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Measures one round: `send` makes `updates` changes; every subscriber must receive each.
async fn round_of<F, Fut>(
    subs: &Subscribers,
    updates: usize,
    cpu: impl Fn() -> f64,
    send: F,
) -> Res<Fig>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Res<()>>,
{
    let target = (updates * subs.n) as u64;
    subs.count.store(0, Ordering::Relaxed);
    let cpu0 = cpu();
    let t0 = Instant::now();
    let (sent, got) = tokio::join!(send(), subs.wait(target));
    sent?;
    got?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu();
    Ok(Fig {
        deliveries: subs.count.load(Ordering::Relaxed).min(target),
        secs,
        cpu: cpu1 - cpu0,
    })
}

pub async fn run(plan: &Plan, bin: &Path) -> Res<Value> {
    let updates = if plan.quick { 500 } else { 2000 };
    println!(
        "== fanout: 1 writer, {SUBSCRIBERS} subscribers of one endpoint, {updates} updates per round, {} rounds",
        plan.rounds
    );
    let tmp = hub::temp_dir("fanout")?;
    let hub = Hub::spawn(
        bin,
        &tmp.path().join("hub"),
        &[("FLOWHUB_DURABILITY", "memory")],
    )?;
    {
        let mut w = ws::connect(hub.addr).await?;
        for ep in [ENDPOINT, NAMED] {
            let frame = json!({"endpoint": ep, "method": "CREATE", "data": {"id": "d1", "name": "switch", "n": 0}});
            ws::call_ok(&mut w, &frame).await?;
        }
    }
    let url = format!("ws://{}/ws", hub.addr);
    // Unnamed subscriptions: each is `s1` on its connection, so all share each event's frame.
    let hub_subs = Subscribers::open(&url, SUBSCRIBERS, |_| {
        Some(json!({"type": "subscribe", "requestid": 1, "endpoint": ENDPOINT}).to_string())
    })
    .await?;
    // Named differently on every connection: a frame of its own for each delivery.
    let named_subs = Subscribers::open(&url, SUBSCRIBERS, |i| {
        Some(
            json!({"type": "subscribe", "requestid": 1, "endpoint": NAMED,
                   "subscription": format!("device-list-{i}")})
            .to_string(),
        )
    })
    .await?;
    // The broadcaster sends a frame of the size of the hub's event frame.
    let sample = sample_event(hub.addr).await?;
    let bc = Broadcaster::start()?;
    let bc_subs = Subscribers::open(&format!("ws://{}/", bc.addr), SUBSCRIBERS, |_| None).await?;
    let mut bc_pub = ws::connect_url(&format!("ws://{}/", bc.addr)).await?;
    bc_pub.send(Message::text("pub")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut f, mut b, mut named) = (Fig::default(), Fig::default(), Fig::default());
    let mut next = 1u64;
    // Round 0 warms up (socket buffers, allocator, the resume window) and is not counted.
    for round in 0..=plan.rounds {
        let frames: Vec<String> = (0..updates)
            .map(|i| {
                json!({"requestid": i, "endpoint": ENDPOINT, "method": "UPDATE", "objectid": "d1",
                       "data": {"n": next + i as u64}})
                .to_string()
            })
            .collect();
        next += updates as u64;
        let addr = hub.addr;
        let named_frames: Vec<String> = frames.iter().map(|f| f.replace(ENDPOINT, NAMED)).collect();
        let fr = round_of(
            &hub_subs,
            updates,
            || hub.cpu(),
            || ws::pipeline(addr, frames, 64),
        )
        .await?;
        let nr = round_of(
            &named_subs,
            updates,
            || hub.cpu(),
            || ws::pipeline(addr, named_frames, 64),
        )
        .await?;
        let stat = format!("/proc/{}/stat", bc.child.id());
        let frame = sample.clone();
        let publisher = &mut bc_pub;
        let br = round_of(
            &bc_subs,
            updates,
            || cpu_seconds(&stat).unwrap_or(f64::NAN),
            || async move {
                for _ in 0..updates {
                    publisher.feed(Message::text(frame.clone())).await?;
                }
                publisher.flush().await?;
                Ok(())
            },
        )
        .await?;
        if round > 0 {
            f.add(fr);
            b.add(br);
            named.add(nr);
        }
    }
    drop(hub_subs);
    drop(named_subs);
    drop(bc_subs);
    // The cost per delivery against the number of subscribers (1,000 is the run above).
    let mut sweep = Vec::new();
    for n in SWEEP {
        let per = (updates * SUBSCRIBERS / n).min(if plan.quick { 5_000 } else { 20_000 });
        let (fs, bs) = sweep_point(plan, &hub, &bc, &mut bc_pub, &sample, n, per).await?;
        sweep.push((n, fs, bs));
    }
    sweep.push((SUBSCRIBERS, f, b));
    drop(bc_pub);
    drop(bc);
    // deepstream's clients log in one after the other (minutes for 1,000): a quick run
    // measures it with 100 subscribers and says so.
    let ds_subscribers = if plan.quick { 100 } else { SUBSCRIBERS };
    let peer = deepstream(ds_subscribers, if plan.quick { 200 } else { updates }).await;
    let mut t = Table::new(
        &["system", "deliveries/s", "CPU µs/delivery", "frame bytes"],
        1,
    );
    t.row(vec![
        "flowhub".into(),
        num(f.per_sec()),
        num(f.cpu_us()),
        sample.len().to_string(),
    ]);
    t.row(vec![
        "flowhub, every subscription named apart".into(),
        num(named.per_sec()),
        num(named.cpu_us()),
        sample.len().to_string(),
    ]);
    t.row(vec![
        "bare broadcaster".into(),
        num(b.per_sec()),
        num(b.cpu_us()),
        sample.len().to_string(),
    ]);
    match &peer {
        Ok((rate, cpu, line)) => {
            let name = if ds_subscribers == SUBSCRIBERS {
                "deepstream 7".to_string()
            } else {
                format!("deepstream 7, {ds_subscribers} subscribers")
            };
            t.row(vec![name, num(Some(*rate)), num(Some(*cpu)), "-".into()]);
            t.note(format!("deepstream: {line}"));
        }
        Err(why) => t.note(format!("deepstream 7 skipped: {why}")),
    }
    let cpu_ratio = ratio(f.cpu_us(), b.cpu_us());
    t.note(format!(
        "flowhub / bare broadcaster: CPU per delivery {} (target ≤ 1.30x), deliveries/s {}",
        times(cpu_ratio),
        times(ratio(f.per_sec(), b.per_sec()))
    ));
    if let Ok((_, cpu, _)) = &peer {
        t.note(format!(
            "flowhub / deepstream: CPU per delivery {}",
            times(ratio(f.cpu_us(), Some(*cpu)))
        ));
    }
    t.print();
    let mut st = Table::new(
        &[
            "subscribers",
            "flowhub CPU µs/delivery",
            "broadcaster CPU µs/delivery",
            "ratio",
        ],
        0,
    );
    for (n, fs, bs) in &sweep {
        st.row(vec![
            n.to_string(),
            num(fs.cpu_us()),
            num(bs.cpu_us()),
            times(ratio(fs.cpu_us(), bs.cpu_us())),
        ]);
    }
    println!("cost per delivery against the number of subscribers (same writer, CPU of the server process including the writes):");
    st.print();
    let matching = live_queries(plan, bin, &tmp).await?;
    drop(hub);
    Ok(json!({
        "scenario": "fanout",
        "subscribers": SUBSCRIBERS,
        "updates_per_round": updates,
        "rounds": plan.rounds,
        "flowhub": f.json(),
        "flowhub_named_apart": named.json(),
        "baseline": b.json(),
        "peer": match &peer {
            Ok((rate, cpu, line)) => json!({"name": "deepstream 7", "subscribers": ds_subscribers, "per_sec": round(*rate, 1), "cpu_us_per_delivery": cpu, "line": line}),
            Err(why) => json!({"name": "deepstream 7", "skipped": why}),
        },
        "cpu_ratio_to_baseline": cpu_ratio,
        "sweep": sweep.iter().map(|(n, fs, bs)| json!({
            "subscribers": n,
            "flowhub": fs.json(),
            "baseline": bs.json(),
            "cpu_ratio_to_baseline": ratio(fs.cpu_us(), bs.cpu_us()),
        })).collect::<Vec<_>>(),
        "live_queries": matching,
    }))
}

/// Flowhub and the broadcaster with `n` subscribers (an endpoint of their own on the hub),
/// `updates` changes per round, the rounds added up after one that warms up.
async fn sweep_point(
    plan: &Plan,
    hub: &Hub,
    bc: &Broadcaster,
    bc_pub: &mut crate::ws::Ws,
    sample: &str,
    n: usize,
    updates: usize,
) -> Res<(Fig, Fig)> {
    let endpoint = format!("bench/fanout{n}");
    {
        let mut w = ws::connect(hub.addr).await?;
        let frame = json!({"endpoint": endpoint, "method": "CREATE", "data": {"id": "d1", "name": "switch", "n": 0}});
        ws::call_ok(&mut w, &frame).await?;
    }
    let url = format!("ws://{}/ws", hub.addr);
    let hub_subs = Subscribers::open(&url, n, |_| {
        Some(json!({"type": "subscribe", "requestid": 1, "endpoint": endpoint}).to_string())
    })
    .await?;
    let bc_subs = Subscribers::open(&format!("ws://{}/", bc.addr), n, |_| None).await?;
    // Let the sockets of the previous point go from the broadcaster's list.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut f, mut b) = (Fig::default(), Fig::default());
    let stat = format!("/proc/{}/stat", bc.child.id());
    for round in 0..=plan.rounds {
        let frames: Vec<String> = (0..updates)
            .map(|i| {
                json!({"requestid": i, "endpoint": endpoint, "method": "UPDATE", "objectid": "d1",
                       "data": {"n": round * updates + i}})
                .to_string()
            })
            .collect();
        let addr = hub.addr;
        let fr = round_of(
            &hub_subs,
            updates,
            || hub.cpu(),
            || ws::pipeline(addr, frames, 64),
        )
        .await?;
        let frame = sample.to_string();
        let publisher = &mut *bc_pub;
        let br = round_of(
            &bc_subs,
            updates,
            || cpu_seconds(&stat).unwrap_or(f64::NAN),
            || async move {
                for _ in 0..updates {
                    publisher.feed(Message::text(frame.clone())).await?;
                }
                publisher.flush().await?;
                Ok(())
            },
        )
        .await?;
        if round > 0 {
            f.add(fr);
            b.add(br);
        }
    }
    Ok((f, b))
}

/// One event frame of the hub as a subscriber receives it, to size the broadcaster's frames.
async fn sample_event(addr: SocketAddr) -> Res<String> {
    let mut s = ws::connect(addr).await?;
    let frame =
        json!({"type": "subscribe", "requestid": 1, "subscription": "s1", "endpoint": ENDPOINT});
    ws::call_ok(&mut s, &frame).await?;
    let mut w = ws::connect(addr).await?;
    let update =
        json!({"endpoint": ENDPOINT, "method": "UPDATE", "objectid": "d1", "data": {"n": 0}});
    ws::call_ok(&mut w, &update).await?;
    ws::recv(&mut s).await
}

/// The bare broadcaster child process.
struct Broadcaster {
    child: Child,
    addr: SocketAddr,
}

impl Broadcaster {
    fn start() -> Res<Broadcaster> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--broadcaster")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("the broadcaster said {line:?}"))?;
        Ok(Broadcaster { child, addr })
    }
}

impl Drop for Broadcaster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flowhub-bench --broadcaster`: a WebSocket server that copies every frame a connection
/// sends after saying `pub` to every other connection. The same crates as the hub (tokio,
/// tokio-tungstenite), the same writer (feed what is ready, then flush), no logic.
pub fn broadcaster_main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broadcaster: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let r: Res<()> = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let subs: Arc<parking::Subs> = Arc::new(parking::Subs::default());
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let subs = subs.clone();
            tokio::spawn(async move {
                let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
                let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
                let id = subs.add(tx);
                tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                        while let Ok(m) = rx.try_recv() {
                            if sink.feed(m).await.is_err() {
                                return;
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                });
                let mut publisher = false;
                while let Some(Ok(m)) = stream.next().await {
                    if !matches!(m, Message::Text(_) | Message::Binary(_)) {
                        continue;
                    }
                    if !publisher {
                        publisher = true;
                        subs.remove(id);
                        continue;
                    }
                    subs.broadcast(&m);
                }
                subs.remove(id);
            });
        }
    });
    if let Err(e) = r {
        eprintln!("broadcaster: {e}");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}

mod parking {
    use std::sync::Mutex;

    use tokio::sync::mpsc::UnboundedSender;
    use tokio_tungstenite::tungstenite::Message;

    /// A subscriber's id and queue.
    type Queue = (u64, UnboundedSender<Message>);

    /// The subscribers' queues, and the last id given.
    #[derive(Default)]
    pub struct Subs {
        inner: Mutex<(u64, Vec<Queue>)>,
    }

    impl Subs {
        pub fn add(&self, tx: UnboundedSender<Message>) -> u64 {
            let Ok(mut g) = self.inner.lock() else {
                return 0;
            };
            g.0 += 1;
            let id = g.0;
            g.1.push((id, tx));
            id
        }
        pub fn remove(&self, id: u64) {
            if let Ok(mut g) = self.inner.lock() {
                g.1.retain(|(i, _)| *i != id);
            }
        }
        pub fn broadcast(&self, m: &Message) {
            if let Ok(g) = self.inner.lock() {
                for (_, tx) in &g.1 {
                    let _ = tx.send(m.clone());
                }
            }
        }
    }
}

/// Where the deepstream peer's files are: `FLOWHUB_DEEPSTREAM_DIR`, else `../shared/peers/
/// deepstream` beside the workspace.
fn deepstream_source() -> PathBuf {
    match std::env::var_os("FLOWHUB_DEEPSTREAM_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/deepstream"),
    }
}

/// Installs deepstream 7 (npm) under `target/deepstream-peer` once, starts it, runs its
/// `fanout.js` with as many subscribers and updates, and returns (deliveries/s, server CPU
/// µs per delivery, its line).
async fn deepstream(subscribers: usize, updates: usize) -> Result<(f64, f64, String), String> {
    if std::env::var_os("FLOWHUB_BENCH_NO_PEER").is_some_and(|v| v != "0" && !v.is_empty()) {
        return Err("FLOWHUB_BENCH_NO_PEER is set".into());
    }
    let src = deepstream_source();
    if !src.join("fanout.js").exists() {
        return Err(format!(
            "no {} (set FLOWHUB_DEEPSTREAM_DIR)",
            src.join("fanout.js").display()
        ));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/deepstream-peer");
    let installed = dir.join("node_modules/.bin/deepstream");
    if !installed.exists() {
        println!(
            "installing deepstream 7 with npm into {} (once)",
            dir.display()
        );
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for entry in std::fs::read_dir(&src)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let to = dir.join(entry.file_name());
            if entry.path().is_dir() {
                copy_dir(&entry.path(), &to).map_err(|e| e.to_string())?;
            } else {
                std::fs::copy(entry.path(), &to).map_err(|e| e.to_string())?;
            }
        }
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .map_err(|e| format!("cannot run npm: {e}"))?;
        if !status.success() || !installed.exists() {
            return Err("npm install failed".into());
        }
    }
    let mut server = Command::new("node")
        .args(["node_modules/.bin/deepstream", "start", "-c", "config.yml"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run node: {e}"))?;
    let result = async {
        std::fs::write(dir.join("ds.pid"), server.id().to_string()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect("127.0.0.1:6020")
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("deepstream did not listen on 127.0.0.1:6020 within 30 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let d = dir.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .args(["fanout.js", &subscribers.to_string(), &updates.to_string()])
                .env("DS_PID_FILE", d.join("ds.pid"))
                .current_dir(&d)
                .output()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run fanout.js: {e}"))?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let rate = number_before(&line, " deliveries/s");
        let cpu = number_before(&line, " us/delivery");
        match (rate, cpu) {
            (Some(r), Some(c)) => Ok((r, c, line)),
            _ => Err(format!(
                "fanout.js said {line:?} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
    .await;
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)?.flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// The number just before `suffix` in `line`.
fn number_before(line: &str, suffix: &str) -> Option<f64> {
    let end = line.find(suffix)?;
    let start = line[..end].rfind(' ').map_or(0, |i| i + 1);
    line[start..end].parse().ok()
}

/// The cost of matching changes against 10,000 live queries that the changed object does not
/// satisfy: with equality terms (the index finds no candidate) and with range conditions
/// (every query is tested), next to the same updates with no query at all.
async fn live_queries(plan: &Plan, bin: &Path, tmp: &tempfile::TempDir) -> Res<Value> {
    const QUERIES: usize = 10_000;
    let updates = if plan.quick { 20_000 } else { 100_000 };
    println!("== fanout: matching {updates} updates against {QUERIES} live queries (none matches)");
    let mut t = Table::new(
        &["live queries", "hub CPU µs/update", "matching µs/update"],
        1,
    );
    let mut out = serde_json::Map::new();
    let mut none_cpu = None;
    // Testing every query costs about a thousand times more: fewer updates for it.
    for (name, cond, updates) in [
        ("none", None, updates),
        ("10,000 EQUAL (indexed)", Some("eq"), updates),
        ("10,000 GREATER (tested each)", Some("gt"), updates / 50),
    ] {
        let hub = Hub::spawn(
            bin,
            &tmp.path().join(format!("lq-{}", cond.unwrap_or("none"))),
            &[
                ("FLOWHUB_DURABILITY", "memory"),
                ("FLOWHUB_MAX_SUBSCRIPTIONS", "10000"),
            ],
        )?;
        let mut w = ws::connect(hub.addr).await?;
        let frame = json!({"endpoint": "bench/lq", "method": "CREATE", "data": {"id": "d1", "city": "Nowhere", "n": 0}});
        ws::call_ok(&mut w, &frame).await?;
        let mut holder = None;
        if let Some(kind) = cond {
            let frames: Vec<String> = (0..QUERIES)
                .map(|i| {
                    let item = if kind == "eq" {
                        json!({"key": "city", "operator": "EQUAL", "value": format!("c{i}")})
                    } else {
                        json!({"key": "n", "operator": "GREATER", "value": 1_000_000_000 + i})
                    };
                    json!({"type": "subscribe", "requestid": i, "endpoint": "bench/lq",
                           "condition": {"items": [item]}})
                    .to_string()
                })
                .collect();
            // One connection holds all the queries; its socket stays open (never written to).
            let mut s = ws::connect(hub.addr).await?;
            for f in frames {
                s.feed(Message::text(f)).await?;
            }
            s.flush().await?;
            for _ in 0..QUERIES {
                let r = ws::recv(&mut s).await?;
                if !ws::succeeded(&r) {
                    return Err(ws::failure("subscribe", &r));
                }
            }
            holder = Some(s);
        }
        let frames: Vec<String> = (0..updates)
            .map(|i| {
                json!({"requestid": i, "endpoint": "bench/lq", "method": "UPDATE", "objectid": "d1",
                       "data": {"n": i, "city": format!("x{i}")}})
                .to_string()
            })
            .collect();
        // The fan-out works after the writes are answered: a subscriber of the object says
        // when it has handled the last one (its deliveries cost the same in every case).
        let mut watcher = ws::connect(hub.addr).await?;
        let sub =
            json!({"type": "subscribe", "requestid": 1, "endpoint": "bench/lq", "objectid": "d1"});
        ws::call_ok(&mut watcher, &sub).await?;
        let last = updates as u64 - 1;
        let watching = tokio::spawn(async move {
            loop {
                let e: Value = serde_json::from_str(&ws::recv(&mut watcher).await?)?;
                if e["data"]["n"].as_u64() == Some(last) {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                }
            }
        });
        let cpu0 = hub.cpu();
        ws::pipeline(hub.addr, frames, 64).await?;
        tokio::time::timeout(DELIVERY_TIMEOUT, watching)
            .await
            .map_err(|_| "the last change did not arrive")???;
        let cpu = (hub.cpu() - cpu0) * 1e6 / updates as f64;
        if cond.is_none() {
            none_cpu = Some(cpu);
        }
        // Below the noise of a 10 ms CPU clock tick the difference can come out negative.
        let extra = none_cpu
            .filter(|_| cond.is_some())
            .map(|n| (cpu - n).max(0.0));
        t.row(vec![name.into(), num(Some(cpu)), num(extra)]);
        out.insert(
            cond.unwrap_or("none").into(),
            json!({"cpu_us_per_update": round(cpu, 2), "matching_us_per_update": extra.map(|e| round(e, 2))}),
        );
        drop(holder);
        drop(hub);
    }
    t.print();
    Ok(Value::Object(out))
}
