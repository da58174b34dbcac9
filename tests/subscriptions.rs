//! Live updates at the wire: subscriptions to endpoints, objects and live queries, snapshots
//! without a race, resume after a dropped connection, and slow subscribers.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::{Config, Enc, TestHub, WsClient};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Only there so that a broken hub fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

fn memory_hub() -> Config {
    Config {
        durability: "memory".into(),
        ..Config::default()
    }
}

/// Subscribes and returns the reply, which must be a success.
async fn subscribe(c: &mut WsClient, frame: Value) -> Value {
    subscribe_enc(c, frame, Enc::Json).await
}

async fn subscribe_enc(c: &mut WsClient, mut frame: Value, enc: Enc) -> Value {
    frame["type"] = json!("subscribe");
    let reply = c.call_enc(frame, enc).await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["type"], "reply", "{reply}");
    reply
}

/// The next frame, which must be an event.
async fn event(c: &mut WsClient) -> Value {
    let v = c.recv().await.expect("the socket is open");
    assert_eq!(v["type"], "event", "{v}");
    v
}

async fn create(w: &mut WsClient, endpoint: &str, data: Value) -> Value {
    let r = w
        .call(json!({"endpoint": endpoint, "method": "CREATE", "data": data}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    r["data"].clone()
}

async fn update(w: &mut WsClient, endpoint: &str, id: &str, data: Value) -> Value {
    let r = w
        .call(json!({"endpoint": endpoint, "method": "UPDATE", "objectid": id, "data": data}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    r["data"].clone()
}

async fn delete(w: &mut WsClient, endpoint: &str, id: &str) -> Value {
    let r = w
        .call(json!({"endpoint": endpoint, "method": "DELETE", "objectid": id}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    r["data"].clone()
}

#[tokio::test]
async fn an_endpoint_subscriber_gets_every_change_in_order_in_both_encodings() {
    let hub = TestHub::start().await;
    let mut w = hub.ws().await;
    let mut json_sub = hub.ws().await;
    let mut mp_sub = hub.ws().await;
    let r = subscribe(
        &mut json_sub,
        json!({"subscription": "devs", "endpoint": "inv/device"}),
    )
    .await;
    assert_eq!(r["subscription"], "devs");
    assert!(r["epoch"].is_string() && r["position"].is_u64(), "{r}");
    assert!(r.get("data").is_none(), "no snapshot asked: {r}");
    subscribe_enc(
        &mut mp_sub,
        json!({"subscription": 7, "endpoint": "inv/device"}),
        Enc::MsgPack,
    )
    .await;

    let a = create(&mut w, "inv/device", json!({"id": "a", "n": 1})).await;
    // Another endpoint and another namespace are not this subscription's business.
    create(&mut w, "inv/other", json!({"id": "a"})).await;
    let r = w
        .call(json!({"endpoint": "inv/device", "method": "CREATE", "namespace": "t2", "data": {"id": "z"}}))
        .await;
    assert_eq!(r["success"], true);
    let a2 = update(&mut w, "inv/device", "a", json!({"n": 2})).await;
    let gone = delete(&mut w, "inv/device", "a").await;

    for (sub, sid) in [(&mut json_sub, json!("devs")), (&mut mp_sub, json!("7"))] {
        let e = event(sub).await;
        assert_eq!(e["subscription"], sid);
        assert_eq!(
            (e["kind"].as_str(), e["objectid"].as_str()),
            (Some("CREATE"), Some("a"))
        );
        assert_eq!(e["endpoint"], "inv/device");
        assert_eq!(e["namespace"], "");
        assert_eq!(e["data"], a);
        assert_eq!(e["version"], a["version"]);
        assert_eq!(e["position"], a["version"]);
        assert!(e.get("live").is_none());
        let e = event(sub).await;
        assert_eq!(e["kind"], "UPDATE");
        assert_eq!(e["data"], a2);
        assert_eq!(e["position"], a2["version"]);
        let e = event(sub).await;
        assert_eq!(e["kind"], "DELETE");
        assert_eq!(e["data"], gone, "a DELETE carries the last state");
        assert!(e["position"].as_u64() > a2["version"].as_u64());
    }
    // The MessagePack subscriber got binary frames.
    hub.stop().await;
}

#[tokio::test]
async fn object_subscriptions_patches_and_unsubscribe() {
    let hub = TestHub::start_with(memory_hub()).await;
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    create(
        &mut w,
        "inv/device",
        json!({"id": "a", "n": 1, "tags": {"x": 1, "y": 2}}),
    )
    .await;
    create(&mut w, "inv/device", json!({"id": "b", "n": 1})).await;
    let r = subscribe(
        &mut s,
        json!({"subscription": "one", "endpoint": "inv/device", "objectid": "a", "snapshot": true, "patch": true}),
    )
    .await;
    assert_eq!(r["data"]["id"], "a", "the object as the snapshot: {r}");
    assert!(r.get("count").is_none());
    let missing = subscribe(
        &mut s,
        json!({"endpoint": "inv/device", "objectid": "nope", "snapshot": true}),
    )
    .await;
    assert_eq!(missing["data"], Value::Null);
    assert_eq!(
        missing["subscription"], "s1",
        "the hub names subscriptions without an id"
    );

    update(&mut w, "inv/device", "b", json!({"n": 5})).await;
    let a2 = update(
        &mut w,
        "inv/device",
        "a",
        json!({"n": 2, "tags": {"y": null}}),
    )
    .await;
    let e = event(&mut s).await;
    assert_eq!(
        (e["subscription"].as_str(), e["kind"].as_str()),
        (Some("one"), Some("UPDATE"))
    );
    assert_eq!(e["patch"], true);
    assert_eq!(
        e["data"],
        json!({"updated": a2["updated"], "version": a2["version"], "n": 2, "tags": {"y": null}})
    );

    let r = s
        .call(json!({"type": "unsubscribe", "subscription": "one"}))
        .await;
    assert_eq!(
        (r["success"].as_bool(), r["subscription"].as_str()),
        (Some(true), Some("one"))
    );
    let r = s
        .call(json!({"type": "unsubscribe", "subscription": "one"}))
        .await;
    assert_eq!(r["errorcode"], "DO_NOT_EXIST", "{r}");
    update(&mut w, "inv/device", "a", json!({"n": 3})).await;
    // The object "nope" appears: the second subscription sees it; the first is gone.
    create(&mut w, "inv/device", json!({"id": "nope"})).await;
    let e = event(&mut s).await;
    assert_eq!(
        (e["subscription"].as_str(), e["objectid"].as_str()),
        (Some("s1"), Some("nope"))
    );
    hub.stop().await;
}

#[tokio::test]
async fn bad_subscribe_frames_get_clear_errors() {
    let hub = TestHub::start_with(memory_hub()).await;
    let mut s = hub.ws().await;
    let cases = [
        (json!({"type": "subscribe"}), "INVALID_REQUEST"),
        (
            json!({"type": "subscribe", "endpoint": "a//b"}),
            "INVALID_REQUEST",
        ),
        (
            json!({"type": "subscribe", "endpoint": "a/b", "condition": {"logic": "XOR"}}),
            "INVALID_PARAMETERS",
        ),
        (
            json!({"type": "subscribe", "endpoint": "a/b", "condition": {"items": [{"key": "a", "operator": "LIKE"}]}}),
            "INVALID_PARAMETERS",
        ),
        (
            json!({"type": "subscribe", "endpoint": "a/b", "objectid": "x", "condition": {}}),
            "INVALID_REQUEST",
        ),
        (
            json!({"type": "subscribe", "endpoint": "a/b", "from": "x"}),
            "INVALID_REQUEST",
        ),
        (
            json!({"type": "subscribe", "endpoint": "a/b", "snapshot": 1}),
            "INVALID_REQUEST",
        ),
        (
            json!({"type": "subscribe", "endpoint": "a/b", "subscription": {}}),
            "INVALID_REQUEST",
        ),
        (json!({"type": "unsubscribe"}), "INVALID_REQUEST"),
        (
            json!({"type": "unsubscribe", "subscription": "never"}),
            "DO_NOT_EXIST",
        ),
    ];
    for (frame, code) in cases {
        let r = s.call(frame.clone()).await;
        assert_eq!(r["success"], false, "{frame}: {r}");
        assert_eq!(r["errorcode"], code, "{frame}: {r}");
        assert!(r["message"].is_string() && r["errorid"].is_string());
    }
    subscribe(&mut s, json!({"subscription": "x", "endpoint": "a/b"})).await;
    let r = s
        .call(json!({"type": "subscribe", "subscription": "x", "endpoint": "a/b"}))
        .await;
    assert_eq!(r["errorcode"], "INVALID_REQUEST", "a duplicate id: {r}");
    // The socket still works.
    let r = s.call(json!({"endpoint": "a/b", "method": "LIST"})).await;
    assert_eq!(r["errorcode"], "DO_NOT_EXIST");
    hub.stop().await;
}

#[tokio::test]
async fn a_live_query_reports_enter_change_and_leave() {
    let hub = TestHub::start_with(memory_hub()).await;
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    create(
        &mut w,
        "address/address",
        json!({"id": "1", "city": "Envik", "n": 1}),
    )
    .await;
    create(
        &mut w,
        "address/address",
        json!({"id": "2", "city": "Götefred", "n": 1}),
    )
    .await;
    // The seed's form of the condition: a subgroup under an empty AND.
    let condition = json!({"items": [], "subgroups": [{"items": [
        {"key": "city", "operator": "EQUAL", "value": "Envik"}], "subgroups": [], "logic": "AND"}], "logic": "AND"});
    let r = subscribe(
        &mut s,
        json!({"subscription": "envik", "endpoint": "address/address", "condition": condition, "snapshot": true}),
    )
    .await;
    assert_eq!(r["count"], 1, "{r}");
    assert_eq!(r["data"][0]["id"], "1");
    // A second query without an equality term (tested against every change).
    subscribe(
        &mut s,
        json!({"subscription": "big", "endpoint": "address/address",
               "condition": {"items": [{"key": "n", "operator": ">", "value": 5}]}}),
    )
    .await;

    create(
        &mut w,
        "address/address",
        json!({"id": "3", "city": "Envik"}),
    )
    .await; // enter
    update(&mut w, "address/address", "1", json!({"n": 2})).await; // change
    update(&mut w, "address/address", "2", json!({"n": 2})).await; // nothing
    update(&mut w, "address/address", "2", json!({"city": "Envik"})).await; // enter
    update(&mut w, "address/address", "1", json!({"city": "Oslo"})).await; // leave
    delete(&mut w, "address/address", "3").await; // leave
    create(
        &mut w,
        "address/address",
        json!({"id": "4", "city": "Oslo"}),
    )
    .await; // nothing
    update(&mut w, "address/address", "4", json!({"n": 9})).await; // big: enter
    update(&mut w, "address/address", "4", json!({"n": 1})).await; // big: leave

    let want = [
        ("envik", "3", "CREATE", "enter"),
        ("envik", "1", "UPDATE", "change"),
        ("envik", "2", "UPDATE", "enter"),
        ("envik", "1", "UPDATE", "leave"),
        ("envik", "3", "DELETE", "leave"),
        ("big", "4", "UPDATE", "enter"),
        ("big", "4", "UPDATE", "leave"),
    ];
    let mut last = 0;
    for (sid, id, kind, live) in want {
        let e = event(&mut s).await;
        let got = (
            e["subscription"].as_str().unwrap(),
            e["objectid"].as_str().unwrap(),
            e["kind"].as_str().unwrap(),
            e["live"].as_str().unwrap(),
        );
        assert_eq!(got, (sid, id, kind, live), "{e}");
        let p = e["position"].as_u64().unwrap();
        assert!(p > last, "positions increase");
        last = p;
    }
    // A leave by update carries the new state (no longer matching).
    hub.stop().await;
}

/// Writers hammer an endpoint while a subscriber takes a snapshot: the snapshot plus the
/// events after it must be exactly the writes, none lost, none twice, each object's versions
/// increasing, and the state they build must equal the final LIST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_and_the_changes_after_it_have_no_gap_and_no_double() {
    let hub = TestHub::start_with(memory_hub()).await;
    let ep = "race/thing";
    let mut w = hub.ws().await;
    for i in 0..20 {
        create(&mut w, ep, json!({"id": format!("o{i}"), "n": 0})).await;
    }
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let url = hub.ws_url();
            tokio::spawn(async move {
                let mut w = WsClient::connect(&url).await;
                let mut versions = Vec::new();
                for j in 0..150 {
                    let id = format!("o{}", (j * 7 + k) % 20);
                    let r = w
                        .call(json!({"endpoint": ep, "method": "UPDATE", "objectid": id, "data": {"n": j, "w": k}}))
                        .await;
                    assert_eq!(r["success"], true, "{r}");
                    versions.push(r["data"]["version"].as_u64().unwrap());
                }
                versions
            })
        })
        .collect();
    // Let the writers get going, then subscribe in the middle of it.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut s = hub.ws().await;
    let r = subscribe(&mut s, json!({"endpoint": ep, "snapshot": true})).await;
    let at = r["position"].as_u64().unwrap();
    let mut state: BTreeMap<String, Value> = BTreeMap::new();
    for o in r["data"].as_array().unwrap() {
        assert!(
            o["version"].as_u64().unwrap() <= at,
            "the snapshot is at its position"
        );
        state.insert(o["id"].as_str().unwrap().into(), o.clone());
    }
    let mut written: HashSet<u64> = HashSet::new();
    for t in writers {
        written.extend(t.await.unwrap());
    }
    let expected: HashSet<u64> = written.iter().copied().filter(|v| *v > at).collect();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut last_position = at;
    let mut last_version: HashMap<String, u64> = HashMap::new();
    while seen.len() < expected.len() {
        let e = event(&mut s).await;
        let p = e["position"].as_u64().unwrap();
        assert!(
            p > last_position,
            "positions increase: {p} after {last_position}"
        );
        last_position = p;
        assert!(
            expected.contains(&p),
            "event {p} is a write after the snapshot"
        );
        assert!(seen.insert(p), "event {p} twice");
        let id = e["objectid"].as_str().unwrap().to_string();
        let v = e["version"].as_u64().unwrap();
        if let Some(prev) = last_version.insert(id.clone(), v) {
            assert!(v > prev, "versions of {id} increase");
        }
        let before = state
            .get(&id)
            .and_then(|o| o["version"].as_u64())
            .unwrap_or(0);
        assert!(
            v > before,
            "no event the snapshot already holds ({id} v{v})"
        );
        state.insert(id, e["data"].clone());
    }
    let list = w.call(json!({"endpoint": ep, "method": "LIST"})).await;
    let fin: BTreeMap<String, Value> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["id"].as_str().unwrap().to_string(), o.clone()))
        .collect();
    assert_eq!(state, fin, "snapshot + events = the final state");
    // Nothing more comes.
    let more = tokio::time::timeout(Duration::from_millis(200), s.ws.next()).await;
    assert!(more.is_err(), "no extra event: {more:?}");
    hub.stop().await;
}

#[tokio::test]
async fn resume_after_a_dropped_connection_gets_exactly_the_missed_changes() {
    let hub = TestHub::start().await;
    let ep = "resume/thing";
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"subscription": "r", "endpoint": ep, "patch": true}),
    )
    .await;
    let epoch = r["epoch"].as_str().unwrap().to_string();
    create(&mut w, ep, json!({"id": "a", "n": 0})).await;
    let seen = event(&mut s).await["position"].as_u64().unwrap();
    drop(s);
    // Missed while away: three changes here, and some elsewhere that must not come.
    let mut missed = Vec::new();
    for i in 1..=3 {
        missed.push(update(&mut w, ep, "a", json!({"n": i})).await["version"].clone());
        create(&mut w, "resume/other", json!({"n": i})).await;
    }
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"subscription": "r", "endpoint": ep, "from": seen, "epoch": epoch, "patch": true}),
    )
    .await;
    assert_eq!(r["recovered"], true, "{r}");
    for (i, v) in missed.iter().enumerate() {
        let e = event(&mut s).await;
        assert_eq!(e["version"], *v);
        assert_eq!(e["data"]["n"], i + 1, "a patch: {e}");
    }
    // Then live again, exactly once.
    let live = update(&mut w, ep, "a", json!({"n": 4})).await;
    let e = event(&mut s).await;
    assert_eq!(e["version"], live["version"]);
    let more = tokio::time::timeout(Duration::from_millis(200), s.ws.next()).await;
    assert!(more.is_err(), "no extra event: {more:?}");

    // Resuming from the newest position misses nothing and gets nothing.
    let mut s2 = hub.ws().await;
    let at = live["version"].as_u64().unwrap();
    let r = subscribe(&mut s2, json!({"endpoint": ep, "from": at, "epoch": epoch})).await;
    assert_eq!(
        (r["recovered"].as_bool(), r["position"].as_u64()),
        (Some(true), Some(at))
    );
    // Another history (epoch) or a position from the future: reload.
    let r = subscribe(
        &mut s2,
        json!({"endpoint": ep, "from": at, "epoch": "other"}),
    )
    .await;
    assert_eq!(r["recovered"], false);
    let r = subscribe(&mut s2, json!({"endpoint": ep, "from": at + 1000})).await;
    assert_eq!(r["recovered"], false);
    hub.stop().await;
}

