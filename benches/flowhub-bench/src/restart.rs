//! Scenario `restart`: N address objects loaded into a hub, then the time from spawning
//! `flowhub serve` on that data directory to its `flowhub listening` line, after a `kill -9`
//! (log replay) and after a clean stop (snapshot).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::data::{self, Address};
use crate::hub::{self, Hub};
use crate::report::{num, times, Table};
use crate::stats::{ratio, round};
use crate::{ws, Plan, Res};

/// Sockets and calls in flight per socket used to load the data set.
const LOAD_SOCKETS: usize = 4;
const LOAD_WINDOW: usize = 256;

/// A hub holding the data set, handed from `restart` to `list`.
pub struct Loaded {
    pub hub: Hub,
    pub addrs: Vec<Address>,
    _tmp: tempfile::TempDir,
}

impl Loaded {
    pub async fn stop(self) {
        let _ = self.hub.terminate().await;
    }
}

/// Loads `addrs` with CREATEs over [`LOAD_SOCKETS`] WebSockets, [`LOAD_WINDOW`] in flight on
/// each. Returns the time it took.
pub async fn load(addr: SocketAddr, addrs: &[Address]) -> Res<Duration> {
    let per = addrs.len().div_ceil(LOAD_SOCKETS).max(1);
    let chunks: Vec<Vec<String>> = addrs.chunks(per).map(data::create_frames).collect();
    let t = Instant::now();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|frames| tokio::spawn(ws::pipeline(addr, frames, LOAD_WINDOW)))
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(t.elapsed())
}

/// A hub on a fresh temporary directory with the data set loaded (durability `never`).
pub async fn fresh(plan: &Plan, bin: &Path) -> Res<Loaded> {
    let tmp = hub::temp_dir("list")?;
    let addrs = data::addresses(plan.objects);
    let hub = Hub::spawn(
        bin,
        &tmp.path().join("hub"),
        &[("FLOWHUB_DURABILITY", "never")],
    )?;
    let took = load(hub.addr, &addrs).await?;
    println!(
        "loaded {} objects in {:.1} s ({} CREATE/s, durability never)",
        addrs.len(),
        took.as_secs_f64(),
        num(Some(addrs.len() as f64 / took.as_secs_f64()))
    );
    check_count(&hub, addrs.len()).await?;
    Ok(Loaded {
        hub,
        addrs,
        _tmp: tmp,
    })
}

/// Fails unless the hub holds exactly `n` objects on the endpoint.
pub async fn check_count(hub: &Hub, n: usize) -> Res<()> {
    let mut sock = ws::connect(hub.addr).await?;
    let reply = ws::call_ok(
        &mut sock,
        &json!({"requestid": 1, "endpoint": data::ENDPOINT, "method": "LIST",
                "parameters": {"pagination.size": 0}}),
    )
    .await?;
    let count = reply["count"].as_u64().unwrap_or(0);
    if count != n as u64 {
        return Err(format!("the hub holds {count} objects, not {n}").into());
    }
    Ok(())
}

/// The floor of a restart: reading every file of the data directory (from the page cache).
fn read_files(dir: &Path) -> (Duration, u64) {
    fn walk(dir: &Path, bytes: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, bytes);
            } else if let Ok(b) = std::fs::read(&p) {
                *bytes += b.len() as u64;
            }
        }
    }
    let t = Instant::now();
    let mut bytes = 0;
    walk(dir, &mut bytes);
    (t.elapsed(), bytes)
}

struct Start {
    case: &'static str,
    start: Duration,
    recovered_ms: Option<u64>,
    recovered: Value,
    rss_kib: Option<u64>,
    floor: Duration,
    data_bytes: u64,
}

impl Start {
    fn per_million(&self, n: usize) -> f64 {
        self.start.as_secs_f64() * 1e6 / n as f64
    }
}

