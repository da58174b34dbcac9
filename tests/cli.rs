//! `flowhub call` against a running hub: data from the command line, a file or standard input,
//! parameters, both encodings, output forms and exit statuses.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::TestHub;
use serde_json::{json, Value};

/// What one `flowhub call` did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `flowhub call ARGS` with `FLOWHUB_URL` pointing at `url` (if any), feeding `stdin`.
async fn call(url: Option<&str>, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowhub"));
    cmd.arg("call")
        .args(args)
        .env_clear()
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = url {
        cmd.env("FLOWHUB_URL", url);
    }
    let stdin = stdin.map(str::to_string);
    // The hub runs on this test's runtime: wait for the child off it.
    let out: Output = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    Run {
        code: out.status.code().expect("an exit status"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_from_an_argument_a_file_and_standard_input_then_open() {
    let hub = TestHub::start().await;
    let url = hub.ws_url();
    let url = Some(url.as_str());

    let r = call(
        url,
        &[
            "inventory/device",
            "CREATE",
            "--data",
            r#"{"name": "5128v1.3 (Core-MGNT-switch)", "ports": 48}"#,
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Indented by default.
    assert!(r.stdout.lines().count() > 3, "{}", r.stdout);
    let created = r.json();
    assert_eq!(created["success"], true);
    assert_eq!(created["status"], 0);
    assert_eq!(created["dataType"], "JSON");
    assert_eq!(created["data"]["name"], "5128v1.3 (Core-MGNT-switch)");
    assert!(
        created.get("requestid").is_none() && created.get("type").is_none(),
        "the envelope only: {created}"
    );
    let id = created["data"]["id"].as_str().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.json");
    std::fs::write(&file, r#"{"name": "from a file", "ports": 24}"#).unwrap();
    let at_file = format!("@{}", file.display());
    let r = call(
        url,
        &[
            "inventory/device",
            "CREATE",
            "-o",
            "dev-file",
            "-d",
            &at_file,
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["data"]["id"], "dev-file");
    assert_eq!(r.json()["data"]["name"], "from a file");

    let r = call(
        url,
        &["inventory/device", "CREATE", "--data", "-"],
        Some(r#"{"name": "from stdin", "ports": 8}"#),
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["data"]["name"], "from stdin");

    let r = call(url, &["inventory/device", "OPEN", "--objectid", &id], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["data"]["ports"], 48);
    let r = call(url, &["inventory/device", "OPEN", "-o", "dev-file"], None).await;
    assert_eq!(r.json()["data"]["ports"], 24);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_parameters_in_json_and_as_pairs() {
    let hub = TestHub::start().await;
    let url = hub.ws_url();
    let url = Some(url.as_str());
    for (n, city) in [(6, "Envik"), (2, "Envik"), (222, "Götefred")] {
        let data = json!({"streetNumber": n, "city": city}).to_string();
        let r = call(url, &["address/address", "CREATE", "-d", &data], None).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let params = json!({"parameters": {
        "sorting": true, "sorting.by": "streetNumber", "sorting.order": "ASC",
        "condition": true, "condition.values": {"items": [], "subgroups": [
            {"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}],
             "subgroups": [], "logic": "AND"}], "logic": "AND"},
        "pagination": true, "pagination.size": 1, "pagination.from": 0}})
    .to_string();
    let r = call(
        url,
        &["address/address", "LIST", "--parameters", &params],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let list = r.json();
    assert_eq!(list["count"], 2, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["streetNumber"], 2);

    let r = call(
        url,
        &[
            "address/address",
            "LIST",
            "-p",
            "sorting=true&sorting.by=streetNumber&sorting.order=DESC",
        ],
        None,
    )
    .await;
    let numbers: Vec<i64> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["streetNumber"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [222, 6, 2]);

    let r = call(
        url,
        &[
            "address/address",
            "LIST",
            "-p",
            r#"{"sorting.order": "SIDEWAYS"}"#,
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["errorcode"], "INVALID_PARAMETERS");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_and_compact_print_the_same_envelope() {
    let hub = TestHub::start().await;
    let url = hub.ws_url();
    let url = Some(url.as_str());
    let data = r#"{"name": "switch", "ratio": 2.5, "tags": ["a", "b"], "nested": {"x": null}}"#;
    let r = call(url, &["a/b", "CREATE", "-o", "x1", "-d", data], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    let json_run = call(url, &["a/b", "OPEN", "-o", "x1"], None).await;
    let msgpack_run = call(url, &["a/b", "OPEN", "-o", "x1", "--msgpack"], None).await;
    assert_eq!(msgpack_run.code, 0, "{}", msgpack_run.stderr);
    assert_eq!(json_run.json(), msgpack_run.json());
    assert_eq!(msgpack_run.json()["data"]["ratio"], 2.5);
    assert_eq!(msgpack_run.json()["data"]["tags"], json!(["a", "b"]));

    let compact = call(url, &["a/b", "OPEN", "-o", "x1", "--compact"], None).await;
    assert_eq!(compact.code, 0);
    assert_eq!(
        compact.stdout.trim_end().lines().count(),
        1,
        "{}",
        compact.stdout
    );
    assert_eq!(compact.json(), json_run.json());

    // A MessagePack failure is a failure too.
    let missing = call(url, &["a/b", "OPEN", "-o", "nope", "--msgpack"], None).await;
    assert_eq!(missing.code, 1);
    assert_eq!(missing.json()["errorcode"], "DO_NOT_EXIST");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_prints_its_envelope_and_exits_1() {
    let hub = TestHub::start().await;
    let url = hub.ws_url();
    let url = Some(url.as_str());
    let r = call(url, &["inventory/device", "CREATE", "-d", "{}"], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    let r = call(
        url,
        &[
            "inventory/device",
            "OPEN",
            "-o",
            "3a472a78-4e3e-4858-8acc-eb754f9d1328",
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let reply = r.json();
    assert_eq!(reply["success"], false);
    assert_eq!(reply["status"], 0);
    assert_eq!(reply["errorcode"], "DO_NOT_EXIST");
    assert_eq!(reply["message"], "Object does not exist");
    assert_eq!(reply["dataType"], "JSON");
    assert_eq!(reply["errorid"].as_str().map(str::len), Some(36));

    let r = call(
        url,
        &["inventory/device", "RUN", "-o", "x", "-d", "{}"],
        None,
    )
    .await;
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["errorcode"], "NO_PROVIDER");
    let r = call(url, &["inventory/device", "FETCH"], None).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["errorcode"], "INVALID_REQUEST");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hub_or_bad_arguments_exit_2() {
    // A port nobody listens on: bind one, note it, close it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nowhere = format!("ws://{free}/ws");
    let r = call(None, &["a/b", "LIST", "--url", &nowhere], None).await;
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.is_empty(), "nothing on stdout: {}", r.stdout);
    assert!(r.stderr.contains(&free.to_string()), "{}", r.stderr);

    let r = call(Some(&nowhere), &["a/b", "LIST"], None).await;
    assert_eq!(r.code, 2, "FLOWHUB_URL: {}", r.stdout);
    assert!(r.stderr.contains(&free.to_string()), "{}", r.stderr);

    // --url wins over FLOWHUB_URL.
    let hub = TestHub::start().await;
    let r = call(
        Some(&nowhere),
        &["a/b", "CREATE", "-d", "{}", "--url", &hub.ws_url()],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    let url = hub.ws_url();
    for args in [
        &["a/b", "CREATE", "-d", "{not json"][..],
        &["a/b", "CREATE", "-d", "@/nonexistent/flowhub-data.json"][..],
        &["a/b"][..],
    ] {
        let r = call(Some(&url), args, None).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stdout);
        assert!(!r.stderr.is_empty(), "{args:?} says why");
    }
    hub.stop().await;
}
