//! The deepstream 7 peer (routing and fan-out): installed by the bench itself from the npm
//! registry, started on a free loopback port, driven by Node.js scripts with deepstream's own
//! client.
//!
//! The setup is `peers/deepstream/` of the project's shared folder (`package.json` with the
//! pinned server and client, `config.yml`, the `uws-stub` for an optional native dependency):
//! it is copied to `target/flowhub-bench/deepstream/` and `npm install`ed there once (again
//! only when its `package.json` changes). `FLOWHUB_DEEPSTREAM_DIR` names another copy of it.
//! Without Node.js and npm, or when the install fails, the peer is skipped with the reason.
//!
//! A scenario drives it with a script of its own (embedded in the bench, written next to
//! `node_modules` so that `require` finds the client) that prints one JSON line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpStream;

use crate::stats::{self, Sample};
use crate::{system, Res};

/// An installed deepstream: its folder (with `node_modules`) and the server's version.
#[derive(Debug, Clone)]
pub struct Install {
    pub dir: PathBuf,
    pub node: PathBuf,
    pub version: String,
}

/// Where the shared deepstream setup is: `FLOWHUB_DEEPSTREAM_DIR`, else `shared/peers/deepstream`
/// beside the repository.
fn source_dir() -> PathBuf {
    match std::env::var_os("FLOWHUB_DEEPSTREAM_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/deepstream"),
    }
}

/// The bench's scratch folder under the build's `target/` (next to the bench binary's
/// `release/` folder), else the workspace's `target/`.
pub fn scratch_dir() -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .filter(|t| t.join("release").is_dir() || t.join("debug").is_dir())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("flowhub-bench")
}

/// Copies the setup to the scratch folder and installs it with npm (once). `Err` is the reason
/// the peer is skipped.
pub fn install() -> Result<Install, String> {
    let node = system::find("node").ok_or("Node.js is not installed (no `node` on PATH)")?;
    let npm = system::find("npm").ok_or("npm is not installed (no `npm` on PATH)")?;
    let src = source_dir();
    let src_package = std::fs::read(src.join("package.json"))
        .map_err(|e| format!("no deepstream setup at {}: {e}", src.display()))?;
    let dir = scratch_dir().join("deepstream");
    let installed = dir.join("node_modules/@deepstream/server/package.json");
    let current = std::fs::read(dir.join("package.json")).ok();
    if !installed.is_file() || current.as_deref() != Some(src_package.as_slice()) {
        copy_tree(&src, &dir).map_err(|e| format!("cannot copy {}: {e}", src.display()))?;
        println!(
            "deepstream: npm install in {} (once; the registry must be reachable) ...",
            dir.display()
        );
        let out = Command::new(&npm)
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run npm: {e}"))?;
        if !out.status.success() || !installed.is_file() {
            return Err(format!(
                "npm install of deepstream failed: {}",
                system::last_line(&out.stderr)
            ));
        }
    }
    let version = std::fs::read_to_string(&installed)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    Ok(Install { dir, node, version })
}

/// Copies files, writing fresh ones (the shared folder's are read-only, the copies must not
/// be, or the next copy could not overwrite them).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::write(&target, std::fs::read(entry.path())?)?;
        }
    }
    Ok(())
}

/// A running deepstream server.
pub struct Deepstream {
    child: Child,
    pub install: Install,
    pub port: u16,
    pub pid: u32,
}

impl Deepstream {
    /// Starts `deepstream start` with the setup's `config.yml` moved to a free port, and waits
    /// until it accepts connections.
    pub async fn start(install: &Install) -> Res<Deepstream> {
        let port = system::free_port()?;
        let config = std::fs::read_to_string(install.dir.join("config.yml"))?;
        if !config.contains("port: 6020") {
            return Err("config.yml of the deepstream setup has no `port: 6020` to move".into());
        }
        let config_path = install.dir.join(format!("bench-{port}.yml"));
        std::fs::write(
            &config_path,
            config.replace("port: 6020", &format!("port: {port}")),
        )?;
        let child = Command::new(&install.node)
            .arg("node_modules/@deepstream/server/dist/bin/deepstream")
            .args(["start", "-c"])
            .arg(&config_path)
            .current_dir(&install.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start deepstream: {e}"))?;
        let mut ds = Deepstream {
            pid: child.id(),
            child,
            install: install.clone(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                let _ = std::fs::remove_file(&config_path);
                return Ok(ds);
            }
            if let Ok(Some(status)) = ds.child.try_wait() {
                let _ = std::fs::remove_file(&config_path);
                return Err(format!("deepstream exited at start with {status}").into());
            }
            if Instant::now() > deadline {
                return Err("deepstream did not listen within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The WebSocket URL of its binary protocol endpoint (`urlPath` of `config.yml`).
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/deepstream", self.port)
    }

    /// The server's CPU time so far (it runs in one Node.js process), in seconds.
    #[allow(dead_code)] // the rpc driver reads it itself, at the window's edges
    pub fn cpu(&self) -> f64 {
        crate::hub::cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(f64::NAN)
    }

    /// Runs a driver script (its source, written as `name` next to `node_modules`) with
    /// `args`, and returns the last line it printed; fails with its error output otherwise.
    pub async fn drive(&self, name: &str, source: &str, args: &[String]) -> Res<String> {
        let script = self.install.dir.join(name);
        if std::fs::read_to_string(&script).ok().as_deref() != Some(source) {
            std::fs::write(&script, source)?;
        }
        let out = tokio::process::Command::new(&self.install.node)
            .arg(&script)
            .args(args)
            .current_dir(&self.install.dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(line) if out.status.success() => Ok(line.to_string()),
            _ => Err(format!(
                "{name} failed ({}): {}",
                out.status,
                system::last_line(&out.stderr)
            )
            .into()),
        }
    }
}

impl Drop for Deepstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The routed-RPC driver (`js/deepstream-rpc.js`).
const RPC_DRIVER: &str = include_str!("../js/deepstream-rpc.js");

/// One routed-RPC measurement: `providers` clients echo the data of `bench/echo` calls, one
/// caller keeps `in_flight` going; the server's CPU over the window comes from the script.
pub async fn rpc_round(
    ds: &Deepstream,
    providers: usize,
    in_flight: usize,
    payload: &str,
    warmup: Duration,
    length: Duration,
) -> Res<Sample> {
    let args = [
        ds.url(),
        ds.pid.to_string(),
        providers.to_string(),
        in_flight.to_string(),
        warmup.as_millis().to_string(),
        length.as_millis().to_string(),
        crate::hub::clock_ticks().to_string(),
        payload.to_string(),
    ];
    let line = ds.drive("flowhub-rpc.js", RPC_DRIVER, &args).await?;
    let v: Value = serde_json::from_str(&line).map_err(|e| {
        let start: String = line.chars().take(200).collect();
        format!("the deepstream driver printed {start:?}...: {e}")
    })?;
    if v["errors"].as_u64().unwrap_or(0) > 0 {
        return Err(format!("{} deepstream calls failed", v["errors"]).into());
    }
    let mut hist = stats::histogram();
    for pair in v["lat"].as_array().ok_or("no latencies")? {
        let us = pair[0].as_u64().ok_or("bad latency")?;
        let count = pair[1].as_u64().ok_or("bad latency count")?;
        hist.record_n(us.max(1) * 1000, count)?;
    }
    if hist.len() != v["ops"].as_u64().unwrap_or(0) {
        return Err("deepstream driver: latencies and ops disagree".into());
    }
    Ok(Sample::new(
        hist,
        v["secs"].as_f64().ok_or("no secs")?,
        v["cpu"].as_f64(),
    ))
}