#[tokio::test]
async fn resume_from_too_far_back_is_not_recovered_and_can_reload_from_a_snapshot() {
    let hub = TestHub::start_with(Config {
        resume_window: 10,
        ..memory_hub()
    })
    .await;
    let ep = "resume/far";
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    let r = subscribe(&mut s, json!({"endpoint": ep})).await;
    let epoch = r["epoch"].clone();
    let from = r["position"].as_u64().unwrap();
    create(&mut w, ep, json!({"id": "a", "n": 0})).await;
    for i in 1..=30 {
        update(&mut w, ep, "a", json!({"n": i})).await;
    }
    let mut s2 = hub.ws().await;
    let r = subscribe(
        &mut s2,
        json!({"endpoint": ep, "from": from, "epoch": epoch}),
    )
    .await;
    assert_eq!(r["recovered"], false, "{r}");
    assert!(r.get("data").is_none());
    let r = subscribe(
        &mut s2,
        json!({"endpoint": ep, "from": from, "epoch": epoch, "snapshot": true}),
    )
    .await;
    assert_eq!(r["recovered"], false);
    assert_eq!(r["data"][0]["n"], 30, "the snapshot to reload from: {r}");
    hub.stop().await;
}

#[tokio::test]
async fn positions_and_the_epoch_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        durability: "never".into(),
        ..Config::default()
    };
    let hub = TestHub::start_with(config.clone()).await;
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    let r = subscribe(&mut s, json!({"endpoint": "keep/x"})).await;
    let epoch = r["epoch"].clone();
    let last = create(&mut w, "keep/x", json!({"id": "a"})).await["version"].clone();
    drop((w, s));
    hub.stop().await;
    let hub = TestHub::start_with(config.clone()).await;
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"endpoint": "keep/x", "from": last, "epoch": epoch}),
    )
    .await;
    assert_eq!(
        r["epoch"], epoch,
        "the same data directory, the same history"
    );
    assert_eq!(r["recovered"], true, "nothing was missed: {r}");
    let mut w = hub.ws().await;
    let v = create(&mut w, "keep/x", json!({"id": "b"})).await["version"].clone();
    assert!(v.as_u64() > last.as_u64());
    assert_eq!(event(&mut s).await["position"], v);
    drop((w, s));
    hub.stop().await;
    // A wiped data directory is a new history.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let hub = TestHub::start_with(config).await;
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"endpoint": "keep/x", "from": last, "epoch": epoch}),
    )
    .await;
    assert_ne!(r["epoch"], epoch);
    assert_eq!(r["recovered"], false);
    drop(s);
    hub.stop().await;
}

