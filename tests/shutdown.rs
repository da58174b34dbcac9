//! The `flowhub serve` process as an operator runs it: graceful stop on SIGTERM and SIGINT,
//! refusal of bad configuration, and the order of the configuration layers.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Enc, WsClient};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Only there so that a broken hub fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

/// A `flowhub serve` process.
struct HubProcess {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    _data: tempfile::TempDir,
}

/// `flowhub serve` with a clean environment: JSON logs, a fresh data directory, port 0 unless
/// `env` or `args` say otherwise. A variable given as `""` is removed.
fn command(args: &[&str], env: &[(&str, &str)], data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowhub"));
    cmd.arg("serve")
        .args(args)
        .env_clear()
        .env("FLOWHUB_LISTEN", "127.0.0.1:0")
        .env("FLOWHUB_LOG_FORMAT", "json")
        .env("FLOWHUB_DATA_DIR", data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd
}

impl HubProcess {
    /// Starts the hub and waits for the log line with the address it listens on.
    fn start(args: &[&str], env: &[(&str, &str)]) -> HubProcess {
        let data = tempfile::tempdir().unwrap();
        let (child, addr, stderr) = common::spawn_serve(&mut command(args, env, data.path()));
        HubProcess {
            child,
            addr,
            stderr,
            _data: data,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to exit.
    async fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the hub did not exit within 30 s; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `flowhub serve` expecting it to refuse to start; returns its exit status and stderr.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let data = tempfile::tempdir().unwrap();
    let mut child = command(args, env, data.path()).spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("flowhub serve {args:?} {env:?} started instead of refusing the configuration");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// Calls in flight when the signal comes are answered, then the socket closes with 1001, the
/// listener is gone, and the process exits 0.
async fn graceful_stop(signal: &str) {
    // One reply at a time in the socket's queue, so that large replies keep calls in flight.
    let mut hub = HubProcess::start(&[], &[("FLOWHUB_OUTBOUND_QUEUE", "1")]);
    let mut c = WsClient::connect(&hub.url()).await;
    let created = c
        .call(
            json!({"endpoint": "big/blob", "method": "CREATE", "objectid": "b",
            "data": {"blob": "x".repeat(512 * 1024)}}),
        )
        .await;
    assert_eq!(created["success"], true, "{created}");

    // Calls that take a while: LISTs sorting a few thousand objects.
    let items = 5000;
    for i in 0..items {
        c.send(
            &json!({"requestid": format!("item{i}"), "endpoint": "load/item", "method": "CREATE",
                "data": {"k": (i * 7919) % items}}),
            Enc::Json,
        )
        .await;
    }
    for _ in 0..items {
        let r = c.recv().await.expect("a reply");
        assert_eq!(r["success"], true, "{r}");
    }
    let lists = 20;
    for i in 0..lists {
        c.send(
            &json!({"requestid": 1000 + i, "endpoint": "load/item", "method": "LIST",
                "parameters": {"sorting": true, "sorting.by": "k", "sorting.order": "DESC",
                    "pagination": true, "pagination.size": 1}}),
            Enc::Json,
        )
        .await;
    }
    // Calls with large replies, which wait for room in the socket's queue.
    let n = 40;
    for i in 0..n {
        c.send(
            &json!({"requestid": i, "endpoint": "big/blob", "method": "OPEN", "objectid": "b"}),
            if i % 2 == 0 { Enc::Json } else { Enc::MsgPack },
        )
        .await;
    }
    // The pong comes once the hub has read everything sent before the ping: all those calls
    // have been taken when the signal goes, and many are still running or waiting.
    c.send_raw(Message::Ping(b"sync".to_vec().into())).await;
    let mut answered = HashSet::new();
    let mut record = |v: Value| {
        assert_eq!(v["success"], true, "{}", v["message"]);
        let rid = v["requestid"].as_u64().unwrap();
        if rid >= 1000 {
            assert_eq!(v["data"][0]["k"], items - 1, "{v}");
        } else {
            assert_eq!(v["data"]["blob"].as_str().map(str::len), Some(512 * 1024));
        }
        assert!(answered.insert(rid), "requestid {rid} answered twice");
    };
    loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("the socket is open")
            .unwrap();
        match m {
            Message::Pong(_) => break,
            Message::Text(t) => record(serde_json::from_str(&t).unwrap()),
            Message::Binary(b) => record(rmp_serde::from_slice(&b).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }

    hub.signal(signal);
    let close = loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("a close frame before the end of the stream")
            .expect("a frame, not an error");
        match m {
            Message::Text(t) => record(serde_json::from_str(&t).unwrap()),
            Message::Binary(b) => record(rmp_serde::from_slice(&b).unwrap()),
            Message::Close(f) => break f,
            _ => {}
        }
    };
    assert_eq!(
        answered.len(),
        (n + lists) as usize,
        "every call taken before the {signal} is answered before the close"
    );
    let close = close.expect("the close frame has a code");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");

    // The listener closed before the sessions were told to go.
    assert!(
        tokio::net::TcpStream::connect(hub.addr).await.is_err(),
        "a new connection is refused once the hub is stopping"
    );
    let status = hub.exit().await;
    assert_eq!(status.code(), Some(0), "{}", hub.log());
    let log = hub.log();
    assert!(log.contains(&format!("{signal} received")), "{log}");
    assert!(log.contains("flowhub stopped"), "{log}");
    assert!(tokio::net::TcpStream::connect(hub.addr).await.is_err());
}

#[tokio::test]
async fn sigterm_answers_calls_in_flight_then_closes_with_1001_and_exits_0() {
    graceful_stop("TERM").await;
}

#[tokio::test]
async fn sigint_answers_calls_in_flight_then_closes_with_1001_and_exits_0() {
    graceful_stop("INT").await;
}

#[tokio::test]
async fn a_signal_as_soon_as_the_hub_listens_stops_it_cleanly() {
    for signal in ["TERM", "INT"] {
        let mut hub = HubProcess::start(&[], &[]);
        hub.signal(signal);
        let status = hub.exit().await;
        assert_eq!(status.code(), Some(0), "SIG{signal}: {}", hub.log());
    }
}

#[tokio::test]
async fn an_idle_websocket_does_not_hold_up_the_stop() {
    let mut hub = HubProcess::start(&[], &[]);
    let mut idle = WsClient::connect(&hub.url()).await;
    let r = idle
        .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {}}))
        .await;
    assert_eq!(r["success"], true);
    hub.signal("TERM");
    assert_eq!(idle.recv().await, None, "the hub closes the idle socket");
    assert_eq!(hub.exit().await.code(), Some(0), "{}", hub.log());
}

#[tokio::test]
async fn bad_configuration_exits_with_status_2_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "listen = \n").unwrap();
    let missing = dir.path().join("missing.toml");
    // (flags, environment, what the message must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--config", unknown_key.to_str().unwrap()],
            vec![],
            "lisen",
        ),
        (
            vec!["--config", broken.to_str().unwrap()],
            vec![],
            "broken.toml",
        ),
        (
            vec!["--config", missing.to_str().unwrap()],
            vec![],
            "missing.toml",
        ),
        (
            vec![],
            vec![("FLOWHUB_CONFIG", missing.to_str().unwrap())],
            "missing.toml",
        ),
        (
            vec![],
            vec![("FLOWHUB_MAX_DEPTH", "deep")],
            "FLOWHUB_MAX_DEPTH",
        ),
        (
            vec![],
            vec![("FLOWHUB_MAX_CALLS_IN_FLIGHT", "0")],
            "max_calls_in_flight",
        ),
        (vec![], vec![("FLOWHUB_LOG_FORMAT", "yaml")], "log_format"),
        (vec![], vec![("FLOWHUB_LOG", "flowhub=loud")], "FLOWHUB_LOG"),
        (vec![], vec![("FLOWHUB_LISTEN", "nowhere")], "nowhere"),
        (
            vec!["--listen", "127.0.0.1:99999"],
            vec![],
            "127.0.0.1:99999",
        ),
        (vec!["--log-format", "xml"], vec![], "log_format"),
    ];
    for (args, env, mention) in cases {
        let (status, stderr) = refused(&args, &env).await;
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(mention),
            "{args:?} {env:?}: the message names {mention:?}: {stderr}"
        );
        assert!(stderr.lines().count() <= 10, "a short message: {stderr}");
    }
}

