//! WebSocket sessions as a client sees them: both encodings, correlation ids, many calls in
//! flight, concurrent sockets, pings, closing, limits and clients that stop reading.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Config, Enc, TestHub, WsClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Only there so that a broken hub fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

/// The next data frame with the kind it came in.
async fn recv_frame(c: &mut WsClient) -> (Enc, Value) {
    loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("the socket is open")
            .expect("a frame");
        match m {
            Message::Text(t) => return (Enc::Json, serde_json::from_str(&t).expect("JSON")),
            Message::Binary(b) => {
                return (
                    Enc::MsgPack,
                    rmp_serde::from_slice(&b).expect("MessagePack"),
                )
            }
            Message::Close(f) => panic!("the hub closed the socket: {f:?}"),
            _ => continue,
        }
    }
}

/// Sends `frame` with `requestid` in `enc` and returns the reply, which must come in the same
/// encoding and carry the same requestid.
async fn call_as(c: &mut WsClient, mut frame: Value, rid: Value, enc: Enc) -> Value {
    frame["requestid"] = rid.clone();
    c.send(&frame, enc).await;
    let (kind, reply) = recv_frame(c).await;
    assert_eq!(kind, enc, "the reply to {frame} is encoded like the call");
    assert_eq!(reply["requestid"], rid, "{reply}");
    assert_eq!(reply["type"], "reply", "{reply}");
    reply
}

fn is_uuid(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.len() == 36
        && s.chars().enumerate().all(|(i, ch)| match i {
            8 | 13 | 18 | 23 => ch == '-',
            _ => ch.is_ascii_hexdigit(),
        })
}

/// Replaces what differs between two runs of the same calls (timestamps, error ids) by
/// placeholders, after checking their form.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, val) in o.iter_mut() {
                match k.as_str() {
                    "created" | "updated" if val.is_string() => {
                        let s = val.as_str().unwrap();
                        assert!(
                            s.len() >= 20 && s.as_bytes()[10] == b'T',
                            "{k} is an RFC 3339 time: {s}"
                        );
                        *val = json!("<time>");
                    }
                    "errorid" => {
                        assert!(is_uuid(val), "errorid is a UUID: {val}");
                        *val = json!("<errorid>");
                    }
                    _ => normalize(val),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// One user session of every method on a fresh hub, all calls in one encoding.
async fn every_method(enc: Enc) -> Vec<Value> {
    let hub = TestHub::start().await;
    let mut c = hub.ws().await;
    let ep = "address/address";
    let calls = vec![
        json!({"endpoint": ep, "method": "CREATE", "objectid": "a1", "token": "t",
            "data": {"streetName": "Larss Gata", "streetNumber": 6, "city": "Envik",
                     "latitude": -76.4406, "segment": ["s1"], "attributes": {}}}),
        json!({"endpoint": ep, "method": "CREATE", "objectid": "a2",
            "data": {"streetName": "Övre Åkerallén", "streetNumber": 2, "city": "Envik"}}),
        json!({"endpoint": ep, "method": "CREATE", "objectid": "a3",
            "data": {"streetName": "Östra Backgärdet", "streetNumber": 222, "city": "Götefred"}}),
        json!({"endpoint": ep, "method": "OPEN", "objectid": "a1"}),
        json!({"endpoint": ep, "method": "UPDATE", "objectid": "a1",
            "data": {"streetNumber": 7, "segment": null}}),
        json!({"endpoint": ep, "method": "LIST", "parameters": {
            "sorting": true, "sorting.by": "streetNumber", "sorting.order": "ASC",
            "condition": true, "condition.values": {"items": [], "subgroups": [
                {"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}],
                 "subgroups": [], "logic": "AND"}], "logic": "AND"},
            "pagination": true, "pagination.size": 1, "pagination.from": 0}}),
        json!({"endpoint": ep, "method": "LIST",
            "parameters": "sorting=true&sorting.by=streetNumber&sorting.order=DESC"}),
        json!({"endpoint": ep, "method": "INDEX", "objectid": "a1"}),
        json!({"endpoint": ep, "method": "RUN", "objectid": "a1", "data": {"x": 1}}),
        json!({"endpoint": ep, "method": "DELETE", "objectid": "a2"}),
        json!({"endpoint": ep, "method": "OPEN", "objectid": "a2"}),
        json!({"endpoint": "nothing/here", "method": "OPEN", "objectid": "a1"}),
        json!({"endpoint": ep, "method": "LIST",
            "parameters": {"sorting": true, "sorting.by": "city", "sorting.order": "SIDEWAYS"}}),
        json!({"endpoint": ep, "method": "FETCH"}),
        json!({"endpoint": ep, "method": "CREATE", "data": 5}),
        json!({"endpoint": ep, "method": "LIST"}),
    ];
    let mut out = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let mut reply = call_as(&mut c, call, json!(format!("r{i}")), enc).await;
        normalize(&mut reply);
        out.push(reply);
    }
    hub.stop().await;
    out
}

