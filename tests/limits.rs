//! Limits as a client meets them (`protocol/SPEC.md` section 9): for each, a breach gets its
//! documented answer (an error reply, an HTTP status or a close code), is counted in
//! `flowhub_limit_breaches_total`, and the hub goes on serving everybody else.
//!
//! Clients from other addresses connect from other loopback addresses (127.0.0.2, …), which
//! Linux routes like 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Config, Enc, TestHub, WsClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// Only there so that a broken hub fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

/// A recorder for the `metrics` facade that keeps `flowhub_limit_breaches_total` per
/// `limit`, installed once for the whole test binary (tests run in parallel, so a test
/// checks that its breach made the count grow, never the count itself).
mod breaches {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    type Counts = Mutex<HashMap<String, Arc<AtomicU64>>>;

    fn counts() -> &'static Counts {
        static COUNTS: OnceLock<Counts> = OnceLock::new();
        COUNTS.get_or_init(Counts::default)
    }

    struct Breaches;

    impl Recorder for Breaches {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            if key.name() != flowhub::limits::BREACHES {
                return Counter::noop();
            }
            let limit = key
                .labels()
                .find(|l| l.key() == "limit")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let c = counts().lock().unwrap().entry(limit).or_default().clone();
            Counter::from_arc(c)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Installs the recorder (once); false if another one was installed first.
    pub fn install() -> bool {
        static INSTALLED: OnceLock<bool> = OnceLock::new();
        *INSTALLED.get_or_init(|| metrics::set_global_recorder(Breaches).is_ok())
    }

    /// Breaches of `limit` counted so far.
    pub fn count(limit: &str) -> u64 {
        counts()
            .lock()
            .unwrap()
            .get(limit)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Checks that breaches of `limit` were counted since `before` (when the recorder is ours).
    pub fn assert_counted(limit: &str, before: u64) {
        if install() {
            assert!(
                count(limit) > before,
                "a breach of {limit} was not counted in flowhub_limit_breaches_total"
            );
        }
    }
}

/// A hub in open mode with `config`, and the breach counter installed.
async fn hub_with(config: Config) -> TestHub {
    breaches::install();
    TestHub::start_with(config).await
}

/// A TCP connection to the hub from the loopback address `from` (127.0.0.x).
async fn tcp_from(hub: &TestHub, from: [u8; 4]) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    sock.connect(hub.addr).await.unwrap()
}

/// A WebSocket to the hub from the loopback address `from`.
async fn ws_from(hub: &TestHub, from: [u8; 4]) -> WsClient {
    let tcp = tcp_from(hub, from).await;
    let (ws, _) = tokio_tungstenite::client_async(hub.ws_url(), MaybeTlsStream::Plain(tcp))
        .await
        .expect("WebSocket connect");
    WsClient::from_stream(ws)
}

/// One HTTP/1.1 request from the loopback address `from`: the status, the head, the body.
async fn http_from(hub: &TestHub, from: [u8; 4], req: &str) -> (u16, String, Value) {
    let mut s = tcp_from(hub, from).await;
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("an HTTP reply within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete HTTP head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_string(), body)
}

/// The close code and reason the hub sends next (skipping data frames and pings); 0 when the
/// socket ends without a close frame.
async fn close_code(c: &mut WsClient) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a close within 30 s");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            Some(Ok(_)) => continue,
        }
    }
}

