//! Hostile and broken input over HTTP and WebSocket: each gets a clear error envelope (its
//! errorcode and HTTP status) or a clean close with the documented close code, never a crash;
//! after each, a LIST shows that nothing stored was lost or changed and that the hub answers.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Config, Enc, HttpReply, TestHub, WsClient};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const MAX_BODY: usize = 4096;
const MAX_FRAME: usize = 4096;
const MAX_DEPTH: usize = 16;
const COLL: &str = "/api/address/address/address/";
const ITEM: &str = "/api/address/address/address/addr-1";

/// A hub with small limits and a few stored objects, and what a LIST of them looks like.
struct Fixture {
    hub: TestHub,
    snapshot: Vec<Value>,
}

async fn fixture() -> Fixture {
    let hub = TestHub::start_with(Config {
        max_body_bytes: MAX_BODY,
        max_frame_bytes: MAX_FRAME,
        max_depth: MAX_DEPTH,
        ..Config::default()
    })
    .await;
    let mut ws = hub.ws().await;
    for i in 1..=5 {
        let r = ws
            .call(json!({"endpoint": "address/address", "method": "CREATE",
                "data": {"id": format!("addr-{i}"), "city": "Envik", "streetNumber": i,
                    "nested": {"list": [1, 2, {"deep": true}]}}}))
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    let r = ws
        .call(
            json!({"endpoint": "address/address", "method": "CREATE", "namespace": "t1",
            "data": {"id": "addr-1", "city": "Norrby"}}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    let mut f = Fixture {
        hub,
        snapshot: Vec::new(),
    };
    f.snapshot = f.stored().await;
    assert_eq!(f.snapshot[0]["count"], 5);
    assert_eq!(f.snapshot[1]["count"], 1);
    f
}

impl Fixture {
    /// LIST of both namespaces over HTTP.
    async fn stored(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for ns in ["", "t1"] {
            let r = self
                .hub
                .http(
                    "GET",
                    COLL,
                    &[
                        ("Flow-Request-Method", "LIST"),
                        ("Flow-Request-Namespace", ns),
                    ],
                    b"",
                )
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            out.push(r.json());
        }
        out
    }

    /// The hub still answers, and every stored object is there, unchanged.
    async fn assert_intact(&self, after: &str) {
        assert_eq!(self.stored().await, self.snapshot, "after {after}");
    }
}

/// An error envelope with this status and code.
fn assert_error(r: &HttpReply, status: u16, code: &str, what: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{what}: {body}");
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: the reply is no JSON envelope ({e}): {body}"));
    assert_envelope(&v, code, what);
}

fn assert_envelope(v: &Value, code: &str, what: &str) {
    assert_eq!(v["success"], false, "{what}: {v}");
    assert_eq!(v["status"], 0, "{what}: {v}");
    assert_eq!(v["errorcode"], code, "{what}: {v}");
    assert_eq!(v["dataType"], "JSON", "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(
        uuid::Uuid::parse_str(v["errorid"].as_str().unwrap_or("")).is_ok(),
        "{what}: {v}"
    );
}

/// Sends raw bytes as an HTTP request and returns the status and body (hyper answers some
/// broken requests itself, without an envelope).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s");
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    (status, raw[(head_end + 4).min(raw.len())..].to_vec())
}

/// Nesting depth of a value as the hub counts it inside a frame (the frame's own level and
/// the `parameters` field's are added by the caller's frame).
fn common_depth(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(common_depth).max().unwrap_or(0),
        Value::Object(o) => o.values().map(common_depth).max().unwrap_or(0),
        _ => return 0,
    }
}

fn nested(depth: usize) -> String {
    format!("{{\"a\": {}1{}}}", "[".repeat(depth), "]".repeat(depth))
}

fn condition_params(condition: Value) -> String {
    json!({"condition": true, "condition.values": condition}).to_string()
}

/// Parameters that do not parse, each with the reason.
fn bad_parameters() -> Vec<(&'static str, String)> {
    let mut deep = json!({"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}]});
    for _ in 0..20 {
        deep = json!({"subgroups": [deep]});
    }
    vec![
        ("not JSON", "{not json".to_string()),
        ("a bare word", "novalue".to_string()),
        ("a pair without =", "sorting.by".to_string()),
        ("a number", "42".to_string()),
        ("a list of non-pairs", "[1, 2, 3]".to_string()),
        (
            "bad sorting.order",
            r#"{"sorting.by": "city", "sorting.order": "UP"}"#.to_string(),
        ),
        (
            "bad sorting.order as a pair",
            "sorting.by=city&sorting.order=SIDEWAYS".to_string(),
        ),
        ("unknown LIST key", r#"{"sorting.bye": "city"}"#.to_string()),
        (
            "negative page size",
            r#"{"pagination.size": -1}"#.to_string(),
        ),
        ("page size as text", "pagination.size=ten".to_string()),
        ("flag as an object", r#"{"sorting": [1]}"#.to_string()),
        (
            "condition values as a number",
            r#"{"condition.values": 5}"#.to_string(),
        ),
        (
            "condition items not a list",
            condition_params(json!({"items": {"key": "city"}})),
        ),
        (
            "unknown operator",
            condition_params(
                json!({"items": [{"key": "city", "operator": "LIKE", "value": "Envik"}]}),
            ),
        ),
        (
            "item without a key",
            condition_params(json!({"items": [{"operator": "EQUAL", "value": "Envik"}]})),
        ),
        (
            "item without an operator",
            condition_params(json!({"items": [{"key": "city", "value": "Envik"}]})),
        ),
        (
            "unknown logic",
            condition_params(json!({"items": [], "logic": "XOR"})),
        ),
        (
            "subgroups not a list",
            condition_params(json!({"subgroups": "all"})),
        ),
        ("a condition tree too deep", condition_params(deep)),
        (
            "condition values as broken JSON text",
            r#"{"condition": true, "condition.values": "{\"items\": ["}"#.to_string(),
        ),
    ]
}

#[tokio::test]
async fn bad_http_requests_get_error_envelopes_and_change_nothing() {
    let f = fixture().await;
    let hub = &f.hub;
    let long_id = "x".repeat(201);
    let long_ns = "n".repeat(129);
    let long_endpoint = format!("/api/address/{}/", "e".repeat(201));
    let nine_segments = "/api/address/address/b/c/d/e/f/g/h/i/";
    let over = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_BODY));
    let way_over = format!("{{\"a\": \"{}\"}}", "x".repeat(3 * MAX_BODY));
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // Bodies.
        (
            "malformed JSON body",
            "POST",
            COLL.into(),
            vec![],
            br#"{"city": "Envik","#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "malformed JSON body on UPDATE",
            "POST",
            ITEM.into(),
            vec![],
            b"{".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "body that is no JSON",
            "POST",
            COLL.into(),
            vec![],
            b"hello".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "JSON body with invalid UTF-8",
            "POST",
            COLL.into(),
            vec![],
            b"{\"a\": \"\xff\xfe\"}".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "two JSON values",
            "POST",
            COLL.into(),
            vec![],
            b"{} {}".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "malformed MessagePack body",
            "POST",
            COLL.into(),
            vec![("Content-Type", "application/msgpack")],
            vec![0xc1],
            400,
            "INVALID_REQUEST",
        ),
        (
            "truncated MessagePack body",
            "POST",
            COLL.into(),
            vec![("Content-Type", "application/msgpack")],
            vec![0x82, 0xa1, b'a'],
            400,
            "INVALID_REQUEST",
        ),
        (
            "body over max_body_bytes",
            "POST",
            COLL.into(),
            vec![],
            over.clone().into_bytes(),
            413,
            "TOO_LARGE",
        ),
        (
            "UPDATE body over max_body_bytes",
            "POST",
            ITEM.into(),
            vec![],
            over.into_bytes(),
            413,
            "TOO_LARGE",
        ),
        (
            "body three times max_body_bytes",
            "POST",
            COLL.into(),
            vec![],
            way_over.into_bytes(),
            413,
            "TOO_LARGE",
        ),
        (
            "body nested deeper than max_depth",
            "POST",
            COLL.into(),
            vec![],
            nested(MAX_DEPTH + 1).into_bytes(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "body nested far deeper than max_depth",
            "POST",
            ITEM.into(),
            vec![],
            nested(1000).into_bytes(),
            400,
            "INVALID_REQUEST",
        ),
        // Methods and the shape of a call.
        (
            "unknown method",
            "GET",
            COLL.into(),
            vec![("Flow-Request-Method", "FETCH")],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "unknown method in the query string",
            "GET",
            format!("{COLL}?method=DROP"),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "method with trailing junk",
            "GET",
            COLL.into(),
            vec![("Flow-Request-Method", "LIST; DELETE")],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "data as an array for UPDATE",
            "POST",
            ITEM.into(),
            vec![],
            b"[1, 2]".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "data as a string for CREATE",
            "POST",
            COLL.into(),
            vec![],
            br#""text""#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "data as a number for UPDATE",
            "PUT",
            ITEM.into(),
            vec![],
            b"7".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "missing objectid for OPEN",
            "GET",
            COLL.into(),
            vec![("Flow-Request-Method", "OPEN")],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "missing objectid for UPDATE",
            "POST",
            COLL.into(),
            vec![("Flow-Request-Method", "UPDATE")],
            br#"{"a": 1}"#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "missing data for CREATE",
            "POST",
            COLL.into(),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "null data for CREATE",
            "POST",
            COLL.into(),
            vec![],
            b"null".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "blank data for UPDATE",
            "POST",
            ITEM.into(),
            vec![],
            b"  \n ".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "CREATE with an id that exists",
            "POST",
            COLL.into(),
            vec![],
            br#"{"id": "addr-1"}"#.to_vec(),
            409,
            "ALREADY_EXISTS",
        ),
        (
            "CREATE with data.id not a string",
            "POST",
            COLL.into(),
            vec![],
            br#"{"id": {"x": 1}}"#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "UPDATE with a stale version",
            "POST",
            ITEM.into(),
            vec![("Flow-Request-Parameters", "version=999999")],
            br#"{"city": "x"}"#.to_vec(),
            409,
            "CONFLICT",
        ),
        (
            "UPDATE with a version that is no number",
            "POST",
            ITEM.into(),
            vec![("Flow-Request-Parameters", "version=new")],
            br#"{"city": "x"}"#.to_vec(),
            400,
            "INVALID_PARAMETERS",
        ),
        // Names and ids.
        (
            "endpoint name with a space",
            "GET",
            "/api/address/bad%20name/".into(),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "endpoint name with ..",
            "GET",
            "/api/address/address/../x/".into(),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "endpoint name with a control character",
            "POST",
            "/api/address/a%07b/".into(),
            vec![],
            b"{}".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "endpoint of nine segments",
            "POST",
            nine_segments.into(),
            vec![],
            b"{}".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "endpoint over 200 bytes",
            "POST",
            long_endpoint,
            vec![],
            b"{}".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "application name with a space",
            "GET",
            "/api/add%20ress/address/address/".into(),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "objectid over 200 bytes in a header",
            "GET",
            COLL.into(),
            vec![
                ("Flow-Request-Method", "OPEN"),
                ("Flow-Request-ObjectId", &long_id),
            ],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "objectid over 200 bytes in the path",
            "GET",
            format!("{COLL}{long_id}"),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "objectid over 200 bytes on CREATE",
            "POST",
            COLL.into(),
            vec![],
            format!("{{\"id\": \"{long_id}\"}}").into_bytes(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "objectid with a control character",
            "GET",
            format!("{COLL}a%01b"),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "namespace over 128 bytes",
            "GET",
            COLL.into(),
            vec![("Flow-Request-Namespace", &long_ns)],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "namespace with a control character",
            "GET",
            format!("{COLL}?namespace=a%07b"),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        // Bytes that are not UTF-8.
        (
            "path not UTF-8 after percent-decoding",
            "GET",
            format!("{COLL}%FF%FE"),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "endpoint not UTF-8 after percent-decoding",
            "GET",
            "/api/address/%C3%28/".into(),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        (
            "query string not UTF-8 after percent-decoding",
            "GET",
            format!("{COLL}?method=OPEN&objectid=%FF"),
            vec![],
            vec![],
            400,
            "INVALID_REQUEST",
        ),
        // Unknown things.
        (
            "unknown endpoint",
            "GET",
            "/api/nothing/nothing/here/".into(),
            vec![],
            vec![],
            404,
            "DO_NOT_EXIST",
        ),
        (
            "unknown object",
            "GET",
            format!("{COLL}nobody"),
            vec![],
            vec![],
            404,
            "DO_NOT_EXIST",
        ),
        (
            "path outside /api",
            "GET",
            "/apix/address/address/".into(),
            vec![],
            vec![],
            404,
            "DO_NOT_EXIST",
        ),
        (
            "RUN on a stored endpoint",
            "POST",
            ITEM.into(),
            vec![("Flow-Request-Method", "RUN")],
            b"{}".to_vec(),
            503,
            "NO_PROVIDER",
        ),
        // Verbs the bridge does not map.
        (
            "OPTIONS",
            "OPTIONS",
            COLL.into(),
            vec![],
            vec![],
            405,
            "INVALID_REQUEST",
        ),
        (
            "TRACE",
            "TRACE",
            COLL.into(),
            vec![],
            vec![],
            405,
            "INVALID_REQUEST",
        ),
        (
            "an invented verb",
            "BREW",
            ITEM.into(),
            vec![("Flow-Request-Method", "DELETE")],
            vec![],
            405,
            "INVALID_REQUEST",
        ),
    ];
    let params = bad_parameters();
    let mut param_cases: Vec<Case> = Vec::new();
    for (what, p) in &params {
        param_cases.push((
            what,
            "GET",
            COLL.into(),
            vec![("Flow-Request-Parameters", p.as_str())],
            vec![],
            400,
            "INVALID_PARAMETERS",
        ));
        param_cases.push((
            what,
            "GET",
            COLL.into(),
            vec![("Flow-Request-Parameter", p.as_str())],
            vec![],
            400,
            "INVALID_PARAMETERS",
        ));
        let q: String = form_urlencoded::byte_serialize(p.as_bytes()).collect();
        param_cases.push((
            what,
            "GET",
            format!("{COLL}?parameters={q}"),
            vec![],
            vec![],
            400,
            "INVALID_PARAMETERS",
        ));
    }
    for (what, verb, path, headers, body, status, code) in cases.into_iter().chain(param_cases) {
        let r = hub.http(verb, &path, &headers, &body).await;
        assert_error(&r, status, code, what);
        if status == 405 {
            assert_eq!(
                r.header("Allow"),
                Some("GET, POST, PUT, PATCH, DELETE"),
                "{what}"
            );
        }
        f.assert_intact(what).await;
    }
    hub_answers_health(hub).await;
    f.hub.stop().await;
}

async fn hub_answers_health(hub: &TestHub) {
    let r = hub.http("GET", "/health", &[], b"").await;
    assert_eq!(r.status, 200);
}

/// Requests too broken for the bridge (hyper answers them) or with bytes that are not text.
#[tokio::test]
async fn broken_http_bytes_are_refused_and_change_nothing() {
    let f = fixture().await;
    let addr = f.hub.addr;
    // A header value that is not UTF-8: refused, not taken as "no namespace".
    let req = b"GET /api/address/address/address/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nFlow-Request-Namespace: t\xff1\r\n\r\n";
    let (status, body) = raw_http(addr, req).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_envelope(
        &serde_json::from_slice(&body).unwrap(),
        "INVALID_REQUEST",
        "header not UTF-8",
    );
    f.assert_intact("a header value that is not UTF-8").await;
    let req = b"POST /api/address/address/address/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nFlow-Request-ObjectId: \xc3\x28\r\nContent-Length: 2\r\n\r\n{}";
    let (status, body) = raw_http(addr, req).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    f.assert_intact("an objectid header that is not UTF-8")
        .await;
    // Raw bytes that are no URI, garbage instead of a request line, a lying Content-Length,
    // a HEAD: answered (by hyper where the request cannot be parsed) or closed, never a crash.
    for (what, req) in [
        ("raw non-UTF-8 path", &b"GET /api/address/\xff\xfe/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..]),
        ("garbage request line", b"\x00\x01\x02 hello\r\n\r\n"),
        ("bad Content-Length", b"POST /api/address/address/address/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}"),
        ("two Content-Lengths", b"POST /api/address/address/address/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
    ] {
        let (status, _) = raw_http(addr, req).await;
        assert_eq!(status, 400, "{what}");
        f.assert_intact(what).await;
    }
    let (status, body) = raw_http(
        addr,
        b"HEAD /api/address/address/address/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert!(body.is_empty());
    // A body shorter than its Content-Length, then the client goes away.
    {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/address/address/address/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\": \"half")
            .await
            .unwrap();
    }
    f.assert_intact("a body cut short").await;
    f.hub.stop().await;
}

/// Reads frames until the hub closes; returns the close code.
async fn close_code(ws: &mut WsClient) -> u16 {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.ws.next())
            .await
            .expect("the hub closes within 30 s");
        match m {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("no close frame before the error {e}"),
            None => panic!("the stream ended without a close frame"),
        }
    }
}

/// The next reply, which must be an error with this code; returns it.
async fn next_error(ws: &mut WsClient, code: &str, what: &str) -> Value {
    let v = ws
        .recv()
        .await
        .unwrap_or_else(|| panic!("{what}: the hub closed the socket"));
    assert_eq!(v["type"], "reply", "{what}: {v}");
    assert_envelope(&v, code, what);
    v
}

#[tokio::test]
async fn undecodable_websocket_frames_get_error_replies_and_the_socket_stays() {
    let f = fixture().await;
    let mut ws = f.hub.ws().await;
    let text_cases: [(&str, &str); 8] = [
        ("malformed JSON", r#"{"method": "LIST", "endpoint": "#),
        ("not JSON at all", "hello"),
        ("an array", "[1, 2, 3]"),
        ("a string", r#""LIST""#),
        ("a number", "42"),
        ("null", "null"),
        ("a boolean", "true"),
        ("empty text", ""),
    ];
    for (what, text) in text_cases {
        ws.send_raw(Message::text(text)).await;
        let v = next_error(&mut ws, "INVALID_REQUEST", what).await;
        assert!(v.get("requestid").is_none(), "{what}: {v}");
        f.assert_intact(what).await;
    }
    let mut binary_cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed MessagePack", vec![0xc1]),
        ("truncated MessagePack map", vec![0x82, 0xa6, b'm', b'e']),
        (
            "MessagePack claiming 4 GB of array",
            vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            "MessagePack claiming a huge string",
            vec![0xdb, 0xff, 0xff, 0xff, 0xf0, b'a'],
        ),
        ("empty binary frame", vec![]),
        (
            "MessagePack array",
            rmp_serde::to_vec(&json!([1, 2])).unwrap(),
        ),
        (
            "MessagePack string",
            rmp_serde::to_vec(&json!("LIST")).unwrap(),
        ),
        ("MessagePack integer", vec![0x2a]),
    ];
    // A map whose key is not a string.
    binary_cases.push((
        "MessagePack map with an integer key",
        vec![0x81, 0x01, 0x02],
    ));
    for (what, bytes) in binary_cases {
        ws.send_raw(Message::Binary(bytes.into())).await;
        // Replies to binary frames are MessagePack (binary) too; recv decodes either.
        let m = tokio::time::timeout(Duration::from_secs(30), ws.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Binary(b) = m else {
            panic!("{what}: a binary frame gets a binary reply, not {m:?}")
        };
        let v: Value = rmp_serde::from_slice(&b).unwrap();
        assert_envelope(&v, "INVALID_REQUEST", what);
        f.assert_intact(what).await;
    }
    // Nesting deeper than max_depth, in both encodings.
    let mut deep = json!(1);
    for _ in 0..MAX_DEPTH + 2 {
        deep = json!([deep]);
    }
    let frame = json!({"requestid": "deep", "endpoint": "address/address", "method": "CREATE",
        "data": {"x": deep}});
    ws.send(&frame, Enc::Json).await;
    next_error(&mut ws, "INVALID_REQUEST", "deep JSON").await;
    ws.send(&frame, Enc::MsgPack).await;
    next_error(&mut ws, "INVALID_REQUEST", "deep MessagePack").await;
    ws.send_raw(Message::text("[".repeat(MAX_FRAME - 10))).await;
    next_error(&mut ws, "INVALID_REQUEST", "thousands of open brackets").await;
    ws.send_raw(Message::Binary(vec![0x91; MAX_FRAME - 10].into()))
        .await;
    next_error(
        &mut ws,
        "INVALID_REQUEST",
        "thousands of nested MessagePack arrays",
    )
    .await;
    f.assert_intact("deep nesting").await;

    // The same socket still serves calls.
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "OPEN", "objectid": "addr-2"}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["data"], f.snapshot[0]["data"][1]);
    f.hub.stop().await;
}

#[tokio::test]
async fn wrong_websocket_calls_get_error_replies_with_their_requestid() {
    let f = fixture().await;
    let mut ws = f.hub.ws().await;
    let long = "x".repeat(201);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown method",
            json!({"endpoint": "address/address", "method": "FETCH"}),
            "INVALID_REQUEST",
        ),
        (
            "method as a number",
            json!({"endpoint": "address/address", "method": 3}),
            "INVALID_REQUEST",
        ),
        (
            "method as an object",
            json!({"endpoint": "address/address", "method": {"name": "LIST"}}),
            "INVALID_REQUEST",
        ),
        (
            "missing method",
            json!({"endpoint": "address/address"}),
            "INVALID_REQUEST",
        ),
        (
            "missing endpoint",
            json!({"method": "LIST"}),
            "INVALID_REQUEST",
        ),
        (
            "endpoint as a number",
            json!({"endpoint": 5, "method": "LIST"}),
            "INVALID_REQUEST",
        ),
        (
            "endpoint with an empty segment",
            json!({"endpoint": "address//address", "method": "LIST"}),
            "INVALID_REQUEST",
        ),
        (
            "endpoint with ..",
            json!({"endpoint": "address/../x", "method": "LIST"}),
            "INVALID_REQUEST",
        ),
        (
            "endpoint with a space",
            json!({"endpoint": "address/add ress", "method": "CREATE", "data": {}}),
            "INVALID_REQUEST",
        ),
        (
            "endpoint of nine segments",
            json!({"endpoint": "a/b/c/d/e/f/g/h/i", "method": "CREATE", "data": {}}),
            "INVALID_REQUEST",
        ),
        (
            "endpoint over 200 bytes",
            json!({"endpoint": format!("address/{long}"), "method": "CREATE", "data": {}}),
            "INVALID_REQUEST",
        ),
        (
            "objectid as an object",
            json!({"endpoint": "address/address", "method": "OPEN", "objectid": {"id": "addr-1"}}),
            "INVALID_REQUEST",
        ),
        (
            "objectid as a list",
            json!({"endpoint": "address/address", "method": "DELETE", "objectid": ["addr-1"]}),
            "INVALID_REQUEST",
        ),
        (
            "objectid as a boolean",
            json!({"endpoint": "address/address", "method": "DELETE", "objectid": true}),
            "INVALID_REQUEST",
        ),
        (
            "objectid over 200 bytes",
            json!({"endpoint": "address/address", "method": "OPEN", "objectid": long}),
            "INVALID_REQUEST",
        ),
        (
            "objectid with a slash",
            json!({"endpoint": "address/address", "method": "DELETE", "objectid": "addr-1/x"}),
            "INVALID_REQUEST",
        ),
        (
            "data as an array for UPDATE",
            json!({"endpoint": "address/address", "method": "UPDATE", "objectid": "addr-1", "data": [1, 2]}),
            "INVALID_REQUEST",
        ),
        (
            "data as a string for UPDATE",
            json!({"endpoint": "address/address", "method": "UPDATE", "objectid": "addr-1", "data": "city=x"}),
            "INVALID_REQUEST",
        ),
        (
            "data as an array for CREATE",
            json!({"endpoint": "address/address", "method": "CREATE", "data": [{"id": "addr-9"}]}),
            "INVALID_REQUEST",
        ),
        (
            "missing objectid for OPEN",
            json!({"endpoint": "address/address", "method": "OPEN"}),
            "INVALID_REQUEST",
        ),
        (
            "empty objectid for DELETE",
            json!({"endpoint": "address/address", "method": "DELETE", "objectid": ""}),
            "INVALID_REQUEST",
        ),
        (
            "missing objectid for UPDATE",
            json!({"endpoint": "address/address", "method": "UPDATE", "data": {"city": "x"}}),
            "INVALID_REQUEST",
        ),
        (
            "missing data for CREATE",
            json!({"endpoint": "address/address", "method": "CREATE"}),
            "INVALID_REQUEST",
        ),
        (
            "null data for CREATE",
            json!({"endpoint": "address/address", "method": "CREATE", "data": null}),
            "INVALID_REQUEST",
        ),
        (
            "missing data for UPDATE",
            json!({"endpoint": "address/address", "method": "UPDATE", "objectid": "addr-1"}),
            "INVALID_REQUEST",
        ),
        (
            "namespace as a number",
            json!({"endpoint": "address/address", "method": "LIST", "namespace": 1}),
            "INVALID_REQUEST",
        ),
        (
            "namespace over 128 bytes",
            json!({"endpoint": "address/address", "method": "LIST", "namespace": "n".repeat(129)}),
            "INVALID_REQUEST",
        ),
        (
            "namespace with a control character",
            json!({"endpoint": "address/address", "method": "LIST", "namespace": "a\u{7}b"}),
            "INVALID_REQUEST",
        ),
        (
            "token as an object",
            json!({"endpoint": "address/address", "method": "LIST", "token": {"t": 1}}),
            "INVALID_REQUEST",
        ),
        (
            "unknown frame type",
            json!({"type": "no-such-type", "endpoint": "address/address", "method": "LIST"}),
            "INVALID_REQUEST",
        ),
        (
            "frame type as a number",
            json!({"type": 1, "endpoint": "address/address", "method": "LIST"}),
            "INVALID_REQUEST",
        ),
        (
            "parameters as a number",
            json!({"endpoint": "address/address", "method": "LIST", "parameters": 5}),
            "INVALID_PARAMETERS",
        ),
        (
            "CREATE on an existing id",
            json!({"endpoint": "address/address", "method": "CREATE", "data": {"id": "addr-1"}}),
            "ALREADY_EXISTS",
        ),
        (
            "UPDATE with a stale version",
            json!({"endpoint": "address/address", "method": "UPDATE", "objectid": "addr-1", "data": {"city": "x", "version": 999_999}}),
            "CONFLICT",
        ),
        (
            "UPDATE on a missing object",
            json!({"endpoint": "address/address", "method": "UPDATE", "objectid": "nobody", "data": {"city": "x"}}),
            "DO_NOT_EXIST",
        ),
    ];
    let mut all: Vec<(String, Value, &str)> = cases
        .into_iter()
        .map(|(w, v, c)| (w.to_string(), v, c))
        .collect();
    for (what, p) in bad_parameters() {
        let v: Value = serde_json::from_str(&p).unwrap_or(Value::String(p.clone()));
        // As an object, the deep tree is refused by the frame's max_depth before the
        // parameters are read (see the nesting test); as text it reaches the parser.
        if common_depth(&v) <= MAX_DEPTH {
            all.push((
                format!("parameters: {what}"),
                json!({"endpoint": "address/address", "method": "LIST", "parameters": v}),
                "INVALID_PARAMETERS",
            ));
        }
        all.push((
            format!("parameters as text: {what}"),
            json!({"endpoint": "address/address", "method": "LIST", "parameters": p}),
            "INVALID_PARAMETERS",
        ));
    }
    for (what, frame, code) in all {
        for enc in [Enc::Json, Enc::MsgPack] {
            let reply = ws.call_enc(frame.clone(), enc).await;
            assert_envelope(&reply, code, &format!("{what} ({enc:?})"));
            f.assert_intact(&what).await;
        }
    }
    // A requestid that is no string or number cannot be echoed; the error still comes.
    ws.send(
        &json!({"requestid": {"a": 1}, "endpoint": "address/address", "method": "LIST"}),
        Enc::Json,
    )
    .await;
    let v = next_error(&mut ws, "INVALID_REQUEST", "requestid as an object").await;
    assert!(v.get("requestid").is_none(), "{v}");
    f.assert_intact("requestid as an object").await;
    f.hub.stop().await;
}

#[tokio::test]
async fn websocket_messages_over_the_limits() {
    let f = fixture().await;
    let mut ws = f.hub.ws().await;
    // Over max_frame_bytes: TOO_LARGE, and the socket keeps working.
    let big = json!({"requestid": "big", "endpoint": "address/address", "method": "UPDATE",
        "objectid": "addr-1", "data": {"blob": "x".repeat(MAX_FRAME)}});
    ws.send(&big, Enc::Json).await;
    next_error(&mut ws, "TOO_LARGE", "JSON over max_frame_bytes").await;
    ws.send(&big, Enc::MsgPack).await;
    next_error(&mut ws, "TOO_LARGE", "MessagePack over max_frame_bytes").await;
    f.assert_intact("a message over max_frame_bytes").await;
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "LIST"}))
        .await;
    assert_eq!(r, {
        let mut s = f.snapshot[0].clone();
        s["type"] = json!("reply");
        s["requestid"] = r["requestid"].clone();
        s
    });
    // Just under the limit is a normal call.
    let mut fits = json!({"endpoint": "address/address", "method": "UPDATE", "objectid": "addr-5",
        "data": {"blob": ""}});
    let room = MAX_FRAME - fits.to_string().len() - 40;
    fits["data"]["blob"] = json!("y".repeat(room));
    let r = ws.call(fits).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["data"]["blob"].as_str().unwrap().len(), room);
    let r = ws
        .call(
            json!({"endpoint": "address/address", "method": "UPDATE", "objectid": "addr-5",
            "data": {"blob": null}}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");

    // Over four times max_frame_bytes: closed with 1009 (message too big).
    let mut huge = big.clone();
    huge["data"]["blob"] = json!("z".repeat(4 * MAX_FRAME + 100));
    ws.send(&huge, Enc::Json).await;
    assert_eq!(close_code(&mut ws).await, 1009);
    let mut ws = f.hub.ws().await;
    ws.send(&huge, Enc::MsgPack).await;
    assert_eq!(close_code(&mut ws).await, 1009);
    // Nothing of it was stored (addr-5 went back to its fields, at a new version).
    let after = f.stored().await;
    assert_eq!(after[1], f.snapshot[1]);
    for (a, b) in after[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(f.snapshot[0]["data"].as_array().unwrap())
    {
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("updated");
            v.as_object_mut().unwrap().remove("version");
            v
        };
        assert_eq!(strip(a), strip(b));
        assert!(a.get("blob").is_none(), "{a}");
    }
    // A new socket works.
    let mut ws = f.hub.ws().await;
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "OPEN", "objectid": "addr-1"}))
        .await;
    assert_eq!(r["data"], f.snapshot[0]["data"][0]);
    f.hub.stop().await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_the_socket_cleanly() {
    let f = fixture().await;
    let mut ws = f.hub.ws().await;
    let frame = Frame::message(
        b"{\"method\": \"LIST\", \"x\": \"\xff\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    ws.send_raw(Message::Frame(frame)).await;
    // A clean close with a close frame: 1007 (RFC 6455: data inconsistent with the message
    // type) or 1002 (a WebSocket protocol error), never a connection dropped without a word.
    let code = close_code(&mut ws).await;
    assert!(
        code == 1007 || code == 1002,
        "invalid UTF-8 in a text frame closes with 1007 or 1002, not {code}"
    );
    f.assert_intact("a text frame that is not UTF-8").await;
    let mut ws = f.hub.ws().await;
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "LIST"}))
        .await;
    assert_eq!(r["count"], 5);
    f.hub.stop().await;
}