/// The next frame of a socket that may be closing: `Ok(frame)`, or `Err(close code)` (None
/// when the socket ended without a close frame).
async fn frame_or_close(c: &mut WsClient) -> Result<Value, Option<u16>> {
    loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame within 30 s");
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Binary(b))) => return Ok(rmp_serde::from_slice(&b).unwrap()),
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_while_another_keeps_receiving() {
    let hub = TestHub::start_with(Config {
        max_outbound_bytes: 256 * 1024,
        resume_window_bytes: 1 << 20,
        ..memory_hub()
    })
    .await;
    let ep = "slow/thing";
    let mut w = hub.ws().await;
    create(&mut w, ep, json!({"id": "a"})).await;
    let mut stuck = hub.ws().await;
    subscribe(&mut stuck, json!({"endpoint": ep})).await;
    let mut good = hub.ws().await;
    subscribe(&mut good, json!({"endpoint": ep})).await;
    // 64 KiB objects: far more than the bound and the socket buffers together.
    let pad = "x".repeat(64 * 1024);
    let total = 200;
    // In lockstep with the good subscriber: its queue never holds more than one event, so
    // only the stuck one falls behind.
    let mut last = 0;
    for i in 0..total {
        update(&mut w, ep, "a", json!({"i": i, "pad": pad})).await;
        let e = event(&mut good).await;
        let p = e["position"].as_u64().unwrap();
        assert!(p > last);
        last = p;
    }
    let mut got = 0;
    let code = loop {
        match frame_or_close(&mut stuck).await {
            Ok(v) => {
                assert_eq!(v["type"], "event");
                got += 1;
            }
            Err(code) => break code,
        }
    };
    assert!(
        got < total,
        "the stuck subscriber was cut off (got {got} of {total})"
    );
    assert_eq!(
        code,
        Some(3008),
        "closed as a slow consumer after {got} events"
    );
    // The hub still serves, and the writer's socket was never slowed.
    let r = w
        .call(json!({"endpoint": ep, "method": "OPEN", "objectid": "a"}))
        .await;
    assert_eq!(r["data"]["i"], total - 1);
    hub.stop().await;
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A real hub process: a subscriber that never reads is cut off (with a log line) and the
/// hub's memory stays bounded while far more event bytes than that pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_does_not_grow_the_hubs_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowhub"));
    cmd.arg("serve")
        .env_clear()
        .env("FLOWHUB_LISTEN", "127.0.0.1:0")
        .env("FLOWHUB_DATA_DIR", dir.path())
        .env("FLOWHUB_DURABILITY", "memory")
        .env("FLOWHUB_LOG_FORMAT", "json")
        .env("FLOWHUB_MAX_OUTBOUND_BYTES", "1048576")
        .env("FLOWHUB_RESUME_WINDOW_BYTES", "4194304")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let (mut child, addr, log) = common::spawn_serve(&mut cmd);
    let url = format!("ws://{addr}/ws");
    let ep = "mem/thing";
    let mut w = WsClient::connect(&url).await;
    create(&mut w, ep, json!({"id": "a"})).await;
    let mut stuck = WsClient::connect(&url).await;
    subscribe(&mut stuck, json!({"endpoint": ep})).await;
    let pad = "x".repeat(64 * 1024);
    // Warm up (the allocator, the socket buffers, the resume window), then measure.
    for i in 0..100 {
        update(&mut w, ep, "a", json!({"i": i, "pad": pad})).await;
    }
    let before = rss_kib(child.id());
    let total = 1500; // about 96 MiB of events for the stuck subscriber
    for i in 0..total {
        update(&mut w, ep, "a", json!({"i": i, "pad": pad})).await;
    }
    let after = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("slow subscriber"),
        "the cut-off is logged; the log:\n{log}"
    );
    assert!(
        after < before + 48 * 1024,
        "the hub's memory grew from {before} KiB to {after} KiB while ~96 MiB of events went to a stuck subscriber"
    );
    drop(stuck);
}