/// A CREATE that must succeed: the hub still serves this client.
async fn served(c: &mut WsClient) {
    let r = c
        .call(json!({"endpoint": "limits/check", "method": "CREATE", "data": {"ok": true}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
}

fn list_request() -> String {
    "GET /api/limits/limits/check/ HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n".into()
}

#[tokio::test]
async fn connections_per_address_are_refused_with_429_or_close_1013_and_others_get_in() {
    let hub = hub_with(Config {
        max_connections_per_address: 2,
        ..Config::default()
    })
    .await;
    let local = [127, 0, 0, 1];
    let mut a = ws_from(&hub, local).await;
    let mut b = ws_from(&hub, local).await;
    served(&mut a).await;
    served(&mut b).await;

    // A third WebSocket from the same address: upgraded, then closed with 1013 and a reason
    // a browser page can read.
    let before = breaches::count("max_connections_per_address");
    let mut third = ws_from(&hub, local).await;
    let (code, reason) = close_code(&mut third).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("max_connections_per_address"), "{reason}");
    breaches::assert_counted("max_connections_per_address", before);

    // An HTTP request from that address: 429 with the envelope and Retry-After.
    let (status, head, body) = http_from(&hub, local, &list_request()).await;
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["errorcode"], "RATE_LIMITED", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_connections_per_address"),
        "{body}"
    );
    // The operational endpoint still answers it (a load balancer's health check).
    let health = "GET /health HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n";
    let (status, _, body) = http_from(&hub, local, health).await;
    assert_eq!(status, 200, "{body}");

    // Silent connections over the limit are let go too.
    for _ in 0..5 {
        drop(tcp_from(&hub, local).await);
    }

    // Other addresses are served, over WebSocket and HTTP; the two sockets in place too.
    let mut other = ws_from(&hub, [127, 0, 0, 2]).await;
    served(&mut other).await;
    let (status, _, body) = http_from(&hub, [127, 0, 0, 3], &list_request()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    served(&mut a).await;
    served(&mut b).await;

    // Once one closes, the address gets a place again.
    a.ws.close(None).await.unwrap();
    let _ = close_code(&mut a).await;
    let again = tokio::time::timeout(WAIT, async {
        loop {
            // Until the hub has seen the close, a new socket is still refused (closed).
            let mut c = ws_from(&hub, local).await;
            let list = json!({"requestid": 1, "endpoint": "limits/check", "method": "LIST"});
            let _ = c.ws.send(Message::text(list.to_string())).await;
            if c.recv().await.is_some_and(|r| r["success"] == true) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "the address never got its place back");
    hub.stop().await;
}

#[tokio::test]
async fn http_requests_per_address_over_the_rate_get_429_with_retry_after() {
    let hub = hub_with(Config {
        http_requests_per_s_per_address: 2,
        ..Config::default()
    })
    .await;
    let local = [127, 0, 0, 1];
    // WebSocket calls do not count.
    let mut ws = ws_from(&hub, local).await;
    served(&mut ws).await;
    let before = breaches::count("http_requests_per_s_per_address");
    // Two a second, two at once: requests in a row soon pass the rate.
    let mut refused = None;
    for _ in 0..50 {
        let (status, head, body) = http_from(&hub, local, &list_request()).await;
        if status == 429 {
            refused = Some((head, body));
            break;
        }
        assert_eq!(status, 200, "{head}");
    }
    let (head, body) = refused.expect("50 requests in a row stay under 2 a second");
    assert_eq!(body["errorcode"], "RATE_LIMITED", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("http_requests_per_s_per_address"),
        "{body}"
    );
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    breaches::assert_counted("http_requests_per_s_per_address", before);

    // Other addresses are served, and so are the address's WebSocket calls.
    let (status, _, body) = http_from(&hub, [127, 0, 0, 2], &list_request()).await;
    assert_eq!(status, 200, "{body}");
    served(&mut ws).await;
    // After the wait, the address is served again.
    let again = tokio::time::timeout(WAIT, async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if http_from(&hub, local, &list_request()).await.0 == 200 {
                return;
            }
        }
    })
    .await;
    assert!(again.is_ok(), "the address was never served again");
    hub.stop().await;
}

/// The WebSocket handshake of a raw client; returns the socket after the 101.
async fn raw_upgrade(hub: &TestHub) -> TcpStream {
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// The frames a server sent (unmasked): opcode and payload each.
fn parse_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while b.len() >= 2 {
        let opcode = b[0] & 0x0f;
        let (len, at) = match b[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => (
                usize::try_from(u64::from_be_bytes(b[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            n => (usize::from(n), 2),
        };
        if b.len() < at + len {
            break;
        }
        frames.push((opcode, b[at..at + len].to_vec()));
        b = &b[at + len..];
    }
    frames
}

#[tokio::test]
async fn a_socket_that_never_answers_pings_is_closed_and_one_that_does_stays() {
    let hub = hub_with(Config {
        ping_interval_ms: 100,
        idle_timeout_ms: 600,
        ..Config::default()
    })
    .await;
    let before = breaches::count("idle_timeout_ms");

    // A raw client that completes the handshake, then only listens: it never answers a ping.
    let mut silent = raw_upgrade(&hub).await;
    // A well-behaved client that sends nothing either, but reads all along, so tungstenite
    // answers the pings; it stays quiet for several idle timeouts.
    let mut alive = hub.ws().await;
    let listening = tokio::spawn(async move {
        let mut pings = 0;
        let quiet = tokio::time::Instant::now() + Duration::from_millis(3000);
        while let Ok(m) = tokio::time::timeout_at(quiet, alive.ws.next()).await {
            match m {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("the hub closed a client that answers pings: {other:?}"),
            }
        }
        (alive, pings)
    });

    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut raw))
        .await
        .expect("the silent socket is closed")
        .unwrap();
    let frames = parse_frames(&raw);
    assert!(
        frames.iter().any(|(op, _)| *op == 0x9),
        "the hub pings a quiet socket before closing it: {frames:?}"
    );
    let (op, payload) = frames.last().expect("a close frame");
    assert_eq!(*op, 0x8, "the last frame is a close: {frames:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4002);
    let reason = String::from_utf8_lossy(&payload[2..]);
    assert!(reason.contains("idle"), "{reason}");
    breaches::assert_counted("idle_timeout_ms", before);

    // The client that answers pings is still open, and was pinged.
    let (mut alive, pings) = listening.await.unwrap();
    assert!(pings > 0, "a quiet socket gets pings");
    served(&mut alive).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_busy_socket_is_not_closed_for_idleness() {
    let hub = hub_with(Config {
        ping_interval_ms: 100,
        idle_timeout_ms: 300,
        ..Config::default()
    })
    .await;
    // Calls keep coming (and replies are read) for several idle timeouts.
    let mut c = hub.ws().await;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        served(&mut c).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served(&mut c).await;
    hub.stop().await;
}

/// A self-signed certificate for `localhost` in `dir`: the config's `tls_cert`, `tls_key`
/// set, and a connector that trusts it.
fn tls_setup(dir: &std::path::Path, config: &mut Config) -> tokio_rustls::TlsConnector {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key_pair.serialize_pem()).unwrap();
    config.tls_cert = Some(cert_file);
    config.tls_key = Some(key_file);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(client))
}

#[tokio::test]
async fn handshakes_that_never_complete_are_dropped_plain_and_tls() {
    // Plain: a connection that sends nothing, and one that stops halfway through its head.
    let hub = hub_with(Config {
        handshake_timeout_ms: 200,
        ..Config::default()
    })
    .await;
    let mut c = hub.ws().await;
    for sent in [&b""[..], b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web"] {
        let before = breaches::count("handshake_timeout_ms");
        let mut s = TcpStream::connect(hub.addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the hub drops a connection stuck in its handshake"
        );
        breaches::assert_counted("handshake_timeout_ms", before);
    }
    // An established WebSocket is not subject to it, nor is anybody else.
    tokio::time::sleep(Duration::from_millis(400)).await;
    served(&mut c).await;
    hub.stop().await;

    // TLS: a connection that never sends its ClientHello.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        handshake_timeout_ms: 200,
        ..Config::default()
    };
    let connector = tls_setup(dir.path(), &mut config);
    let hub = hub_with(config).await;
    let before = breaches::count("handshake_timeout_ms");
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the hub drops a connection stuck in its TLS handshake"
    );
    breaches::assert_counted("handshake_timeout_ms", before);
    // A client that completes it is served over WSS.
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(hub.addr).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"requestid": 1, "endpoint": "limits/check", "method": "CREATE", "data": {}})
            .to_string(),
    ))
    .await
    .unwrap();
    let reply = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no reply over WSS: {other:?}"),
        }
    };
    assert_eq!(reply["success"], true, "{reply}");
    hub.stop().await;
}

