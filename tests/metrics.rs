//! The operational endpoints over real sockets: `GET /metrics` after real traffic (WebSocket
//! and HTTP calls, a provider answering, rejecting and timing out, a subscriber receiving
//! events), parsed as the Prometheus text format; `GET /health` and `GET /ready`, including
//! a hub whose log refuses writes.
//!
//! The metrics recorder is one per process, shared by every hub a test binary starts, so the
//! tests here run one at a time ([`serial`]) and compare a scrape taken before the traffic
//! with one taken after it. Gauges that the hub computes when scraped (subscriptions, queued
//! bytes, objects) are exact for the scraped hub.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Config, HttpReply, TestHub, WsClient};
use flowhub::log::{Log, LogRecord};
use flowhub::store::{Store, StoreConfig};
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::{json, Value};

/// One test at a time: they share the process's recorder.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A scrape of `/metrics`, parsed.
struct Metrics(Scrape);

impl Metrics {
    async fn of(addr: std::net::SocketAddr) -> Metrics {
        let reply = common::http(addr, "GET", "/metrics", &[], b"").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = String::from_utf8(reply.body).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Metrics(Scrape::parse(lines).unwrap())
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 when none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
                other => panic!("{name} is not a plain value: {other:?}"),
            })
            .sum()
    }

    /// Whether the scrape has a `# HELP` line for `name`.
    fn documents(&self, name: &str) -> bool {
        self.0.docs.contains_key(name)
    }
}

