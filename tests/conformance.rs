//! The conformance vectors of `protocol/vectors/` run against a real hub.
//!
//! Every vector file runs twice on one hub: once with JSON text frames, once with MessagePack
//! binary frames, each time in a fresh random namespace (`{{ns}}`). Every reply is also checked
//! against `protocol/schemas/reply.json`, and every call that a vector expects to succeed
//! against `protocol/schemas/call.json` (`subscribe` and `unsubscribe` frames against
//! `protocol/schemas/subscribe.json`). The format and the matching rules are those of
//! `protocol/vectors/README.md`; a failure names the file, the encoding, the step and the path
//! of the first mismatch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Enc, TestHub, WsClient};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn protocol_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol")
}

/// A vector file, read and checked for shape.
struct VectorFile {
    file: String,
    steps: Vec<Value>,
}

fn load_vectors() -> Vec<VectorFile> {
    let dir = protocol_dir().join("vectors");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no vector files in {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let file = p.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
            for key in ["name", "description"] {
                assert!(v[key].is_string(), "{file}: \"{key}\" must be a string");
            }
            let steps = v["steps"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: \"steps\" must be an array"))
                .clone();
            assert!(!steps.is_empty(), "{file}: no steps");
            VectorFile { file, steps }
        })
        .collect()
}

/// The JSON Schemas of `protocol/schemas/`.
struct Schemas {
    reply: jsonschema::Validator,
    call: jsonschema::Validator,
    subscribe: jsonschema::Validator,
}

const SCHEMA_BASE: &str = "https://flowhub.example/protocol/v1/";

impl Schemas {
    fn load() -> Schemas {
        let dir = protocol_dir().join("schemas");
        let read = |name: &str| -> Value {
            let text = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("cannot read schemas/{name}: {e}"));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("schemas/{name} is not valid JSON: {e}"));
            assert_eq!(
                v["$id"],
                json!(format!("{SCHEMA_BASE}{name}")),
                "schemas/{name}: $id"
            );
            v
        };
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
            .map(|n| (format!("{SCHEMA_BASE}{n}"), read(n)))
            .collect();
        let registry = jsonschema::Registry::new()
            .extend(
                docs.iter()
                    .map(|(uri, v)| (uri.clone(), jsonschema::Resource::from_contents(v.clone()))),
            )
            .expect("schema URIs")
            .prepare()
            .expect("schemas resolve");
        let build = |name: &str| {
            let doc = &docs.iter().find(|(u, _)| u.ends_with(name)).unwrap().1;
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .with_registry(&registry)
                .build(doc)
                .unwrap_or_else(|e| panic!("schemas/{name} is not a valid schema: {e}"))
        };
        Schemas {
            reply: build("reply.json"),
            call: build("call.json"),
            subscribe: build("subscribe.json"),
        }
    }

    fn check(validator: &jsonschema::Validator, what: &str, v: &Value) -> Result<(), String> {
        let errors: Vec<String> = validator
            .iter_errors(v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what} does not validate against its schema: {}\n  frame: {v}",
                errors.join("; ")
            ))
        }
    }
}

/// One run of one file: its captures and its namespace.
struct Run {
    vars: HashMap<String, Value>,
    enc: Enc,
    next_id: u64,
}