#[tokio::test]
async fn json_and_msgpack_calls_get_the_same_envelopes() {
    let json_run = every_method(Enc::Json).await;
    let msgpack_run = every_method(Enc::MsgPack).await;
    for (i, (j, m)) in json_run.iter().zip(&msgpack_run).enumerate() {
        assert_eq!(j, m, "call r{i}: JSON and MessagePack replies differ");
    }
    assert_eq!(json_run.len(), msgpack_run.len());

    // And the replies are the right ones.
    let r = &json_run;
    for ok in [0, 1, 2, 3, 4, 5, 6, 7, 9, 15] {
        assert_eq!(r[ok]["success"], true, "r{ok}: {}", r[ok]);
        assert_eq!(r[ok]["status"], 0, "r{ok}");
        assert_eq!(r[ok]["dataType"], "JSON", "r{ok}");
    }
    assert_eq!(r[0]["data"]["id"], "a1");
    assert_eq!(r[0]["data"]["latitude"], -76.4406);
    assert_eq!(r[3]["data"]["streetName"], "Larss Gata");
    assert_eq!(r[4]["data"]["streetNumber"], 7);
    assert!(
        r[4]["data"].get("segment").is_none(),
        "null removes a field"
    );
    // Envik, sorted by number, first page of one: a2 (2) before a1 (7); two matches.
    assert_eq!(r[5]["count"], 2);
    assert_eq!(r[5]["data"].as_array().unwrap().len(), 1);
    assert_eq!(r[5]["data"][0]["id"], "a2");
    let ids: Vec<&str> = r[6]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a3", "a1", "a2"]);
    assert_eq!(r[7]["data"]["id"], "a1");
    let failures = [
        (8, "NO_PROVIDER"),
        (10, "DO_NOT_EXIST"),
        (11, "DO_NOT_EXIST"),
        (12, "INVALID_PARAMETERS"),
        (13, "INVALID_REQUEST"),
        (14, "INVALID_REQUEST"),
    ];
    for (i, code) in failures {
        assert_eq!(r[i]["success"], false, "r{i}: {}", r[i]);
        assert_eq!(r[i]["errorcode"], code, "r{i}: {}", r[i]);
        assert_eq!(r[i]["errorid"], "<errorid>", "r{i} has an errorid");
        assert!(r[i]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(r[15]["count"], 2, "a2 was deleted");
}

#[tokio::test]
async fn requestids_are_echoed_as_sent() {
    let hub = TestHub::start().await;
    let mut c = hub.ws().await;
    let list = json!({"endpoint": "inventory/device", "method": "CREATE", "data": {"n": 1}});
    for (rid, enc) in [
        (json!("abc-1"), Enc::Json),
        (json!("abc-2"), Enc::MsgPack),
        (json!(42), Enc::Json),
        (json!(43), Enc::MsgPack),
        (json!(-7), Enc::Json),
        (json!(1.5), Enc::Json),
        (json!(""), Enc::MsgPack),
    ] {
        let reply = call_as(&mut c, list.clone(), rid.clone(), enc).await;
        assert_eq!(reply["success"], true, "{reply}");
    }

    // Without a requestid, the reply has none.
    for enc in [Enc::Json, Enc::MsgPack] {
        c.send(&list, enc).await;
        let (kind, reply) = recv_frame(&mut c).await;
        assert_eq!(kind, enc);
        assert_eq!(reply["success"], true, "{reply}");
        assert!(reply.get("requestid").is_none(), "{reply}");
    }

    // A frame that cannot be decoded: an error reply without requestid, in the frame's kind.
    for (raw, enc) in [
        (Message::text("{\"requestid\": 9, \"method\": "), Enc::Json),
        (Message::Binary(vec![0xc1, 0x00].into()), Enc::MsgPack),
    ] {
        c.send_raw(raw).await;
        let (kind, reply) = recv_frame(&mut c).await;
        assert_eq!(kind, enc);
        assert_eq!(reply["success"], false, "{reply}");
        assert_eq!(reply["errorcode"], "INVALID_REQUEST", "{reply}");
        assert!(is_uuid(&reply["errorid"]), "{reply}");
        assert!(reply.get("requestid").is_none(), "{reply}");
    }

    // Decodes, but is no call: the error carries the requestid when it has a usable one.
    c.send(&json!({"requestid": "bad-1", "endpoint": "a/b"}), Enc::Json)
        .await;
    let (_, reply) = recv_frame(&mut c).await;
    assert_eq!(reply["requestid"], "bad-1");
    assert_eq!(reply["errorcode"], "INVALID_REQUEST", "{reply}");
    c.send(&json!([1, 2, 3]), Enc::MsgPack).await;
    let (kind, reply) = recv_frame(&mut c).await;
    assert_eq!(kind, Enc::MsgPack);
    assert_eq!(reply["errorcode"], "INVALID_REQUEST", "{reply}");
    assert!(reply.get("requestid").is_none(), "{reply}");
    c.send(
        &json!({"requestid": {"no": 1}, "endpoint": "a/b", "method": "LIST"}),
        Enc::Json,
    )
    .await;
    let (_, reply) = recv_frame(&mut c).await;
    assert_eq!(reply["errorcode"], "INVALID_REQUEST", "{reply}");
    assert!(reply.get("requestid").is_none(), "{reply}");

    // The socket is still good.
    let reply = call_as(&mut c, list, json!("after"), Enc::Json).await;
    assert_eq!(reply["success"], true);
    hub.stop().await;
}

#[tokio::test]
async fn five_hundred_calls_in_flight_on_one_socket() {
    let hub = TestHub::start().await;
    let mut c = hub.ws().await;
    let n = 500;
    for i in 0..n {
        let enc = if i % 2 == 0 { Enc::Json } else { Enc::MsgPack };
        let frame = json!({"requestid": i, "endpoint": "load/item", "method": "CREATE",
            "data": {"i": i}});
        c.send(&frame, enc).await;
    }
    let mut seen = HashSet::new();
    for _ in 0..n {
        let (kind, reply) = recv_frame(&mut c).await;
        let rid = reply["requestid"].as_u64().expect("a numeric requestid");
        assert!(seen.insert(rid), "requestid {rid} answered twice");
        let expected = if rid % 2 == 0 {
            Enc::Json
        } else {
            Enc::MsgPack
        };
        assert_eq!(
            kind, expected,
            "the reply to {rid} is encoded like the call"
        );
        assert_eq!(reply["success"], true, "{reply}");
        assert_eq!(
            reply["data"]["i"], rid,
            "reply {rid} carries its own call's object"
        );
    }
    assert_eq!(seen.len(), n as usize);
    let list = c
        .call(json!({"endpoint": "load/item", "method": "LIST",
            "parameters": {"pagination": true, "pagination.size": 1}}))
        .await;
    assert_eq!(list["count"], n, "{list}");
    hub.stop().await;
}

#[tokio::test]
async fn sockets_write_concurrently_without_losing_updates() {
    let hub = TestHub::start().await;
    let mut c = hub.ws().await;
    let created = c
        .call(
            json!({"endpoint": "shared/doc", "method": "CREATE", "objectid": "doc",
            "data": {"title": "shared"}}),
        )
        .await;
    assert_eq!(created["success"], true, "{created}");
    let sockets = 8;
    let updates = 40;
    let mut tasks = Vec::new();
    for k in 0..sockets {
        let mut s = hub.ws().await;
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..updates {
                let enc = if (k + i) % 2 == 0 {
                    Enc::Json
                } else {
                    Enc::MsgPack
                };
                let reply = s
                    .call_enc(
                        json!({"endpoint": "shared/doc", "method": "UPDATE", "objectid": "doc",
                            "data": {format!("s{k}"): i}}),
                        enc,
                    )
                    .await;
                assert_eq!(reply["success"], true, "{reply}");
                assert_eq!(reply["data"][format!("s{k}")], i);
                versions.push(reply["data"]["version"].as_u64().unwrap());
            }
            versions
        }));
    }
    let mut all = HashSet::new();
    let mut highest = 0;
    for t in tasks {
        let versions = t.await.unwrap();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "one socket's updates get increasing versions: {versions:?}"
        );
        for v in versions {
            assert!(all.insert(v), "version {v} given to two updates");
            highest = highest.max(v);
        }
    }
    assert_eq!(all.len(), sockets * updates);
    let doc = c
        .call(json!({"endpoint": "shared/doc", "method": "OPEN", "objectid": "doc"}))
        .await;
    assert_eq!(doc["data"]["version"], highest, "{doc}");
    assert_eq!(doc["data"]["title"], "shared");
    for k in 0..sockets {
        assert_eq!(
            doc["data"][format!("s{k}")],
            updates - 1,
            "socket {k}'s last update is kept"
        );
    }
    hub.stop().await;
}