/// Validators for `protocol/schemas/`: (reply, event, subscribe).
fn schemas() -> (
    jsonschema::Validator,
    jsonschema::Validator,
    jsonschema::Validator,
) {
    const BASE: &str = "https://flowhub.example/protocol/v1/";
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/schemas");
    let names = [
        "call.json",
        "reply.json",
        "condition.json",
        "parameters.json",
        "subscribe.json",
        "event.json",
    ];
    let docs: Vec<(String, Value)> = names
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(n)).unwrap();
            (format!("{BASE}{n}"), serde_json::from_str(&text).unwrap())
        })
        .collect();
    let registry = jsonschema::Registry::new()
        .extend(
            docs.iter()
                .map(|(u, v)| (u.clone(), jsonschema::Resource::from_contents(v.clone()))),
        )
        .unwrap()
        .prepare()
        .unwrap();
    let build = |name: &str| {
        let doc = &docs.iter().find(|(u, _)| u.ends_with(name)).unwrap().1;
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .with_registry(&registry)
            .build(doc)
            .unwrap()
    };
    (
        build("reply.json"),
        build("event.json"),
        build("subscribe.json"),
    )
}

fn valid(v: &jsonschema::Validator, frame: &Value) {
    let errors: Vec<String> = v.iter_errors(frame).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{frame} does not validate: {errors:?}");
}

