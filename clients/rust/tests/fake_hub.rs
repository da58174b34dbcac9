//! The client against a scripted fake hub (tokio-tungstenite on port 0): the test plays the
//! hub frame by frame, so it can answer out of order, drop the socket mid-call, send garbage,
//! stay silent, and check every frame the client sends.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_client::{
    Answer, Backoff, Call, ChangeKind, Client, ClientConfig, ConnectionState, Encoding, Error,
    Invocation, Method, Provide, Publish, Subscribe, Subscription, SubscriptionItem,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);

struct FakeHub {
    listener: TcpListener,
}

impl FakeHub {
    async fn start() -> FakeHub {
        FakeHub {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().unwrap())
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(&self.url()).with_backoff(fast_backoff())
    }

    async fn accept(&self) -> Conn {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the client connects")
            .unwrap();
        Conn {
            ws: tokio_tungstenite::accept_async(tcp).await.unwrap(),
        }
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        factor: 2.0,
    }
}

struct Conn {
    ws: WebSocketStream<TcpStream>,
}

impl Conn {
    /// The next data frame, decoded, and whether it was binary.
    async fn recv_enc(&mut self) -> (Value, bool) {
        self.recv_within(WAIT)
            .await
            .expect("a frame from the client")
    }

    async fn recv(&mut self) -> Value {
        self.recv_enc().await.0
    }

