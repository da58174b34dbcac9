//! A real `flowhub serve` child process: started on port 0 with its own data directory, its
//! address read from the JSON log line `flowhub listening`, its CPU time and memory read from
//! `/proc`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Res;

/// Only there so that a broken hub fails the run instead of hanging it.
const START_TIMEOUT: Duration = Duration::from_secs(300);
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// The `flowhub` binary to run: `FLOWHUB_BIN`, else the release binary of this workspace,
/// built first when the bench runs under cargo (a no-op when it is up to date).
pub fn flowhub_binary() -> Res<PathBuf> {
    if let Some(bin) = std::env::var_os("FLOWHUB_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("the bench binary has no directory")?;
    let release = if dir.file_name().is_some_and(|n| n == "release") {
        dir.to_path_buf()
    } else {
        eprintln!("flowhub-bench: warning: built without --release; the figures of the client side are not representative");
        dir.parent()
            .ok_or("the bench binary's directory has no parent")?
            .join("release")
    };
    if let Some(cargo) = std::env::var_os("CARGO") {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        eprintln!("flowhub-bench: cargo build --release --bin flowhub");
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--bin", "flowhub"])
            .current_dir(&workspace)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("cargo build --release --bin flowhub failed".into());
        }
    }
    let bin = release.join("flowhub");
    if !bin.exists() {
        return Err(format!(
            "{} does not exist: run `cargo build --release --bin flowhub`, or set FLOWHUB_BIN",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// A temporary directory (`flowhub-bench-*` in the system's temp dir) for a hub's data, the
/// baseline's files or the peer's. With `FLOWHUB_BENCH_KEEP=1` it is kept after the run, and
/// its path printed, for a profiler or a look at the files.
pub fn temp_dir(what: &str) -> Res<tempfile::TempDir> {
    let keep = std::env::var_os("FLOWHUB_BENCH_KEEP").is_some_and(|v| v != "0" && !v.is_empty());
    let dir = tempfile::Builder::new()
        .prefix(&format!("flowhub-bench-{what}-"))
        .disable_cleanup(keep)
        .tempdir()?;
    if keep {
        println!(
            "(FLOWHUB_BENCH_KEEP: {what} data kept in {})",
            dir.path().display()
        );
    }
    Ok(dir)
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime+stime of a process (`/proc/<pid>/stat`) or a thread (`/proc/thread-self/stat`), in
/// seconds.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sends a signal with the system's `kill` (the bench forbids unsafe code, so no libc).
pub fn signal(pid: u32, name: &str) -> Res<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("kill -{name} {pid} failed").into());
    }
    Ok(())
}

/// A running hub.
pub struct Hub {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    /// From spawning the process to reading its `flowhub listening` line.
    pub start_time: Duration,
    /// The `ms` of the hub's own `state recovered` line.
    pub recovered_ms: Option<u64>,
    /// The recovery line's fields (objects from the snapshot and from the log).
    pub recovered: Value,
    /// The hub's last log lines, for error messages.
    tail: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    /// Starts `flowhub serve` on `data_dir` with `env` on top of: port 0, JSON logs, open
    /// mode (no authentication), and no `FLOWHUB_*` variable of the bench's own environment.
    pub fn spawn(bin: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Res<Hub> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FLOWHUB_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("FLOWHUB_LISTEN", "127.0.0.1:0")
            .env("FLOWHUB_LOG_FORMAT", "json")
            .env("FLOWHUB_LOG", "info")
            .env("FLOWHUB_DATA_DIR", data_dir)
            // The scenarios measure the hub's work on calls, not authentication.
            .env("FLOWHUB_AUTH", "none")
            // Every connection of the load generator comes from one address.
            .env("FLOWHUB_MAX_CONNECTIONS_PER_ADDRESS", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let pipe = child.stderr.take().ok_or("no stderr pipe")?;
        let tail = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel::<(Instant, Value)>();
        let log = tail.clone();
        std::thread::Builder::new()
            .name(format!("hub-{pid}-log"))
            .spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    if let Ok(mut t) = log.lock() {
                        if t.len() >= 40 {
                            t.remove(0);
                        }
                        t.push(line.clone());
                    }
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send((at, v));
                    }
                }
            })?;
        let mut hub = Hub {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            start_time: Duration::ZERO,
            recovered_ms: None,
            recovered: Value::Null,
            tail,
        };
        let deadline = spawned + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((at, line)) => {
                    let fields = &line["fields"];
                    let message = fields["message"].as_str().unwrap_or("");
                    if message == "state recovered" {
                        hub.recovered_ms = fields["ms"].as_u64();
                        hub.recovered = fields.clone();
                    }
                    if message.starts_with("flowhub listening") {
                        hub.start_time = at - spawned;
                        hub.addr = fields["addr"]
                            .as_str()
                            .and_then(|a| a.parse().ok())
                            .ok_or("the listening line has no address")?;
                        return Ok(hub);
                    }
                }
                Err(_) => {
                    let _ = hub.child.kill();
                    let _ = hub.child.wait();
                    return Err(format!(
                        "the hub did not start (no `flowhub listening` line); its log:\n{}",
                        hub.log_tail()
                    )
                    .into());
                }
            }
        }
    }

    pub fn log_tail(&self) -> String {
        self.tail.lock().map(|t| t.join("\n")).unwrap_or_default()
    }

    /// The hub's CPU time so far (all threads), in seconds.
    pub fn cpu(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(f64::NAN)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// A clean stop: SIGTERM, then wait for the process to exit (it writes a snapshot first).
    /// Returns how long the stop took.
    pub async fn terminate(mut self) -> Res<Duration> {
        let t = Instant::now();
        signal(self.pid, "TERM")?;
        self.wait_exit().await?;
        Ok(t.elapsed())
    }

    /// `kill -9`: no snapshot, nothing flushed by the hub.
    pub async fn kill9(mut self) -> Res<()> {
        self.child.kill()?;
        self.wait_exit().await
    }

    async fn wait_exit(&mut self) -> Res<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() && status.code().is_some() {
                    return Err(format!(
                        "the hub exited with {status}; its log:\n{}",
                        self.log_tail()
                    )
                    .into());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err("the hub did not exit within 300 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The total size of the files under `dir`, in bytes.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
