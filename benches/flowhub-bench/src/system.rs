//! Programs the peers need from the system: found on `PATH`, or installed from Debian's
//! packages when the bench runs as root with apt. A peer that cannot be had is skipped with the
//! reason, never faked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The first `name` on `PATH` or in the usual system directories.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether this process runs as root (`Uid:` of `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Finds the program `binary`; when it is missing and the bench runs as root with apt,
/// installs Debian's `package` first. `Err` is the reason the peer is skipped.
pub fn locate_or_install(binary: &str, package: &str) -> Result<PathBuf, String> {
    if let Some(bin) = find(binary) {
        return Ok(bin);
    }
    if !is_root() {
        return Err(format!(
            "{binary} is not installed and the bench does not run as root to install it (apt-get install {package})"
        ));
    }
    if find("apt-get").is_none() {
        return Err(format!(
            "{binary} is not installed and there is no apt-get to install it"
        ));
    }
    println!("{binary} is not installed: apt-get install -y {package} ...");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let mut out = install().map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdin(Stdio::null())
            .output();
        out = install().map_err(|e| format!("cannot run apt-get: {e}"))?;
    }
    if !out.status.success() {
        return Err(format!(
            "apt-get install {package} failed: {}",
            last_line(&out.stderr)
        ));
    }
    find(binary).ok_or_else(|| format!("apt-get installed {package} but {binary} is not on PATH"))
}

/// The last non-empty line of a program's output, for a one-line reason.
pub fn last_line(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// A free TCP port on loopback (bound and released: another process could take it in
/// between, which a failed start then reports).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A server's version from its `--version` output: the first word that starts with
/// `prefix`, without it (`v` for `nats-server`, `v=` for `redis-server`); `?` if none.
pub fn version(bin: &Path, prefix: &str) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}