    /// The next data frame within `d`; `None` if none came (or the client closed).
    async fn recv_within(&mut self, d: Duration) -> Option<(Value, bool)> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match m.ok()? {
                Message::Text(t) => {
                    return Some((serde_json::from_str(t.as_str()).unwrap(), false))
                }
                Message::Binary(b) => return Some((rmp_serde::from_slice(&b).unwrap(), true)),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Answers `frame` with success and `data`.
    async fn ok(&mut self, frame: &Value, data: Value) {
        self.send(
            json!({"type": "reply", "requestid": frame["requestid"], "status": 0,
                         "success": true, "data": data, "dataType": "JSON"}),
        )
        .await;
    }

    /// Expects a provide frame and accepts it.
    async fn accept_provide(&mut self, endpoint: &str) -> Value {
        let f = self.recv().await;
        assert_eq!(f["type"], "provide", "{f}");
        assert_eq!(f["endpoint"], endpoint, "{f}");
        self.ok(&f, json!({"endpoint": endpoint, "providers": 1}))
            .await;
        f
    }
}

fn invoke(callid: u64, method: &str, objectid: Option<&str>, data: Value) -> Value {
    let mut f = json!({"type": "invoke", "callid": callid, "method": method,
                       "endpoint": "inventory/device", "application": "inventory",
                       "namespace": "", "caller": {"user": null, "roles": [], "connection": 4},
                       "timeout": 5000});
    if let Some(id) = objectid {
        f["objectid"] = json!(id);
    }
    if !data.is_null() {
        f["data"] = data;
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_are_matched_to_replies_sent_in_reverse_order() {
    let hub = FakeHub::start().await;
    let (client, mut conn) =
        tokio::join!(Client::connect(hub.config().with_token("tk")), hub.accept());
    let client = client.unwrap();
    assert_eq!(client.state(), ConnectionState::Connected { epoch: 1 });

    let calls: Vec<_> = (0..64)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.call(Call::open("address/address", format!("a{i}")).namespace("t1"))
                    .await
            })
        })
        .collect();
    let mut frames = Vec::new();
    for _ in 0..64 {
        frames.push(conn.recv().await);
    }
    for f in &frames {
        assert_eq!(f["type"], "call");
        assert_eq!(f["method"], "OPEN");
        assert_eq!(f["endpoint"], "address/address");
        assert_eq!(f["namespace"], "t1");
        assert_eq!(f["token"], "tk", "the token is in every call frame");
        assert!(f["requestid"].is_u64());
    }
    let mut ids: Vec<_> = frames
        .iter()
        .map(|f| f["requestid"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 64, "requestids are unique");
    for f in frames.iter().rev() {
        conn.ok(f, json!({"id": f["objectid"]})).await;
    }
    for (i, c) in calls.into_iter().enumerate() {
        let reply = c.await.unwrap().unwrap();
        assert_eq!(
            reply.data["id"],
            format!("a{i}"),
            "each call gets its own reply"
        );
    }
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_envelopes_carry_code_message_and_errorid_and_count_comes_through() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let client = client.unwrap();
    let c = client.clone();
    let open = tokio::spawn(async move { c.call(Call::open("a/b", "x")).await });
    let f = conn.recv().await;
    assert!(
        f.get("token").is_none(),
        "no token without credentials: {f}"
    );
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": false,
                     "message": "Object does not exist", "errorcode": "DO_NOT_EXIST",
                     "dataType": "JSON", "errorid": "7981f103-142e-41bf-ae39-ff1341de35f6"}),
    )
    .await;
    let err = open.await.unwrap().unwrap_err();
    assert_eq!(err.errorcode(), Some("DO_NOT_EXIST"));
    let hub_err = err.hub().unwrap();
    assert_eq!(hub_err.message, "Object does not exist");
    assert_eq!(
        hub_err.errorid.as_deref(),
        Some("7981f103-142e-41bf-ae39-ff1341de35f6")
    );

    let c = client.clone();
    let list = tokio::spawn(async move {
        c.call(Call::list("a/b").parameters(json!({"pagination.size": 1})))
            .await
    });
    let f = conn.recv().await;
    assert_eq!(f["parameters"], json!({"pagination.size": 1}));
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "data": [{"id": "a"}], "count": 40, "dataType": "JSON"}),
    )
    .await;
    let r = list.await.unwrap().unwrap();
    assert_eq!(r.count, Some(40));
    assert_eq!(r.data, json!([{"id": "a"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_creates_a_token_and_every_frame_carries_it() {
    let hub = FakeHub::start().await;
    let config = hub.config().with_password("admin", "s3cret");
    let login = async {
        let mut conn = hub.accept().await;
        let f = conn.recv().await;
        assert_eq!(f["type"], "call");
        assert_eq!(f["endpoint"], "auth/token");
        assert_eq!(f["method"], "CREATE");
        assert_eq!(
            f["data"],
            json!({"username": "admin", "password": "s3cret"})
        );
        conn.ok(
            &f,
            json!({"token": "tok-1", "expires": "2026-12-01T00:00:00Z"}),
        )
        .await;
        conn
    };
    let (client, mut conn) = tokio::join!(Client::connect(config), login);
    let client = client.unwrap();
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Call::list("a/b")).await });
    let f = conn.recv().await;
    assert_eq!(f["token"], "tok-1");
    conn.ok(&f, json!([])).await;
    call.await.unwrap().unwrap();
    client.close().await;

    // Wrong password: connect fails with the hub's error.
    let config = hub.config().with_password("admin", "wrong");
    let refuse = async {
        let mut conn = hub.accept().await;
        let f = conn.recv().await;
        conn.send(
            json!({"type": "reply", "requestid": f["requestid"], "status": 0,
                         "success": false, "errorcode": "UNAUTHORIZED",
                         "message": "wrong user name or password", "dataType": "JSON",
                         "errorid": "e1"}),
        )
        .await;
        conn
    };
    let (client, _conn) = tokio::join!(Client::connect(config), refuse);
    match client {
        Err(Error::Login(e)) => assert_eq!(e.errorcode, "UNAUTHORIZED"),
        other => panic!("expected a login error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_answers_results_errors_and_rejects() {
    let hub = FakeHub::start().await;
    let (client, mut conn) =
        tokio::join!(Client::connect(hub.config().with_token("tk")), hub.accept());
    let client = client.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Invocation>::new()));
    let seen2 = seen.clone();
    let provide = client.provide(
        Provide::new("inventory/device")
            .application("inventory")
            .methods([Method::Run, Method::List, Method::Open]),
        move |inv: Invocation| {
            seen2.lock().unwrap().push(inv.clone());
            async move {
                match (inv.method, inv.objectid.as_deref()) {
                    (Method::Run, Some("dev-1")) => Answer::ok(json!({"rebooting": true})),
                    (Method::Run, _) => {
                        Answer::error("NO_SUCH_DEVICE", "no such device").with_status(404)
                    }
                    (Method::List, _) => Answer::list(vec![json!({"id": "dev-1"})], 3),
                    _ => Answer::reject("ask someone else"),
                }
            }
        },
    );
    let hub_side = async {
        let f = conn.recv().await;
        assert_eq!(
            f,
            json!({"type": "provide", "endpoint": "inventory/device", "application": "inventory",
                   "methods": ["RUN", "LIST", "OPEN"], "requestid": f["requestid"], "token": "tk"})
        );
        conn.ok(&f, json!({"endpoint": "inventory/device", "providers": 1}))
            .await;
    };
    let (provided, ()) = tokio::join!(provide, hub_side);
    assert_eq!(provided.unwrap().data["providers"], 1);
    assert!(client.is_provided("inventory/device"));
    assert_eq!(
        client.provided_endpoints(),
        vec!["inventory/device".to_string()]
    );

    conn.send(invoke(1, "RUN", Some("dev-1"), json!({"action": "reboot"})))
        .await;
    assert_eq!(
        conn.recv().await,
        json!({"type": "result", "callid": 1, "success": true, "data": {"rebooting": true}})
    );
    conn.send(invoke(2, "RUN", Some("dev-9"), json!({"action": "reboot"})))
        .await;
    assert_eq!(
        conn.recv().await,
        json!({"type": "result", "callid": 2, "success": false, "errorcode": "NO_SUCH_DEVICE",
               "message": "no such device", "status": 404})
    );
    conn.send(invoke(3, "LIST", None, Value::Null)).await;
    assert_eq!(
        conn.recv().await,
        json!({"type": "result", "callid": 3, "success": true, "data": [{"id": "dev-1"}], "count": 3})
    );
    conn.send(invoke(4, "OPEN", Some("dev-1"), Value::Null))
        .await;
    assert_eq!(
        conn.recv().await,
        json!({"type": "reject", "callid": 4, "reason": "ask someone else"})
    );
    // A method this provider did not declare, and an endpoint it does not provide: rejected
    // without reaching the handler.
    conn.send(invoke(5, "DELETE", Some("dev-1"), Value::Null))
        .await;
    let f = conn.recv().await;
    assert_eq!(f["type"], "reject");
    assert_eq!(f["callid"], 5);
    let mut other = invoke(6, "RUN", Some("x"), json!({}));
    other["endpoint"] = json!("other/thing");
    conn.send(other).await;
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["callid"].as_u64()),
        (Some("reject"), Some(6))
    );

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    let first = &seen[0];
    assert_eq!(first.callid, 1);
    assert_eq!(first.application, "inventory");
    assert_eq!(first.data, Some(json!({"action": "reboot"})));
    assert_eq!(first.caller.connection, Some(4));
    assert_eq!(first.timeout, Some(Duration::from_millis(5000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_aborts_the_handler_and_nothing_is_answered() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let client = client.unwrap();
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let started = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (s2, d2) = (started.clone(), dropped.clone());
    let provide = client.provide(Provide::new("inventory/device"), move |inv: Invocation| {
        let (started, dropped) = (s2.clone(), d2.clone());
        async move {
            if inv.objectid.as_deref() == Some("slow") {
                let _guard = SetOnDrop(dropped);
                started.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Answer::ok(json!({"id": inv.objectid}))
        }
    });
    let (p, _) = tokio::join!(provide, conn.accept_provide("inventory/device"));
    p.unwrap();

    conn.send(invoke(7, "RUN", Some("slow"), json!({}))).await;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .unwrap();
    conn.send(json!({"type": "cancel", "callid": 7, "reason": "timeout"}))
        .await;
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler's task was aborted"
    );
    // The next frame the hub sees answers a later call, not the cancelled one.
    conn.send(invoke(8, "RUN", Some("fast"), json!({}))).await;
    let f = conn.recv().await;
    assert_eq!(
        f["callid"], 8,
        "nothing was answered for the cancelled call: {f}"
    );
    // A cancel for a call that is over changes nothing.
    conn.send(json!({"type": "cancel", "callid": 8, "reason": "caller gone"}))
        .await;
    conn.send(invoke(9, "RUN", Some("fast"), json!({}))).await;
    assert_eq!(conn.recv().await["callid"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_fails_calls_in_flight_and_endpoints_are_provided_again() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let client = client.unwrap();
    let (p, _) = tokio::join!(
        client.provide(Provide::new("inventory/device"), |_inv: Invocation| async {
            Answer::ok(json!("ok"))
        }),
        conn.accept_provide("inventory/device")
    );
    p.unwrap();

    // A write in flight when the socket drops fails with Disconnected and is not resent.
    let c = client.clone();
    let write =
        tokio::spawn(async move { c.call(Call::update("a/b", "x", json!({"n": 1}))).await });
    let f = conn.recv().await;
    assert_eq!(f["method"], "UPDATE");
    drop(conn);
    let err = write.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err:?}");

    // A call made while the client is reconnecting waits and goes out on the new connection.
    let c = client.clone();
    let later = tokio::spawn(async move { c.call(Call::list("a/b")).await });

    let mut conn = hub.accept().await;
    // Before anything else, the endpoint is provided again.
    let f = conn.recv().await;
    assert_eq!(f["type"], "provide", "{f}");
    assert_eq!(f["endpoint"], "inventory/device");
    conn.ok(&f, json!({"providers": 1})).await;
    let f = conn.recv().await;
    assert_eq!(
        f["method"], "LIST",
        "the queued call, and not the lost UPDATE: {f}"
    );
    conn.ok(&f, json!([])).await;
    later.await.unwrap().unwrap();
    assert_eq!(client.state(), ConnectionState::Connected { epoch: 2 });
    for _ in 0..100 {
        if client.is_provided("inventory/device") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.is_provided("inventory/device"));
    // Invocations on the new connection reach the handler.
    conn.send(invoke(1, "RUN", Some("d"), json!({}))).await;
    assert_eq!(conn.recv().await["data"], "ok");

    // After unprovide, the next connection provides nothing.
    let (u, _) = tokio::join!(client.unprovide("inventory/device"), async {
        let f = conn.recv().await;
        assert_eq!(f["type"], "unprovide");
        conn.ok(&f, json!({"endpoint": "inventory/device", "providers": 0}))
            .await;
    });
    u.unwrap();
    assert!(client.provided_endpoints().is_empty());
    drop(conn);
    let mut conn = hub.accept().await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Call::list("a/b")).await });
    let f = conn.recv().await;
    assert_eq!(f["type"], "call", "no provide after unprovide: {f}");
    conn.ok(&f, json!([])).await;
    call.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_from_the_hub_are_skipped_without_a_panic() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let client = client.unwrap();
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Call::list("a/b")).await });
    let f = conn.recv().await;
    for garbage in [
        Message::text("{not json"),
        Message::text("[1,2,3]"),
        Message::text("\"a string\""),
        Message::text("{}"),
        Message::text(r#"{"type":"reply","requestid":999999,"success":true}"#),
        Message::text(r#"{"type":"reply","requestid":"not-ours","success":true}"#),
        Message::text(r#"{"type":"reply","success":false,"errorcode":"INVALID_REQUEST"}"#),
        Message::text(r#"{"type":"invoke"}"#),
        Message::text(r#"{"type":"invoke","callid":-1}"#),
        Message::text(r#"{"type":"cancel","callid":"x"}"#),
        Message::text(r#"{"type":"event","anything":[1]}"#),
        Message::text(r#"{"type":42}"#),
        Message::Binary(vec![0xc1, 0x00, 0xff].into()),
        Message::Binary(Vec::new().into()),
        Message::Ping(vec![1, 2, 3].into()),
    ] {
        conn.send_raw(garbage).await;
    }
    // An invoke with a callid but an unknown method is answered with an error, not ignored.
    conn.send(json!({"type": "invoke", "callid": 77, "method": "DANCE", "endpoint": "a/b"}))
        .await;
    let answer = conn.recv().await;
    assert_eq!(answer["callid"], 77);
    assert_eq!(answer["success"], false);
    assert_eq!(answer["errorcode"], "PROVIDER_ERROR");
    // A reply without a boolean success is a protocol error for its call, not a panic.
    conn.send(json!({"type": "reply", "requestid": f["requestid"], "success": "maybe"}))
        .await;
    let r = call.await.unwrap();
    assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    // And the connection still works.
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Call::list("a/b")).await });
    let f = conn.recv().await;
    conn.ok(&f, json!([1])).await;
    assert_eq!(call.await.unwrap().unwrap().data, json!([1]));
    assert_eq!(client.state(), ConnectionState::Connected { epoch: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_sent_and_kept() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let client = client.unwrap();
    let started = std::time::Instant::now();
    let c = client.clone();
    let call = tokio::spawn(async move {
        c.call(Call::run("a/b", "x", json!({})).timeout(Duration::from_millis(200)))
            .await
    });
    let f = conn.recv().await;
    assert_eq!(f["timeout"], 200, "the hub is told the deadline");
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1200),
        "waits for the hub's own timeout first"
    );
    // The late reply is dropped quietly.
    conn.ok(&f, json!("late")).await;

    // The client's default deadline covers a hub that is down.
    let config = ClientConfig::new("ws://127.0.0.1:9/ws")
        .with_call_timeout(Duration::from_millis(300))
        .with_backoff(fast_backoff());
    let offline = Client::start(config);
    let err = offline.call(Call::list("a/b")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    offline.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_fast_or_waits_for_the_hub() {
    // Find a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let err = Client::connect(ClientConfig::new(&url)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());

    let config = ClientConfig::new(&url)
        .with_backoff(fast_backoff())
        .with_wait_for_hub(true);
    let connecting = tokio::spawn(Client::connect(config));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !connecting.is_finished(),
        "keeps trying while nobody listens"
    );
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let hub = FakeHub { listener };
    let _conn = hub.accept().await;
    let client = tokio::time::timeout(WAIT, connecting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(client.state(), ConnectionState::Connected { epoch: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_hub_is_replaced_by_a_new_connection() {
    let hub = FakeHub::start().await;
    let mut config = hub.config();
    config.ping_interval = Duration::from_millis(100);
    let (client, conn) = tokio::join!(Client::connect(config), hub.accept());
    let client = client.unwrap();
    // The fake hub holds the socket but never reads it, so pings go unanswered.
    let _conn = conn;
    let _second = hub.accept().await;
    let epoch = client.wait_connected(WAIT).await.unwrap();
    for _ in 0..100 {
        if client.state() == (ConnectionState::Connected { epoch: 2 }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(epoch >= 1);
    assert_eq!(client.state(), ConnectionState::Connected { epoch: 2 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messagepack_frames_and_publish() {
    let hub = FakeHub::start().await;
    let config = hub.config().with_encoding(Encoding::MessagePack);
    let (client, mut conn) = tokio::join!(Client::connect(config), hub.accept());
    let client = client.unwrap();
    let c = client.clone();
    let publish = tokio::spawn(async move {
        c.publish(
            Publish::new(ChangeKind::Update, "inventory/device", "dev-1")
                .namespace("n1")
                .data(json!({"id": "dev-1", "status": "up"})),
        )
        .await
    });
    let (f, binary) = conn.recv_enc().await;
    assert!(binary, "MessagePack goes in binary frames");
    assert_eq!(
        f,
        json!({"type": "publish", "requestid": f["requestid"], "endpoint": "inventory/device",
               "namespace": "n1", "objectid": "dev-1", "kind": "UPDATE",
               "data": {"id": "dev-1", "status": "up"}})
    );
    // Replies may come in either encoding.
    conn.send_raw(Message::Binary(
        rmp_serde::to_vec_named(
            &json!({"type": "reply", "requestid": f["requestid"], "status": 0,
                                        "success": true, "dataType": "JSON"}),
        )
        .unwrap()
        .into(),
    ))
    .await;
    let r = publish.await.unwrap().unwrap();
    assert_eq!(r.data, Value::Null);

    // A hub without publish refuses it; the caller sees the hub's error.
    let c = client.clone();
    let publish = tokio::spawn(async move {
        c.publish(Publish::new(ChangeKind::Delete, "a/b", "x"))
            .await
    });
    let (f, _) = conn.recv_enc().await;
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": false,
                     "errorcode": "INVALID_REQUEST", "message": "unknown frame type \"publish\"",
                     "dataType": "JSON", "errorid": "x"}),
    )
    .await;
    let e = publish.await.unwrap().unwrap_err();
    assert_eq!(e.errorcode(), Some("INVALID_REQUEST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_busy_rejects_oversized_frames_and_panicking_handlers() {
    let hub = FakeHub::start().await;
    let mut config = hub.config();
    config.max_invocations = 1;
    config.max_frame_bytes = 1000;
    let (client, mut conn) = tokio::join!(Client::connect(config), hub.accept());
    let client = client.unwrap();

    let err = client
        .call(Call::create("a/b", json!({"blob": "x".repeat(2000)})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g2, c2) = (gate.clone(), calls.clone());
    let provide = client.provide(Provide::new("inventory/device"), move |inv: Invocation| {
        let (gate, calls) = (g2.clone(), c2.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            match inv.objectid.as_deref() {
                Some("panic") => panic!("handler bug"),
                Some("big") => Answer::ok(json!("y".repeat(5000))),
                _ => {
                    let _ = gate.acquire().await;
                    Answer::ok(json!("done"))
                }
            }
        }
    });
    let (p, _) = tokio::join!(provide, conn.accept_provide("inventory/device"));
    p.unwrap();

    conn.send(invoke(1, "RUN", Some("wait"), json!({}))).await;
    for _ in 0..100 {
        if calls.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    conn.send(invoke(2, "RUN", Some("wait"), json!({}))).await;
    assert_eq!(
        conn.recv().await,
        json!({"type": "reject", "callid": 2, "reason": "busy"})
    );
    gate.add_permits(1);
    assert_eq!(conn.recv().await["callid"], 1);

    conn.send(invoke(3, "RUN", Some("panic"), json!({}))).await;
    let f = conn.recv().await;
    assert_eq!(
        (f["callid"].as_u64(), f["success"].as_bool()),
        (Some(3), Some(false))
    );
    assert_eq!(f["errorcode"], "PROVIDER_ERROR");

    conn.send(invoke(4, "RUN", Some("big"), json!({}))).await;
    let f = conn.recv().await;
    assert_eq!(
        (f["callid"].as_u64(), f["success"].as_bool()),
        (Some(4), Some(false))
    );
    assert!(
        f["message"].as_str().unwrap().contains("max_frame_bytes"),
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_waiting_calls_and_dropping_the_last_handle_closes() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let client = client.unwrap();
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(Call::list("a/b")).await });
    let _ = conn.recv().await;
    client.close().await;
    assert!(matches!(call.await.unwrap(), Err(Error::Closed)));
    assert!(matches!(
        client.call(Call::list("a/b")).await,
        Err(Error::Closed)
    ));
    assert!(
        conn.recv_within(WAIT).await.is_none(),
        "the socket was closed"
    );

    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let weak = client.as_ref().unwrap().downgrade();
    assert!(weak.upgrade().is_some());
    drop(client);
    assert!(
        conn.recv_within(WAIT).await.is_none(),
        "dropping the client closes the socket"
    );
    assert!(weak.upgrade().is_none());
}

fn event(sub: &Value, kind: &str, id: &str, position: u64) -> Value {
    json!({"type": "event", "subscription": sub, "kind": kind, "endpoint": "address/address",
           "namespace": "t1", "objectid": id, "version": position, "position": position,
           "data": {"id": id, "version": position}})
}

async fn next_event(sub: &mut Subscription) -> flowhub_client::Event {
    match tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an item")
    {
        Some(SubscriptionItem::Event(ev)) => ev,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_resume_after_a_reconnect_without_doubles_and_reset_when_the_hub_cannot() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(
        Client::connect(
            hub.config()
                .with_token("tk")
                .with_encoding(Encoding::MessagePack)
        ),
        hub.accept()
    );
    let client = client.unwrap();
    let c = client.clone();
    let subscribing = tokio::spawn(async move {
        c.subscribe(
            Subscribe::endpoint("address/address")
                .namespace("t1")
                .snapshot(true),
        )
        .await
    });
    let (f, binary) = conn.recv_enc().await;
    assert!(binary, "the client's encoding is used for subscribe frames");
    assert_eq!(f["type"], "subscribe");
    assert_eq!(f["endpoint"], "address/address");
    assert_eq!(f["namespace"], "t1");
    assert_eq!(f["snapshot"], true);
    assert_eq!(f["token"], "tk");
    assert!(f.get("from").is_none(), "{f}");
    let wire = f["subscription"].clone();
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "subscription": wire, "epoch": "E1", "position": 10,
                     "data": [{"id": "a"}], "count": 1, "dataType": "JSON"}),
    )
    .await;
    let mut sub = subscribing.await.unwrap().unwrap();
    assert_eq!(sub.snapshot().unwrap().count, Some(1));
    assert_eq!((sub.position(), sub.epoch()), (10, "E1"));
    conn.send(event(&wire, "CREATE", "b", 11)).await;
    conn.send(event(&wire, "UPDATE", "b", 11)).await; // a double: dropped
    conn.send(event(&wire, "UPDATE", "b", 12)).await;
    let ev = next_event(&mut sub).await;
    assert_eq!(
        (ev.kind, ev.position, ev.subscription.as_str()),
        (ChangeKind::Create, 11, sub.id())
    );
    assert_eq!(next_event(&mut sub).await.position, 12);
    assert_eq!(sub.position(), 12);

    // The connection drops: the client subscribes again from 12 of epoch E1.
    drop(conn);
    let mut conn = hub.accept().await;
    let f = conn.recv().await;
    assert_eq!(f["type"], "subscribe");
    assert_eq!(
        (f["from"].as_u64(), f["epoch"].as_str()),
        (Some(12), Some("E1"))
    );
    assert_ne!(f["subscription"], wire, "a fresh name on the wire");
    let wire2 = f["subscription"].clone();
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "subscription": wire2, "epoch": "E1", "position": 14, "recovered": true,
                     "dataType": "JSON"}),
    )
    .await;
    conn.send(event(&wire, "DELETE", "b", 13)).await; // the old registration's: dropped
    conn.send(event(&wire2, "UPDATE", "b", 12)).await; // already delivered: dropped
    conn.send(event(&wire2, "UPDATE", "b", 13)).await;
    conn.send(event(&wire2, "DELETE", "b", 14)).await;
    assert_eq!(next_event(&mut sub).await.position, 13);
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.kind, ev.position), (ChangeKind::Delete, 14));

    // Again, and now the hub has another history: a reset with the snapshot.
    drop(conn);
    let mut conn = hub.accept().await;
    let f = conn.recv().await;
    assert_eq!(f["from"], 14);
    let wire3 = f["subscription"].clone();
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "subscription": wire3, "epoch": "E2", "position": 3, "recovered": false,
                     "data": [], "count": 0, "dataType": "JSON"}),
    )
    .await;
    conn.send(event(&wire3, "CREATE", "c", 4)).await;
    match tokio::time::timeout(WAIT, sub.next()).await.unwrap() {
        Some(SubscriptionItem::Reset {
            position,
            epoch,
            snapshot,
        }) => {
            assert_eq!((position, epoch.as_str()), (3, "E2"));
            assert_eq!(snapshot.unwrap().data, json!([]));
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert_eq!((sub.position(), sub.epoch()), (3, "E2"));
    assert_eq!(next_event(&mut sub).await.position, 4);

    // unsubscribe waits for the hub.
    let unsub = tokio::spawn(async move { sub.unsubscribe().await });
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), &f["subscription"]),
        (Some("unsubscribe"), &wire3)
    );
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "subscription": wire3, "dataType": "JSON"}),
    )
    .await;
    unsub.await.unwrap().unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_suspends_its_subscription_and_resumes_where_its_buffer_ended() {
    let hub = FakeHub::start().await;
    let (client, mut conn) = tokio::join!(Client::connect(hub.config()), hub.accept());
    let client = client.unwrap();
    let c = client.clone();
    let subscribing = tokio::spawn(async move {
        c.subscribe(
            Subscribe::object("address/address", "b")
                .namespace("t1")
                .buffer(2),
        )
        .await
    });
    let f = conn.recv().await;
    assert_eq!(f["objectid"], "b");
    let wire = f["subscription"].clone();
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "subscription": wire, "epoch": "E", "position": 1, "dataType": "JSON"}),
    )
    .await;
    let mut sub = subscribing.await.unwrap().unwrap();
    for p in 2..=6 {
        conn.send(event(&wire, "UPDATE", "b", p)).await;
    }
    // The third event finds the buffer full: the client takes the subscription off the hub.
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), &f["subscription"]),
        (Some("unsubscribe"), &wire)
    );
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "subscription": wire, "dataType": "JSON"}),
    )
    .await;
    assert_eq!(sub.backlog(), 2, "never more than the buffer");
    assert_eq!(next_event(&mut sub).await.position, 2);
    assert_eq!(next_event(&mut sub).await.position, 3);
    assert!(
        conn.recv_within(Duration::from_millis(200)).await.is_none(),
        "nothing until the reader asks for more"
    );
    // Reading the empty buffer brings the subscription back, from position 3.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(next_event(&mut sub).await.position);
        }
        (sub, got)
    });
    let f = conn.recv().await;
    assert_eq!(f["type"], "subscribe");
    assert_eq!(f["from"], 3);
    assert_eq!(f["epoch"], "E");
    let wire2 = f["subscription"].clone();
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": true,
                     "subscription": wire2, "epoch": "E", "position": 6, "recovered": true,
                     "dataType": "JSON"}),
    )
    .await;
    conn.send(event(&wire2, "UPDATE", "b", 4)).await;
    conn.send(event(&wire2, "UPDATE", "b", 5)).await;
    let (mut sub, got) = reader.await.unwrap();
    assert_eq!(got, vec![4, 5]);
    conn.send(event(&wire2, "UPDATE", "b", 6)).await;
    assert_eq!(next_event(&mut sub).await.position, 6);
    // Dropping the handle unsubscribes in the background.
    drop(sub);
    let f = conn.recv().await;
    assert_eq!(
        (f["type"].as_str(), &f["subscription"]),
        (Some("unsubscribe"), &wire2)
    );

    // A refused subscribe is the hub's error.
    let c = client.clone();
    let refused = tokio::spawn(async move {
        c.subscribe(Subscribe::endpoint("address/address").condition(json!({"logic": "XOR"})))
            .await
    });
    let f = conn.recv().await;
    assert_eq!(f["condition"], json!({"logic": "XOR"}));
    conn.send(
        json!({"type": "reply", "requestid": f["requestid"], "status": 0, "success": false,
                     "errorcode": "INVALID_PARAMETERS", "message": "bad logic",
                     "errorid": "x", "dataType": "JSON"}),
    )
    .await;
    let err = refused.await.unwrap().unwrap_err();
    assert_eq!(err.errorcode(), Some("INVALID_PARAMETERS"));
    client.close().await;
}
