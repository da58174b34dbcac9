//! Scenario `idle`: the hub's memory per idle WebSocket at 10,000 connections, next to a bare
//! tokio-tungstenite server holding the same connections (the floor).
//!
//! The bench opens the connections (64 handshakes at a time), each a completed WebSocket
//! handshake and nothing more (open mode: no login), and keeps them in one `Vec` without
//! reading. The server's resident memory (`VmRSS` of `/proc/<pid>/status`) is read before the
//! first and after the last, and every tenth of the way for the plot; then the server's CPU
//! while it holds them idle for a second.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::child::Server;
use crate::hub::{self, Hub};
use crate::report::{num, times, Table};
use crate::stats::{ratio, round};
use crate::ws::Ws;
use crate::{Plan, Res};

/// The hidden flag that turns the bench binary into the bare WebSocket server.
pub const FLAG: &str = "--serve-idle-ws";
pub const CONNECTIONS: usize = 10_000;
/// The brief's target: hub memory per idle connection, in KiB.
const TARGET_KIB: f64 = 8.0;
/// Handshakes in flight while opening.
const OPENING: usize = 64;
/// File descriptors the bench keeps for everything else.
const SPARE_FDS: u64 = 256;

/// What one server did with the connections.
struct Measured {
    before_kib: u64,
    after_kib: u64,
    /// (connections open, VmRSS KiB) along the way.
    curve: Vec<(usize, u64)>,
    /// Server CPU over one idle second with every connection open, in percent of one core.
    idle_cpu_pct: f64,
    open_secs: f64,
}

impl Measured {
    fn per_conn_kib(&self, n: usize) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / n as f64
    }

    fn json(&self, n: usize) -> Value {
        json!({
            "rss_before_kib": self.before_kib,
            "rss_after_kib": self.after_kib,
            "kib_per_connection": round(self.per_conn_kib(n), 3),
            "idle_cpu_percent": round(self.idle_cpu_pct, 2),
            "open_seconds": round(self.open_secs, 2),
            "curve": self.curve.iter().map(|(c, r)| json!([c, r])).collect::<Vec<_>>(),
        })
    }
}