#[tokio::test]
async fn versions_strictly_increase_across_updates() {
    let hub = TestHub::start().await;
    let mut c = hub.ws().await;
    let created = c
        .call(json!({"endpoint": "inventory/device", "method": "CREATE",
            "data": {"name": "switch"}}))
        .await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert!(is_uuid(&created["data"]["id"]), "a generated id is a UUID");
    let first = created["data"]["version"].as_u64().unwrap();
    let mut last = first;
    for i in 0..20 {
        let r = c
            .call(
                json!({"endpoint": "inventory/device", "method": "UPDATE", "objectid": id,
                "data": {"name": format!("switch {i}")}}),
            )
            .await;
        let v = r["data"]["version"].as_u64().unwrap();
        assert!(v > last, "version {v} after {last}");
        assert_eq!(r["data"]["id"], created["data"]["id"]);
        assert_eq!(r["data"]["created"], created["data"]["created"]);
        last = v;
    }
    let stale = c
        .call(
            json!({"endpoint": "inventory/device", "method": "UPDATE", "objectid": id,
            "data": {"name": "stale", "version": first}}),
        )
        .await;
    assert_eq!(stale["errorcode"], "CONFLICT", "{stale}");
    let open = c
        .call(json!({"endpoint": "inventory/device", "method": "OPEN", "objectid": id}))
        .await;
    assert_eq!(open["data"]["version"], last);
    assert_eq!(open["data"]["name"], "switch 19");
    hub.stop().await;
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let hub = TestHub::start().await;
    let mut c = hub.ws().await;
    for payload in [&b"hello"[..], b"", b"\x00\xff binary"] {
        c.send_raw(Message::Ping(payload.to_vec().into())).await;
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a pong within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(m, Message::Pong(payload.to_vec().into()));
    }
    // Calls around a ping are answered too.
    let r = c
        .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {}}))
        .await;
    assert_eq!(r["success"], true);
    hub.stop().await;
}

