//! The durable-write peer: Redis 7 with `appendfsync always` (Debian's `redis-server`),
//! started on a free loopback port with a temporary directory, driven with SET over RESP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::{self, Sample, Window};
use crate::Res;

/// Finds `redis-server`; when it is missing and the bench runs as root with apt, installs
/// Debian's package. `Err` is the reason the peer is skipped.
pub fn locate() -> Result<PathBuf, String> {
    crate::system::locate_or_install("redis-server", "redis-server")
}

/// `redis-server --version`, e.g. `7.0.15`.
pub fn version(bin: &Path) -> String {
    crate::system::version(bin, "v=")
}

/// A running `redis-server`.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub pid: u32,
}

impl Redis {
    /// Starts Redis with AOF on, fsync before every reply, no RDB snapshots, in `dir`.
    pub async fn start(bin: &Path, dir: &Path) -> Res<Redis> {
        std::fs::create_dir_all(dir)?;
        let port = crate::system::free_port()?;
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args([
                "--daemonize",
                "no",
                "--logfile",
                "",
                "--loglevel",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut redis = Redis {
            pid: child.id(),
            child,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await {
                if c.write_all(b"*1\r\n$4\r\nPING\r\n").await.is_ok() {
                    let mut buf = [0u8; 16];
                    if let Ok(n) = c.read(&mut buf).await {
                        if buf[..n].starts_with(b"+PONG") {
                            return Ok(redis);
                        }
                    }
                }
            }
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Err(format!("redis-server exited at start with {status}").into());
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn cpu(&self) -> f64 {
        crate::hub::cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(f64::NAN)
    }

    /// `writers` connections, each a closed loop of SET (send, wait for `+OK`) on its own key.
    pub async fn writers(
        &self,
        writers: usize,
        warmup: Duration,
        length: Duration,
        value: fn(usize, u64) -> String,
    ) -> Res<Sample> {
        let mut conns = Vec::with_capacity(writers);
        for _ in 0..writers {
            let c = TcpStream::connect(("127.0.0.1", self.port)).await?;
            c.set_nodelay(true)?;
            conns.push(c);
        }
        let window = Window::new(warmup, length);
        let mut tasks = Vec::with_capacity(writers);
        for (w, mut conn) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let mut h = stats::histogram();
                let key = format!("w{w}");
                let mut cmd = Vec::with_capacity(256);
                let mut buf = [0u8; 64];
                let mut i = 0u64;
                while window.running() {
                    let v = value(w, i);
                    i += 1;
                    cmd.clear();
                    cmd.extend_from_slice(
                        format!(
                            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                            key.len(),
                            v.len()
                        )
                        .as_bytes(),
                    );
                    cmd.extend_from_slice(v.as_bytes());
                    cmd.extend_from_slice(b"\r\n");
                    let began = Instant::now();
                    conn.write_all(&cmd).await?;
                    let mut got = 0;
                    loop {
                        let n = conn.read(&mut buf[got..]).await?;
                        if n == 0 {
                            return Err("redis closed the connection".into());
                        }
                        got += n;
                        if buf[..got].ends_with(b"\r\n") || got == buf.len() {
                            break;
                        }
                    }
                    if !buf.starts_with(b"+OK") {
                        return Err(format!(
                            "redis SET failed: {}",
                            String::from_utf8_lossy(&buf[..got])
                        )
                        .into());
                    }
                    window.record(&mut h, began);
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(h)
            }));
        }
        window.collect(tasks, || self.cpu()).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