impl Run {
    /// Replaces `{{name}}` in every string of `v` (a string that is exactly `{{name}}` takes the
    /// captured value with its type).
    fn subst(&self, v: &Value) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => self.subst_str(s)?,
            Value::Array(a) => {
                Value::Array(a.iter().map(|x| self.subst(x)).collect::<Result<_, _>>()?)
            }
            Value::Object(o) => {
                let mut out = serde_json::Map::new();
                for (k, x) in o {
                    out.insert(k.clone(), self.subst(x)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn subst_str(&self, s: &str) -> Result<Value, String> {
        if let Some(name) = s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
            if !name.contains("{{") && !name.contains("}}") {
                return self
                    .vars
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("{{{{{name}}}}} was never captured"));
            }
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ in {s:?}"))?;
            let name = &after[..end];
            match self.vars.get(name) {
                Some(Value::String(v)) => out.push_str(v),
                Some(v) => out.push_str(&v.to_string()),
                None => return Err(format!("{{{{{name}}}}} was never captured")),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(Value::String(out))
    }
}

/// The value at a dotted path (`data.0.id`) of a reply.
fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(o) => o.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

/// Matches `got` against the expectation `want` (rules of `protocol/vectors/README.md`);
/// `Err` names the first mismatching path.
fn matches(want: &Value, got: Option<&Value>, path: &str) -> Result<(), String> {
    let show = |g: Option<&Value>| g.map_or("nothing (absent)".to_string(), Value::to_string);
    let fail = |what: &str| Err(format!("{path}: expected {what}, got {}", show(got)));
    if let Value::String(s) = want {
        if let Some(p) = s.strip_prefix('$') {
            if let Some(literal) = p.strip_prefix('$') {
                return match got {
                    Some(Value::String(g)) if g.strip_prefix('$') == Some(literal) => Ok(()),
                    _ => fail(&format!("{:?}", &s[1..])),
                };
            }
            let ok = match p {
                "absent" => got.is_none(),
                "any" => got.is_some(),
                "number" => got.is_some_and(Value::is_number),
                "integer" => got.is_some_and(|g| g.is_i64() || g.is_u64()),
                "string" => got.is_some_and(Value::is_string),
                "uuid" => got.and_then(Value::as_str).is_some_and(is_uuid),
                "timestamp" => got.and_then(Value::as_str).is_some_and(is_timestamp),
                _ if p.starts_with("starts:") => got
                    .and_then(Value::as_str)
                    .is_some_and(|g| g.starts_with(&p["starts:".len()..])),
                _ => match p.strip_prefix("gt:") {
                    Some(n) => {
                        let bound: f64 = n
                            .trim()
                            .parse()
                            .map_err(|_| format!("{path}: bad placeholder {s:?}"))?;
                        got.and_then(Value::as_f64).is_some_and(|g| g > bound)
                    }
                    None => return Err(format!("{path}: unknown placeholder {s:?}")),
                },
            };
            return if ok { Ok(()) } else { fail(s) };
        }
    }
    let Some(g) = got else {
        return fail(&want.to_string());
    };
    match (want, g) {
        (Value::Object(w), Value::Object(o)) => {
            for (k, wv) in w {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                matches(wv, o.get(k), &sub)?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(a)) => {
            if w.len() != a.len() {
                return Err(format!(
                    "{path}: expected an array of {} elements, got {}: {g}",
                    w.len(),
                    a.len()
                ));
            }
            for (i, (wv, av)) in w.iter().zip(a).enumerate() {
                matches(wv, Some(av), &format!("{path}.{i}"))?;
            }
            Ok(())
        }
        (Value::Number(w), Value::Number(n)) if numbers_equal(w, n) => Ok(()),
        (Value::Number(_), _) => fail(&want.to_string()),
        (w, g) if w == g && !w.is_object() && !w.is_array() => Ok(()),
        _ => fail(&want.to_string()),
    }
}

/// What a step sends.
enum Outgoing {
    Frame(Value),
    Text(String),
    Binary(Vec<u8>),
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return Err("send_raw_hex has an odd number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("send_raw_hex: {e}")))
        .collect()
}

/// A step made ready to send: the frame, the expectation and the captures, all substituted.
struct Prepared {
    out: Outgoing,
    expect: Value,
    capture: Vec<(String, String)>,
    requestid: Option<Value>,
}

fn prepare(run: &mut Run, step: &Value) -> Result<Prepared, String> {
    let obj = step.as_object().ok_or("a step must be an object")?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "send" | "send_raw_text" | "send_raw_hex" | "expect" | "capture" | "note"
        ) {
            return Err(format!("unknown step key {k:?}"));
        }
    }
    let mut expect = run.subst(obj.get("expect").ok_or("a step needs \"expect\"")?)?;
    let mut requestid = None;
    let out = match (obj.get("send"), obj.get("send_raw_text"), obj.get("send_raw_hex")) {
        (Some(frame), None, None) => {
            let mut frame = run.subst(frame)?;
            if let Value::Object(f) = &mut frame {
                if !f.contains_key("requestid") {
                    run.next_id += 1;
                    let rid = json!(format!("r{}", run.next_id));
                    f.insert("requestid".into(), rid.clone());
                    if let Value::Object(e) = &mut expect {
                        e.entry("requestid").or_insert(rid.clone());
                    }
                    requestid = Some(rid);
                }
            }
            Outgoing::Frame(frame)
        }
        (None, Some(Value::String(t)), None) => match run.subst_str(t)? {
            Value::String(t) => Outgoing::Text(t),
            other => Outgoing::Text(other.to_string()),
        },
        (None, None, Some(Value::String(h))) => Outgoing::Binary(hex(h)?),
        _ => {
            return Err(
                "a step has exactly one of \"send\", \"send_raw_text\" (a string), \"send_raw_hex\" (a string)"
                    .into(),
            )
        }
    };
    let mut capture = Vec::new();
    if let Some(c) = obj.get("capture") {
        let c = c.as_object().ok_or("\"capture\" must be an object")?;
        for (name, path) in c {
            let path = path.as_str().ok_or("a capture path must be a string")?;
            capture.push((name.clone(), path.to_string()));
        }
    }
    Ok(Prepared {
        out,
        expect,
        capture,
        requestid,
    })
}

async fn send(ws: &mut WsClient, out: &Outgoing, enc: Enc) {
    match out {
        Outgoing::Frame(f) => ws.send(f, enc).await,
        Outgoing::Text(t) => ws.send_raw(Message::text(t.clone())).await,
        Outgoing::Binary(b) => ws.send_raw(Message::Binary(b.clone().into())).await,
    }
}

/// The next reply frame, decoded by its kind (text: JSON, binary: MessagePack).
async fn recv(ws: &mut WsClient) -> Result<Value, String> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.ws.next())
            .await
            .map_err(|_| "no reply within 10 s".to_string())?;
        match m {
            None => return Err("the hub closed the socket instead of replying".into()),
            Some(Err(e)) => return Err(format!("WebSocket error instead of a reply: {e}")),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| format!("reply is not JSON: {e}: {t}"))
            }
            Some(Ok(Message::Binary(b))) => {
                return rmp_serde::from_slice(&b)
                    .map_err(|e| format!("reply is not MessagePack: {e}"))
            }
            Some(Ok(Message::Close(c))) => {
                return Err(format!(
                    "the hub closed the socket instead of replying: {c:?}"
                ))
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// Checks one reply against its step, validates it and takes its captures.
fn check_reply(
    run: &mut Run,
    schemas: &Schemas,
    p: &Prepared,
    reply: &Value,
) -> Result<(), String> {
    matches(&p.expect, Some(reply), "")?;
    Schemas::check(&schemas.reply, "the reply", reply)?;
    if let Outgoing::Frame(f) = &p.out {
        if p.expect.get("success") == Some(&Value::Bool(true)) {
            match f.get("type").and_then(Value::as_str) {
                Some("subscribe" | "unsubscribe") => {
                    Schemas::check(&schemas.subscribe, "a subscription frame that succeeded", f)?
                }
                _ => Schemas::check(&schemas.call, "a call that succeeded", f)?,
            }
        }
    }
    for (name, path) in &p.capture {
        let v = at_path(reply, path)
            .ok_or_else(|| format!("capture {name}: no {path} in the reply"))?;
        run.vars.insert(name.clone(), v.clone());
    }
    Ok(())
}

fn describe(step: &Value) -> String {
    let s = step.to_string();
    if s.len() > 600 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(600).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// A `batch` step: every call is sent before any reply is read; replies may come in any
/// order and are paired with their calls by `requestid`.
async fn run_batch(
    run: &mut Run,
    ws: &mut WsClient,
    schemas: &Schemas,
    batch: &Value,
) -> Result<(), (String, Option<Value>)> {
    let steps = batch.as_array().filter(|b| !b.is_empty()).ok_or((
        "\"batch\" must be a non-empty array of steps".to_string(),
        None,
    ))?;
    let mut pending = Vec::with_capacity(steps.len());
    for (j, s) in steps.iter().enumerate() {
        let p = prepare(run, s).map_err(|e| (format!("batch step {j}: {e}"), None))?;
        if p.requestid.is_none() {
            return Err((
                format!(
                    "batch step {j}: batch steps are \"send\" steps without their own requestid"
                ),
                None,
            ));
        }
        pending.push(p);
    }
    for p in &pending {
        send(ws, &p.out, run.enc).await;
    }
    let mut order = Vec::with_capacity(pending.len());
    for _ in 0..pending.len() {
        let reply = recv(ws).await.map_err(|e| (e, None))?;
        let j = pending
            .iter()
            .position(|p| p.requestid.as_ref() == reply.get("requestid"))
            .filter(|j| !order.contains(j))
            .ok_or_else(|| {
                (
                    "a reply that belongs to no call of the batch".to_string(),
                    Some(reply.clone()),
                )
            })?;
        order.push(j);
        check_reply(run, schemas, &pending[j], &reply)
            .map_err(|e| (format!("batch step {j}: {e}"), Some(reply.clone())))?;
    }
    Ok(())
}

/// Runs one file on a fresh socket in a fresh namespace; `Err` describes the first failure.
async fn run_file(
    hub_url: &str,
    file: &VectorFile,
    enc: Enc,
    schemas: &Schemas,
) -> Result<(), String> {
    let ns = format!("ns{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let mut run = Run {
        vars: HashMap::from([("ns".to_string(), json!(ns))]),
        enc,
        next_id: 0,
    };
    let mut ws = WsClient::connect(hub_url).await;
    let enc_name = format!("{enc:?}");
    // CONFORMANCE_TRACE=1 prints every reply: a help for writing vectors.
    let trace = std::env::var_os("CONFORMANCE_TRACE").is_some();
    for (i, step) in file.steps.iter().enumerate() {
        let fail = |why: String, reply: Option<&Value>| {
            let mut msg = format!(
                "{} [{}] step {i}{}: {why}\n  step: {}",
                file.file,
                enc_name,
                step.get("note")
                    .and_then(Value::as_str)
                    .map_or(String::new(), |n| format!(" ({n})")),
                describe(step)
            );
            if let Some(r) = reply {
                msg.push_str(&format!("\n  reply: {r}"));
            }
            msg.push_str(&format!("\n  namespace: {ns}"));
            msg
        };
        if let Some(batch) = step.get("batch") {
            run_batch(&mut run, &mut ws, schemas, batch)
                .await
                .map_err(|(e, r)| fail(e, r.as_ref()))?;
            continue;
        }
        let prepared = prepare(&mut run, step).map_err(|e| fail(e, None))?;
        send(&mut ws, &prepared.out, run.enc).await;
        let reply = recv(&mut ws).await.map_err(|e| fail(e, None))?;
        if trace {
            eprintln!("{} [{enc_name}] step {i}: {reply}", file.file);
        }
        check_reply(&mut run, schemas, &prepared, &reply).map_err(|e| fail(e, Some(&reply)))?;
    }
    let _ = ws.ws.close(None).await;
    Ok(())
}

/// Runs every vector file in both encodings against a hub started with `config`.
async fn run_all(config: common::Config, what: &str) {
    let files = load_vectors();
    let schemas = Schemas::load();
    let hub = TestHub::start_with(config).await;
    let url = hub.ws_url();
    let mut failures = Vec::new();
    let mut passed = 0;
    for enc in [Enc::Json, Enc::MsgPack] {
        for f in &files {
            match run_file(&url, f, enc, &schemas).await {
                Ok(()) => passed += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    hub.stop().await;
    let steps: usize = files.iter().map(|f| f.steps.len()).sum();
    println!(
        "conformance ({what}): {passed} of {} file runs passed ({} files, {steps} steps, JSON and MessagePack)",
        2 * files.len(),
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{what}: {} of {} file runs failed:\n\n{}",
        failures.len(),
        2 * files.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vector_in_json_and_msgpack() {
    run_all(common::Config::default(), "default hub").await;
}

/// The same vectors with every LIST indexing the fields it filters and sorts on, however small
/// the collection: indexes may change how fast a LIST runs, never what it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vector_with_automatic_indexes() {
    let config = common::Config {
        auto_index_min: 0,
        ..Default::default()
    };
    run_all(config, "auto_index_min = 0").await;
}

/// The runner catches wrong vectors: each of these expectations is wrong for the reply the
/// hub gives, and the failure names the path that differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expectation_fails() {
    let schemas = Schemas::load();
    let hub = TestHub::start().await;
    let url = hub.ws_url();
    let create = json!({"endpoint": "self/test", "method": "CREATE", "namespace": "{{ns}}",
        "data": {"name": "a", "tags": ["x", "y"], "n": 1}});
    let file = |expect: Value| VectorFile {
        file: "self-test.json".into(),
        steps: vec![json!({"send": create, "expect": expect})],
    };
    let good = json!({"success": true, "data": {"id": "$uuid", "created": "$timestamp",
        "version": "$integer", "name": "a", "tags": ["x", "y"], "n": 1.0, "other": "$absent"},
        "errorcode": "$absent", "dataType": "JSON"});
    for enc in [Enc::Json, Enc::MsgPack] {
        run_file(&url, &file(good.clone()), enc, &schemas)
            .await
            .expect("the right expectation passes");
    }
    let wrong = [
        (json!({"success": false}), "success: expected false"),
        (json!({"data": {"name": "b"}}), "data.name: expected \"b\""),
        (
            json!({"data": {"name": "$absent"}}),
            "data.name: expected $absent",
        ),
        (
            json!({"data": {"tags": ["x"]}}),
            "data.tags: expected an array of 1",
        ),
        (
            json!({"data": {"tags": ["x", "z"]}}),
            "data.tags.1: expected \"z\"",
        ),
        (json!({"data": {"n": 2}}), "data.n: expected 2"),
        (json!({"data": {"n": "1"}}), "data.n: expected \"1\""),
        (
            json!({"data": {"id": "$timestamp"}}),
            "data.id: expected $timestamp",
        ),
        (
            json!({"data": {"missing": "$any"}}),
            "data.missing: expected $any",
        ),
        (
            json!({"requestid": "elsewhere"}),
            "requestid: expected \"elsewhere\"",
        ),
        (json!({"errorid": "$uuid"}), "errorid: expected $uuid"),
        (
            json!({"data": {"version": "$gt:1e300"}}),
            "data.version: expected $gt:1e300",
        ),
    ];
    for (expect, needle) in wrong {
        let err = run_file(&url, &file(expect.clone()), Enc::Json, &schemas)
            .await
            .expect_err(&format!("{expect} must fail"));
        assert!(err.contains(needle), "{expect}: {err}");
        assert!(err.contains("self-test.json [Json] step 0"), "{err}");
    }
    hub.stop().await;
}

/// The reply schema refuses replies that break the envelope.
#[test]
fn the_reply_schema_refuses_broken_envelopes() {
    let schemas = Schemas::load();
    let ok = json!({"type": "reply", "requestid": 1, "status": 0, "success": false,
        "message": "Object does not exist", "errorcode": "DO_NOT_EXIST", "dataType": "JSON",
        "errorid": "7981f103-142e-41bf-ae39-ff1341de35f6"});
    assert!(schemas.reply.is_valid(&ok));
    let broken = [
        json!({"status": 1}),
        json!({"success": true}),
        json!({"errorcode": "NOPE"}),
        json!({"errorid": "not-a-uuid"}),
        json!({"dataType": "XML"}),
        json!({"data": {}}),
        json!({"extra": 1}),
        json!({"type": "call"}),
    ];
    for patch in broken {
        let mut v = ok.clone();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        assert!(!schemas.reply.is_valid(&v), "accepted {v}");
    }
    let list = json!({"status": 0, "success": true, "data": [{"id": "a",
        "created": "2026-01-01T00:00:00.000Z", "updated": "2026-01-01T00:00:00.000Z", "version": 1}],
        "count": 1, "dataType": "JSON"});
    assert!(schemas.reply.is_valid(&list));
    let mut no_version = list.clone();
    no_version["data"][0]
        .as_object_mut()
        .unwrap()
        .remove("version");
    assert!(!schemas.reply.is_valid(&no_version));
    let mut with_error = list;
    with_error["errorcode"] = json!("INTERNAL");
    assert!(!schemas.reply.is_valid(&with_error));
}

/// What the limits do (protocol/SPEC.md, "Limits"): a message over max_frame_bytes gets a
/// TOO_LARGE reply and the socket stays; one over four times that closes it with 1009; an HTTP
/// body over max_body_bytes gets 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_too_large_and_close_1009() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let config = common::Config {
        max_frame_bytes: 1024,
        max_body_bytes: 1024,
        ..Default::default()
    };
    let hub = TestHub::start_with(config).await;
    let schemas = Schemas::load();
    for enc in [Enc::Json, Enc::MsgPack] {
        let mut ws = hub.ws().await;
        let big = json!({"requestid": "big", "endpoint": "limits/x", "method": "CREATE",
            "data": {"blob": "x".repeat(2000)}});
        ws.send(&big, enc).await;
        let reply = recv(&mut ws).await.unwrap();
        matches(
            &json!({"type": "reply", "requestid": "$absent", "success": false,
                "errorcode": "TOO_LARGE", "errorid": "$uuid",
                "message": "$starts:message of "}),
            Some(&reply),
            "",
        )
        .unwrap();
        Schemas::check(&schemas.reply, "TOO_LARGE reply", &reply).unwrap();
        let small = json!({"endpoint": "limits/x", "method": "CREATE", "data": {"n": 1}});
        let reply = ws.call_enc(small, enc).await;
        assert_eq!(reply["success"], true, "the socket stays open: {reply}");
        let huge = json!({"endpoint": "limits/x", "method": "CREATE",
            "data": {"blob": "x".repeat(5000)}});
        ws.send(&huge, enc).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code),
                    Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
        .expect("the hub closes the socket");
        assert_eq!(closed, Some(CloseCode::Size), "close code 1009");
    }
    let body = format!("{{\"blob\": \"{}\"}}", "x".repeat(2000));
    let r = hub
        .http("POST", "/api/limits/limits/x/", &[], body.as_bytes())
        .await;
    assert_eq!(r.status, 413);
    matches(
        &json!({"status": 0, "success": false, "errorcode": "TOO_LARGE", "dataType": "JSON"}),
        Some(&r.json()),
        "",
    )
    .unwrap();
    hub.stop().await;
}
