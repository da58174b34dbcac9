//! Scenario `rpc`: routed calls (caller → hub → provider → hub → caller), with 1 and 4
//! providers and 1 and 64 calls in flight, next to a bare WebSocket relay (the floor, built
//! from the same crates), deepstream 7 and NATS request/reply.
//!
//! The same client code drives the hub and the relay: providers send `provide` for
//! `bench/echo` and answer each `invoke` with a `result` echoing a small payload; one caller
//! socket keeps N RUN calls in flight, closed loop (each reply sends the next call). The
//! peers get the same payload, the same providers and the same calls in flight.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::deepstream::{self, Deepstream};
use crate::hub::{self, Hub};
use crate::nats::{self, Nats};
use crate::relay::{self, Relay};
use crate::report::{num, times, Table};
use crate::stats::{self, ratio, Acc, Figures, Sample, Window};
use crate::ws::{self, Ws};
use crate::{Plan, Res};

pub const ENDPOINT: &str = "bench/echo";
/// The call's data, echoed by the providers: a small object, the same for every system.
pub const PAYLOAD: &str = r#"{"item":"bench-echo","text":"0123456789abcdef0123456789abcdef"}"#;
const PROVIDERS: [usize; 2] = [1, 4];
const IN_FLIGHT: [usize; 2] = [1, 64];
/// The brief's targets, at 64 in flight: hub CPU per call at most this times the relay's ...
const CPU_TARGET: f64 = 1.3;
/// ... and calls/s at least this share of the relay's.
const RATE_TARGET: f64 = 0.8;

/// What one configuration measured on each system.
struct Run {
    providers: usize,
    in_flight: usize,
    flowhub: Option<Figures>,
    relay: Figures,
    deepstream: Option<Figures>,
    nats: Option<Figures>,
}

/// A peer: its name and, once it failed or could not be had, why it is skipped.
struct Peer<T> {
    name: String,
    system: Option<T>,
    skipped: Option<String>,
}

impl<T> Peer<T> {
    fn skip(&mut self, why: String) {
        println!("{}: skipped from here on: {why}", self.name);
        self.system = None;
        self.skipped = Some(why);
    }
}