/// Reads until the hub closes: the close frame it sent (`None` if none came; the frame itself
/// may carry no code), and how many data frames came before.
async fn read_to_close(c: &mut WsClient) -> (Option<Option<CloseFrame>>, usize) {
    let mut frames = 0;
    let mut close = None;
    loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("the hub closes the socket within 30 s")
        {
            Some(Ok(Message::Close(f))) => close = Some(f),
            Some(Ok(Message::Text(_) | Message::Binary(_))) => frames += 1,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (close, frames),
        }
    }
}

fn code(close: Option<Option<CloseFrame>>) -> Option<CloseCode> {
    close.flatten().map(|f| f.code)
}

#[tokio::test]
async fn a_client_that_closes_gets_a_clean_close() {
    let hub = TestHub::start().await;
    let mut c = hub.ws().await;
    let r = c
        .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {}}))
        .await;
    assert_eq!(r["success"], true);
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The hub answers the close frame and then closes the TCP connection.
    let (close, frames) = read_to_close(&mut c).await;
    assert_eq!(frames, 0);
    assert_eq!(code(close), Some(CloseCode::Normal));

    // Closing with calls still in flight is clean too.
    let mut c = hub.ws().await;
    for i in 0..50 {
        c.send(
            &json!({"requestid": i, "endpoint": "a/b", "method": "CREATE", "data": {"i": i}}),
            Enc::Json,
        )
        .await;
    }
    c.ws.close(None).await.unwrap();
    let (close, _) = read_to_close(&mut c).await;
    assert!(close.is_some(), "the hub answers the close frame");

    // The hub serves on.
    let mut c = hub.ws().await;
    let r = c.call(json!({"endpoint": "a/b", "method": "LIST"})).await;
    assert_eq!(r["success"], true);
    hub.stop().await;
}

