//! The Rust client (`clients/rust`) against a real hub over real sockets: calls with many in
//! flight, providers built with the client serving calls made over WebSocket and HTTP,
//! rejection and rerouting, cancellation, reconnecting after the hub restarts, and
//! subscriptions: endpoints, objects and live queries, a slow reader, resuming after a restart
//! and resetting when the hub has another history.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Config, TestHub};
use flowhub_client::{
    Answer, Backoff, Call, ChangeKind, Client, ClientConfig, ConnectionState, Encoding, Error,
    Event, Invocation, Method, Policy, Provide, Publish, Subscribe, Subscription, SubscriptionItem,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

fn config(url: &str) -> ClientConfig {
    ClientConfig::new(url).with_backoff(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(250),
        factor: 2.0,
    })
}

async fn client(hub: &TestHub) -> Client {
    Client::connect(config(&hub.ws_url())).await.unwrap()
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts its drops: a handler holding one shows when its task ends (or is aborted).
struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_client_in_both_encodings() {
    let hub = TestHub::start().await;
    for (encoding, ns) in [(Encoding::Json, "json"), (Encoding::MessagePack, "msgpack")] {
        let client = Client::connect(config(&hub.ws_url()).with_encoding(encoding))
            .await
            .unwrap();
        let creates = (0..200).map(|i| {
            let client = client.clone();
            async move {
                client
                    .call(
                        Call::create("address/address", json!({"id": format!("a{i}"), "n": i}))
                            .namespace(ns),
                    )
                    .await
            }
        });
        for (i, r) in futures_util::future::join_all(creates)
            .await
            .into_iter()
            .enumerate()
        {
            let r = r.unwrap();
            assert_eq!(r.data["id"], format!("a{i}"));
            assert_eq!(r.data["n"], i);
        }
        let opens = (0..200).map(|i| {
            let client = client.clone();
            async move {
                client
                    .call(Call::open("address/address", format!("a{i}")).namespace(ns))
                    .await
            }
        });
        for (i, r) in futures_util::future::join_all(opens)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r.unwrap().data["n"], i, "each reply goes to its own call");
        }
        let page = client
            .call(Call::list("address/address").namespace(ns).parameters(
                json!({"sorting.by": "n", "sorting.order": "DESC", "pagination.size": 2}),
            ))
            .await
            .unwrap();
        assert_eq!(page.count, Some(200));
        assert_eq!(page.data[0]["n"], 199);
        let err = client
            .call(Call::open("address/address", "nope").namespace(ns))
            .await
            .unwrap_err();
        assert_eq!(err.errorcode(), Some("DO_NOT_EXIST"));
        assert!(err.hub().unwrap().errorid.is_some());
        client.close().await;
    }
    hub.stop().await;
}

/// What the inventory test provider saw.
type Seen = Arc<Mutex<Vec<Invocation>>>;