#[tokio::test]
async fn frames_validate_against_the_schemas() {
    let (reply, event_schema, subscribe_schema) = schemas();
    let hub = TestHub::start_with(memory_hub()).await;
    let mut w = hub.ws().await;
    create(&mut w, "schema/x", json!({"id": "a", "n": 1})).await;
    for enc in [Enc::Json, Enc::MsgPack] {
        let mut s = hub.ws().await;
        let frames = [
            json!({"type": "subscribe", "subscription": "all", "endpoint": "schema/x", "snapshot": true}),
            json!({"type": "subscribe", "subscription": "one", "endpoint": "schema/x", "objectid": "zz", "snapshot": true, "patch": true}),
            json!({"type": "subscribe", "subscription": "q", "endpoint": "schema/x",
                   "condition": {"items": [{"key": "n", "operator": ">", "value": 0}]}, "from": 0}),
        ];
        for f in frames {
            valid(&subscribe_schema, &f);
            let r = subscribe_enc(&mut s, f, enc).await;
            valid(&reply, &r);
        }
        update(&mut w, "schema/x", "a", json!({"n": 2})).await;
        for _ in 0..2 {
            valid(&event_schema, &event(&mut s).await);
        }
        let f = json!({"type": "unsubscribe", "subscription": "q"});
        valid(&subscribe_schema, &f);
        valid(&reply, &s.call_enc(f, enc).await);
        let bad = s
            .call_enc(
                json!({"type": "subscribe", "endpoint": "schema/x", "from": -3}),
                enc,
            )
            .await;
        valid(&reply, &bad);
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_resume_larger_than_the_connections_queue_is_not_recovered() {
    let hub = TestHub::start_with(Config {
        max_outbound_bytes: 16 * 1024,
        ..memory_hub()
    })
    .await;
    let ep = "resume/big";
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    let r = subscribe(&mut s, json!({"endpoint": ep})).await;
    let (epoch, from) = (r["epoch"].clone(), r["position"].clone());
    drop(s);
    let pad = "x".repeat(1024);
    create(&mut w, ep, json!({"id": "a"})).await;
    for i in 0..40 {
        update(&mut w, ep, "a", json!({"i": i, "pad": pad})).await;
    }
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"endpoint": ep, "from": from, "epoch": epoch}),
    )
    .await;
    assert_eq!(
        r["recovered"], false,
        "40 KiB of missed events do not fit in 16 KiB: {r}"
    );
    // A small gap still resumes.
    let at = update(&mut w, ep, "a", json!({"i": 99})).await["version"]
        .as_u64()
        .unwrap();
    let small = update(&mut w, ep, "a", json!({"i": 100})).await;
    let mut s2 = hub.ws().await;
    let r = subscribe(&mut s2, json!({"endpoint": ep, "from": at, "epoch": epoch})).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(event(&mut s2).await["version"], small["version"]);
    hub.stop().await;
}