#[tokio::test]
async fn a_plain_http_request_to_ws_gets_an_error_envelope() {
    let hub = TestHub::start().await;
    for headers in [
        &[][..],
        &[("Upgrade", "websocket"), ("Connection", "Upgrade")][..],
        &[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")][..],
    ] {
        let r = hub.http("GET", "/ws", headers, b"").await;
        assert_eq!(r.status, 400, "{headers:?}");
        let body = r.json();
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["errorcode"], "INVALID_REQUEST", "{body}");
        assert!(is_uuid(&body["errorid"]), "{body}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn the_handshake_timeout_closes_silent_connections_only() {
    let hub = TestHub::start_with(Config {
        handshake_timeout_ms: 200,
        ..Config::default()
    })
    .await;
    // A connection that never sends a request, and one that stops halfway through it.
    for sent in [&b""[..], b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web"] {
        let mut s = TcpStream::connect(hub.addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the hub closes a connection stuck in its handshake"
        );
    }
    // An established WebSocket is not subject to it.
    let mut c = hub.ws().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = c
        .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {}}))
        .await;
    assert_eq!(r["success"], true);
    hub.stop().await;
}

const BLOB: usize = 128 * 1024;

/// Creates `big/blob` `id`, an object of about 128 KiB, so that every UPDATE reply is large.
async fn create_blob(c: &mut WsClient, id: &str) {
    let r = c
        .call(
            json!({"endpoint": "big/blob", "method": "CREATE", "objectid": id,
            "data": {"blob": "x".repeat(BLOB)}}),
        )
        .await;
    assert_eq!(r["success"], true);
}

/// Sends `n` small UPDATEs of `id`, each adding one field, without reading a reply.
async fn send_updates(c: &mut WsClient, id: &str, n: usize) {
    for i in 0..n {
        c.send(
            &json!({"requestid": i, "endpoint": "big/blob", "method": "UPDATE", "objectid": id,
                "data": {format!("n{i}"): true}}),
            Enc::Json,
        )
        .await;
    }
}

/// How many of those UPDATEs the hub has run so far.
async fn updates_applied(c: &mut WsClient, id: &str) -> usize {
    let r = c
        .call(json!({"endpoint": "big/blob", "method": "OPEN", "objectid": id}))
        .await;
    r["data"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with('n'))
        .count()
}

/// Waits until the hub has stopped running those UPDATEs (or has run all `n`): the number
/// applied stays the same over half a second. Returns that number.
async fn wait_until_stalled(control: &mut WsClient, id: &str, n: usize) -> usize {
    let mut applied = updates_applied(control, id).await;
    let mut unchanged = 0;
    let mut polls = 0;
    while unchanged < 5 && applied < n && polls < 300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = updates_applied(control, id).await;
        unchanged = if now == applied { unchanged + 1 } else { 0 };
        applied = now;
        polls += 1;
    }
    applied
}

