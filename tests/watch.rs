//! `flowhub watch` (the real binary) against a running hub while changes are made over HTTP:
//! every change printed once, in order, with the right kinds; live queries; resuming with
//! `--from`; refusals.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Config, TestHub};
use serde_json::{json, Value};

/// A `flowhub watch` child whose stderr is read by a thread.
struct Watch {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

fn watch(hub: &TestHub, args: &[&str]) -> Watch {
    watch_as(hub, args, &[])
}

fn watch_as(hub: &TestHub, args: &[&str], env: &[(&str, &str)]) -> Watch {
    spawn_watch(&hub.ws_url(), args, env)
}

/// Starts `flowhub watch ARGS` against `url` with only `env` in its environment.
fn spawn_watch(url: &str, args: &[&str], env: &[(&str, &str)]) -> Watch {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowhub"))
        .arg("watch")
        .args(args)
        .env_clear()
        .env("FLOWHUB_URL", url)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    Watch { child, stderr: rx }
}

impl Watch {
    /// Waits for the "watching" line: the subscription is in place.
    async fn ready(&self) -> String {
        let rx = &self.stderr;
        let line = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(30)))
            .expect("flowhub watch says it is watching within 30 s");
        assert!(line.contains("watching"), "{line}");
        line
    }

    /// Waits for the exit (after `--count` events) and returns the status and the lines.
    async fn finish(mut self) -> (i32, Vec<Value>, String) {
        let (code, out) = tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            self.child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            let code = self.child.wait().unwrap().code().unwrap();
            // Everything the child wrote to stderr: the reader thread forwards lines until the
            // pipe closes, which may be a moment after the exit.
            let mut err = Vec::new();
            while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(10)) {
                err.push(line);
            }
            (code, (out, err.join("\n")))
        })
        .await
        .unwrap();
        let (stdout, stderr) = out;
        let lines = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (code, lines, stderr)
    }
}

async fn http_call(hub: &TestHub, method: &str, id: Option<&str>, body: Value) -> Value {
    let path = match id {
        Some(id) => format!("/api/address/address/address/{id}"),
        None => "/api/address/address/address/".to_string(),
    };
    let verb = if method == "DELETE" { "GET" } else { "POST" };
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = hub
        .http(verb, &path, &[("Flow-Request-Method", method)], &body)
        .await
        .json();
    assert_eq!(r["success"], true, "{r}");
    r["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_every_change_of_an_endpoint_and_of_a_live_query_once_in_order() {
    let hub = TestHub::start_with(Config {
        durability: "never".into(),
        ..Config::default()
    })
    .await;
    // The endpoint must exist for the HTTP path to name it without a trailing slash.
    let all = watch(&hub, &["address/address", "--count", "7"]);
    let envik = watch(
        &hub,
        &[
            "address/address",
            "--where",
            r#"{"items":[{"key":"city","operator":"EQUAL","value":"Envik"}]}"#,
            "--count",
            "4",
        ],
    );
    let line = all.ready().await;
    assert!(line.contains("address/address"), "{line}");
    envik.ready().await;

    let a = http_call(
        &hub,
        "CREATE",
        None,
        json!({"id": "a", "city": "Envik", "n": 1}),
    )
    .await;
    let b = http_call(&hub, "CREATE", None, json!({"id": "b", "city": "Oslo"})).await;
    http_call(&hub, "UPDATE", Some("a"), json!({"n": 2})).await;
    http_call(&hub, "UPDATE", Some("b"), json!({"city": "Envik"})).await;
    http_call(&hub, "UPDATE", Some("a"), json!({"city": "Oslo"})).await;
    http_call(&hub, "DELETE", Some("b"), Value::Null).await;
    let last = http_call(&hub, "DELETE", Some("a"), Value::Null).await;

    let (code, lines, err) = all.finish().await;
    assert_eq!(code, 0, "{err}");
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["objectid"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("CREATE", "a"),
            ("CREATE", "b"),
            ("UPDATE", "a"),
            ("UPDATE", "b"),
            ("UPDATE", "a"),
            ("DELETE", "b"),
            ("DELETE", "a")
        ]
    );
    assert_eq!(lines[0]["data"], a);
    assert_eq!(lines[1]["version"], b["version"]);
    assert_eq!(lines[6]["data"], last, "a DELETE carries the last state");
    assert!(lines
        .windows(2)
        .all(|w| w[0]["position"].as_u64() < w[1]["position"].as_u64()));
    assert!(lines
        .iter()
        .all(|l| l["type"] == "event" && l["endpoint"] == "address/address"));

    let (code, lines, err) = envik.finish().await;
    assert_eq!(code, 0, "{err}");
    let got: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["live"].as_str().unwrap(),
                l["kind"].as_str().unwrap(),
                l["objectid"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("enter", "CREATE", "a"),
            ("change", "UPDATE", "a"),
            ("enter", "UPDATE", "b"),
            ("leave", "UPDATE", "a"),
        ]
    );

    // Resume: from the position of the first event, the other six come again, in order.
    let from = a["version"].to_string();
    let again = watch(&hub, &["address/address", "--from", &from, "--count", "6"]);
    again.ready().await;
    let (code, lines, err) = again.finish().await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[5]["data"], last);

    // A snapshot first, as one line.
    let snap = watch(&hub, &["address/address", "--snapshot", "--count", "1"]);
    snap.ready().await;
    http_call(&hub, "CREATE", None, json!({"id": "c"})).await;
    let (code, lines, err) = snap.finish().await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["type"], "snapshot");
    assert_eq!(lines[0]["count"], 0);
    assert_eq!(
        (lines[1]["kind"].as_str(), lines[1]["objectid"].as_str()),
        (Some("CREATE"), Some("c"))
    );

    // Refusals and missed history have their own exit statuses.
    let bad = watch(&hub, &["address/address", "--where", r#"{"logic":"XOR"}"#]);
    let (code, _, err) = bad.finish().await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("INVALID_PARAMETERS"), "{err}");
    let future = watch(&hub, &["address/address", "--from", "999999"]);
    let (code, _, err) = future.finish().await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("recovered: false"), "{err}");
    hub.stop().await;
}