pub async fn run(plan: &Plan, bin: &Path) -> Res<Value> {
    println!("== rpc: routed RUN calls, caller → server → provider → server → caller");
    let tmp = hub::temp_dir("rpc")?;
    let hub = Hub::spawn(bin, &tmp.path().join("hub"), &[])?;
    let relay = Relay::spawn()?;
    if let Some(secs) = std::env::var_os("FLOWHUB_BENCH_RPC_SOAK") {
        let secs: f64 = secs
            .to_string_lossy()
            .parse()
            .map_err(|_| "FLOWHUB_BENCH_RPC_SOAK takes seconds")?;
        return soak(plan, &hub, &relay, Duration::from_secs_f64(secs)).await;
    }

    // Whether this hub routes calls to providers at all (SPEC section 11).
    let mut flowhub_skipped = match provide(hub.addr).await {
        Ok(mut ws) => {
            let _ = ws.close(None).await;
            None
        }
        Err(e) => {
            let why = format!("the hub does not serve providers (SPEC section 11): {e}");
            println!("flowhub: skipped: {why}");
            Some(why)
        }
    };

    let mut nats_peer = match nats::locate() {
        Ok(bin) => {
            let name = format!("NATS {}", nats::version(&bin));
            match Nats::start(&bin).await {
                Ok(n) => Peer {
                    name,
                    system: Some(n),
                    skipped: None,
                },
                Err(e) => Peer {
                    name,
                    system: None,
                    skipped: Some(format!("nats-server did not start: {e}")),
                },
            }
        }
        Err(why) => Peer {
            name: "NATS".into(),
            system: None,
            skipped: Some(why),
        },
    };
    let mut ds_peer = match deepstream::install() {
        Ok(install) => {
            let name = format!("deepstream {}", install.version);
            match Deepstream::start(&install).await {
                Ok(d) => Peer {
                    name,
                    system: Some(d),
                    skipped: None,
                },
                Err(e) => Peer {
                    name,
                    system: None,
                    skipped: Some(format!("deepstream did not start: {e}")),
                },
            }
        }
        Err(why) => Peer {
            name: "deepstream".into(),
            system: None,
            skipped: Some(why),
        },
    };
    for (name, skipped) in [
        (&ds_peer.name, &ds_peer.skipped),
        (&nats_peer.name, &nats_peer.skipped),
    ] {
        if let Some(why) = skipped {
            println!("peer {name} skipped: {why}");
        }
    }

    let mut runs = Vec::new();
    for providers in PROVIDERS {
        for in_flight in IN_FLIGHT {
            let (mut f, mut r, mut d, mut n) = (
                Acc::default(),
                Acc::default(),
                Acc::default(),
                Acc::default(),
            );
            for _ in 0..plan.rounds {
                if flowhub_skipped.is_none() {
                    match ws_round(hub.addr, providers, in_flight, plan, || hub.cpu()).await {
                        Ok(s) => f.add(s),
                        Err(e) => {
                            let why = format!("failed: {e}; the hub's log:\n{}", hub.log_tail());
                            println!("flowhub: {why}");
                            flowhub_skipped = Some(why);
                        }
                    }
                }
                r.add(ws_round(relay.addr, providers, in_flight, plan, || relay.cpu()).await?);
                if let Some(ds) = &ds_peer.system {
                    let s = deepstream::rpc_round(
                        ds,
                        providers,
                        in_flight,
                        PAYLOAD,
                        plan.warmup,
                        plan.window,
                    )
                    .await;
                    match s {
                        Ok(s) => d.add(s),
                        Err(e) => ds_peer.skip(e.to_string()),
                    }
                }
                if let Some(nats) = &nats_peer.system {
                    let s = nats
                        .round(providers, in_flight, PAYLOAD, plan.warmup, plan.window)
                        .await;
                    match s {
                        Ok(s) => n.add(s),
                        Err(e) => nats_peer.skip(e.to_string()),
                    }
                }
            }
            runs.push(Run {
                providers,
                in_flight,
                flowhub: flowhub_skipped.is_none().then(|| f.figures()),
                relay: r.figures(),
                deepstream: ds_peer.system.as_ref().map(|_| d.figures()),
                nats: nats_peer.system.as_ref().map(|_| n.figures()),
            });
        }
    }
    hub.terminate().await?;
    drop(relay);
    drop(ds_peer.system.take());
    drop(nats_peer.system.take());

    println!(
        "payload {} B of JSON data echoed by the providers; one caller socket (connection) with N calls in flight, closed loop (each reply sends the next call); {} rounds of {:.1} s per system (taking turns), each after {:.1} s warm-up",
        PAYLOAD.len(),
        plan.rounds,
        plan.window.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    println!("flowhub: call/invoke/result/reply frames of SPEC section 11 as JSON text, providers with policy balanced; baseline: a bare tokio-tungstenite relay process (round robin, call id correlation, the hub's reply frame), same client code; deepstream: its JS client (rpc.provide / rpc.make) in one Node.js process; NATS: async-nats, providers in one queue group, request/reply");
    println!("server CPU: utime+stime of the server process (hub, relay, deepstream, nats-server) over the window, per call");
    let mut t = Table::new(
        &[
            "providers",
            "in flight",
            "system",
            "calls/s",
            "p50 µs",
            "p99 µs",
            "server CPU µs/call",
        ],
        3,
    );
    for r in &runs {
        let mut row = |name: String, f: Option<&Figures>| {
            let cells = match f {
                Some(f) => vec![
                    num(Some(f.per_sec())),
                    num(Some(f.p50_us)),
                    num(Some(f.p99_us)),
                    num(f.cpu_us_per_op),
                ],
                None => vec!["-".into(); 4],
            };
            let mut row = vec![r.providers.to_string(), r.in_flight.to_string(), name];
            row.extend(cells);
            t.row(row);
        };
        row(
            if r.flowhub.is_some() {
                "flowhub (hub process)".into()
            } else {
                "flowhub: skipped".into()
            },
            r.flowhub.as_ref(),
        );
        row("baseline: bare WebSocket relay".into(), Some(&r.relay));
        let peer_label = |name: &str, f: Option<&Figures>| match f {
            Some(_) => format!("peer: {name}"),
            None => format!("peer: {name}: skipped"),
        };
        row(
            peer_label(&ds_peer.name, r.deepstream.as_ref()),
            r.deepstream.as_ref(),
        );
        row(
            peer_label(&nats_peer.name, r.nats.as_ref()),
            r.nats.as_ref(),
        );
        let fl = r.flowhub.as_ref();
        let rate =
            |p: Option<&Figures>| times(ratio(fl.map(Figures::per_sec), p.map(Figures::per_sec)));
        let cpu = |p: Option<&Figures>| {
            times(ratio(
                fl.and_then(|f| f.cpu_us_per_op),
                p.and_then(|p| p.cpu_us_per_op),
            ))
        };
        t.note(format!(
            "flowhub/relay: CPU per call {} (target ≤ {CPU_TARGET}x), calls/s {} (target ≥ {RATE_TARGET}x);  flowhub/deepstream: CPU {}, calls/s {};  flowhub/NATS: CPU {}, calls/s {}",
            cpu(Some(&r.relay)),
            rate(Some(&r.relay)),
            cpu(r.deepstream.as_ref()),
            rate(r.deepstream.as_ref()),
            cpu(r.nats.as_ref()),
            rate(r.nats.as_ref()),
        ));
    }
    t.print();

    let mut targets = Vec::new();
    for r in runs.iter().filter(|r| r.in_flight == 64) {
        let cpu_ratio = ratio(
            r.flowhub.as_ref().and_then(|f| f.cpu_us_per_op),
            r.relay.cpu_us_per_op,
        );
        let rate_ratio = ratio(
            r.flowhub.as_ref().map(Figures::per_sec),
            Some(r.relay.per_sec()),
        );
        let cpu_met = cpu_ratio.map(|c| c <= CPU_TARGET);
        let rate_met = rate_ratio.map(|c| c >= RATE_TARGET);
        let verdict = |met: Option<bool>, v: Option<f64>| match met {
            Some(true) => format!("met ({})", times(v)),
            Some(false) => format!("MISSED ({})", times(v)),
            None => "not measured".into(),
        };
        println!(
            "target (64 in flight, {} provider{}): hub CPU per call ≤ {CPU_TARGET}x the relay's: {}; calls/s ≥ {:.0}% of the relay's: {}",
            r.providers,
            if r.providers == 1 { "" } else { "s" },
            verdict(cpu_met, cpu_ratio),
            RATE_TARGET * 100.0,
            verdict(rate_met, rate_ratio),
        );
        targets.push(json!({
            "providers": r.providers,
            "in_flight": 64,
            "cpu_per_call_vs_relay_at_most": CPU_TARGET,
            "calls_per_sec_vs_relay_at_least": RATE_TARGET,
            "cpu_ratio": cpu_ratio,
            "rate_ratio": rate_ratio,
            "cpu_met": cpu_met,
            "rate_met": rate_met,
        }));
    }

    Ok(json!({
        "scenario": "rpc",
        "what": "routed RUN calls over WebSocket (JSON): one caller socket with N calls in flight (closed loop), P providers echoing the data",
        "payload_bytes": PAYLOAD.len(),
        "window_s": plan.window.as_secs_f64(),
        "rounds": plan.rounds,
        "warmup_s": plan.warmup.as_secs_f64(),
        "load": "closed loop: N calls in flight, each reply sends the next call",
        "flowhub_skipped": flowhub_skipped,
        "baseline": "bare WebSocket relay process (tokio + tokio-tungstenite): round robin over providers, call id correlation, no JSON parsing",
        "peers": [
            {"name": ds_peer.name, "skipped": ds_peer.skipped},
            {"name": nats_peer.name, "skipped": nats_peer.skipped},
        ],
        "runs": runs.iter().map(|r| json!({
            "providers": r.providers,
            "in_flight": r.in_flight,
            "flowhub": r.flowhub.as_ref().map(Figures::json),
            "baseline": r.relay.json(),
            "deepstream": r.deepstream.as_ref().map(Figures::json),
            "nats": r.nats.as_ref().map(Figures::json),
            "ratio_cpu_flowhub_to_baseline": ratio(r.flowhub.as_ref().and_then(|f| f.cpu_us_per_op), r.relay.cpu_us_per_op),
            "ratio_rate_flowhub_to_baseline": ratio(r.flowhub.as_ref().map(Figures::per_sec), Some(r.relay.per_sec())),
            "ratio_rate_flowhub_to_deepstream": ratio(r.flowhub.as_ref().map(Figures::per_sec), r.deepstream.as_ref().map(Figures::per_sec)),
            "ratio_rate_flowhub_to_nats": ratio(r.flowhub.as_ref().map(Figures::per_sec), r.nats.as_ref().map(Figures::per_sec)),
        })).collect::<Vec<_>>(),
        "target": targets,
    }))
}

/// A profiling aid (`FLOWHUB_BENCH_RPC_SOAK=SECONDS`): only the hub and the relay, 1 provider
/// and 64 calls in flight, one long window each, their pids printed first for
/// `perf record -p` or `perf stat -p`.
async fn soak(plan: &Plan, hub: &Hub, relay: &Relay, length: Duration) -> Res<Value> {
    println!(
        "FLOWHUB_BENCH_RPC_SOAK: hub pid {}, relay pid {}; 1 provider, 64 in flight, {:.1} s each after {:.1} s warm-up, hub first",
        hub.pid,
        relay.pid,
        length.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    let plan = Plan {
        window: length,
        ..plan.clone()
    };
    let mut out = json!({"scenario": "rpc", "soak_s": length.as_secs_f64()});
    for (name, addr, pid) in [
        ("flowhub", hub.addr, hub.pid),
        ("baseline", relay.addr, relay.pid),
    ] {
        let cpu = || hub::cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(f64::NAN);
        let s = ws_round(addr, 1, 64, &plan, cpu).await?;
        let f = Figures::new(&s.hist, s.secs, s.cpu);
        println!(
            "{name}: {} calls/s, p50 {} µs, p99 {} µs, server CPU {} µs/call",
            num(Some(f.per_sec())),
            num(Some(f.p50_us)),
            num(Some(f.p99_us)),
            num(f.cpu_us_per_op)
        );
        out[name] = f.json();
    }
    Ok(out)
}

/// One measurement on the hub or the relay: `providers` provider sockets, one caller socket
/// with `in_flight` calls; `cpu` reads the server's CPU seconds.
async fn ws_round(
    addr: SocketAddr,
    providers: usize,
    in_flight: usize,
    plan: &Plan,
    cpu: impl Fn() -> f64,
) -> Res<Sample> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut serving = Vec::with_capacity(providers);
    for _ in 0..providers {
        let ws = provide(addr).await?;
        serving.push(tokio::spawn(serve_invokes(ws, stop_rx.clone())));
    }
    let caller = ws::connect(addr).await?;
    let window = Window::new(plan.warmup, plan.window);
    // Only there so that a server that stops answering fails the run instead of hanging it.
    let limit = plan.warmup + plan.window + Duration::from_secs(30);
    let task = tokio::spawn(async move {
        tokio::time::timeout(limit, call_loop(caller, in_flight, window))
            .await
            .map_err(|_| "the caller's replies stopped coming")?
    });
    let sample = window.collect(vec![task], cpu).await;
    let _ = stop_tx.send(true);
    for s in serving {
        s.await??;
    }
    sample
}

/// A provider socket: `provide` for the bench endpoint, answered with success.
pub async fn provide(addr: SocketAddr) -> Res<Ws> {
    let mut ws = ws::connect(addr).await?;
    let frame = json!({"type": "provide", "requestid": 1, "endpoint": ENDPOINT,
        "methods": ["RUN"]});
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        ws::call(&mut ws, frame.to_string()),
    )
    .await
    .map_err(|_| "no reply to provide within 10 s")??;
    if !ws::succeeded(&reply) {
        return Err(ws::failure("provide", &reply));
    }
    Ok(ws)
}