#[tokio::test]
async fn a_client_that_stops_reading_is_held_back_and_loses_nothing() {
    let hub = TestHub::start_with(Config {
        outbound_queue: 4,
        max_calls_in_flight: 4,
        ..Config::default()
    })
    .await;
    let mut control = hub.ws().await;
    create_blob(&mut control, "b").await;
    // 1,200 replies of 128 KiB (150 MiB) that the client does not read: far more than the
    // socket buffers hold.
    let n = 1200;
    let mut stalled = hub.ws().await;
    send_updates(&mut stalled, "b", n).await;

    // The hub runs calls only as fast as their replies leave: it stops reading from the
    // socket once its queue and calls in flight are full.
    let applied = wait_until_stalled(&mut control, "b", n).await;
    assert!(
        applied < n / 2,
        "the hub ran {applied} of {n} calls whose replies nobody read: it buffers without bound"
    );

    // Meanwhile other clients are served (the control socket above), and once the client
    // reads again every reply arrives, each once.
    let mut seen = HashSet::new();
    for _ in 0..n {
        let (_, reply) = recv_frame(&mut stalled).await;
        assert_eq!(reply["success"], true, "{}", reply["message"]);
        assert!(seen.insert(reply["requestid"].as_u64().unwrap()));
    }
    assert_eq!(updates_applied(&mut control, "b").await, n);
    hub.stop().await;
}

#[tokio::test]
async fn stopping_the_hub_drops_a_socket_whose_client_stopped_reading() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        outbound_queue: 4,
        max_calls_in_flight: 4,
        shutdown_grace_ms: 300,
        durability: "memory".into(),
        auth: flowhub::auth::AuthConfig::open(),
        ..Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(flowhub::server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let url = format!("ws://{addr}/ws");
    let mut control = WsClient::connect(&url).await;
    create_blob(&mut control, "b").await;
    let mut stalled = WsClient::connect(&url).await;
    send_updates(&mut stalled, "b", 600).await;
    // Its replies fill the socket buffers, the session's queue and its calls in flight.
    let applied = wait_until_stalled(&mut control, "b", 600).await;
    assert!(applied < 600, "the hub stopped reading from the socket");

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("the hub stops within its grace even with a client that does not read")
        .unwrap()
        .unwrap();
    // Nothing of the hub is left: the socket is gone, so the client's writes fail.
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            if stalled
                .ws
                .send(Message::Ping(vec![1].into()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the session of a client that stopped reading outlives the hub"
    );
}

#[tokio::test]
async fn websocket_sessions_count_against_max_connections() {
    let hub = TestHub::start_with(Config {
        max_connections: 2,
        ..Config::default()
    })
    .await;
    let mut a = hub.ws().await;
    let mut b = hub.ws().await;
    for c in [&mut a, &mut b] {
        let r = c
            .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {}}))
            .await;
        assert_eq!(r["success"], true);
    }
    let url = hub.ws_url();
    let mut third = tokio::spawn(async move { WsClient::connect(&url).await });
    // Give a hub that does not count sessions the time to let the third one in.
    let early = tokio::time::timeout(Duration::from_secs(1), &mut third).await;
    assert!(
        early.is_err(),
        "a third WebSocket got in while max_connections is 2"
    );
    // When one closes, the waiting one is let in.
    a.ws.close(None).await.unwrap();
    let _ = read_to_close(&mut a).await;
    let mut c = tokio::time::timeout(WAIT, third)
        .await
        .expect("the third WebSocket gets in once one closed")
        .unwrap();
    let r = c.call(json!({"endpoint": "a/b", "method": "LIST"})).await;
    assert_eq!(r["count"], 2, "{r}");

    // A client that stops reading and then vanishes frees its place too.
    create_blob(&mut c, "b").await;
    send_updates(&mut c, "b", 200).await;
    drop(c);
    let mut d = tokio::time::timeout(WAIT, WsClient::connect(&hub.ws_url()))
        .await
        .expect("a place is free again");
    let r = d.call(json!({"endpoint": "a/b", "method": "LIST"})).await;
    assert_eq!(r["success"], true);
    drop(b);
    hub.stop().await;
}

