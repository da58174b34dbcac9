//! Test support: a real hub on port 0 and real clients (WebSocket and raw HTTP/1.1).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

pub use flowhub::config::Config;

/// A hub serving on an ephemeral port for the length of a test.
pub struct TestHub {
    pub addr: SocketAddr,
    /// The hub's data directory when the test did not choose one; removed with the hub.
    pub data: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(Config::default()).await
    }

    /// A hub with `config` in open mode (no authentication: the tests of everything but
    /// authentication call without credentials); a `data_dir` left at its default becomes a
    /// fresh temporary one.
    pub async fn start_with(mut config: Config) -> TestHub {
        config.auth.mode = "none".into();
        Self::start_secure(config).await
    }

    /// A hub with `config` as it is, authentication included.
    pub async fn start_secure(mut config: Config) -> TestHub {
        let data = if config.data_dir == Config::default().data_dir {
            let dir = tempfile::tempdir().expect("a temporary data directory");
            config.data_dir = dir.path().to_path_buf();
            Some(dir)
        } else {
            None
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(flowhub::server::run(listener, config, async move {
            let _ = rx.await;
        }));
        TestHub {
            addr,
            data,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn ws(&self) -> WsClient {
        WsClient::connect(&self.ws_url()).await
    }

    /// One raw HTTP/1.1 request; headers are sent exactly as given.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpReply {
        http(self.addr, method, path, headers, body).await
    }

    /// Stops the hub and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("the hub stops within 30 s")
                .expect("the hub's task ends without a panic")
                .expect("the hub starts and runs");
        }
    }
}

/// A decoded HTTP reply.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" || method == "PATCH" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("HTTP reply within 30 s")
        .expect("read reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    HttpReply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A WebSocket client that speaks protocol v1.
pub struct WsClient {
    pub ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// How a test sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    Json,
    MsgPack,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connect");
        WsClient { ws, next_id: 0 }
    }

    /// A client over a WebSocket the test opened itself (from a chosen local address, say).
    pub fn from_stream(
        ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    ) -> WsClient {
        WsClient { ws, next_id: 0 }
    }

    pub async fn send(&mut self, frame: &Value, enc: Enc) {
        let msg = match enc {
            Enc::Json => Message::text(frame.to_string()),
            Enc::MsgPack => Message::Binary(rmp_serde::to_vec_named(frame).unwrap().into()),
        };
        self.ws.send(msg).await.expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next data frame, decoded; `None` when the hub closed the socket.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("a frame within 30 s")?;
            match m.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("reply is JSON")),
                Message::Binary(b) => {
                    return Some(rmp_serde::from_slice(&b).expect("reply is MessagePack"))
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Sends a call (a fresh `requestid` is added) and waits for its reply.
    pub async fn call_enc(&mut self, mut frame: Value, enc: Enc) -> Value {
        self.next_id += 1;
        let rid = format!("t{}", self.next_id);
        frame["requestid"] = json!(rid);
        self.send(&frame, enc).await;
        loop {
            let reply = self
                .recv()
                .await
                .expect("the hub closed the socket before replying");
            if reply["requestid"] == json!(rid) {
                return reply;
            }
        }
    }

    pub async fn call(&mut self, frame: Value) -> Value {
        self.call_enc(frame, Enc::Json).await
    }
}

/// Spawns a `flowhub serve` command (JSON logs on a piped stderr) and waits for the log line
/// with the address it listens on. Returns the child, that address, and its log so far (kept
/// up to date by a thread). Panics with the log when no such line comes within 30 s.
pub fn spawn_serve(
    cmd: &mut std::process::Command,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::{BufRead, BufReader};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Instant;
    // Open mode unless the test chose otherwise: its calls carry no credentials.
    if !cmd.get_envs().any(|(k, _)| k == "FLOWHUB_AUTH") {
        cmd.env("FLOWHUB_AUTH", "none");
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<Value>();
    let pipe = child.stderr.take().expect("stderr is piped");
    let log = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let fields = &line["fields"];
                if fields["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("flowhub listening"))
                {
                    let addr = fields["addr"].as_str().unwrap().parse().unwrap();
                    return (child, addr, stderr);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the hub did not start; its log:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }
}