/// The result frame for the invoke whose call id is `callid` (its raw text).
fn result_frame(callid: &str) -> Message {
    let mut f = String::with_capacity(PAYLOAD.len() + 64);
    f.push_str(r#"{"type":"result","callid":"#);
    f.push_str(callid);
    f.push_str(r#","success":true,"data":"#);
    f.push_str(PAYLOAD);
    f.push('}');
    Message::text(f)
}

/// Answers every invoke until told to stop; what is ready is answered in one flush.
pub async fn serve_invokes(mut ws: Ws, mut stop: watch::Receiver<bool>) -> Res<()> {
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        let mut next = Some(msg);
        while let Some(msg) = next {
            let answer = match msg {
                Some(Ok(Message::Text(t))) => answer_invoke(t.as_str())?,
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => None,
                Some(Err(e)) => return Err(format!("provider socket: {e}").into()),
            };
            if let Some(a) = answer {
                ws.feed(a).await?;
            }
            next = ws.next().now_or_never();
        }
        ws.flush().await?;
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// The result for an invoke frame; `None` for a frame that needs no answer (`cancel`).
fn answer_invoke(frame: &str) -> Res<Option<Message>> {
    if frame.starts_with(r#"{"type":"invoke""#) {
        let callid = relay::field(frame, "callid").ok_or("an invoke without a callid")?;
        return Ok(Some(result_frame(callid)));
    }
    // Not the fast path: look at what it is.
    let v: Value = serde_json::from_str(frame)?;
    match v["type"].as_str() {
        Some("invoke") => {
            let callid = v["callid"].as_u64().ok_or("an invoke without a callid")?;
            Ok(Some(result_frame(&callid.to_string())))
        }
        Some("cancel") => Ok(None),
        _ => Err(format!(
            "unexpected frame to a provider: {}",
            frame.chars().take(300).collect::<String>()
        )
        .into()),
    }
}

/// The caller: `in_flight` slots, each a closed loop of RUN calls whose `requestid` is the
/// slot's number; replies may come in any order.
async fn call_loop(mut ws: Ws, in_flight: usize, window: Window) -> Res<Histogram<u64>> {
    let frames: Vec<Message> = (0..in_flight)
        .map(|slot| {
            Message::text(format!(
                r#"{{"type":"call","requestid":{slot},"method":"RUN","endpoint":"{ENDPOINT}","objectid":"x","data":{PAYLOAD}}}"#
            ))
        })
        .collect();
    let mut began = vec![Instant::now(); in_flight];
    for (slot, frame) in frames.iter().enumerate() {
        began[slot] = Instant::now();
        ws.feed(frame.clone()).await?;
    }
    ws.flush().await?;
    let mut h = stats::histogram();
    let mut outstanding = in_flight;
    let mut checked = false;
    while outstanding > 0 {
        let mut next = Some(ws.next().await);
        while let Some(msg) = next {
            let reply = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => {
                    return Err(format!("the server closed the caller's socket: {c:?}").into())
                }
                Some(Ok(_)) => {
                    next = ws.next().now_or_never();
                    continue;
                }
                Some(Err(e)) => return Err(format!("caller socket: {e}").into()),
                None => return Err("the server closed the caller's socket".into()),
            };
            let reply = reply.as_str();
            if !ws::succeeded(reply) {
                return Err(ws::failure("a routed call", reply));
            }
            if !checked {
                // Once per run: the reply is the hub's envelope with the provider's data.
                let v: Value = serde_json::from_str(reply)?;
                let payload: Value = serde_json::from_str(PAYLOAD)?;
                if v["data"] != payload {
                    return Err(
                        format!("the reply does not carry the provider's data: {reply}").into(),
                    );
                }
                checked = true;
            }
            let slot = relay::field(reply, "requestid")
                .and_then(|r| r.parse::<usize>().ok())
                .filter(|s| *s < in_flight)
                .ok_or_else(|| format!("a reply with no requestid of this caller: {reply}"))?;
            let done = window.record(&mut h, began[slot]);
            if window.running() {
                began[slot] = done;
                ws.feed(frames[slot].clone()).await?;
            } else {
                outstanding -= 1;
            }
            next = if outstanding > 0 {
                ws.next().now_or_never()
            } else {
                None
            };
        }
        ws.flush().await?;
    }
    let _ = ws.close(None).await;
    Ok(h)
}