#[tokio::test]
async fn too_large_and_invalid_messages_get_answers_or_close_codes() {
    let hub = TestHub::start_with(Config {
        max_frame_bytes: 1000,
        ..Config::default()
    })
    .await;
    let mut c = hub.ws().await;
    // Over the limit: a TOO_LARGE reply, and the socket stays.
    let big = json!({"requestid": 1, "endpoint": "a/b", "method": "CREATE",
        "data": {"s": "x".repeat(2000)}});
    c.send(&big, Enc::Json).await;
    let (_, reply) = recv_frame(&mut c).await;
    assert_eq!(reply["errorcode"], "TOO_LARGE", "{reply}");
    let r = c
        .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {}}))
        .await;
    assert_eq!(r["success"], true);
    // Over four times the limit: closed with 1009.
    c.send_raw(Message::Binary(vec![0u8; 5000].into())).await;
    let (close, _) = read_to_close(&mut c).await;
    assert_eq!(code(close), Some(CloseCode::Size));

    // Many bad frames in a row on a socket that does not read: each is answered.
    let mut c = hub.ws().await;
    for _ in 0..300 {
        c.send_raw(Message::text("not json")).await;
    }
    let mut answers = HashMap::new();
    for _ in 0..300 {
        let (_, reply) = recv_frame(&mut c).await;
        *answers
            .entry(reply["errorcode"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(answers.get("INVALID_REQUEST"), Some(&300));
    hub.stop().await;
}

#[tokio::test]
async fn the_conformance_echo_path_is_off_by_default_and_shares_the_limits() {
    // Off by default: the path is no WebSocket.
    let hub = TestHub::start().await;
    let r = hub.http("GET", "/ws-echo", &[], b"").await;
    assert_eq!(r.status, 404);
    hub.stop().await;

    let hub = TestHub::start_with(Config {
        max_frame_bytes: 1000,
        ws_echo_path: Some("/ws-echo".into()),
        ..Config::default()
    })
    .await;
    let mut c = WsClient::connect(&format!("ws://{}/ws-echo", hub.addr)).await;
    // Text and binary messages come back unchanged, not read as calls.
    for msg in [
        Message::text("not json"),
        Message::text(r#"{"endpoint": "a/b", "method": "CREATE", "data": {}}"#),
        Message::text(""),
        Message::Binary(vec![0u8, 0xff, 0x80].into()),
    ] {
        c.send_raw(msg.clone()).await;
        let back = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("an echo within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    // In the order they came, also when many are in flight.
    for i in 0..300 {
        c.send_raw(Message::text(format!("m{i}"))).await;
    }
    for i in 0..300 {
        let back = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("an echo within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(format!("m{i}")));
    }
    // The echo created nothing.
    let mut calls = hub.ws().await;
    let r = calls
        .call(json!({"endpoint": "a/b", "method": "LIST"}))
        .await;
    assert_eq!(r["errorcode"], "DO_NOT_EXIST", "{r}");
    // The same limits as /ws: over max_frame_bytes a TOO_LARGE reply, over four times it 1009.
    c.send_raw(Message::text("x".repeat(2000))).await;
    let (_, reply) = recv_frame(&mut c).await;
    assert_eq!(reply["errorcode"], "TOO_LARGE", "{reply}");
    c.send_raw(Message::Binary(vec![0u8; 5000].into())).await;
    let (close, _) = read_to_close(&mut c).await;
    assert_eq!(code(close), Some(CloseCode::Size));
    hub.stop().await;
}

/// A client may send its first frames right behind the upgrade request, without waiting for
/// the 101: they reach the hub in the same read as the request and must be served, not lost.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_answered() {
    let hub = TestHub::start().await;
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    let call = json!({"requestid": 7, "endpoint": "early/bird", "method": "CREATE",
        "data": {"id": "e1", "n": 1}})
    .to_string();
    let mut bytes = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // One masked text frame (a client's frames are masked), its length under 126.
    assert!(call.len() < 126);
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | call.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(call.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&bytes).await.unwrap();
    // The 101's head, then whatever came after it belongs to the WebSocket.
    let mut head = Vec::new();
    let end = loop {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the hub closed the connection: {head:?}");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_partially_read(
        s,
        head[end..].to_vec(),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let reply = match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
        other => panic!("no reply: {other:?}"),
    };
    assert_eq!(reply["requestid"], 7, "{reply}");
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["data"]["id"], "e1", "{reply}");
    hub.stop().await;
}