/// How much a series grew between two scrapes.
fn grew(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

fn calls(endpoint: &str, method: &str, outcome: &str) -> [(&'static str, String); 3] {
    [
        ("endpoint", endpoint.to_string()),
        ("method", method.to_string()),
        ("outcome", outcome.to_string()),
    ]
}

fn labels<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    l.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn get(hub: &TestHub, path: &str) -> HttpReply {
    hub.http("GET", path, &[], b"").await
}

#[tokio::test]
async fn calls_over_websocket_and_http_are_counted_by_endpoint_method_and_outcome() {
    let _serial = serial().await;
    let hub = TestHub::start().await;
    let before = Metrics::of(hub.addr).await;

    let mut ws = hub.ws().await;
    for i in 0..3 {
        let r = ws
            .call(json!({"method": "CREATE", "endpoint": "metrics/item", "data": {"n": i}}))
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    let missing = ws
        .call(json!({"method": "OPEN", "endpoint": "metrics/item", "objectid": "nope"}))
        .await;
    assert_eq!(missing["errorcode"], "DO_NOT_EXIST", "{missing}");
    let list = get(&hub, "/api/metrics/metrics/item/").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["count"], 3);
    // A name that is no endpoint earns no label of its own.
    let unknown = get(&hub, "/api/nosuch/nosuch/thing/").await;
    assert_eq!(unknown.status, 404);
    // A frame that is no call at all is not a call.
    let bad = ws.call(json!({"method": "FLY"})).await;
    assert_eq!(bad["success"], false, "{bad}");

    let after = Metrics::of(hub.addr).await;
    let created = calls("metrics/item", "CREATE", "ok");
    assert_eq!(
        grew(&before, &after, "flowhub_calls_total", &labels(&created)),
        3.0
    );
    let listed = calls("metrics/item", "LIST", "ok");
    assert_eq!(
        grew(&before, &after, "flowhub_calls_total", &labels(&listed)),
        1.0
    );
    let missed = calls("metrics/item", "OPEN", "DO_NOT_EXIST");
    assert_eq!(
        grew(&before, &after, "flowhub_calls_total", &labels(&missed)),
        1.0
    );
    let other = [("endpoint", "other"), ("outcome", "DO_NOT_EXIST")];
    assert_eq!(grew(&before, &after, "flowhub_calls_total", &other), 1.0);
    assert_eq!(
        after.get("flowhub_calls_total", &[("endpoint", "nosuch/thing")]),
        0.0
    );
    // Every call is timed: the histogram's count follows the calls.
    let timed = [("endpoint", "metrics/item"), ("method", "CREATE")];
    assert_eq!(
        grew(
            &before,
            &after,
            "flowhub_call_duration_seconds_count",
            &timed
        ),
        3.0
    );
    let timed_bucket = after
        .0
        .samples
        .iter()
        .find(|s| {
            s.metric == "flowhub_call_duration_seconds"
                && s.labels.get("endpoint") == Some("metrics/item")
                && s.labels.get("method") == Some("CREATE")
        })
        .expect("the call duration is a histogram");
    assert!(matches!(&timed_bucket.value, Sample::Histogram(b) if !b.is_empty()));

    // Three creates, each acknowledged before the next: three records, each fsynced.
    assert_eq!(grew(&before, &after, "flowhub_log_records_total", &[]), 3.0);
    let appends = grew(&before, &after, "flowhub_log_appends_total", &[]);
    assert!((1.0..=3.0).contains(&appends), "{appends} appends");
    assert_eq!(
        grew(
            &before,
            &after,
            "flowhub_log_fsync_duration_seconds_count",
            &[]
        ),
        appends
    );
    assert_eq!(after.get("flowhub_store_objects", &[]), 3.0);
    // The WebSocket, three HTTP requests (the LIST, the unknown path, this scrape).
    assert_eq!(
        grew(&before, &after, "flowhub_connections_accepted_total", &[]),
        4.0
    );
    assert!(after.get("flowhub_connections_open", &[("kind", "caller")]) >= 2.0);
    for name in [
        "flowhub_calls_total",
        "flowhub_call_duration_seconds",
        "flowhub_connections_open",
        "flowhub_log_records_total",
    ] {
        assert!(after.documents(name), "{name} has no # HELP line");
    }
    drop(ws);
    hub.stop().await;
}

/// A provider connection: provides, then answers the invokes the test tells it to.
async fn provider(hub: &TestHub, endpoint: &str) -> WsClient {
    let mut p = hub.ws().await;
    let r = p
        .call(json!({"type": "provide", "endpoint": endpoint, "methods": ["RUN"]}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    p
}

async fn next_invoke(p: &mut WsClient) -> Value {
    loop {
        let f = p.recv().await.expect("the provider's socket is open");
        if f["type"] == "invoke" {
            return f;
        }
    }
}

#[tokio::test]
async fn routed_calls_rejects_and_timeouts_are_counted() {
    let _serial = serial().await;
    let hub = TestHub::start().await;
    let before = Metrics::of(hub.addr).await;
    let endpoint = "metrics/remote";
    let mut p = provider(&hub, endpoint).await;
    let mut c = hub.ws().await;
    let run = move |timeout: Option<u64>| {
        let mut f = json!({"method": "RUN", "endpoint": endpoint, "objectid": "x", "data": {}});
        if let Some(ms) = timeout {
            f["timeout"] = json!(ms);
        }
        f
    };

    // Answered.
    let call = tokio::spawn(async move {
        let r = c.call(run(None)).await;
        (c, r)
    });
    let inv = next_invoke(&mut p).await;
    p.send(
        &json!({"type": "result", "callid": inv["callid"], "success": true, "data": "done"}),
        common::Enc::Json,
    )
    .await;
    let (mut c, r) = call.await.unwrap();
    assert_eq!(r["data"], "done", "{r}");

    // Rejected by the only provider: nobody else to try.
    let call = tokio::spawn(async move {
        let r = c.call(run(None)).await;
        (c, r)
    });
    let inv = next_invoke(&mut p).await;
    p.send(
        &json!({"type": "reject", "callid": inv["callid"], "reason": "busy"}),
        common::Enc::Json,
    )
    .await;
    let (mut c, rejected) = call.await.unwrap();
    assert_eq!(rejected["success"], false, "{rejected}");
    let rejected_code = rejected["errorcode"].as_str().unwrap().to_string();

    // Not answered within the caller's deadline.
    let call = tokio::spawn(async move {
        let r = c.call(run(Some(100))).await;
        (c, r)
    });
    let _ignored = next_invoke(&mut p).await;
    let (c, late) = call.await.unwrap();
    assert_eq!(late["errorcode"], "PROVIDER_TIMEOUT", "{late}");

    let after = Metrics::of(hub.addr).await;
    assert_eq!(
        grew(&before, &after, "flowhub_routed_calls_total", &[]),
        3.0
    );
    assert_eq!(
        grew(&before, &after, "flowhub_provider_rejects_total", &[]),
        1.0
    );
    assert_eq!(
        grew(&before, &after, "flowhub_provider_timeouts_total", &[]),
        1.0
    );
    let ok = calls(endpoint, "RUN", "ok");
    assert_eq!(
        grew(&before, &after, "flowhub_calls_total", &labels(&ok)),
        1.0
    );
    let timeout = calls(endpoint, "RUN", "PROVIDER_TIMEOUT");
    assert_eq!(
        grew(&before, &after, "flowhub_calls_total", &labels(&timeout)),
        1.0
    );
    let rejected = calls(endpoint, "RUN", &rejected_code);
    assert_eq!(
        grew(&before, &after, "flowhub_calls_total", &labels(&rejected)),
        1.0
    );
    // The provider is counted as one; the caller's socket as a caller.
    assert_eq!(
        grew(
            &before,
            &after,
            "flowhub_connections_open",
            &[("kind", "provider")]
        ),
        1.0
    );
    drop((p, c));
    hub.stop().await;
}

#[tokio::test]
async fn subscriptions_and_the_events_they_receive_are_counted() {
    let _serial = serial().await;
    let hub = TestHub::start().await;
    let before = Metrics::of(hub.addr).await;
    let mut sub = hub.ws().await;
    let r = sub
        .call(json!({"type": "subscribe", "subscription": "feed", "endpoint": "metrics/feed"}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let mut w = hub.ws().await;
    for i in 0..5 {
        let r = w
            .call(json!({"method": "CREATE", "endpoint": "metrics/feed", "data": {"n": i}}))
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    for _ in 0..5 {
        let ev = sub.recv().await.expect("an event");
        assert_eq!(ev["type"], "event", "{ev}");
    }

    let after = Metrics::of(hub.addr).await;
    assert_eq!(
        grew(&before, &after, "flowhub_events_delivered_total", &[]),
        5.0
    );
    assert_eq!(after.get("flowhub_subscriptions_open", &[]), 1.0);
    // Every event was taken off the queue before it reached the subscriber.
    assert_eq!(after.get("flowhub_outbound_queue_bytes", &[]), 0.0);
    assert_eq!(
        grew(
            &before,
            &after,
            "flowhub_connections_open",
            &[("kind", "subscriber")]
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "flowhub_slow_consumer_disconnects_total",
            &[]
        ),
        0.0
    );
    drop((sub, w));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_off_for_falling_behind_is_counted() {
    let _serial = serial().await;
    let hub = TestHub::start_with(Config {
        max_outbound_bytes: 256 * 1024,
        resume_window_bytes: 1 << 20,
        durability: "memory".into(),
        ..Config::default()
    })
    .await;
    let before = Metrics::of(hub.addr).await;
    let ep = "metrics/flood";
    let mut w = hub.ws().await;
    let r = w
        .call(json!({"method": "CREATE", "endpoint": ep, "data": {"id": "a"}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    // A subscriber that never reads: its events pile up until the hub closes it with 3008.
    let mut stuck = hub.ws().await;
    let r = stuck
        .call(json!({"type": "subscribe", "endpoint": ep}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    // 64 KiB objects: far more than the bound and the socket buffers together.
    let pad = "x".repeat(64 * 1024);
    for i in 0..200 {
        let r = w
            .call(json!({"method": "UPDATE", "endpoint": ep, "objectid": "a", "data": {"i": i, "pad": pad}}))
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    // The hub closed the stuck socket: reading reaches its end.
    while stuck.recv().await.is_some() {}
    let after = Metrics::of(hub.addr).await;
    assert_eq!(
        grew(
            &before,
            &after,
            "flowhub_slow_consumer_disconnects_total",
            &[]
        ),
        1.0
    );
    drop(w);
    hub.stop().await;
}

#[tokio::test]
async fn health_and_ready_answer_without_credentials() {
    let _serial = serial().await;
    // Authentication on: the operational endpoints still answer.
    let hub = TestHub::start_secure(Config::default()).await;
    let health = get(&hub, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let ready = get(&hub, "/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json(), json!({"status": "ready"}));
    let metrics = get(&hub, "/metrics").await;
    assert_eq!(metrics.status, 200);
    // The API itself still wants credentials.
    let api = get(&hub, "/api/hub/hub/endpoint/").await;
    assert_eq!(api.status, 401);
    // Only reads.
    let post = hub.http("POST", "/ready", &[], b"{}").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // An API path named like them is still an API path.
    let api = get(&hub, "/api/metrics/metrics/").await;
    assert_eq!(api.status, 401);
    hub.stop().await;
}

/// A log that refuses every append while `failing` is set, like a full disk.
struct FailingLog {
    failing: Arc<AtomicBool>,
}

impl Log for FailingLog {
    fn append(&mut self, _batch: &[LogRecord]) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        Ok(())
    }
    fn keeps_records(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn ready_says_unavailable_while_the_log_refuses_writes() {
    let _serial = serial().await;
    let failing = Arc::new(AtomicBool::new(false));
    let log = FailingLog {
        failing: failing.clone(),
    };
    let store = Store::new(StoreConfig::default(), Box::new(log), 0);
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    config.auth.mode = "none".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(flowhub::server::serve(
        listener,
        flowhub::server::Opened::from_store(store),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let create = || async {
        common::http(
            addr,
            "POST",
            "/api/disk/disk/item/",
            &[("Content-Type", "application/json")],
            br#"{"a": 1}"#,
        )
        .await
    };
    assert_eq!(create().await.status, 200);
    let ready = common::http(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 200, "{:?}", ready.json());
    let before = Metrics::of(addr).await;

    failing.store(true, Ordering::SeqCst);
    let refused = create().await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["errorcode"], "UNAVAILABLE");
    let ready = common::http(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 503);
    let body = ready.json();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("no space left on device"),
        "{body}"
    );
    // Alive all the same.
    assert_eq!(
        common::http(addr, "GET", "/health", &[], b"").await.status,
        200
    );
    let during = Metrics::of(addr).await;
    assert_eq!(
        grew(&before, &during, "flowhub_log_append_failures_total", &[]),
        1.0
    );
    let unavailable = calls("disk/item", "CREATE", "UNAVAILABLE");
    assert_eq!(
        grew(
            &before,
            &during,
            "flowhub_calls_total",
            &labels(&unavailable)
        ),
        1.0
    );

    // The disk works again: the next write succeeds and the hub is ready again.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(create().await.status, 200);
    let ready = common::http(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json(), json!({"status": "ready"}));

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("the hub stops")
        .unwrap();
}

#[tokio::test]
async fn while_the_log_is_read_back_health_is_ok_and_ready_is_not() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let responder = flowhub::transport::recovering::start(listener, None, Duration::from_secs(10));
    let health = common::http(addr, "GET", "/health", &[], b"").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let ready = common::http(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "recovering");
    let call = common::http(addr, "GET", "/api/a/a/b/", &[], b"").await;
    assert_eq!(call.status, 503);
    assert_eq!(call.json()["errorcode"], "UNAVAILABLE");
    assert_eq!(call.header("retry-after"), Some("1"));
    // The listener is handed on, still bound to the same port.
    let listener = responder.finish().await;
    assert_eq!(listener.local_addr().unwrap(), addr);
}
