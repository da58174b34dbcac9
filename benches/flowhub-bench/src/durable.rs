//! Scenario `durable-update`: acknowledged UPDATEs per second under `durability = "always"`
//! (fsync before the ack) with 1, 8 and 64 writers, next to the floor of one fsync per write
//! and Redis 7 with `appendfsync always`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::hub::{self, Hub};
use crate::redis::{self, Redis};
use crate::report::{num, times, Table};
use crate::stats::{self, ratio, Acc, Figures, Sample, Window};
use crate::{ws, Plan, Res};

const ENDPOINT: &str = "bench/durable";
const WRITERS: [usize; 3] = [1, 8, 64];
const VALUE_BYTES: usize = 100;
/// Bytes the baseline appends per write: about what one small write costs in a log.
const BASELINE_RECORD: usize = 150;

/// The value of writer `w`'s `i`-th write: exactly [`VALUE_BYTES`] ASCII bytes.
fn value(w: usize, i: u64) -> String {
    let mut v = format!("w{w:02}-{i:012}-");
    while v.len() < VALUE_BYTES {
        v.push('x');
    }
    v.truncate(VALUE_BYTES);
    v
}

struct Run {
    writers: usize,
    flowhub: Figures,
    baseline: Figures,
    peer: Option<Figures>,
}