#[tokio::test]
async fn watch_without_a_hub_exits_with_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_flowhub"))
        .args(["watch", "a/b", "--url", "ws://127.0.0.1:1/ws"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// `flowhub serve` as a child process on `listen`, with its data in `dir`.
fn serve(dir: &std::path::Path, listen: &str) -> (Child, std::net::SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowhub"));
    cmd.arg("serve")
        .env_clear()
        .env("FLOWHUB_LISTEN", listen)
        .env("FLOWHUB_DATA_DIR", dir)
        .env("FLOWHUB_DURABILITY", "always")
        .env("FLOWHUB_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (child, addr, _log) = common::spawn_serve(&mut cmd);
    (child, addr)
}

async fn create_at(addr: std::net::SocketAddr, id: &str) -> Value {
    let r = common::http(
        addr,
        "POST",
        "/api/restart/restart/thing/",
        &[("Flow-Request-Method", "CREATE")],
        json!({"id": id}).to_string().as_bytes(),
    )
    .await
    .json();
    assert_eq!(r["success"], true, "{r}");
    r["data"].clone()
}

/// The hub goes away and comes back on the same address: `flowhub watch` reconnects, resumes
/// from the last position it printed (positions and the epoch survive the restart) and prints
/// every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, addr) = serve(dir.path(), "127.0.0.1:0");
    // The endpoint exists before the watch starts.
    let a = create_at(addr, "a").await;
    let Watch { child, stderr: rx } = spawn_watch(
        &format!("ws://{addr}/ws"),
        &["restart/thing", "--count", "2"],
        &[],
    );
    let wait_for = |what: &str| {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("flowhub watch says {what:?} within 30 s"));
        assert!(line.contains(what), "{line}");
    };
    tokio::task::block_in_place(|| wait_for("watching"));
    let b = create_at(addr, "b").await;
    // Give the watch a moment to print b, then take the hub away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.kill().unwrap();
    hub.wait().unwrap();
    tokio::task::block_in_place(|| wait_for("reconnecting"));
    let (mut hub, addr2) = serve(dir.path(), &addr.to_string());
    assert_eq!(addr, addr2);
    tokio::task::block_in_place(|| {
        // Connection attempts fail until the hub is back; then it resumes.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the watch resumes");
            if line.contains("watching") {
                assert!(
                    line.contains(&format!("from position {}", b["version"])),
                    "{line}"
                );
                break;
            }
        }
    });
    let c = create_at(addr, "c").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let _ = hub.kill();
    let _ = hub.wait();
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["objectid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b", "c"], "every change once, none missed");
    assert_eq!(lines[1]["position"], c["version"]);
    assert!(a["version"].as_u64() < b["version"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_logs_in_with_user_and_password_when_authentication_is_on() {
    let mut config = Config {
        durability: "never".into(),
        ..Config::default()
    };
    config.auth.admin_password = Some(flowhub::auth::Secret("watch-admin-pw".into()));
    config.auth.argon2_memory_kib = 1024;
    config.auth.argon2_iterations = 1;
    let hub = TestHub::start_secure(config).await;
    // Without credentials the subscription is refused (exit status 1).
    let refused = watch(&hub, &["address/address", "--count", "1"]);
    let (code, _, err) = refused.finish().await;
    assert_eq!(code, 1, "{err}");
    let w = watch_as(
        &hub,
        &["address/address", "--count", "1"],
        &[
            ("FLOWHUB_USER", "admin"),
            ("FLOWHUB_PASSWORD", "watch-admin-pw"),
        ],
    );
    w.ready().await;
    let basic = "Basic YWRtaW46d2F0Y2gtYWRtaW4tcHc="; // admin:watch-admin-pw
    let r = hub
        .http(
            "POST",
            "/api/address/address/address/",
            &[("Authorization", basic)],
            br#"{"id": "a", "city": "Envik"}"#,
        )
        .await
        .json();
    assert_eq!(r["success"], true, "{r}");
    let (code, lines, err) = w.finish().await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["kind"], "CREATE");
    assert_eq!(lines[0]["objectid"], "a");
}