/// Opens `n` WebSockets to `url`, reading `rss()` every tenth of the way.
async fn open_many(
    url: &str,
    n: usize,
    rss: impl Fn() -> Option<u64>,
    curve: &mut Vec<(usize, u64)>,
) -> Res<Vec<Ws>> {
    let mut held: Vec<Ws> = Vec::with_capacity(n);
    let step = (n / 10).max(1);
    while held.len() < n {
        let batch = step.min(n - held.len());
        let opened: Vec<Res<Ws>> = futures_util::stream::iter(0..batch)
            .map(|_| async {
                // The client never reads: a small read buffer keeps the bench's own memory low.
                let config = WebSocketConfig::default().read_buffer_size(1024);
                let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                    .await
                    .map_err(|e| format!("WebSocket connect to {url}: {e}"))?;
                Ok(ws)
            })
            .buffer_unordered(OPENING)
            .collect()
            .await;
        for ws in opened {
            held.push(ws.map_err(|e| format!("after {} connections: {e}", held.len()))?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(r) = rss() {
            curve.push((held.len(), r));
        }
    }
    Ok(held)
}

async fn measure(
    url: &str,
    n: usize,
    rss: impl Fn() -> Option<u64>,
    cpu: impl Fn() -> f64,
) -> Res<Measured> {
    // Warm up: a few connections opened and closed, so that what the server sets up once
    // (the allocator's arenas, the runtime's buffers) is in the figure before.
    let mut scratch = Vec::new();
    let warm = open_many(url, 100, || None, &mut scratch).await?;
    for mut ws in warm {
        let _ = ws.close(None).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = rss().ok_or("cannot read the server's VmRSS")?;
    let mut curve = vec![(0, before_kib)];
    let t = std::time::Instant::now();
    let held = open_many(url, n, &rss, &mut curve).await?;
    let open_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kib = rss().ok_or("cannot read the server's VmRSS")?;
    let c0 = cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_cpu_pct = (cpu() - c0) * 100.0;
    drop(held);
    Ok(Measured {
        before_kib,
        after_kib,
        curve,
        idle_cpu_pct,
        open_secs,
    })
}

/// The floor: a bare tokio-tungstenite server, one task per connection reading frames (it
/// gets none), the hub's 8 KiB read buffer.
pub fn serve_main() -> std::process::ExitCode {
    crate::child::raise_nofile();
    crate::child::serve_main("idle-ws-baseline", serve_idle)
}

async fn serve_idle(listener: tokio::net::TcpListener) -> Res<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
}

pub async fn run(_plan: &Plan, bin: &Path) -> Res<Value> {
    let limit = crate::child::raise_nofile();
    // The bench holds one end of each connection; the server (a child, same limit) the other.
    let n = CONNECTIONS.min(limit.saturating_sub(SPARE_FDS) as usize);
    println!("== idle: hub memory per idle WebSocket, {n} connections (open files limit {limit})");
    if n < CONNECTIONS {
        println!(
            "the open files limit ({limit}) allows {n} connections only: raise the hard limit (ulimit -Hn) for {CONNECTIONS}"
        );
    }
    let tmp = hub::temp_dir("idle")?;
    let hub = Hub::spawn(
        bin,
        &tmp.path().join("hub"),
        &[("FLOWHUB_DURABILITY", "memory")],
    )?;
    let hub_url = format!("ws://{}/ws", hub.addr);
    let f = measure(&hub_url, n, || hub.rss_kib(), || hub.cpu()).await?;
    hub.terminate().await?;
    let floor = Server::spawn(FLAG)?;
    let floor_url = format!("ws://{}/", floor.addr);
    let b = measure(&floor_url, n, || floor.rss_kib(), || floor.cpu()).await?;
    drop(floor);

    println!("each connection: a completed WebSocket handshake, then nothing (open mode, no login); memory: VmRSS of the server process before the first connection and 1 s after the last");
    let mut t = Table::new(
        &[
            "system",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/connection",
            "idle CPU %",
            "open s",
        ],
        1,
    );
    for (name, m) in [
        ("flowhub (hub process)", &f),
        ("baseline: bare tokio-tungstenite", &b),
    ] {
        t.row(vec![
            name.into(),
            num(Some(m.before_kib as f64 / 1024.0)),
            num(Some(m.after_kib as f64 / 1024.0)),
            num(Some(m.per_conn_kib(n))),
            num(Some(m.idle_cpu_pct)),
            num(Some(m.open_secs)),
        ]);
    }
    let r = ratio(Some(f.per_conn_kib(n)), Some(b.per_conn_kib(n)));
    t.note(format!(
        "flowhub/bare server: memory per connection {}",
        times(r)
    ));
    t.print();
    let met = n == CONNECTIONS && f.per_conn_kib(n) <= TARGET_KIB;
    println!(
        "target: ≤ {TARGET_KIB} KiB of hub memory per idle WebSocket at {CONNECTIONS} connections: {} ({:.2} KiB)",
        if n < CONNECTIONS {
            "not measured at 10k"
        } else if met {
            "met"
        } else {
            "MISSED"
        },
        f.per_conn_kib(n)
    );
    Ok(json!({
        "scenario": "idle",
        "what": "idle WebSocket connections (handshake done, nothing sent), server VmRSS before and after",
        "connections": n,
        "flowhub": f.json(n),
        "baseline": b.json(n),
        "ratio_memory_flowhub_to_baseline": r,
        "target": {"kib_per_connection_at_most": TARGET_KIB, "connections": CONNECTIONS, "met": (n == CONNECTIONS).then_some(met)},
    }))
}
