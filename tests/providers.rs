//! Providers over real sockets: connections provide endpoints, the hub routes calls to them
//! (SPEC section 11).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Config, Enc, TestHub, WsClient};
use serde_json::{json, Value};

/// The provider frames' JSON Schemas (protocol/schemas/): what the hub sends a provider is
/// checked against `invoke.json`; what the tests send, against `provide.json` and
/// `answer.json`, so that the schemas and the hub agree.
fn schema(name: &str) -> &'static jsonschema::Validator {
    use std::sync::OnceLock;
    static SCHEMAS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/schemas");
        ["invoke.json", "provide.json", "answer.json"]
            .into_iter()
            .map(|n| {
                let text = std::fs::read_to_string(dir.join(n)).unwrap();
                let v: Value = serde_json::from_str(&text).unwrap();
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .build(&v)
                    .unwrap_or_else(|e| panic!("{n}: {e}"));
                (n.to_string(), validator)
            })
            .collect()
    });
    &all[name]
}

fn check(name: &str, frame: &Value) {
    if let Err(e) = schema(name).validate(frame) {
        panic!("{frame} does not validate against {name}: {e}");
    }
}

/// A provider connection driven by the test.
struct Provider {
    ws: WsClient,
    enc: Enc,
}

impl Provider {
    async fn connect(hub: &TestHub) -> Provider {
        Provider {
            ws: hub.ws().await,
            enc: Enc::Json,
        }
    }

    /// Provides with the given extra fields; returns the reply.
    async fn provide(&mut self, endpoint: &str, extra: Value) -> Value {
        let mut frame = json!({"type": "provide", "endpoint": endpoint});
        if let Value::Object(o) = extra {
            for (k, v) in o {
                frame[k] = v;
            }
        }
        check("provide.json", &frame);
        self.ws.call_enc(frame, self.enc).await
    }

    async fn provide_ok(&mut self, endpoint: &str, extra: Value) {
        let reply = self.provide(endpoint, extra).await;
        assert_eq!(reply["success"], true, "{reply}");
    }

    /// The next frame from the hub (an invoke or a cancel).
    async fn next(&mut self) -> Value {
        let f = self.ws.recv().await.expect("the hub closed the provider");
        check("invoke.json", &f);
        f
    }

    async fn next_invoke(&mut self) -> Value {
        let f = self.next().await;
        assert_eq!(f["type"], "invoke", "{f}");
        f
    }

    async fn send(&mut self, frame: Value) {
        check("answer.json", &frame);
        self.ws.send(&frame, self.enc).await;
    }

    async fn result(&mut self, callid: &Value, data: Value) {
        self.send(json!({"type": "result", "callid": callid, "success": true, "data": data}))
            .await;
    }

    /// Answers every invoke with `{"by": name, "echo": <the call's data>}` until the socket
    /// closes, rejecting when `reject` is set.
    fn serve(mut self, name: &'static str, reject: bool) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut served = 0;
            while let Some(f) = self.ws.recv().await {
                if f["type"] != "invoke" {
                    continue;
                }
                if reject {
                    self.send(json!({"type": "reject", "callid": f["callid"], "reason": format!("{name} is busy")}))
                        .await;
                } else {
                    served += 1;
                    let data = json!({"by": name, "echo": f["data"], "method": f["method"]});
                    self.result(&f["callid"], data).await;
                }
            }
            served
        })
    }
}

fn run(endpoint: &str, data: Value) -> Value {
    json!({"method": "RUN", "endpoint": endpoint, "objectid": "x", "data": data})
}

