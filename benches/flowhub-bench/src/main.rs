//! flowhub's benchmark program.
//!
//! `cargo run --release -p flowhub-bench -- [--quick] [--json FILE] [--plots DIR] [--scenario NAME]`
//! `cargo run --release -p flowhub-bench -- soak [--duration SECS] [--connections N] [--out FILE.svg]`
//!
//! Every scenario runs a real `flowhub serve` child process and, in the same run, a baseline
//! (this machine's floor for the same work, built with no logic at all) and a peer (the system
//! a user would pick instead), and prints the figures side by side with their ratios. Client and
//! hub share the machine's cores, so next to throughput the hub's own CPU time per operation is
//! read from `/proc/<pid>/stat`. See `benches/README.md`.

mod child;
mod data;
mod deepstream;
mod durable;
mod fanout;
mod http;
mod hub;
mod idle;
mod list;
mod nats;
mod plots;
mod redis;
mod relay;
mod report;
mod restart;
mod rpc;
mod soak;
mod stats;
mod svg;
mod system;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Errors end the run with a message; a benchmark has nobody to hand them to.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Every scenario, in the order a full run takes them.
const SCENARIOS: [&str; 7] = [
    "durable-update",
    "rpc",
    "fanout",
    "http",
    "idle",
    "restart",
    "list",
];

/// How long and how large each scenario is.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Load before a measurement window starts (connections warm, caches filled).
    pub warmup: Duration,
    /// The measurement window of each throughput run.
    pub window: Duration,
    /// Each comparison runs this many rounds, the systems taking turns (flowhub, baseline,
    /// peer, flowhub, ...), so that a burst of noise from elsewhere on the machine falls on
    /// all of them rather than on one.
    pub rounds: usize,
    /// Address-like objects for `restart` and `list`.
    pub objects: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                warmup: Duration::from_millis(300),
                window: Duration::from_millis(800),
                rounds: 2,
                objects: 100_000,
            }
        } else {
            Plan {
                quick,
                warmup: Duration::from_millis(500),
                window: Duration::from_secs(2),
                rounds: 3,
                objects: 1_000_000,
            }
        }
    }
}

#[derive(Default)]
struct Args {
    quick: bool,
    json: Option<PathBuf>,
    plots: Option<PathBuf>,
    from_json: Option<PathBuf>,
    scenarios: Vec<String>,
}

const USAGE: &str =
    "usage: flowhub-bench [--quick] [--json FILE] [--plots DIR] [--scenario NAME]...
       flowhub-bench soak [--duration SECS] [--connections N] [--rate CALLS/S] [--out FILE.svg]
                          [--resume-window CHANGES]
  --quick          small data and short windows (CI, a first look)
  --json FILE      also write every figure as JSON, one object per scenario
  --plots DIR      also draw SVG plots of the figures into DIR
  --from-json FILE run nothing: draw the plots (--plots) of a run saved with --json
  --scenario NAME  run only this scenario (repeatable, or comma-separated):
                   durable-update, rpc, fanout, http, idle, restart, list
  soak             hold N connections under a steady mix of calls, subscriptions and writes
                   for SECS seconds, sampling the hub's memory and call latency every second
                   (see benches/README.md)
environment: FLOWHUB_BIN  the flowhub binary to run (default: build target/release/flowhub)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        json: None,
        plots: None,
        from_json: None,
        scenarios: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => {
                args.json = Some(PathBuf::from(it.next().ok_or("--json needs a file name")?))
            }
            "--plots" => {
                args.plots = Some(PathBuf::from(it.next().ok_or("--plots needs a directory")?))
            }
            "--from-json" => {
                args.from_json = Some(PathBuf::from(
                    it.next().ok_or("--from-json needs a file name")?,
                ))
            }
            "--scenario" => {
                let v = it.next().ok_or("--scenario needs a name")?;
                for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !SCENARIOS.contains(&name) {
                        return Err(format!(
                            "unknown scenario {name:?}; scenarios: {}",
                            SCENARIOS.join(", ")
                        ));
                    }
                    args.scenarios.push(name.to_string());
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    Ok(args)
}