/// A hub on a data directory of the test's own, so that it can be restarted on it.
/// A hub with its log in `dir`. Without preallocation: a fresh log's first segment is closed
/// as soon as the preallocated spare is ready, a moment that depends on the machine's load,
/// and a resume reads an object's old state only from the segment holding its position
/// (SPEC 12.2; `fanout::replay`), so these tests want segment boundaries that do not move.
fn disk_hub(dir: &std::path::Path, durability: &str) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        durability: durability.into(),
        preallocate: false,
        ..Config::default()
    }
}

/// The next `n` events as (kind, objectid, position, live).
async fn events(c: &mut WsClient, n: usize) -> Vec<(String, String, u64, Option<String>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let e = event(c).await;
        out.push((
            e["kind"].as_str().unwrap().to_string(),
            e["objectid"].as_str().unwrap().to_string(),
            e["position"].as_u64().unwrap(),
            e["live"].as_str().map(str::to_string),
        ));
    }
    out
}

async fn no_more(c: &mut WsClient) {
    let more = tokio::time::timeout(Duration::from_millis(300), c.ws.next()).await;
    assert!(more.is_err(), "no extra frame: {more:?}");
}

#[tokio::test]
async fn resume_after_a_restart_is_served_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = disk_hub(dir.path(), "never");
    let ep = "restart/thing";
    let hub = TestHub::start_with(config.clone()).await;
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    let r = subscribe(&mut s, json!({"endpoint": ep})).await;
    let epoch = r["epoch"].clone();
    create(&mut w, ep, json!({"id": "a", "n": 0})).await;
    let seen = event(&mut s).await["position"].as_u64().unwrap();
    drop(s);
    // Missed before the restart.
    let b = create(&mut w, ep, json!({"id": "b"})).await;
    let a1 = update(&mut w, ep, "a", json!({"n": 1})).await;
    create(&mut w, "restart/other", json!({"id": "x"})).await;
    drop(w);
    hub.stop().await;

    let hub = TestHub::start_with(config).await;
    let mut w = hub.ws().await;
    // Missed after it.
    let a2 = update(&mut w, ep, "a", json!({"n": 2})).await;
    let gone = delete(&mut w, ep, "b").await;
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"subscription": "r", "endpoint": ep, "from": seen, "epoch": epoch}),
    )
    .await;
    assert_eq!(r["recovered"], true, "{r}");
    let want = [
        ("CREATE", "b", &b),
        ("UPDATE", "a", &a1),
        ("UPDATE", "a", &a2),
        ("DELETE", "b", &gone),
    ];
    for (kind, id, data) in want {
        let e = event(&mut s).await;
        assert_eq!(
            (e["kind"].as_str(), e["objectid"].as_str()),
            (Some(kind), Some(id)),
            "{e}"
        );
        assert_eq!(
            e["data"], *data,
            "the state, and a DELETE's last state: {e}"
        );
    }
    let live = update(&mut w, ep, "a", json!({"n": 3})).await;
    assert_eq!(event(&mut s).await["position"], live["version"]);
    no_more(&mut s).await;
    drop((w, s));
    hub.stop().await;
}