pub async fn run(plan: &Plan, bin: &Path) -> Res<(Value, Loaded)> {
    let n = plan.objects;
    println!("== restart: {n} address objects; time from spawning `flowhub serve` to its `flowhub listening` line");
    let tmp = hub::temp_dir("restart")?;
    let dir = tmp.path().join("hub");
    let addrs = data::addresses(n);
    // Snapshots off while loading, so that the kill -9 start replays the whole log.
    let hub = Hub::spawn(
        bin,
        &dir,
        &[
            ("FLOWHUB_DURABILITY", "never"),
            ("FLOWHUB_SNAPSHOT_MIN_BYTES", "1000000000000000"),
        ],
    )?;
    let load_time = load(hub.addr, &addrs).await?;
    check_count(&hub, n).await?;
    let loaded_rss = hub.rss_kib();
    hub.kill9().await?;
    println!(
        "loaded with durability never and automatic snapshots off ({} CREATE/s over {LOAD_SOCKETS} sockets × {LOAD_WINDOW} in flight), then kill -9",
        num(Some(n as f64 / load_time.as_secs_f64()))
    );

    let mut starts = Vec::new();
    let (floor, data_bytes) = read_files(&dir);
    let h1 = Hub::spawn(bin, &dir, &[])?;
    let rss1 = h1.rss_kib();
    check_count(&h1, n).await?;
    starts.push(Start {
        case: "after kill -9: log replay",
        start: h1.start_time,
        recovered_ms: h1.recovered_ms,
        recovered: h1.recovered.clone(),
        rss_kib: rss1,
        floor,
        data_bytes,
    });
    // One write, so that the clean stop has something to snapshot.
    {
        let mut sock = ws::connect(h1.addr).await?;
        ws::call_ok(
            &mut sock,
            &json!({"requestid": 1, "endpoint": data::ENDPOINT, "method": "UPDATE",
                    "objectid": addrs[0].id, "data": {}}),
        )
        .await?;
    }
    let stop_time = h1.terminate().await?;
    let (floor, data_bytes) = read_files(&dir);
    let h2 = Hub::spawn(bin, &dir, &[])?;
    let rss2 = h2.rss_kib();
    check_count(&h2, n).await?;
    starts.push(Start {
        case: "after clean stop: snapshot",
        start: h2.start_time,
        recovered_ms: h2.recovered_ms,
        recovered: h2.recovered.clone(),
        rss_kib: rss2,
        floor,
        data_bytes,
    });
    println!(
        "clean stop (SIGTERM, snapshot written) took {:.2} s; the data files are in the page cache for both starts",
        stop_time.as_secs_f64()
    );

    let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
    let mut t = Table::new(
        &[
            "start",
            "spawn→listening s",
            "s per 1M objects",
            "recovery ms (hub log)",
            "hub RSS MiB",
            "data MiB",
            "floor: read files s",
            "flowhub/floor",
        ],
        1,
    );
    for s in &starts {
        t.row(vec![
            s.case.into(),
            format!("{:.3}", s.start.as_secs_f64()),
            format!("{:.3}", s.per_million(n)),
            num(s.recovered_ms.map(|m| m as f64)),
            num(mib(s.rss_kib)),
            num(Some(s.data_bytes as f64 / 1048576.0)),
            format!("{:.3}", s.floor.as_secs_f64()),
            times(ratio(
                Some(s.start.as_secs_f64()),
                Some(s.floor.as_secs_f64()),
            )),
        ]);
    }
    t.note(format!(
        "hub RSS right after loading {n} objects (before the kill): {} MiB; no peer for this scenario",
        num(mib(loaded_rss))
    ));
    t.print();
    let worst = starts
        .iter()
        .map(|s| s.per_million(n))
        .fold(0.0f64, f64::max);
    println!(
        "target: ≤ 1 s per 1M objects: {} (worst {:.3} s per 1M)",
        if worst <= 1.0 { "met" } else { "MISSED" },
        worst
    );
    let value = json!({
        "scenario": "restart",
        "objects": n,
        "load": {
            "durability": "never",
            "snapshots": "off while loading (FLOWHUB_SNAPSHOT_MIN_BYTES=1e15)",
            "seconds": round(load_time.as_secs_f64(), 3),
            "creates_per_sec": round(n as f64 / load_time.as_secs_f64(), 1),
            "hub_rss_kib": loaded_rss,
        },
        "clean_stop_seconds": round(stop_time.as_secs_f64(), 3),
        "starts": starts.iter().map(|s| json!({
            "case": s.case,
            "spawn_to_listening_s": round(s.start.as_secs_f64(), 4),
            "seconds_per_million": round(s.per_million(n), 4),
            "recovered_ms": s.recovered_ms,
            "recovered": s.recovered,
            "hub_rss_kib": s.rss_kib,
            "data_bytes": s.data_bytes,
            "baseline_read_files_s": round(s.floor.as_secs_f64(), 4),
            "ratio_flowhub_to_baseline": ratio(Some(s.start.as_secs_f64()), Some(s.floor.as_secs_f64())),
        })).collect::<Vec<_>>(),
        "peer": null,
        "target": {"seconds_per_million_at_most": 1.0, "met": worst <= 1.0},
    });
    Ok((
        value,
        Loaded {
            hub: h2,
            addrs,
            _tmp: tmp,
        },
    ))
}
