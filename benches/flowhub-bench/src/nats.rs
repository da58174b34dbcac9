//! The second routed-RPC peer: NATS request/reply (Debian's `nats-server`, installed by the
//! bench when it runs as root and the server is missing), started on a free loopback port and
//! driven with the official `async-nats` client. Providers are subscribers of one queue group
//! that answer each request with its payload; the caller keeps N requests in flight on one
//! connection.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::stats::{self, Sample, Window};
use crate::{system, Res};

const SUBJECT: &str = "bench.echo";
const QUEUE_GROUP: &str = "providers";

/// Finds `nats-server`, installing Debian's package when it is missing and the bench may.
/// `Err` is the reason the peer is skipped.
pub fn locate() -> Result<PathBuf, String> {
    system::locate_or_install("nats-server", "nats-server")
}

/// `nats-server --version`, e.g. `2.9.10`.
pub fn version(bin: &Path) -> String {
    system::version(bin, "v")
}

/// A running `nats-server`.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub pid: u32,
}

impl Nats {
    /// Starts the server on loopback, logging nothing, and waits for its `INFO` line.
    pub async fn start(bin: &Path) -> Res<Nats> {
        let port = system::free_port()?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut nats = Nats {
            pid: child.id(),
            child,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = [0u8; 8];
                if c.read_exact(&mut buf[..4]).await.is_ok() && buf.starts_with(b"INFO") {
                    return Ok(nats);
                }
            }
            if let Ok(Some(status)) = nats.child.try_wait() {
                return Err(format!("nats-server exited at start with {status}").into());
            }
            if Instant::now() > deadline {
                return Err("nats-server did not answer within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn cpu(&self) -> f64 {
        crate::hub::cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(f64::NAN)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// One measurement: `providers` connections in one queue group echo each request's
    /// payload; one caller connection keeps `in_flight` requests going (closed loop).
    pub async fn round(
        &self,
        providers: usize,
        in_flight: usize,
        payload: &'static str,
        warmup: Duration,
        length: Duration,
    ) -> Res<Sample> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut serving = Vec::with_capacity(providers);
        for _ in 0..providers {
            let client = async_nats::connect(self.url()).await?;
            let mut sub = client
                .queue_subscribe(SUBJECT, QUEUE_GROUP.to_string())
                .await?;
            // The server has the subscription once it answers this flush's ping.
            client.flush().await?;
            let mut stop = stop_rx.clone();
            serving.push(tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        biased;
                        m = sub.next() => m,
                        _ = stop.changed() => break,
                    };
                    let Some(msg) = msg else { break };
                    if let Some(reply) = msg.reply {
                        client.publish(reply, msg.payload).await?;
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        let caller = async_nats::connect(self.url()).await?;
        let body = Bytes::from_static(payload.as_bytes());
        // One call first: the providers answer, with the payload.
        let first = caller.request(SUBJECT, body.clone()).await?;
        if first.payload != body {
            return Err(format!(
                "NATS echoed {:?} instead of the payload",
                String::from_utf8_lossy(&first.payload)
            )
            .into());
        }
        let window = Window::new(warmup, length);
        let task = tokio::spawn(async move {
            let one = |c: async_nats::Client, b: Bytes| async move {
                let began = Instant::now();
                (began, c.request(SUBJECT, b).await)
            };
            let mut h = stats::histogram();
            let mut pending = FuturesUnordered::new();
            for _ in 0..in_flight {
                pending.push(one(caller.clone(), body.clone()));
            }
            while let Some((began, reply)) = pending.next().await {
                reply.map_err(|e| format!("NATS request: {e}"))?;
                window.record(&mut h, began);
                if window.running() {
                    pending.push(one(caller.clone(), body.clone()));
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(h)
        });
        let sample = window.collect(vec![task], || self.cpu()).await;
        let _ = stop_tx.send(true);
        for s in serving {
            s.await??;
        }
        sample
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