fn main() -> ExitCode {
    // The rpc scenario's baseline runs as a process of its own: this binary, re-executed.
    if std::env::args().nth(1).as_deref() == Some(relay::FLAG) {
        return relay::serve_main();
    }
    // The fan-out scenario's bare broadcaster is this program started again.
    if std::env::args().nth(1).as_deref() == Some("--broadcaster") {
        return fanout::broadcaster_main();
    }
    // The http scenario's bare hyper server and the idle scenario's bare WebSocket server.
    if std::env::args().nth(1).as_deref() == Some(http::FLAG) {
        return http::serve_main();
    }
    if std::env::args().nth(1).as_deref() == Some(idle::FLAG) {
        return idle::serve_main();
    }
    let soak_args = if std::env::args().nth(1).as_deref() == Some("soak") {
        match soak::parse_args(std::env::args().skip(2)) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("flowhub-bench soak: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let args = if soak_args.is_some() {
        Args::default()
    } else {
        match parse_args() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("flowhub-bench: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowhub-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match soak_args {
        Some(soak) => runtime.block_on(soak::run(soak)),
        None => runtime.block_on(run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowhub-bench: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Res<()> {
    if let Some(path) = &args.from_json {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)?;
        let results = doc["scenarios"].as_array().cloned().unwrap_or_default();
        let dir = args
            .plots
            .as_ref()
            .ok_or("--from-json draws plots: give --plots DIR")?;
        for path in plots::write(dir, &results)? {
            println!("plot written to {}", path.display());
        }
        return Ok(());
    }
    let started = Instant::now();
    let plan = Plan::new(args.quick);
    let bin = hub::flowhub_binary()?;
    let machine = report::machine();
    println!(
        "flowhub-bench: {} mode; {}; hub binary {}",
        if plan.quick { "quick" } else { "full" },
        report::machine_line(&machine),
        bin.display()
    );
    println!("client and hub share this machine: \"hub CPU\" is the hub process's own utime+stime per operation, from /proc.");
    let mut results: Vec<Value> = Vec::new();
    // The restart scenario leaves its recovered hub running, loaded, for the list scenario.
    let mut loaded: Option<restart::Loaded> = None;
    for name in SCENARIOS {
        if !args.scenarios.iter().any(|s| s == name) {
            continue;
        }
        println!();
        let busy = report::background_cpu();
        println!(
            "[{name}] other processes used {:.0}% of the machine's CPU just before this scenario{}",
            busy * 100.0,
            if busy > 0.15 {
                ": the figures below are noisy"
            } else {
                ""
            }
        );
        let t = Instant::now();
        let value = match name {
            "durable-update" => durable::run(&plan, &bin).await?,
            "rpc" => rpc::run(&plan, &bin).await?,
            "restart" => {
                let (value, hub) = restart::run(&plan, &bin).await?;
                loaded = Some(hub);
                value
            }
            "list" => list::run(&plan, &bin, loaded.take()).await?,
            "fanout" => fanout::run(&plan, &bin).await?,
            "http" => http::run(&plan, &bin).await?,
            "idle" => idle::run(&plan, &bin).await?,
            _ => continue,
        };
        println!("({name}: {:.1} s)", t.elapsed().as_secs_f64());
        let mut value = value;
        value["background_cpu_before"] = json!(stats::round(busy, 3));
        results.push(value);
    }
    if let Some(hub) = loaded.take() {
        hub.stop().await;
    }
    println!(
        "\nflowhub-bench: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = &args.plots {
        for path in plots::write(dir, &results)? {
            println!("plot written to {}", path.display());
        }
    }
    if let Some(path) = args.json {
        let doc = json!({
            "mode": if plan.quick { "quick" } else { "full" },
            "machine": machine,
            "seconds": started.elapsed().as_secs_f64(),
            "scenarios": results,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}