#[tokio::test]
async fn a_call_over_websocket_and_http_is_answered_by_the_provider() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    let reply = p
        .provide(
            "inventory/device",
            json!({"application": "inventory", "methods": ["RUN", "LIST"]}),
        )
        .await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["data"]["providers"], 1);
    assert_eq!(reply["data"]["methods"], json!(["LIST", "RUN"]));
    assert_eq!(reply["data"]["policy"], "balanced");

    let mut caller = hub.ws().await;
    let call = tokio::spawn(async move {
        let r = caller
            .call(
                json!({"method": "RUN", "endpoint": "inventory/device", "objectid": "3a47",
                "namespace": "tenant-a", "parameters": "dry=true", "data": {"action": "reboot"}}),
            )
            .await;
        (caller, r)
    });
    let inv = p.next_invoke().await;
    assert_eq!(inv["method"], "RUN");
    assert_eq!(inv["endpoint"], "inventory/device");
    assert_eq!(inv["application"], "inventory");
    assert_eq!(inv["objectid"], "3a47");
    assert_eq!(inv["namespace"], "tenant-a");
    assert_eq!(inv["parameters"], json!({"dry": true}));
    assert_eq!(inv["data"], json!({"action": "reboot"}));
    assert!(inv["caller"]["connection"].is_u64(), "{inv}");
    assert!(inv["timeout"].as_u64().unwrap() > 9000, "{inv}");
    p.result(&inv["callid"], json!({"rebooting": true})).await;
    let (_caller, r) = call.await.unwrap();
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["data"], json!({"rebooting": true}));

    // LIST over the HTTP bridge, with the provider's count.
    let addr = hub.addr;
    let http = tokio::spawn(async move {
        common::http(addr, "GET", "/api/inventory/inventory/device/", &[], b"").await
    });
    let inv = p.next_invoke().await;
    assert_eq!(inv["method"], "LIST");
    assert_eq!(
        inv["caller"]["connection"],
        Value::Null,
        "HTTP has no connection"
    );
    p.send(
        json!({"type": "result", "callid": inv["callid"], "success": true,
        "data": [{"id": "a"}], "count": 7}),
    )
    .await;
    let r = http.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": 0, "success": true, "data": [{"id": "a"}], "count": 7, "dataType": "JSON"})
    );

    // The application is the provider's: another one does not reach the endpoint.
    let r = hub
        .http("GET", "/api/other/inventory/device/", &[], b"")
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    hub.stop().await;
}