#[tokio::test]
async fn resume_from_further_back_than_the_window_is_served_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(Config {
        resume_window: 3,
        ..disk_hub(dir.path(), "never")
    })
    .await;
    let ep = "far/thing";
    let mut w = hub.ws().await;
    let a = create(&mut w, ep, json!({"id": "a", "n": 0, "keep": true})).await;
    let mut s = hub.ws().await;
    let r = subscribe(&mut s, json!({"endpoint": ep, "objectid": "a"})).await;
    // The client saw the object at its version (a position: versions are commit positions).
    // The subscription's own position may still be before the CREATE, whose event the
    // fan-out may not have handled yet when the subscription started.
    let (epoch, from) = (r["epoch"].clone(), a["version"].as_u64().unwrap());
    drop(s);
    let mut versions = Vec::new();
    for i in 1..=20 {
        versions.push(update(&mut w, ep, "a", json!({"n": i})).await["version"].clone());
        create(&mut w, ep, json!({"n": i})).await; // another object: not for this subscription
    }
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"endpoint": ep, "objectid": "a", "from": from, "epoch": epoch, "patch": true}),
    )
    .await;
    assert_eq!(r["recovered"], true, "20 changes back, a window of 3: {r}");
    for (i, v) in versions.iter().enumerate() {
        let e = event(&mut s).await;
        assert_eq!(e["version"], *v);
        assert_eq!(e["patch"], true, "the old state comes from the log: {e}");
        assert_eq!(e["data"]["n"], i + 1);
        assert!(
            e["data"].get("keep").is_none(),
            "a patch, not the object: {e}"
        );
    }
    let live = update(&mut w, ep, "a", json!({"n": 99})).await;
    assert_eq!(event(&mut s).await["version"], live["version"]);
    no_more(&mut s).await;
    hub.stop().await;
}