#[tokio::test]
async fn frames_and_bodies_over_their_limits() {
    let hub = hub_with(Config {
        max_frame_bytes: 1000,
        max_body_bytes: 1000,
        ..Config::default()
    })
    .await;
    let mut other = hub.ws().await;

    // A message over max_frame_bytes: TOO_LARGE without requestid; the socket stays.
    let before = breaches::count("max_frame_bytes");
    let mut c = hub.ws().await;
    c.send(
        &json!({"requestid": 1, "endpoint": "limits/check", "method": "CREATE",
            "data": {"s": "x".repeat(2000)}}),
        Enc::Json,
    )
    .await;
    let reply = c.recv().await.expect("a reply");
    assert_eq!(reply["errorcode"], "TOO_LARGE", "{reply}");
    assert!(reply.get("requestid").is_none(), "{reply}");
    breaches::assert_counted("max_frame_bytes", before);
    served(&mut c).await;
    // Over four times that: close 1009.
    c.send_raw(Message::Binary(vec![0u8; 5000].into())).await;
    let (code, _) = close_code(&mut c).await;
    assert_eq!(code, 1009);

    // An HTTP body over max_body_bytes: 413 TOO_LARGE.
    let before = breaches::count("max_body_bytes");
    let body = json!({"s": "x".repeat(2000)}).to_string();
    let r = hub
        .http("POST", "/api/limits/limits/check/", &[], body.as_bytes())
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["errorcode"], "TOO_LARGE");
    breaches::assert_counted("max_body_bytes", before);

    served(&mut other).await;
    hub.stop().await;
}