/// Provides RUN, LIST and OPEN of `inventory/device` (application `inventory`).
async fn inventory_provider(hub: &TestHub, seen: Seen) -> Client {
    let provider = client(hub).await;
    let reply = provider
        .provide(
            Provide::new("inventory/device")
                .application("inventory")
                .methods([Method::Run, Method::List, Method::Open]),
            move |inv: Invocation| {
                seen.lock().unwrap().push(inv.clone());
                async move {
                    match inv.method {
                        Method::List => Answer::list(
                            vec![json!({"id": "dev-1", "name": "core switch"})],
                            1,
                        ),
                        Method::Open if inv.objectid.as_deref() == Some("dev-1") => {
                            Answer::ok(json!({"id": "dev-1", "name": "core switch"}))
                        }
                        Method::Open => Answer::error("DO_NOT_EXIST", "no such device"),
                        _ => match inv.data.as_ref().and_then(|d| d["action"].as_str()) {
                            Some("reboot") => Answer::ok(
                                json!({"rebooting": true, "id": inv.objectid, "namespace": inv.namespace}),
                            ),
                            _ => Answer::error("UNKNOWN_ACTION", "reboot is the only action")
                                .with_status(422),
                        },
                    }
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.data["providers"], 1, "{:?}", reply);
    provider
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_serves_calls_made_over_websocket_and_http() {
    let hub = TestHub::start().await;
    let seen: Seen = Arc::default();
    let provider = inventory_provider(&hub, seen.clone()).await;
    let caller = client(&hub).await;

    // Over WebSocket, with the caller's namespace and parameters passed on.
    let r = caller
        .call(
            Call::run("inventory/device", "dev-1", json!({"action": "reboot"}))
                .namespace("site-a")
                .parameters(json!("dry=true")),
        )
        .await
        .unwrap();
    assert_eq!(
        r.data,
        json!({"rebooting": true, "id": "dev-1", "namespace": "site-a"})
    );
    {
        let seen = seen.lock().unwrap();
        let inv = seen.last().unwrap();
        assert_eq!(inv.method, Method::Run);
        assert_eq!(inv.application, "inventory");
        assert_eq!(
            inv.parameters,
            Some(json!({"dry": true})),
            "parameters in object form"
        );
        assert!(
            inv.caller.connection.is_some(),
            "a WebSocket caller has a connection"
        );
        assert!(inv.timeout.is_some());
    }
    let list = caller.call(Call::list("inventory/device")).await.unwrap();
    assert_eq!(list.count, Some(1));
    let err = caller
        .call(Call::run(
            "inventory/device",
            "dev-1",
            json!({"action": "dance"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.errorcode(),
        Some("UNKNOWN_ACTION"),
        "the provider's own code, unchanged"
    );

    // Over HTTP: LIST, OPEN and RUN at /api/inventory/inventory/device.
    let r = hub
        .http("GET", "/api/inventory/inventory/device/", &[], b"")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["count"], 1);
    assert_eq!(body["data"][0]["id"], "dev-1");
    let r = hub
        .http("GET", "/api/inventory/inventory/device/dev-1", &[], b"")
        .await;
    assert_eq!(r.json()["data"]["name"], "core switch");
    let r = hub
        .http(
            "POST",
            "/api/inventory/inventory/device/dev-1",
            &[("Flow-Request-Method", "RUN")],
            br#"{"action": "reboot"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["rebooting"], true);
    assert_eq!(
        seen.lock().unwrap().last().unwrap().caller.connection,
        None,
        "an HTTP caller has no connection"
    );
    let r = hub
        .http(
            "POST",
            "/api/inventory/inventory/device/dev-1",
            &[("Flow-Request-Method", "RUN")],
            br#"{"action": "dance"}"#,
        )
        .await;
    assert_eq!(r.status, 422, "the provider's status");
    assert_eq!(r.json()["errorcode"], "UNKNOWN_ACTION");

    // Methods the provider does not serve go to the hub's store.
    let created = caller
        .call(Call::create("inventory/device", json!({"id": "stored-1"})))
        .await
        .unwrap();
    assert_eq!(created.data["id"], "stored-1");
    let updated = caller
        .call(Call::update(
            "inventory/device",
            "stored-1",
            json!({"x": 1}),
        ))
        .await
        .unwrap();
    assert_eq!(updated.data["x"], 1);

    // After unprovide, RUN has no provider.
    provider.unprovide("inventory/device").await.unwrap();
    assert!(!provider.is_provided("inventory/device"));
    let err = caller
        .call(Call::run(
            "inventory/device",
            "dev-1",
            json!({"action": "reboot"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("NO_PROVIDER"));
    provider.close().await;
    caller.close().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_call_goes_to_another_provider() {
    let hub = TestHub::start().await;
    let mut providers = Vec::new();
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
    for (i, count) in counts.iter().enumerate() {
        // One provider speaks JSON, the other MessagePack: invokes come in each one's encoding.
        let encoding = [Encoding::Json, Encoding::MessagePack][i];
        let p = Client::connect(config(&hub.ws_url()).with_encoding(encoding))
            .await
            .unwrap();
        let count = count.clone();
        p.provide(
            Provide::new("scheduler/queue")
                .methods([Method::Run])
                .policy(Policy::First),
            move |inv: Invocation| {
                count.fetch_add(1, Ordering::SeqCst);
                async move {
                    let wants = inv.data.as_ref().and_then(|d| d["worker"].as_u64());
                    if wants == Some(i as u64) {
                        Answer::ok(json!({"worker": i}))
                    } else {
                        Answer::reject(format!("worker {i} is not the one"))
                    }
                }
            },
        )
        .await
        .unwrap();
        providers.push(p);
    }
    let caller = client(&hub).await;
    // `first` sends every call to worker 0 first; it rejects what is meant for worker 1.
    let r = caller
        .call(Call::run("scheduler/queue", "job-1", json!({"worker": 1})))
        .await
        .unwrap();
    assert_eq!(r.data["worker"], 1);
    assert_eq!(
        counts[0].load(Ordering::SeqCst),
        1,
        "worker 0 was asked first"
    );
    assert_eq!(counts[1].load(Ordering::SeqCst), 1);
    let r = caller
        .call(Call::run("scheduler/queue", "job-2", json!({"worker": 0})))
        .await
        .unwrap();
    assert_eq!(r.data["worker"], 0);
    // Everyone rejects: NO_PROVIDER with the last reason.
    let err = caller
        .call(Call::run("scheduler/queue", "job-3", json!({"worker": 7})))
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("NO_PROVIDER"));
    assert!(
        err.hub().unwrap().message.contains("is not the one"),
        "{err}"
    );
    // The first provider goes away: the standby takes over.
    providers.remove(0).close().await;
    let r = caller
        .call(Call::run("scheduler/queue", "job-4", json!({"worker": 1})))
        .await
        .unwrap();
    assert_eq!(r.data["worker"], 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_frames_abort_handlers_on_timeout_and_when_the_caller_goes() {
    let hub = TestHub::start().await;
    let provider = client(&hub).await;
    let started = Arc::new(AtomicUsize::new(0));
    let aborted = Arc::new(AtomicUsize::new(0));
    let (s2, a2) = (started.clone(), aborted.clone());
    provider
        .provide(
            Provide::new("slow/thing").methods([Method::Run]),
            move |_inv: Invocation| {
                let (started, aborted) = (s2.clone(), a2.clone());
                async move {
                    let _count = CountOnDrop(aborted);
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Answer::ok(json!("too late"))
                }
            },
        )
        .await
        .unwrap();

    // The caller's deadline passes: the caller gets PROVIDER_TIMEOUT, the handler a cancel.
    let caller = client(&hub).await;
    let err = caller
        .call(Call::run("slow/thing", "x", json!({})).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("PROVIDER_TIMEOUT"), "{err}");
    eventually("the handler to be aborted after the timeout", || {
        aborted.load(Ordering::SeqCst) == 1
    })
    .await;

    // The caller goes away mid-call: the hub cancels with "caller gone".
    let gone = client(&hub).await;
    let g = gone.clone();
    let call = tokio::spawn(async move { g.call(Call::run("slow/thing", "y", json!({}))).await });
    eventually("the second call to reach the handler", || {
        started.load(Ordering::SeqCst) == 2
    })
    .await;
    gone.close().await;
    assert!(matches!(call.await.unwrap(), Err(Error::Closed)));
    eventually("the handler to be aborted after its caller left", || {
        aborted.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(provider.state(), ConnectionState::Connected { epoch: 1 });
    hub.stop().await;
}

/// A hub on a fixed address, so that a restarted hub is found at the same URL.
struct FixedHub {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), String>>,
}

impl FixedHub {
    async fn start(addr: SocketAddr, data: &std::path::Path) -> FixedHub {
        let listener = TcpListener::bind(addr).await.unwrap();
        let config = Config {
            data_dir: data.to_path_buf(),
            shutdown_grace_ms: 500,
            auth: flowhub::auth::AuthConfig::open(),
            ..Config::default()
        };
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(flowhub::server::run(listener, config, async move {
            let _ = rx.await;
        }));
        FixedHub { stop, handle }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_hub_restarts_the_client_reconnects_and_provides_again() {
    let dir = tempfile::tempdir().unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}");
    let hub = FixedHub::start(addr, dir.path()).await;

    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let provider = Client::connect(config(&url)).await.unwrap();
    provider
        .provide(
            Provide::new("inventory/device")
                .application("inventory")
                .methods([Method::Run]),
            move |inv: Invocation| {
                seen2.lock().unwrap().push(inv.clone());
                async move { Answer::ok(json!({"rebooting": true, "id": inv.objectid})) }
            },
        )
        .await
        .unwrap();
    let caller = Client::connect(config(&url)).await.unwrap();
    let r = caller
        .call(Call::run(
            "inventory/device",
            "dev-1",
            json!({"action": "reboot"}),
        ))
        .await
        .unwrap();
    assert_eq!(r.data["rebooting"], true);
    let stored = caller
        .call(Call::create("inventory/device", json!({"id": "kept"})))
        .await
        .unwrap();
    assert_eq!(stored.data["id"], "kept");

    hub.stop().await;
    eventually("the clients to notice the hub is gone", || {
        provider.state() == ConnectionState::Connecting
            && caller.state() == ConnectionState::Connecting
    })
    .await;
    assert!(provider
        .provided_endpoints()
        .contains(&"inventory/device".to_string()));
    assert!(!provider.is_provided("inventory/device"));

    // A call made while the hub is down waits for the next connection.
    let c = caller.clone();
    let waiting = tokio::spawn(async move { c.call(Call::open("inventory/device", "kept")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let hub = FixedHub::start(addr, dir.path()).await;
    let opened = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        opened.data["id"], "kept",
        "the queued call went out on the new connection"
    );
    assert_eq!(provider.wait_connected(WAIT).await.unwrap(), 2);
    eventually("the endpoint to be provided again", || {
        provider.is_provided("inventory/device")
    })
    .await;
    let r = caller
        .call(Call::run(
            "inventory/device",
            "dev-2",
            json!({"action": "reboot"}),
        ))
        .await
        .unwrap();
    assert_eq!(r.data, json!({"rebooting": true, "id": "dev-2"}));
    let registry = caller
        .call(Call::open("hub/endpoint", "inventory/device"))
        .await
        .unwrap();
    assert_eq!(registry.data["providers"], 1);
    assert_eq!(registry.data["application"], "inventory");
    assert_eq!(seen.lock().unwrap().len(), 2);

    provider.close().await;
    caller.close().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_goes_away_mid_call_fails_the_call_and_its_calls_fail_locally() {
    let hub = TestHub::start().await;
    let provider = client(&hub).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let s2 = started.clone();
    provider
        .provide(
            Provide::new("slow/write").methods([Method::Update]),
            move |_inv: Invocation| {
                let started = s2.clone();
                async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Answer::empty()
                }
            },
        )
        .await
        .unwrap();
    let caller = client(&hub).await;
    let c = caller.clone();
    let call = tokio::spawn(async move {
        c.call(Call::update("slow/write", "x", json!({"n": 1})))
            .await
    });
    tokio::time::timeout(WAIT, started.notified())
        .await
        .unwrap();
    provider.close().await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.errorcode(), Some("PROVIDER_LOST"), "{err}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_gets_an_answer_from_the_hub_and_the_connection_stays() {
    let hub = TestHub::start().await;
    let client = client(&hub).await;
    // The hub side of publish comes later: today's hub may refuse it, but it answers, and the
    // client keeps working.
    let r = client
        .publish(
            Publish::new(ChangeKind::Update, "inventory/device", "dev-1")
                .data(json!({"id": "dev-1", "status": "up"})),
        )
        .await;
    match r {
        Ok(_) => {}
        Err(e) => assert!(e.errorcode().is_some(), "an answer from the hub, not {e:?}"),
    }
    client
        .call(Call::create("a/b", json!({"id": "still-works"})))
        .await
        .unwrap();
    assert_eq!(client.state(), ConnectionState::Connected { epoch: 1 });
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_reserved_endpoints_and_provide_reports_it() {
    let hub = TestHub::start().await;
    let client = client(&hub).await;
    let err = client
        .provide(Provide::new("hub/mine"), |_inv: Invocation| async {
            Answer::empty()
        })
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("INVALID_REQUEST"));
    assert!(
        client.provided_endpoints().is_empty(),
        "a refused endpoint is forgotten"
    );
    let value: Value = client
        .call(Call::open("hub/endpoint", "hub/mine"))
        .await
        .map(|r| r.data)
        .unwrap_or(Value::Null);
    assert!(value.is_null(), "{value}");
    hub.stop().await;
}

/// The next item of `sub` within 10 s.
async fn next_item(sub: &mut Subscription) -> SubscriptionItem {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an item within 10 s")
        .expect("the subscription goes on")
}

async fn next_event(sub: &mut Subscription) -> Event {
    match next_item(sub).await {
        SubscriptionItem::Event(ev) => ev,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// `(kind, objectid)` of the next `n` events, checking that positions increase.
async fn events(sub: &mut Subscription, n: usize) -> Vec<(ChangeKind, String)> {
    let mut out = Vec::new();
    let mut last = sub.position();
    for _ in 0..n {
        let ev = next_event(sub).await;
        assert!(
            ev.position > last,
            "positions increase: {} after {last}",
            ev.position
        );
        last = ev.position;
        out.push((ev.kind, ev.objectid));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_subscription_receives_create_update_delete_in_order_in_both_encodings() {
    let hub = TestHub::start().await;
    for (encoding, ns) in [(Encoding::Json, "json"), (Encoding::MessagePack, "msgpack")] {
        let client = Client::connect(config(&hub.ws_url()).with_encoding(encoding))
            .await
            .unwrap();
        client
            .call(Call::create("address/address", json!({"id": "old", "n": 0})).namespace(ns))
            .await
            .unwrap();
        let mut sub = client
            .subscribe(
                Subscribe::endpoint("address/address")
                    .namespace(ns)
                    .snapshot(true),
            )
            .await
            .unwrap();
        let snapshot = sub.snapshot().unwrap();
        assert_eq!(snapshot.count, Some(1));
        assert_eq!(snapshot.data[0]["id"], "old");
        let start = sub.position();
        assert!(start >= 1);
        assert!(!sub.epoch().is_empty());

        let created = client
            .call(Call::create("address/address", json!({"id": "a", "n": 1})).namespace(ns))
            .await
            .unwrap();
        client
            .call(Call::update("address/address", "a", json!({"n": 2})).namespace(ns))
            .await
            .unwrap();
        client
            .call(Call::delete("address/address", "a").namespace(ns))
            .await
            .unwrap();
        // Another namespace is another stream.
        client
            .call(
                Call::create("address/address", json!({"id": format!("elsewhere-{ns}")}))
                    .namespace("other"),
            )
            .await
            .unwrap();

        let ev = next_event(&mut sub).await;
        assert_eq!(ev.kind, ChangeKind::Create);
        assert_eq!(
            (ev.endpoint.as_str(), ev.namespace.as_str()),
            ("address/address", ns)
        );
        assert_eq!(ev.objectid, "a");
        assert_eq!(ev.subscription, sub.id());
        assert_eq!(ev.live, None);
        assert_eq!(ev.position, created.data["version"].as_u64().unwrap());
        assert_eq!(ev.data["n"], 1);
        let ev2 = next_event(&mut sub).await;
        assert_eq!(
            (ev2.kind, ev2.data["n"].clone()),
            (ChangeKind::Update, json!(2))
        );
        assert!(!ev2.patch);
        let ev3 = next_event(&mut sub).await;
        assert_eq!((ev3.kind, ev3.objectid.as_str()), (ChangeKind::Delete, "a"));
        assert!(ev.position < ev2.position && ev2.position < ev3.position);
        assert_eq!(sub.position(), ev3.position);
        assert!(
            sub.try_next().is_none(),
            "nothing else: {:?}",
            sub.try_next()
        );
        sub.unsubscribe().await.unwrap();

        // One object, with patches and its snapshot.
        let mut one = client
            .subscribe(
                Subscribe::object("address/address", "old")
                    .namespace(ns)
                    .snapshot(true)
                    .patch(true),
            )
            .await
            .unwrap();
        assert_eq!(one.snapshot().unwrap().data["n"], 0);
        assert_eq!(one.snapshot().unwrap().count, None);
        client
            .call(Call::update("address/address", "old", json!({"n": 5})).namespace(ns))
            .await
            .unwrap();
        let ev = next_event(&mut one).await;
        assert!(ev.patch, "{ev:?}");
        assert_eq!(ev.data["n"], 5);
        assert!(ev.data.get("id").is_none() || ev.data["id"] == "old");
        drop(one);
        client.close().await;
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_query_reports_enter_change_and_leave() {
    let hub = TestHub::start().await;
    let client = client(&hub).await;
    client
        .call(Call::create(
            "address/address",
            json!({"id": "x", "city": "Envik"}),
        ))
        .await
        .unwrap();
    client
        .call(Call::create(
            "address/address",
            json!({"id": "y", "city": "Oslo"}),
        ))
        .await
        .unwrap();
    let mut envik = client
        .subscribe(
            Subscribe::endpoint("address/address")
                .condition(
                    json!({"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}]}),
                )
                .snapshot(true),
        )
        .await
        .unwrap();
    let snap = envik.take_snapshot().unwrap();
    assert_eq!(snap.count, Some(1));
    assert_eq!(snap.data[0]["id"], "x");
    assert!(envik.snapshot().is_none());

    for (id, patch) in [
        ("y", json!({"city": "Envik"})),      // enters
        ("y", json!({"street": "Storgata"})), // changes inside
        ("x", json!({"city": "Bergen"})),     // leaves
        ("x", json!({"street": "not seen"})), // outside: nothing
    ] {
        client
            .call(Call::update("address/address", id, patch))
            .await
            .unwrap();
    }
    client
        .call(Call::create(
            "address/address",
            json!({"id": "z", "city": "Envik"}),
        ))
        .await
        .unwrap();
    client
        .call(Call::delete("address/address", "z"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let ev = next_event(&mut envik).await;
        seen.push((ev.objectid, ev.kind, ev.live.unwrap()));
    }
    use flowhub_client::Live::{Change, Enter, Leave};
    assert_eq!(
        seen,
        vec![
            ("y".to_string(), ChangeKind::Update, Enter),
            ("y".to_string(), ChangeKind::Update, Change),
            ("x".to_string(), ChangeKind::Update, Leave),
            ("z".to_string(), ChangeKind::Create, Enter),
            ("z".to_string(), ChangeKind::Delete, Leave),
        ]
    );
    // A condition the hub cannot read is refused like a LIST's.
    let err = client
        .subscribe(Subscribe::endpoint("address/address").condition(json!({"logic": "XOR"})))
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("INVALID_PARAMETERS"), "{err}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_its_buffer_still_gets_every_change_once() {
    let hub = TestHub::start().await;
    let client = client(&hub).await;
    let mut sub = client
        .subscribe(Subscribe::endpoint("bulk/item").buffer(4))
        .await
        .unwrap();
    for i in 0..60 {
        client
            .call(Call::create("bulk/item", json!({"id": format!("i{i:02}")})))
            .await
            .unwrap();
    }
    // The buffer filled long ago: the subscription was taken off the hub and comes back
    // from its last buffered position as the reader catches up.
    assert!(sub.backlog() <= 4);
    let got = events(&mut sub, 60).await;
    let want: Vec<_> = (0..60)
        .map(|i| (ChangeKind::Create, format!("i{i:02}")))
        .collect();
    assert_eq!(got, want);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sub.try_next().is_none(), "no doubles");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hub_restart_a_subscription_resumes_with_exactly_the_missed_events() {
    let dir = tempfile::tempdir().unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}");
    let hub = FixedHub::start(addr, dir.path()).await;
    // The subscriber waits at least 2.5 s before reconnecting, so the writes made right
    // after the restart happen while it is away (even on a slow, shared machine).
    let slow = config(&url).with_backoff(Backoff {
        initial: Duration::from_millis(5000),
        max: Duration::from_millis(5000),
        factor: 1.0,
    });
    let subscriber = Client::connect(slow).await.unwrap();
    let mut sub = subscriber
        .subscribe(Subscribe::endpoint("address/address"))
        .await
        .unwrap();
    let epoch = sub.epoch().to_string();
    let writer = Client::connect(config(&url)).await.unwrap();
    for id in ["a", "b"] {
        writer
            .call(Call::create("address/address", json!({"id": id})))
            .await
            .unwrap();
    }
    assert_eq!(
        events(&mut sub, 2).await,
        vec![
            (ChangeKind::Create, "a".to_string()),
            (ChangeKind::Create, "b".to_string())
        ]
    );
    let seen_before = sub.position();

    hub.stop().await;
    eventually("the subscriber to notice the hub is gone", || {
        subscriber.state() == ConnectionState::Connecting
    })
    .await;
    let hub = FixedHub::start(addr, dir.path()).await;
    writer.wait_connected(WAIT).await.unwrap();
    let mut missed = Vec::new();
    for (i, id) in ["c", "d", "e"].iter().enumerate() {
        let r = writer
            .call(Call::create("address/address", json!({"id": id})))
            .await
            .unwrap();
        missed.push(r.data["version"].as_u64().unwrap());
        if i == 0 {
            writer
                .call(Call::update("address/address", "a", json!({"n": 1})))
                .await
                .unwrap();
        }
    }
    assert_eq!(
        subscriber.state(),
        ConnectionState::Connecting,
        "the writes happened while the subscriber was away"
    );
    assert_eq!(subscriber.wait_connected(WAIT).await.unwrap(), 2);
    let mut got = Vec::new();
    let mut last = seen_before;
    for _ in 0..4 {
        let ev = next_event(&mut sub).await;
        assert!(ev.position > last, "no double, in order: {ev:?}");
        last = ev.position;
        got.push((ev.kind, ev.objectid));
    }
    assert_eq!(
        got,
        vec![
            (ChangeKind::Create, "c".to_string()),
            (ChangeKind::Update, "a".to_string()),
            (ChangeKind::Create, "d".to_string()),
            (ChangeKind::Create, "e".to_string()),
        ],
        "exactly the changes made while away"
    );
    assert_eq!(sub.position(), *missed.last().unwrap());
    assert_eq!(sub.epoch(), epoch, "the same history");
    // And live from there on.
    writer
        .call(Call::delete("address/address", "b"))
        .await
        .unwrap();
    assert_eq!(
        events(&mut sub, 1).await,
        vec![(ChangeKind::Delete, "b".to_string())]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sub.try_next().is_none(), "nothing twice");
    subscriber.close().await;
    writer.close().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_a_new_history_makes_the_subscription_reset_with_a_snapshot() {
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}");
    let hub = FixedHub::start(addr, first_dir.path()).await;
    let client = Client::connect(config(&url)).await.unwrap();
    let mut sub = client
        .subscribe(Subscribe::endpoint("address/address").snapshot(true))
        .await
        .unwrap();
    let first_epoch = sub.epoch().to_string();
    client
        .call(Call::create("address/address", json!({"id": "gone"})))
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await.objectid, "gone");
    hub.stop().await;

    // Another data directory: another epoch; the old positions mean nothing there.
    let hub = FixedHub::start(addr, second_dir.path()).await;
    let other = Client::connect(config(&url)).await.unwrap();
    other
        .call(Call::create("address/address", json!({"id": "new"})))
        .await
        .unwrap();
    match next_item(&mut sub).await {
        SubscriptionItem::Reset {
            position,
            epoch,
            snapshot,
        } => {
            assert_ne!(epoch, first_epoch);
            let snapshot = snapshot.expect("the snapshot comes with the reset");
            let ids: Vec<_> = snapshot
                .data
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].clone())
                .collect();
            // "new" is in the snapshot, or follows it as an event.
            if ids.is_empty() {
                let ev = next_event(&mut sub).await;
                assert_eq!(ev.objectid, "new");
                assert!(ev.position > position);
            } else {
                assert_eq!(ids, vec![json!("new")]);
            }
            assert_eq!(sub.epoch(), epoch);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    // Live in the new history.
    other
        .call(Call::update("address/address", "new", json!({"n": 1})))
        .await
        .unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.kind, ev.objectid.as_str()), (ChangeKind::Update, "new"));
    client.close().await;
    other.close().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_carry_the_clients_credentials() {
    let mut config_auth = Config {
        durability: "never".into(),
        ..Config::default()
    };
    config_auth.auth.admin_password = Some(flowhub::auth::Secret("admin-secret-1".into()));
    config_auth.auth.argon2_memory_kib = 1024;
    config_auth.auth.argon2_iterations = 1;
    let hub = TestHub::start_secure(config_auth).await;
    let admin = Client::connect(config(&hub.ws_url()).with_password("admin", "admin-secret-1"))
        .await
        .unwrap();
    let mut sub = admin
        .subscribe(Subscribe::endpoint("address/address"))
        .await
        .unwrap();
    admin
        .call(Call::create("address/address", json!({"id": "a"})))
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await.objectid, "a");
    let token = admin
        .call(Call::open("auth/token", "current"))
        .await
        .map(|r| r.data)
        .unwrap();
    assert_eq!(token["user"], "admin");

    let stranger = Client::connect(config(&hub.ws_url())).await.unwrap();
    let err = stranger
        .subscribe(Subscribe::endpoint("address/address"))
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("UNAUTHORIZED"), "{err}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_continues_where_an_earlier_subscription_stopped() {
    let hub = TestHub::start().await;
    let first = client(&hub).await;
    let mut sub = first
        .subscribe(Subscribe::endpoint("address/address"))
        .await
        .unwrap();
    first
        .call(Call::create("address/address", json!({"id": "a"})))
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await.objectid, "a");
    let (position, epoch) = (sub.position(), sub.epoch().to_string());
    sub.unsubscribe().await.unwrap();
    for id in ["b", "c"] {
        first
            .call(Call::create("address/address", json!({"id": id})))
            .await
            .unwrap();
    }

    // Another process continues from the position it kept.
    let later = client(&hub).await;
    let mut resumed = later
        .subscribe(Subscribe::endpoint("address/address").resume_from(position, epoch.as_str()))
        .await
        .unwrap();
    assert_eq!(resumed.recovered(), Some(true));
    assert_eq!(resumed.position(), position);
    assert_eq!(
        events(&mut resumed, 2).await,
        vec![
            (ChangeKind::Create, "b".to_string()),
            (ChangeKind::Create, "c".to_string())
        ]
    );

    // A position of another history cannot be continued: a reset, with the snapshot.
    let mut elsewhere = later
        .subscribe(
            Subscribe::endpoint("address/address")
                .snapshot(true)
                .resume_from(position, "another-epoch"),
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.recovered(), Some(false));
    match next_item(&mut elsewhere).await {
        SubscriptionItem::Reset {
            epoch: now,
            snapshot,
            ..
        } => {
            assert_eq!(now, epoch);
            assert_eq!(snapshot.unwrap().count, Some(3));
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    later.close().await;
    hub.stop().await;
}