#[tokio::test]
async fn resume_from_segments_a_snapshot_removed_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(Config {
        resume_window: 10,
        segment_bytes: 4096,
        snapshot_min_bytes: 4096,
        resume_log_bytes: Some(16 * 1024),
        ..disk_hub(dir.path(), "never")
    })
    .await;
    let ep = "compact/thing";
    let mut w = hub.ws().await;
    let mut s = hub.ws().await;
    let r = subscribe(&mut s, json!({"endpoint": ep})).await;
    let (epoch, from) = (r["epoch"].clone(), r["position"].as_u64().unwrap());
    drop(s);
    create(&mut w, ep, json!({"id": "a"})).await;
    let pad = "p".repeat(300);
    let mut last = 0;
    for i in 0..300 {
        last = update(&mut w, ep, "a", json!({"i": i, "pad": pad})).await["version"]
            .as_u64()
            .unwrap();
    }
    // Compaction runs on a thread of its own: wait until it removed the first segments.
    let log_dir = dir.path().join("log");
    let first_seg = || {
        let mut names: Vec<String> = std::fs::read_dir(&log_dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        names[0].trim_end_matches(".seg").parse::<u64>().unwrap()
    };
    let t = std::time::Instant::now();
    while first_seg() <= from + 1 {
        assert!(t.elapsed() < WAIT, "the snapshot never compacted the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"endpoint": ep, "from": from, "epoch": epoch, "snapshot": true}),
    )
    .await;
    assert_eq!(r["recovered"], false, "the log no longer reaches back: {r}");
    assert_eq!(r["data"][0]["i"], 299, "the snapshot to reload from");
    // Further back than the window, but within the segments kept for resuming: served.
    let back = last - 20;
    assert!(first_seg() <= back + 1, "the newest segments are kept");
    let mut s2 = hub.ws().await;
    let r = subscribe(
        &mut s2,
        json!({"endpoint": ep, "from": back, "epoch": epoch}),
    )
    .await;
    assert_eq!(r["recovered"], true, "{r}");
    let got = events(&mut s2, 20).await;
    let want: Vec<u64> = (back + 1..=last).collect();
    assert_eq!(got.iter().map(|e| e.2).collect::<Vec<_>>(), want);
    no_more(&mut s2).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_live_query_resumed_from_the_log_tells_enter_change_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let config = disk_hub(dir.path(), "always");
    let ep = "address/address";
    let hub = TestHub::start_with(config.clone()).await;
    let mut w = hub.ws().await;
    create(&mut w, ep, json!({"id": "1", "city": "Envik", "n": 1})).await;
    create(&mut w, ep, json!({"id": "2", "city": "Oslo", "n": 1})).await;
    let mut s = hub.ws().await;
    let cond = json!({"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}]});
    let r = subscribe(
        &mut s,
        json!({"endpoint": ep, "condition": cond, "snapshot": true}),
    )
    .await;
    assert_eq!(r["count"], 1);
    let (epoch, from) = (r["epoch"].clone(), r["position"].as_u64().unwrap());
    drop(s);
    create(&mut w, ep, json!({"id": "3", "city": "Envik"})).await; // enter
    update(&mut w, ep, "1", json!({"n": 2})).await; // change
    update(&mut w, ep, "2", json!({"n": 2})).await; // nothing
    drop(w);
    hub.stop().await;
    let hub = TestHub::start_with(config).await;
    let mut w = hub.ws().await;
    update(&mut w, ep, "2", json!({"city": "Envik"})).await; // enter
    update(&mut w, ep, "1", json!({"city": "Bergen"})).await; // leave
    delete(&mut w, ep, "3").await; // leave
    create(&mut w, ep, json!({"id": "4", "city": "Oslo"})).await; // nothing
    let mut s = hub.ws().await;
    let r = subscribe(
        &mut s,
        json!({"endpoint": ep, "condition": cond, "from": from, "epoch": epoch}),
    )
    .await;
    assert_eq!(r["recovered"], true, "{r}");
    let got: Vec<(String, String, String)> = events(&mut s, 5)
        .await
        .into_iter()
        .map(|(k, id, _, live)| (k, id, live.unwrap()))
        .collect();
    let want = [
        ("CREATE", "3", "enter"),
        ("UPDATE", "1", "change"),
        ("UPDATE", "2", "enter"),
        ("UPDATE", "1", "leave"),
        ("DELETE", "3", "leave"),
    ]
    .map(|(k, id, l)| (k.to_string(), id.to_string(), l.to_string()));
    assert_eq!(got, want);
    update(&mut w, ep, "4", json!({"city": "Envik"})).await;
    let e = event(&mut s).await;
    assert_eq!(
        (e["objectid"].as_str(), e["live"].as_str()),
        (Some("4"), Some("enter"))
    );
    no_more(&mut s).await;
    hub.stop().await;
}