#[tokio::test]
async fn calls_in_flight_per_socket_hold_back_only_that_socket() {
    let hub = hub_with(Config {
        max_calls_in_flight: 2,
        ..Config::default()
    })
    .await;
    let mut provider = hub.ws().await;
    let r = provider
        .call(json!({"type": "provide", "endpoint": "limits/slow"}))
        .await;
    assert_eq!(r["success"], true, "{r}");

    // Three calls at once on a socket that may have two in flight: the provider gets two.
    let before = breaches::count("max_calls_in_flight");
    let mut caller = hub.ws().await;
    for id in 1..=3 {
        caller
            .send(
                &json!({"requestid": id, "endpoint": "limits/slow", "method": "RUN",
                    "objectid": "x", "data": {"n": id}}),
                Enc::Json,
            )
            .await;
    }
    let mut invokes = Vec::new();
    for _ in 0..2 {
        let f = provider.recv().await.expect("an invoke");
        assert_eq!(f["type"], "invoke", "{f}");
        invokes.push(f);
    }
    let third = tokio::time::timeout(Duration::from_millis(300), provider.recv()).await;
    assert!(
        third.is_err(),
        "a third call was routed while two were in flight: {third:?}"
    );
    breaches::assert_counted("max_calls_in_flight", before);

    // Other sockets are served meanwhile.
    let mut other = hub.ws().await;
    served(&mut other).await;

    // Once one is answered, the third comes through; every call gets its reply.
    let answer = |f: &Value| json!({"type": "result", "callid": f["callid"], "success": true, "data": f["data"]});
    provider.send(&answer(&invokes[0]), Enc::Json).await;
    let f = provider.recv().await.expect("the third invoke");
    assert_eq!(f["type"], "invoke", "{f}");
    provider.send(&answer(&invokes[1]), Enc::Json).await;
    provider.send(&answer(&f), Enc::Json).await;
    let mut replies = Vec::new();
    for _ in 0..3 {
        let r = caller.recv().await.expect("a reply");
        assert_eq!(r["success"], true, "{r}");
        replies.push(r["requestid"].as_u64().unwrap());
    }
    replies.sort_unstable();
    assert_eq!(replies, vec![1, 2, 3]);
    hub.stop().await;
}

#[tokio::test]
async fn subscriptions_per_socket_past_the_limit_are_too_large() {
    let hub = hub_with(Config {
        max_subscriptions: 2,
        ..Config::default()
    })
    .await;
    let mut c = hub.ws().await;
    for name in ["one", "two"] {
        let r = c
            .call(json!({"type": "subscribe", "subscription": name, "endpoint": "limits/check"}))
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    let before = breaches::count("max_subscriptions");
    let r = c
        .call(json!({"type": "subscribe", "subscription": "three", "endpoint": "limits/check"}))
        .await;
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["errorcode"], "TOO_LARGE", "{r}");
    breaches::assert_counted("max_subscriptions", before);

    // The subscriptions it holds still deliver; another socket subscribes as usual.
    let mut other = hub.ws().await;
    let r = other
        .call(json!({"type": "subscribe", "endpoint": "limits/check"}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    served(&mut other).await;
    let event = loop {
        let f = c.recv().await.expect("an event");
        if f["type"] == "event" {
            break f;
        }
    };
    assert_eq!(event["kind"], "CREATE", "{event}");
    hub.stop().await;
}

#[tokio::test]
async fn a_socket_that_does_not_authenticate_in_time_is_closed_with_4001() {
    let mut config = Config {
        durability: "never".into(),
        ..Config::default()
    };
    config.auth.admin_password = Some(flowhub::auth::Secret("admin-secret-1".into()));
    config.auth.argon2_memory_kib = 1024;
    config.auth.argon2_iterations = 1;
    config.auth.auth_timeout_ms = 300;
    breaches::install();
    let hub = TestHub::start_secure(config).await;

    let before = breaches::count("auth_timeout_ms");
    let mut anonymous = hub.ws().await;
    let mut logged_in = hub.ws().await;
    let r = logged_in
        .call(json!({"type": "login", "username": "admin", "password": "admin-secret-1"}))
        .await;
    assert_eq!(r["success"], true, "{r}");

    let (code, reason) = close_code(&mut anonymous).await;
    assert_eq!(code, 4001, "{reason}");
    breaches::assert_counted("auth_timeout_ms", before);
    // The socket that logged in stays past the grace period.
    tokio::time::sleep(Duration::from_millis(400)).await;
    served(&mut logged_in).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_list_page_over_max_list_items_is_too_large_and_a_smaller_page_is_served() {
    let hub = hub_with(Config {
        max_list_items: 2,
        ..Config::default()
    })
    .await;
    let mut c = hub.ws().await;
    for _ in 0..3 {
        served(&mut c).await;
    }
    let before = breaches::count("max_list_items");
    let r = c
        .call(json!({"endpoint": "limits/check", "method": "LIST"}))
        .await;
    assert_eq!(r["errorcode"], "TOO_LARGE", "{r}");
    breaches::assert_counted("max_list_items", before);
    let r = c
        .call(json!({"endpoint": "limits/check", "method": "LIST",
            "parameters": {"pagination": {"size": 2}}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["count"], 3, "{r}");
    hub.stop().await;
}