/// Sends a CREATE of about 300 bytes and returns the error code (or "" on success).
async fn create_300_bytes(url: &str) -> String {
    let mut c = WsClient::connect(url).await;
    // Not `call`: a message over the limit is not decoded, so its reply has no requestid.
    c.send(
        &json!({"endpoint": "a/b", "method": "CREATE", "data": {"s": "x".repeat(250)}}),
        Enc::Json,
    )
    .await;
    let r = c.recv().await.expect("a reply");
    r["errorcode"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn configuration_layers_apply_in_order_file_environment_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.2:0\"\nmax_frame_bytes = 200\nshutdown_grace_ms = 5000\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let ip = |hub: &HubProcess| hub.addr.ip().to_string();

    // The file over the defaults (FLOWHUB_LISTEN is removed: the environment is a layer).
    let mut hub = HubProcess::start(&["--config", config], &[("FLOWHUB_LISTEN", "")]);
    assert_eq!(ip(&hub), "127.0.0.2", "{}", hub.log());
    assert_eq!(create_300_bytes(&hub.url()).await, "TOO_LARGE");
    hub.signal("TERM");
    assert_eq!(hub.exit().await.code(), Some(0));

    // The file named by FLOWHUB_CONFIG instead of --config.
    let mut hub = HubProcess::start(&[], &[("FLOWHUB_CONFIG", config), ("FLOWHUB_LISTEN", "")]);
    assert_eq!(ip(&hub), "127.0.0.2", "{}", hub.log());
    hub.signal("TERM");
    assert_eq!(hub.exit().await.code(), Some(0));

    // The environment over the file; what it does not set stays as the file says.
    let mut hub = HubProcess::start(&["--config", config], &[("FLOWHUB_LISTEN", "127.0.0.3:0")]);
    assert_eq!(ip(&hub), "127.0.0.3", "{}", hub.log());
    assert_eq!(create_300_bytes(&hub.url()).await, "TOO_LARGE");
    hub.signal("TERM");
    assert_eq!(hub.exit().await.code(), Some(0));

    // Flags over the environment.
    let mut hub = HubProcess::start(
        &["--config", config, "--listen", "127.0.0.4:0"],
        &[
            ("FLOWHUB_LISTEN", "127.0.0.3:0"),
            ("FLOWHUB_MAX_FRAME_BYTES", "100000"),
        ],
    );
    assert_eq!(ip(&hub), "127.0.0.4", "{}", hub.log());
    assert_eq!(create_300_bytes(&hub.url()).await, "");
    hub.signal("TERM");
    assert_eq!(hub.exit().await.code(), Some(0));
}

#[tokio::test]
async fn an_address_in_use_is_a_failure_to_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = refused(&["--listen", &addr], &[]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[tokio::test]
async fn every_error_reply_has_its_errorid_in_a_log_line() {
    let hub = HubProcess::start(&[], &[]);
    // One error over HTTP, two over the WebSocket (a call error and an undecodable frame).
    let http = common::http(
        hub.addr,
        "GET",
        "/api/inventory/inventory/device/nope",
        &[],
        b"",
    )
    .await;
    assert_eq!(http.status, 404);
    let mut ids = vec![http.json()["errorid"].as_str().unwrap().to_string()];
    let mut ws = WsClient::connect(&hub.url()).await;
    let r = ws
        .call(json!({"endpoint": "inventory/device", "method": "FETCH"}))
        .await;
    ids.push(r["errorid"].as_str().unwrap().to_string());
    ws.send_raw(Message::text("{not json")).await;
    let r = ws.recv().await.unwrap();
    ids.push(r["errorid"].as_str().unwrap().to_string());
    let deadline = Instant::now() + WAIT;
    loop {
        let log = hub.stderr.lock().unwrap().clone();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let logged = |id: &str| {
            lines.iter().any(|l| {
                l["fields"]["errorid"] == json!(id) && l["fields"]["errorcode"].is_string()
            })
        };
        if ids.iter().all(|id| logged(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "errorids {ids:?} not all in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