pub async fn run(plan: &Plan, bin: &Path) -> Res<Value> {
    println!("== durable-update: UPDATE over WebSocket, durability = always (fsync before ack)");
    let tmp = hub::temp_dir("durable-update")?;
    let hub = Hub::spawn(
        bin,
        &tmp.path().join("hub"),
        &[("FLOWHUB_DURABILITY", "always")],
    )?;
    {
        let mut ws = ws::connect(hub.addr).await?;
        for w in 0..WRITERS[WRITERS.len() - 1] {
            let frame = json!({"requestid": w, "endpoint": ENDPOINT, "method": "CREATE",
                "data": {"id": format!("w{w}"), "value": value(w, 0)}});
            ws::call_ok(&mut ws, &frame).await?;
        }
    }
    if let Some(secs) = std::env::var_os("FLOWHUB_BENCH_DURABLE_SOAK") {
        let secs: f64 = secs
            .to_string_lossy()
            .parse()
            .map_err(|_| "FLOWHUB_BENCH_DURABLE_SOAK takes seconds")?;
        return soak(plan, &hub, std::time::Duration::from_secs_f64(secs)).await;
    }
    let (peer_name, peer) = match redis::locate() {
        Ok(bin) => {
            let version = redis::version(&bin);
            match Redis::start(&bin, &tmp.path().join("redis")).await {
                Ok(r) => (format!("Redis {version}"), Ok(r)),
                Err(e) => (
                    "Redis".to_string(),
                    Err(format!("redis-server did not start: {e}")),
                ),
            }
        }
        Err(why) => ("Redis".to_string(), Err(why)),
    };
    if let Err(why) = &peer {
        println!("peer skipped: {why}");
    }
    let mut runs = Vec::new();
    for writers in WRITERS {
        let (mut f, mut b, mut p) = (Acc::default(), Acc::default(), Acc::default());
        for _ in 0..plan.rounds {
            f.add(hub_writers(&hub, writers, plan).await?);
            let dir = tmp.path().join("fsync");
            let pl = plan.clone();
            b.add(tokio::task::spawn_blocking(move || fsync_writers(&dir, writers, &pl)).await??);
            if let Ok(r) = &peer {
                p.add(r.writers(writers, plan.warmup, plan.window, value).await?);
            }
        }
        runs.push(Run {
            writers,
            flowhub: f.figures(),
            baseline: b.figures(),
            peer: peer.is_ok().then(|| p.figures()),
        });
    }
    let hub_log_bytes = hub::dir_bytes(&tmp.path().join("hub"));
    hub.terminate().await?;
    let skipped = peer.as_ref().err().cloned();
    drop(peer);

    println!(
        "one object per writer, value {VALUE_BYTES} B, each writer a closed loop (send, wait for the reply); {} rounds of {:.1} s per system (taking turns), each after {:.1} s warm-up",
        plan.rounds,
        plan.window.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    println!("baseline: {BASELINE_RECORD} B appended to its own file per thread + fdatasync, same file system; peer: SET of the same value, one connection per writer");
    println!("clients: the same lean loop for both (one buffer per connection, one write per call): WebSocket frames to the hub, RESP to Redis");
    let mut t = Table::new(
        &[
            "writers",
            "system",
            "writes/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/write",
        ],
        2,
    );
    let ms = |us: f64| Some(us / 1000.0);
    for r in &runs {
        let mut row = |name: String, f: &Figures| {
            t.row(vec![
                r.writers.to_string(),
                name,
                num(Some(f.per_sec())),
                num(ms(f.p50_us)),
                num(ms(f.p99_us)),
                num(f.cpu_us_per_op),
            ])
        };
        row("flowhub (hub process CPU)".into(), &r.flowhub);
        row("baseline: one fsync per write".into(), &r.baseline);
        match &r.peer {
            Some(p) => row(format!("peer: {peer_name} appendfsync always"), p),
            None => t.row(vec![
                r.writers.to_string(),
                format!("peer: {peer_name}: skipped"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
        t.note(format!(
            "writes/s flowhub/baseline {}   flowhub/peer {}   hub CPU/peer CPU per write {}",
            times(ratio(Some(r.flowhub.per_sec()), Some(r.baseline.per_sec()))),
            times(ratio(
                Some(r.flowhub.per_sec()),
                r.peer.as_ref().map(|p| p.per_sec())
            )),
            times(ratio(
                r.flowhub.cpu_us_per_op,
                r.peer.as_ref().and_then(|p| p.cpu_us_per_op)
            )),
        ));
    }
    t.print();
    let last = runs.last().ok_or("no runs")?;
    let vs_peer = ratio(
        Some(last.flowhub.per_sec()),
        last.peer.as_ref().map(|p| p.per_sec()),
    );
    let p99_ok = last.flowhub.p99_us <= 5000.0;
    let rate_ok = vs_peer.map(|r| r >= 1.0);
    println!(
        "target (64 writers): writes/s ≥ Redis's: {}; p99 ≤ 5 ms: {} ({} ms)",
        match rate_ok {
            Some(true) => format!("met ({})", times(vs_peer)),
            Some(false) => format!("MISSED ({})", times(vs_peer)),
            None => "not measured (peer skipped)".into(),
        },
        if p99_ok { "met" } else { "MISSED" },
        num(ms(last.flowhub.p99_us)),
    );
    Ok(json!({
        "scenario": "durable-update",
        "what": "UPDATE over WebSocket (JSON), durability always, one object per writer, closed loop per writer",
        "value_bytes": VALUE_BYTES,
        "window_s": plan.window.as_secs_f64(),
        "rounds": plan.rounds,
        "warmup_s": plan.warmup.as_secs_f64(),
        "baseline": format!("{BASELINE_RECORD} B append + fdatasync per write, one file per thread"),
        "peer": {
            "name": peer_name,
            "config": "appendonly yes, appendfsync always, save \"\"",
            "skipped": skipped,
        },
        "hub_data_bytes": hub_log_bytes,
        "runs": runs.iter().map(|r| json!({
            "writers": r.writers,
            "flowhub": r.flowhub.json(),
            "baseline": r.baseline.json(),
            "peer": r.peer.as_ref().map(Figures::json),
            "ratio_flowhub_to_baseline": ratio(Some(r.flowhub.per_sec()), Some(r.baseline.per_sec())),
            "ratio_flowhub_to_peer": ratio(Some(r.flowhub.per_sec()), r.peer.as_ref().map(|p| p.per_sec())),
        })).collect::<Vec<_>>(),
        "target": {
            "writers": 64,
            "writes_per_sec_vs_peer_at_least": 1.0,
            "p99_ms_at_most": 5.0,
            "rate_met": rate_ok,
            "p99_met": p99_ok,
        },
    }))
}

/// A profiling aid (`FLOWHUB_BENCH_DURABLE_SOAK=SECONDS`): the hub alone with 64 writers
/// (`FLOWHUB_BENCH_DURABLE_SOAK_WRITERS` to change) for one long window, its pid printed first
/// for `perf record -p` or `perf stat -p`.
async fn soak(plan: &Plan, hub: &Hub, length: std::time::Duration) -> Res<Value> {
    let writers = match std::env::var("FLOWHUB_BENCH_DURABLE_SOAK_WRITERS") {
        Ok(n) => n
            .parse()
            .map_err(|_| "FLOWHUB_BENCH_DURABLE_SOAK_WRITERS takes a number")?,
        Err(_) => WRITERS[WRITERS.len() - 1],
    };
    println!(
        "FLOWHUB_BENCH_DURABLE_SOAK: hub pid {}; {writers} writers, {:.1} s after {:.1} s warm-up",
        hub.pid,
        length.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    let plan = Plan {
        window: length,
        ..plan.clone()
    };
    let s = hub_writers(hub, writers, &plan).await?;
    let f = Figures::new(&s.hist, s.secs, s.cpu);
    println!(
        "flowhub: {} writes/s, p50 {} µs, p99 {} µs, hub CPU {} µs/write",
        num(Some(f.per_sec())),
        num(Some(f.p50_us)),
        num(Some(f.p99_us)),
        num(f.cpu_us_per_op)
    );
    Ok(json!({"scenario": "durable-update", "soak_s": length.as_secs_f64(), "flowhub": f.json()}))
}

/// `writers` WebSockets, each a closed loop of UPDATE on its own object.
async fn hub_writers(hub: &Hub, writers: usize, plan: &Plan) -> Res<Sample> {
    let mut sockets = Vec::with_capacity(writers);
    for _ in 0..writers {
        sockets.push(ws::Lean::connect(hub.addr).await?);
    }
    let window = Window::new(plan.warmup, plan.window);
    let mut tasks = Vec::with_capacity(writers);
    for (w, mut sock) in sockets.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut h = stats::histogram();
            let mut i = 1u64;
            while window.running() {
                let frame = format!(
                    r#"{{"type":"call","requestid":{i},"endpoint":"{ENDPOINT}","method":"UPDATE","objectid":"w{w}","data":{{"value":"{}"}}}}"#,
                    value(w, i)
                );
                i += 1;
                let began = Instant::now();
                let reply = sock.call(&frame).await?;
                if !ws::succeeded(reply) {
                    return Err(ws::failure("UPDATE", reply));
                }
                window.record(&mut h, began);
            }
            let _ = sock.close().await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(h)
        }));
    }
    window.collect(tasks, || hub.cpu()).await
}

/// The floor: `writers` threads, each appending to its own file and calling `sync_data`
/// after every write. Its CPU is the bench process's own over the window.
fn fsync_writers(dir: &Path, writers: usize, plan: &Plan) -> Res<Sample> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::with_capacity(writers);
    for w in 0..writers {
        files.push(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(dir.join(format!("writer-{w}.log")))?,
        );
    }
    let window = Window::new(plan.warmup, plan.window);
    let (parts, cpu) = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .into_iter()
            .enumerate()
            .map(|(w, mut f)| {
                s.spawn(move || {
                    let mut h = stats::histogram();
                    let mut record = Vec::with_capacity(BASELINE_RECORD);
                    let mut i = 0u64;
                    while window.running() {
                        record.clear();
                        record.extend_from_slice(value(w, i).as_bytes());
                        record.resize(BASELINE_RECORD - 1, b' ');
                        record.push(b'\n');
                        i += 1;
                        let began = Instant::now();
                        f.write_all(&record)?;
                        f.sync_data()?;
                        window.record(&mut h, began);
                    }
                    Ok::<_, std::io::Error>(h)
                })
            })
            .collect();
        std::thread::sleep(window.start.saturating_duration_since(Instant::now()));
        let cpu0 = hub::cpu_seconds("/proc/self/stat");
        std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
        let cpu1 = hub::cpu_seconds("/proc/self/stat");
        let parts: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (parts, cpu1.zip(cpu0).map(|(a, b)| a - b))
    });
    let mut hists = Vec::with_capacity(parts.len());
    for p in parts {
        hists.push(p.map_err(|_| "a baseline thread panicked")??);
    }
    Ok(Sample::new(stats::merge(hists), window.secs(), cpu))
}