#[tokio::test]
async fn two_providers_share_the_load() {
    let hub = TestHub::start().await;
    let mut a = Provider::connect(&hub).await;
    a.provide_ok("calc/sum", json!({})).await;
    let mut b = Provider::connect(&hub).await;
    let reply = b.provide("calc/sum", json!({})).await;
    assert_eq!(reply["data"]["providers"], 2);
    let (a, b) = (a.serve("a", false), b.serve("b", false));

    let mut by: HashMap<String, usize> = HashMap::new();
    let mut calls = Vec::new();
    for i in 0..40 {
        let mut c = hub.ws().await;
        calls.push(tokio::spawn(async move {
            c.call(run("calc/sum", json!({"i": i}))).await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let r = call.await.unwrap();
        assert_eq!(r["success"], true, "{r}");
        assert_eq!(r["data"]["echo"], json!({"i": i}));
        *by.entry(r["data"]["by"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(by["a"] > 0 && by["b"] > 0, "both providers serve: {by:?}");
    assert_eq!(by["a"] + by["b"], 40);
    hub.stop().await;
    let _ = (a.await, b.await);
}

#[tokio::test]
async fn a_rejected_call_goes_to_the_other_provider_and_all_rejecting_is_no_provider() {
    let hub = TestHub::start().await;
    let mut busy = Provider::connect(&hub).await;
    busy.provide_ok("jobs/queue", json!({"policy": "first"}))
        .await;
    let mut idle = Provider::connect(&hub).await;
    idle.provide_ok("jobs/queue", json!({"policy": "first"}))
        .await;
    let busy = busy.serve("busy", true);
    let idle = idle.serve("idle", false);
    let mut c = hub.ws().await;
    for _ in 0..5 {
        let r = c.call(run("jobs/queue", json!({}))).await;
        assert_eq!(r["success"], true, "{r}");
        assert_eq!(r["data"]["by"], "idle");
    }
    idle.abort();
    let _ = idle.await;
    // The idle provider's socket is dropped: only the rejecting one is left.
    let mut r = Value::Null;
    for _ in 0..50 {
        r = c.call(run("jobs/queue", json!({}))).await;
        if r["errorcode"] == "NO_PROVIDER" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r["errorcode"], "NO_PROVIDER", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("busy is busy"),
        "the last reason is in the message: {r}"
    );
    let http = hub
        .http(
            "POST",
            "/api/jobs/jobs/queue/x",
            &[("Flow-Request-Method", "RUN")],
            b"{}",
        )
        .await;
    assert_eq!(http.status, 503);
    assert_eq!(http.json()["errorcode"], "NO_PROVIDER");
    hub.stop().await;
    let _ = busy.await;
}

#[tokio::test]
async fn a_silent_provider_times_out_and_is_told() {
    let mut config = Config::default();
    config.call_timeout.insert("slow/thing".into(), 400);
    let hub = TestHub::start_with(config).await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("slow/thing", json!({})).await;
    let mut c = hub.ws().await;
    let call = tokio::spawn(async move { c.call(run("slow/thing", json!({}))).await });
    let inv = p.next_invoke().await;
    assert!(inv["timeout"].as_u64().unwrap() <= 400, "{inv}");
    let r = call.await.unwrap();
    assert_eq!(r["errorcode"], "PROVIDER_TIMEOUT", "{r}");
    let cancel = p.next().await;
    assert_eq!(
        cancel,
        json!({"type": "cancel", "callid": inv["callid"], "reason": "timeout"})
    );
    // A late answer is refused and changes nothing.
    let late =
        p.ws.call(json!({"type": "result", "callid": inv["callid"], "success": true}))
            .await;
    assert_eq!(late["errorcode"], "DO_NOT_EXIST", "{late}");

    // A caller may ask for less than the endpoint's deadline, over HTTP too.
    let addr = hub.addr;
    let http = tokio::spawn(async move {
        common::http(
            addr,
            "POST",
            "/api/slow/slow/thing/x",
            &[
                ("Flow-Request-Method", "RUN"),
                ("Flow-Request-Timeout", "50"),
            ],
            b"{}",
        )
        .await
    });
    let inv = p.next_invoke().await;
    assert!(inv["timeout"].as_u64().unwrap() <= 50, "{inv}");
    let r = http.await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["errorcode"], "PROVIDER_TIMEOUT");
    hub.stop().await;
}

#[tokio::test]
async fn a_provider_that_dies_mid_call_fails_writes_at_once_and_moves_reads_on() {
    // A deadline far beyond the test's patience: an answer must come from the loss itself.
    let config = Config {
        call_timeout_ms: 600_000,
        ..Config::default()
    };
    let hub = TestHub::start_with(config).await;
    let mut doomed = Provider::connect(&hub).await;
    doomed
        .provide_ok("inventory/device", json!({"policy": "first"}))
        .await;
    let mut c = hub.ws().await;
    let call = tokio::spawn(async move {
        let r = c
            .call(
                json!({"method": "UPDATE", "endpoint": "inventory/device", "objectid": "x",
                "data": {"a": 1}}),
            )
            .await;
        (c, r)
    });
    let _ = doomed.next_invoke().await;
    drop(doomed);
    let (mut c, r) = call.await.unwrap();
    assert_eq!(r["errorcode"], "PROVIDER_LOST", "{r}");

    // A read is sent on to another provider.
    let mut first = Provider::connect(&hub).await;
    first
        .provide_ok("inventory/device", json!({"policy": "first"}))
        .await;
    let second = Provider::connect(&hub).await;
    let mut second = second;
    second
        .provide_ok("inventory/device", json!({"policy": "first"}))
        .await;
    let second = second.serve("second", false);
    let call = tokio::spawn(async move {
        c.call(json!({"method": "OPEN", "endpoint": "inventory/device", "objectid": "x"}))
            .await
    });
    let _ = first.next_invoke().await;
    drop(first);
    let r = call.await.unwrap();
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["data"]["by"], "second");
    hub.stop().await;
    let _ = second.await;
}

#[tokio::test]
async fn a_caller_that_leaves_cancels_its_calls() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("slow/thing", json!({})).await;
    let mut c = hub.ws().await;
    c.send(
        &json!({"requestid": 1, "method": "RUN", "endpoint": "slow/thing",
        "objectid": "x", "data": {}}),
        Enc::Json,
    )
    .await;
    let inv = p.next_invoke().await;
    drop(c);
    let cancel = p.next().await;
    assert_eq!(
        cancel,
        json!({"type": "cancel", "callid": inv["callid"], "reason": "caller gone"})
    );
    let late =
        p.ws.call(json!({"type": "result", "callid": inv["callid"], "success": true}))
            .await;
    assert_eq!(
        late["errorcode"], "DO_NOT_EXIST",
        "the call is forgotten: {late}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn only_the_chosen_provider_can_answer_a_call() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("calc/sum", json!({})).await;
    let mut intruder = hub.ws().await;
    let mut c = hub.ws().await;
    let call = tokio::spawn(async move { c.call(run("calc/sum", json!({}))).await });
    let inv = p.next_invoke().await;
    let forged = intruder
        .call(
            json!({"type": "result", "callid": inv["callid"], "success": true,
            "data": "forged"}),
        )
        .await;
    assert_eq!(forged["errorcode"], "DO_NOT_EXIST", "{forged}");
    let forged = intruder
        .call(json!({"type": "reject", "callid": inv["callid"]}))
        .await;
    assert_eq!(forged["errorcode"], "DO_NOT_EXIST", "{forged}");
    p.result(&inv["callid"], json!("genuine")).await;
    let r = call.await.unwrap();
    assert_eq!(r["data"], "genuine", "{r}");
    hub.stop().await;
}

#[tokio::test]
async fn unprovide_and_reconnect() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("calc/sum", json!({"methods": ["RUN"]})).await;
    let r =
        p.ws.call(json!({"type": "unprovide", "endpoint": "calc/sum"}))
            .await;
    assert_eq!(
        r["data"],
        json!({"endpoint": "calc/sum", "providers": 0}),
        "{r}"
    );
    let again =
        p.ws.call(json!({"type": "unprovide", "endpoint": "calc/sum"}))
            .await;
    assert_eq!(again["errorcode"], "DO_NOT_EXIST");
    let mut c = hub.ws().await;
    let r = c.call(run("calc/sum", json!({}))).await;
    assert_eq!(r["errorcode"], "NO_PROVIDER", "{r}");
    drop(p);

    // A provider that comes back (a new connection) is served again.
    let mut back = Provider::connect(&hub).await;
    back.provide_ok("calc/sum", json!({"methods": ["RUN"]}))
        .await;
    let back = back.serve("back", false);
    let r = c.call(run("calc/sum", json!({"n": 1}))).await;
    assert_eq!(r["data"]["by"], "back", "{r}");
    hub.stop().await;
    let _ = back.await;
}

#[tokio::test]
async fn a_providers_own_error_is_passed_through_unchanged() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("shop/part", json!({})).await;
    let addr = hub.addr;
    let http = tokio::spawn(async move {
        common::http(
            addr,
            "POST",
            "/api/shop/shop/part/p1",
            &[("Flow-Request-Method", "RUN")],
            b"{}",
        )
        .await
    });
    let inv = p.next_invoke().await;
    let errorid = "0b6a4a43-7a43-4b9e-9f3c-0c1d2e3f4a5b";
    p.send(
        json!({"type": "result", "callid": inv["callid"], "success": false,
        "errorcode": "OUT_OF_STOCK", "message": "no part p1 left", "errorid": errorid,
        "status": 409}),
    )
    .await;
    let r = http.await.unwrap();
    assert_eq!(r.status, 409);
    let body = r.json();
    assert_eq!(body["errorcode"], "OUT_OF_STOCK");
    assert_eq!(body["message"], "no part p1 left");
    assert_eq!(body["errorid"], errorid);
    assert_eq!(body["success"], false);

    // A catalogue code keeps its class; an own code without status is a 502.
    let mut c = hub.ws().await;
    for (code, status) in [("DO_NOT_EXIST", 404), ("WEIRD", 502)] {
        let addr = hub.addr;
        let http = tokio::spawn(async move {
            common::http(addr, "GET", "/api/shop/shop/part/p1", &[], b"").await
        });
        let inv = p.next_invoke().await;
        assert_eq!(inv["method"], "OPEN");
        p.send(
            json!({"type": "result", "callid": inv["callid"], "success": false,
            "errorcode": code, "message": "m"}),
        )
        .await;
        let r = http.await.unwrap();
        assert_eq!(
            (r.status, r.json()["errorcode"].clone()),
            (status, json!(code))
        );
    }
    // A malformed result is refused and the call still waits for a good one.
    let call = tokio::spawn(async move { c.call(run("shop/part", json!({}))).await });
    let inv = p.next_invoke().await;
    let bad =
        p.ws.call(json!({"type": "result", "callid": inv["callid"], "success": "yes"}))
            .await;
    assert_eq!(bad["errorcode"], "INVALID_REQUEST", "{bad}");
    p.result(&inv["callid"], json!(1)).await;
    assert_eq!(call.await.unwrap()["data"], 1);
    hub.stop().await;
}

#[tokio::test]
async fn methods_nobody_provides_fall_back_to_the_store() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("scheduler/queue", json!({"methods": ["RUN"]}))
        .await;
    let mut c = hub.ws().await;
    let r = c
        .call(json!({"method": "LIST", "endpoint": "scheduler/queue"}))
        .await;
    assert_eq!(
        r["data"],
        json!([]),
        "a provided endpoint exists for the store: {r}"
    );
    let r = c
        .call(json!({"method": "CREATE", "endpoint": "scheduler/queue", "data": {"job": 1}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let id = r["data"]["id"].clone();
    let p = p.serve("sched", false);
    let r = c
        .call(json!({"method": "RUN", "endpoint": "scheduler/queue", "objectid": id, "data": {}}))
        .await;
    assert_eq!(r["data"]["by"], "sched", "{r}");
    let r = c
        .call(json!({"method": "OPEN", "endpoint": "scheduler/queue", "objectid": id}))
        .await;
    assert_eq!(r["data"]["job"], 1, "{r}");

    // The registry shows who serves what.
    let r = c
        .call(json!({"method": "OPEN", "endpoint": "hub/endpoint", "objectid": "scheduler/queue"}))
        .await;
    assert_eq!(r["data"]["providers"], 1, "{r}");
    assert_eq!(r["data"]["stored"], true);
    assert_eq!(r["data"]["methods"]["RUN"], "provider");
    assert_eq!(r["data"]["methods"]["CREATE"], "store");
    let r = hub
        .http(
            "GET",
            "/api/hub/hub/endpoint/",
            &[(
                "Flow-Request-Parameters",
                r#"{"condition":{"items":[{"key":"providers","operator":"GREATER","value":0}]}}"#,
            )],
            b"",
        )
        .await;
    let body = r.json();
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["data"][0]["endpoint"], "scheduler/queue");
    let doc = hub
        .http("GET", "/api/scheduler/openapi.json", &[], b"")
        .await;
    let doc = String::from_utf8_lossy(&doc.body).to_string();
    assert!(doc.contains("/api/scheduler/scheduler/queue/"), "{doc}");
    hub.stop().await;
    let _ = p.await;
}

#[tokio::test]
async fn provide_checks_names_applications_and_policies() {
    // The schemas refuse what the hub refuses.
    assert!(schema("invoke.json")
        .validate(&json!({"type": "invoke"}))
        .is_err());
    assert!(schema("provide.json")
        .validate(&json!({"type": "provide", "endpoint": "a/b", "methods": []}))
        .is_err());
    assert!(schema("answer.json")
        .validate(&json!({"type": "result", "callid": 1, "success": false, "status": 200}))
        .is_err());
    let hub = TestHub::start().await;
    let mut a = Provider::connect(&hub).await;
    a.provide_ok("inventory/device", json!({"application": "inv"}))
        .await;
    let mut b = Provider::connect(&hub).await;
    let r = b
        .provide("inventory/device", json!({"application": "other"}))
        .await;
    assert_eq!(r["errorcode"], "CONFLICT", "{r}");
    let r = b
        .provide(
            "inventory/device",
            json!({"application": "inv", "policy": "last"}),
        )
        .await;
    assert_eq!(r["errorcode"], "CONFLICT", "{r}");
    for bad in [
        json!({"type": "provide", "endpoint": "hub/endpoint"}),
        json!({"type": "provide", "endpoint": "auth/token"}),
        json!({"type": "provide", "endpoint": "a/b", "methods": []}),
        json!({"type": "provide", "endpoint": "a/../b"}),
        json!({"type": "provide"}),
        json!({"type": "result"}),
        json!({"type": "result", "callid": "x", "success": true}),
    ] {
        let r = b.ws.call(bad.clone()).await;
        assert_eq!(r["errorcode"], "INVALID_REQUEST", "{bad}: {r}");
    }
    // One connection provides a bounded number of endpoints; providing one again is free.
    for i in 0..1024 {
        b.provide_ok(&format!("many/e{i}"), json!({})).await;
    }
    b.provide_ok("many/e7", json!({"methods": ["RUN"]})).await;
    let r = b.provide("many/one-too-many", json!({})).await;
    assert_eq!(r["errorcode"], "TOO_LARGE", "{r}");
    let r =
        b.ws.call(json!({"type": "unprovide", "endpoint": "many/e0"}))
            .await;
    assert_eq!(r["success"], true, "{r}");
    b.provide_ok("many/one-too-many", json!({})).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_messagepack_provider_gets_messagepack_invokes() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.enc = Enc::MsgPack;
    p.provide_ok("calc/sum", json!({})).await;
    let mut c = hub.ws().await;
    let call = tokio::spawn(async move { c.call(run("calc/sum", json!({"x": [1, 2]}))).await });
    let raw = tokio::time::timeout(Duration::from_secs(30), async {
        use futures_util::StreamExt;
        loop {
            match p.ws.ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => return b,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap();
    let inv: Value = rmp_serde::from_slice(&raw).unwrap();
    assert_eq!(inv["data"], json!({"x": [1, 2]}));
    p.result(&inv["callid"], json!(3)).await;
    assert_eq!(call.await.unwrap()["data"], 3);

    // A MessagePack caller of a JSON provider gets the provider's data in MessagePack.
    let mut q = Provider::connect(&hub).await;
    q.provide_ok("calc/product", json!({})).await;
    let mut c = hub.ws().await;
    let call = tokio::spawn(async move {
        c.call_enc(run("calc/product", json!({})), Enc::MsgPack)
            .await
    });
    let inv = q.next_invoke().await;
    q.result(
        &inv["callid"],
        json!({"n": [1.5, "two", null, {"deep": true}]}),
    )
    .await;
    assert_eq!(
        call.await.unwrap()["data"],
        json!({"n": [1.5, "two", null, {"deep": true}]})
    );
    hub.stop().await;
}

#[tokio::test]
async fn an_http_caller_that_hangs_up_cancels_its_call() {
    use tokio::io::AsyncWriteExt;
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("slow/thing", json!({})).await;
    let mut s = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    s.write_all(
        b"POST /api/slow/slow/thing/x HTTP/1.1\r\nHost: h\r\nFlow-Request-Method: RUN\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let inv = p.next_invoke().await;
    drop(s);
    let cancel = p.next().await;
    assert_eq!(
        cancel,
        json!({"type": "cancel", "callid": inv["callid"], "reason": "caller gone"})
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_providers_published_changes_reach_subscribers() {
    let hub = TestHub::start().await;
    let mut p = Provider::connect(&hub).await;
    p.provide_ok("inventory/device", json!({"application": "inventory"}))
        .await;
    let mut sub = hub.ws().await;
    let r = sub
        .call(json!({"type": "subscribe", "endpoint": "inventory/device", "namespace": "t1"}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let frame = json!({"type": "publish", "endpoint": "inventory/device", "namespace": "t1",
        "objectid": "dev-1", "kind": "CREATE", "data": {"name": "switch"}});
    check("provide.json", &frame);
    let r = p.ws.call(frame).await;
    assert_eq!(r["success"], true, "{r}");
    let position = r["data"]["position"].as_u64().unwrap();
    let event = sub.recv().await.unwrap();
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["kind"], "CREATE");
    assert_eq!(event["objectid"], "dev-1");
    assert_eq!(event["position"], position);
    assert_eq!(event["data"]["name"], "switch");
    // The store is untouched: the object lives with its provider.
    let r =
        p.ws.call(json!({"type": "unprovide", "endpoint": "inventory/device"}))
            .await;
    assert_eq!(r["success"], true, "{r}");
    let r = sub
        .call(
            json!({"method": "OPEN", "endpoint": "inventory/device", "namespace": "t1",
            "objectid": "dev-1"}),
        )
        .await;
    assert_eq!(r["errorcode"], "DO_NOT_EXIST", "{r}");

    // Only a provider of the endpoint may publish for it; bad frames are refused.
    let r = sub
        .call(
            json!({"type": "publish", "endpoint": "inventory/device", "objectid": "x",
            "kind": "DELETE"}),
        )
        .await;
    assert_eq!(r["errorcode"], "FORBIDDEN", "{r}");
    for bad in [
        json!({"type": "publish", "endpoint": "inventory/device", "objectid": "x", "kind": "UPDATE"}),
        json!({"type": "publish", "endpoint": "inventory/device", "objectid": "x", "kind": "MOVE", "data": {}}),
        json!({"type": "publish", "endpoint": "inventory/device", "kind": "CREATE", "data": {}}),
        json!({"type": "publish", "endpoint": "inventory/device", "objectid": "a/b", "kind": "CREATE", "data": {}}),
        json!({"type": "publish", "endpoint": "inventory/device", "objectid": "x", "kind": "CREATE", "data": [1]}),
    ] {
        assert!(schema("provide.json").validate(&bad).is_err(), "{bad}");
        let r = p.ws.call(bad.clone()).await;
        assert_eq!(r["errorcode"], "INVALID_REQUEST", "{bad}: {r}");
    }
    hub.stop().await;
}
