//! `flowhub-bench soak`: one hub under a steady load for a chosen time, its memory and call
//! latency sampled every second, to see whether memory grows once the hub is warm.
//!
//! The load, on N connections over loopback:
//!
//! - one provider of `bench/echo` (RUN), answering each invoke with the rpc scenario's payload;
//! - 4 caller connections, an **open loop** at a fixed total rate (default 1,000 calls/s): of
//!   every ten calls five are OPENs of one of 100 objects, three RUNs routed to the provider,
//!   two UPDATEs (durable: fsynced before the reply, the hub's default). Latency runs from the
//!   moment a call was due to its reply, so a stalled hub shows as latency rather than as
//!   fewer calls;
//! - every other connection subscribes to one of the 100 objects (so each UPDATE goes out to
//!   about a hundredth of them) and reads its events; every 20 s (each at its own phase) it
//!   unsubscribes and subscribes again, so that subscriptions come and go all the time.
//!
//! Each second: the hub's `VmRSS`, its CPU, and the p50/p99/max latency of the calls answered
//! in that second. The samples go to a CSV and an SVG plot; after the warm-up (the first fifth,
//! at most 10 s) a least-squares line through the memory samples says whether it grew.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::hub::{self, Hub};
use crate::stats::{self, round};
use crate::svg::{self, Chart};
use crate::ws::{self, Ws};
use crate::Res;

const ENDPOINT: &str = "bench/soak";
const OBJECTS: usize = 100;
const CALLERS: usize = 4;
const CHURN: Duration = Duration::from_secs(20);

pub struct SoakArgs {
    pub duration: Duration,
    pub connections: usize,
    pub rate: f64,
    pub out: PathBuf,
    /// The hub's resume window in changes; `None`: as many as the writes of the warm-up.
    pub resume_window: Option<u64>,
}

pub fn parse_args(args: impl Iterator<Item = String>) -> Result<SoakArgs, String> {
    let mut a = SoakArgs {
        duration: Duration::from_secs(60),
        connections: 1000,
        rate: 1000.0,
        out: PathBuf::from("target/bench/soak.svg"),
        resume_window: None,
    };
    let mut it = args;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--duration" => {
                let v: f64 = value("--duration")?
                    .parse()
                    .map_err(|_| "--duration takes seconds")?;
                if v.is_nan() || v < 2.0 {
                    return Err("--duration: at least 2 seconds".into());
                }
                a.duration = Duration::from_secs_f64(v);
            }
            "--connections" => {
                a.connections = value("--connections")?
                    .parse()
                    .map_err(|_| "--connections takes a number")?;
                if a.connections < CALLERS + 2 {
                    return Err(format!("--connections: at least {}", CALLERS + 2));
                }
            }
            "--rate" => {
                a.rate = value("--rate")?
                    .parse()
                    .map_err(|_| "--rate takes calls per second")?;
                if a.rate.is_nan() || a.rate <= 0.0 {
                    return Err("--rate must be positive".into());
                }
            }
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--resume-window" => {
                a.resume_window = Some(
                    value("--resume-window")?
                        .parse()
                        .map_err(|_| "--resume-window takes a number of changes")?,
                )
            }
            other => return Err(format!("unknown argument {other:?}\n{}", crate::USAGE)),
        }
    }
    Ok(a)
}

/// One second of the soak.
struct Tick {
    t: f64,
    rss_kib: u64,
    cpu_pct: f64,
    calls: u64,
    errors: u64,
    events: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// What the load tasks share with the sampler.
struct Shared {
    hist: Mutex<Histogram<u64>>,
    /// The first failed reply or frame, for the report.
    first_error: Mutex<Option<String>>,
    errors: AtomicU64,
    events: AtomicU64,
}

pub async fn run(args: SoakArgs) -> Res<()> {
    let limit = crate::child::raise_nofile();
    if (limit as usize) < args.connections + 256 {
        return Err(format!(
            "{} connections need more open files than the limit allows ({limit}); raise ulimit -Hn",
            args.connections
        )
        .into());
    }
    let bin = hub::flowhub_binary()?;
    let warmup = (args.duration / 5).min(Duration::from_secs(10));
    let subscribers = args.connections - CALLERS - 1;
    println!(
        "flowhub-bench soak: {:.0} s, {} connections ({subscribers} subscribers, {CALLERS} callers, 1 provider), {:.0} calls/s (50% OPEN, 30% RUN, 20% UPDATE), warm-up {:.0} s; {}",
        args.duration.as_secs_f64(),
        args.connections,
        args.rate,
        warmup.as_secs_f64(),
        crate::report::machine_line(&crate::report::machine()),
    );
    // The resume window keeps the newest changes in memory by design (100,000 by default,
    // minutes of this load to fill): sized to the writes of the warm-up, it is full before the
    // slope is taken, so that growth after the warm-up is growth that has no bound.
    let window = args
        .resume_window
        .unwrap_or(((args.rate * 0.2 * warmup.as_secs_f64()) as u64).max(100));
    println!("hub resume window: {window} changes (--resume-window; the hub's default is 100000)");
    let tmp = hub::temp_dir("soak")?;
    let window_env = window.to_string();
    let hub = Hub::spawn(
        &bin,
        &tmp.path().join("hub"),
        &[("FLOWHUB_RESUME_WINDOW", window_env.as_str())],
    )?;
    println!("hub pid {} on {}", hub.pid, hub.addr);
    {
        let mut w = ws::connect(hub.addr).await?;
        for i in 0..OBJECTS {
            let frame = json!({"endpoint": ENDPOINT, "method": "CREATE", "data": {"id": format!("o{i}"), "name": "device", "n": 0}});
            ws::call_ok(&mut w, &frame).await?;
        }
    }
    let shared = Arc::new(Shared {
        hist: Mutex::new(stats::histogram()),
        first_error: Mutex::new(None),
        errors: AtomicU64::new(0),
        events: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let provider = crate::rpc::provide(hub.addr).await?;
    let provider = tokio::spawn(crate::rpc::serve_invokes(provider, stop_rx.clone()));

    // Subscribers, opened 64 at a time.
    let started = Instant::now();
    let url = format!("ws://{}/ws", hub.addr);
    let opened: Vec<Res<Ws>> = futures_util::stream::iter(0..subscribers)
        .map(|_| ws::connect_url(&url))
        .buffer_unordered(64)
        .collect()
        .await;
    let mut subs = Vec::with_capacity(subscribers);
    for (i, ws) in opened.into_iter().enumerate() {
        subs.push(tokio::spawn(subscriber(
            ws?,
            i,
            subscribers,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    println!(
        "{subscribers} subscribers connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let end = start + args.duration;
    let per_caller = args.rate / CALLERS as f64;
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let ws = ws::connect(hub.addr).await?;
        callers.push(tokio::spawn(caller(
            ws,
            c,
            per_caller,
            start,
            end,
            shared.clone(),
        )));
    }

    // The sampler.
    let mut ticks: Vec<Tick> = Vec::new();
    let mut cpu0 = hub.cpu();
    let mut next = start + Duration::from_secs(1);
    while next <= end {
        tokio::time::sleep_until(next.into()).await;
        let cpu1 = hub.cpu();
        let h = {
            let mut g = shared.hist.lock().map_err(|_| "a poisoned lock")?;
            std::mem::replace(&mut *g, stats::histogram())
        };
        let empty = h.is_empty();
        let tick = Tick {
            t: (next - start).as_secs_f64(),
            rss_kib: hub.rss_kib().unwrap_or(0),
            cpu_pct: (cpu1 - cpu0) * 100.0,
            calls: h.len(),
            errors: shared.errors.swap(0, Ordering::Relaxed),
            events: shared.events.swap(0, Ordering::Relaxed),
            p50_us: if empty {
                f64::NAN
            } else {
                h.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_us: if empty {
                f64::NAN
            } else {
                h.value_at_quantile(0.99) as f64 / 1000.0
            },
            max_us: if empty {
                f64::NAN
            } else {
                h.max() as f64 / 1000.0
            },
        };
        cpu0 = cpu1;
        if ticks.len() % 10 == 9 || tick.errors > 0 {
            println!(
                "t={:>4.0}s  hub RSS {:>7.1} MiB  CPU {:>5.1}%  calls {:>6}  p50 {:>8.0} µs  p99 {:>8.0} µs  events {:>7}  errors {}",
                tick.t,
                tick.rss_kib as f64 / 1024.0,
                tick.cpu_pct,
                tick.calls,
                tick.p50_us,
                tick.p99_us,
                tick.events,
                tick.errors
            );
        }
        ticks.push(tick);
        next += Duration::from_secs(1);
    }
    let _ = stop_tx.send(true);
    for c in callers {
        c.await??;
    }
    for s in subs {
        s.abort();
    }
    let _ = provider.await;
    hub.terminate().await?;

    // Memory after the warm-up: the least-squares slope.
    let after: Vec<(f64, f64)> = ticks
        .iter()
        .filter(|t| t.t > warmup.as_secs_f64())
        .map(|t| (t.t, t.rss_kib as f64))
        .collect();
    let slope = slope(&after);
    let span = after.last().map(|l| l.0).unwrap_or(0.0) - after.first().map(|f| f.0).unwrap_or(0.0);
    let mean = after.iter().map(|p| p.1).sum::<f64>() / after.len().max(1) as f64;
    let grown = slope.map(|s| s * span);
    let threshold = (mean * 0.02).max(1024.0);
    if let Ok(Some(e)) = shared.first_error.lock().as_deref() {
        println!("first error: {e}");
    }
    let calls: u64 = ticks.iter().map(|t| t.calls).sum();
    let errors: u64 = ticks.iter().map(|t| t.errors).sum();
    let mut all_p99: Vec<f64> = ticks
        .iter()
        .map(|t| t.p99_us)
        .filter(|v| v.is_finite())
        .collect();
    all_p99.sort_by(f64::total_cmp);
    println!(
        "{calls} calls answered ({:.0}/s), {errors} errors; per-second p99 latency: median {:.0} µs, worst {:.0} µs",
        calls as f64 / args.duration.as_secs_f64(),
        all_p99.get(all_p99.len() / 2).copied().unwrap_or(f64::NAN),
        all_p99.last().copied().unwrap_or(f64::NAN)
    );
    match (slope, grown) {
        (Some(s), Some(g)) => println!(
            "memory after warm-up ({:.0} s on): slope {:+.1} KiB/min ({:+.0} KiB over {span:.0} s, mean {:.1} MiB): {}",
            warmup.as_secs_f64(),
            s * 60.0,
            g,
            mean / 1024.0,
            if g > threshold {
                "GREW"
            } else {
                "flat (no growth beyond 2% or 1 MiB)"
            }
        ),
        _ => println!("memory after warm-up: too few samples for a slope"),
    }

    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let csv = args.out.with_extension("csv");
    write_csv(&csv, &ticks)?;
    let title = format!(
        "soak: {} connections, {:.0} calls/s, {:.0} s",
        args.connections,
        args.rate,
        args.duration.as_secs_f64()
    );
    std::fs::write(&args.out, plot(&title, &ticks, warmup))?;
    println!(
        "samples written to {} and {}",
        csv.display(),
        args.out.display()
    );
    Ok(())
}

/// The soak's plot: hub memory over time above call latency over time.
fn plot(title: &str, ticks: &[Tick], warmup: Duration) -> String {
    let w = warmup.as_secs_f64();
    let mut mem = Chart::new(
        &format!("{title}: hub memory (warm-up until {w:.0} s)"),
        "seconds",
        "VmRSS MiB",
    )
    .series(
        "hub VmRSS",
        ticks
            .iter()
            .map(|t| (t.t, t.rss_kib as f64 / 1024.0))
            .collect(),
    );
    mem.y_from_zero = true;
    let lat = Chart::new("call latency per second (due → reply)", "seconds", "ms")
        .series(
            "p50",
            ticks.iter().map(|t| (t.t, t.p50_us / 1000.0)).collect(),
        )
        .series(
            "p99",
            ticks.iter().map(|t| (t.t, t.p99_us / 1000.0)).collect(),
        );
    svg::document(&[&mem, &lat], 900.0, 340.0)
}

fn write_csv(path: &Path, ticks: &[Tick]) -> Res<()> {
    let mut s = String::from("t_s,rss_kib,hub_cpu_pct,calls,errors,events,p50_us,p99_us,max_us\n");
    for t in ticks {
        s.push_str(&format!(
            "{:.0},{},{:.1},{},{},{},{},{},{}\n",
            t.t,
            t.rss_kib,
            t.cpu_pct,
            t.calls,
            t.errors,
            t.events,
            round(t.p50_us, 1),
            round(t.p99_us, 1),
            round(t.max_us, 1)
        ));
    }
    std::fs::write(path, s).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

impl Shared {
    fn error(&self, frame: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| frame.chars().take(300).collect());
        }
    }
}

/// The least-squares slope of y over x; `None` with fewer than 3 points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// A subscriber: follows object `o<i % 100>`, counts its events, and every [`CHURN`] (at its
/// own phase) unsubscribes and subscribes again.
async fn subscriber(
    mut ws: Ws,
    i: usize,
    of: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let subscribe = Message::text(
        json!({"type": "subscribe", "requestid": 1, "subscription": "o", "endpoint": ENDPOINT, "objectid": format!("o{}", i % OBJECTS)})
            .to_string(),
    );
    let unsubscribe = Message::text(
        json!({"type": "unsubscribe", "requestid": 2, "subscription": "o"}).to_string(),
    );
    if ws.send(subscribe.clone()).await.is_err() {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let phase = CHURN.mul_f64(i as f64 / of.max(1) as f64);
    let mut churn = tokio::time::Instant::now() + phase;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t.starts_with(r#"{"type":"event""#) {
                        shared.events.fetch_add(1, Ordering::Relaxed);
                    } else if !ws::succeeded(t) {
                        shared.error(t);
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    if !*stop.borrow() {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            },
            _ = tokio::time::sleep_until(churn) => {
                churn += CHURN;
                if ws.feed(unsubscribe.clone()).await.is_err() || ws.send(subscribe.clone()).await.is_err() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// A caller: calls due every `1 / rate` s from `start` until `end`, their `requestid` the
/// call's number (so the reader knows when it was due), replies read as they come.
async fn caller(
    ws: Ws,
    c: usize,
    rate: f64,
    start: Instant,
    end: Instant,
    shared: Arc<Shared>,
) -> Res<()> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    // The callers' schedules interleave instead of falling on the same instants.
    let offset = interval.mul_f64(c as f64 / CALLERS as f64);
    let due = move |k: u64| start + offset + interval.mul_f64(k as f64);
    let (mut sink, mut stream) = ws.split();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_w = sent.clone();
    let sender = tokio::spawn(async move {
        let mut k = 0u64;
        loop {
            let at = due(k);
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let obj = (k as usize * 7 + c) % OBJECTS;
            let frame = match k % 10 {
                0..=4 => format!(
                    r#"{{"requestid":{k},"method":"OPEN","endpoint":"{ENDPOINT}","objectid":"o{obj}"}}"#
                ),
                5..=7 => format!(
                    r#"{{"type":"call","requestid":{k},"method":"RUN","endpoint":"bench/echo","objectid":"x","data":{}}}"#,
                    crate::rpc::PAYLOAD
                ),
                _ => format!(
                    r#"{{"requestid":{k},"method":"UPDATE","endpoint":"{ENDPOINT}","objectid":"o{obj}","data":{{"n":{k},"caller":{c}}}}}"#
                ),
            };
            sink.send(Message::text(frame)).await?;
            k += 1;
            sent_w.store(k, Ordering::Relaxed);
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sink)
    });
    let mut answered = 0u64;
    let deadline = end + Duration::from_secs(30);
    loop {
        if sender.is_finished() && answered >= sent.load(Ordering::Relaxed) {
            break;
        }
        if Instant::now() > deadline {
            return Err("calls still unanswered 30 s after the end".into());
        }
        let m = tokio::select! {
            m = stream.next() => m,
            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
        };
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("caller socket: {e}").into()),
            None => return Err("the hub closed a caller socket".into()),
        };
        let now = Instant::now();
        answered += 1;
        let Some(k) = crate::relay::field(text.as_str(), "requestid").and_then(|v| v.parse().ok())
        else {
            return Err(format!("a reply without a requestid: {}", text.as_str()).into());
        };
        if !ws::succeeded(text.as_str()) {
            shared.error(text.as_str());
        }
        let latency = now.saturating_duration_since(due(k));
        if let Ok(mut h) = shared.hist.lock() {
            let _ = h.record(latency.as_nanos().max(1) as u64);
        }
    }
    let mut sink = sender.await??;
    let _ = sink.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_slope() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 5.0)).collect();
        assert!((slope(&pts).expect("slope") - 3.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..2]), None);
    }

    #[test]
    fn soak_arguments_have_defaults_and_are_checked() {
        let a = parse_args(std::iter::empty()).expect("defaults");
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.out, PathBuf::from("target/bench/soak.svg"));
        let a = parse_args(
            [
                "--duration",
                "5",
                "--connections",
                "100",
                "--out",
                "x/s.svg",
            ]
            .map(String::from)
            .into_iter(),
        )
        .expect("parsed");
        assert_eq!((a.duration.as_secs(), a.connections), (5, 100));
        assert!(parse_args(["--connections", "2"].map(String::from).into_iter()).is_err());
        assert!(parse_args(["--bogus"].map(String::from).into_iter()).is_err());
    }
}
