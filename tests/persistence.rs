//! The record store survives a restart: every acknowledged write is back, versions keep
//! growing, and a second hub on the same data directory is refused.

mod common;

use common::{Config, TestHub};
use serde_json::json;

fn config_in(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    }
}

#[tokio::test]
async fn state_and_versions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(config_in(dir.path())).await;
    let mut ws = hub.ws().await;
    let mut last_version = 0;
    for i in 0..50 {
        let r = ws
            .call(
                json!({"endpoint": "address/address", "method": "CREATE", "namespace": "t1",
                "data": {"id": format!("a{i}"), "n": i, "city": "Envik"}}),
            )
            .await;
        assert_eq!(r["success"], true, "{r}");
    }
    for i in 0..10 {
        let r = ws
            .call(
                json!({"endpoint": "address/address", "method": "UPDATE", "namespace": "t1",
                "objectid": format!("a{i}"), "data": {"n": 100 + i, "city": null}}),
            )
            .await;
        last_version = r["data"]["version"].as_u64().unwrap();
    }
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "DELETE", "namespace": "t1", "objectid": "a49"}))
        .await;
    assert_eq!(r["success"], true);
    let before = ws
        .call(json!({"endpoint": "address/address", "method": "LIST", "namespace": "t1"}))
        .await;
    hub.stop().await;

    let hub = TestHub::start_with(config_in(dir.path())).await;
    let mut ws = hub.ws().await;
    let after = ws
        .call(json!({"endpoint": "address/address", "method": "LIST", "namespace": "t1"}))
        .await;
    assert_eq!(after["count"], 49);
    assert_eq!(
        after["data"], before["data"],
        "the same objects, fields, versions and order"
    );
    let a3 = ws
        .call(json!({"endpoint": "address/address", "method": "OPEN", "namespace": "t1", "objectid": "a3"}))
        .await;
    assert_eq!(a3["data"]["n"], 103);
    assert!(
        a3["data"].get("city").is_none(),
        "the merge patch's null stayed applied"
    );
    let next = ws
        .call(
            json!({"endpoint": "address/address", "method": "UPDATE", "namespace": "t1",
            "objectid": "a3", "data": {"n": 1}}),
        )
        .await;
    assert!(
        next["data"]["version"].as_u64().unwrap() > last_version,
        "versions keep growing"
    );
    let gone = ws
        .call(json!({"endpoint": "address/address", "method": "OPEN", "namespace": "t1", "objectid": "a49"}))
        .await;
    assert_eq!(gone["errorcode"], "DO_NOT_EXIST");
    hub.stop().await;
}

#[tokio::test]
async fn a_second_hub_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(config_in(dir.path())).await;
    let mut ws = hub.ws().await;
    let r = ws
        .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {}}))
        .await;
    assert_eq!(r["success"], true);
    let err = flowhub::server::open(&config_in(dir.path()))
        .err()
        .expect("refused");
    assert!(err.contains("in use by another hub"), "{err}");
    hub.stop().await;
    assert!(
        flowhub::server::open(&config_in(dir.path())).is_ok(),
        "free again after the stop"
    );
}

fn files_in(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == ext));
    v.sort();
    v
}

#[tokio::test]
async fn snapshots_compact_the_log_and_restarts_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        data_dir: dir.path().to_path_buf(),
        segment_bytes: 4096,
        snapshot_min_bytes: 16 * 1024,
        ..Config::default()
    };
    let hub = TestHub::start_with(config()).await;
    let mut ws = hub.ws().await;
    // Rewrite the same 20 objects many times: the log grows, the state does not.
    for round in 0..60 {
        for i in 0..20 {
            let call = if round == 0 {
                json!({"endpoint": "inventory/device", "method": "CREATE",
                    "data": {"id": format!("d{i}"), "round": round, "pad": "x".repeat(100)}})
            } else {
                json!({"endpoint": "inventory/device", "method": "UPDATE",
                    "objectid": format!("d{i}"), "data": {"round": round}})
            };
            let r = ws.call(call).await;
            assert_eq!(r["success"], true, "{r}");
        }
    }
    // Snapshots are written in the background: wait until one has compacted the log.
    let log_dir = dir.path().join("log");
    let snap_dir = dir.path().join("snapshot");
    for _ in 0..200 {
        if !files_in(&snap_dir, "snap").is_empty() && files_in(&log_dir, "seg").len() < 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(files_in(&snap_dir, "snap").len(), 1, "one snapshot is kept");
    let segments = files_in(&log_dir, "seg").len();
    assert!(
        segments < 10,
        "the covered segments were removed ({segments} left)"
    );
    let before = ws
        .call(json!({"endpoint": "inventory/device", "method": "LIST"}))
        .await;
    hub.stop().await;

    // A clean stop leaves a snapshot of everything: the restart reads it.
    let hub = TestHub::start_with(config()).await;
    let mut ws = hub.ws().await;
    let after = ws
        .call(json!({"endpoint": "inventory/device", "method": "LIST"}))
        .await;
    assert_eq!(after["count"], 20);
    assert_eq!(after["data"], before["data"]);
    assert!(after["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["round"] == 59));
    hub.stop().await;
}

#[tokio::test]
async fn a_log_with_missing_segments_is_refused() {
    use flowhub::log::file::{Durability, FileLog};
    use flowhub::store::{Store, StoreConfig, WriteOp};
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    // A log of several segments and no snapshot, as a hub that crashed leaves it.
    let log = FileLog::open(&dir.path().join("log"), Durability::Never, 4096, None).unwrap();
    let store = Store::restore(StoreConfig::default(), Box::new(log), Vec::new(), 0).unwrap();
    for i in 0..200 {
        let data = json!({"i": i, "pad": "y".repeat(64)})
            .as_object()
            .unwrap()
            .clone();
        let op = WriteOp::Create {
            endpoint: "a/b".into(),
            namespace: String::new(),
            id: None,
            data,
        };
        store.write(op).await.unwrap();
    }
    store.close().await;
    let segments = files_in(&dir.path().join("log"), "seg");
    assert!(segments.len() > 2, "{segments:?}");
    let whole = flowhub::server::open(&config).expect("the whole log opens");
    drop(whole);
    std::fs::remove_file(&segments[1]).unwrap();
    let err = flowhub::server::open(&config)
        .err()
        .expect("a log with a hole is refused");
    assert!(err.contains("sequence"), "{err}");
}

#[tokio::test]
async fn a_backup_taken_while_writes_go_on_opens_with_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        segment_bytes: 8192,
        snapshot_min_bytes: 32 * 1024,
        ..Config::default()
    };
    let hub = TestHub::start_with(config).await;
    let url = hub.ws_url();
    let writer = tokio::spawn(async move {
        let mut ws = common::WsClient::connect(&url).await;
        for i in 0..600 {
            let r = ws
                .call(json!({"endpoint": "b/k", "method": "CREATE", "data": {"id": format!("k{i}"), "pad": "z".repeat(80)}}))
                .await;
            assert_eq!(r["success"], true);
        }
    });
    let mut ws = hub.ws().await;
    // Wait until some writes are acknowledged, then back up while the writer goes on.
    let acknowledged = loop {
        let r = ws
            .call(
                json!({"endpoint": "b/k", "method": "LIST", "parameters": {"pagination.size": 1}}),
            )
            .await;
        if r["count"].as_u64().unwrap_or(0) >= 200 {
            break r["count"].as_u64().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let b = flowhub::log::backup::backup(dir.path(), &copy).expect("a consistent copy");
    assert!(
        b.objects as u64 >= acknowledged,
        "{b:?} holds every write acknowledged before it"
    );
    writer.await.unwrap();
    hub.stop().await;

    let restored = TestHub::start_with(Config {
        data_dir: copy.clone(),
        ..Config::default()
    })
    .await;
    let mut ws = restored.ws().await;
    let r = ws
        .call(json!({"endpoint": "b/k", "method": "LIST", "parameters": {"pagination.size": 1}}))
        .await;
    assert_eq!(r["count"].as_u64().unwrap() as usize, b.objects);
    for i in 0..acknowledged {
        let o = ws
            .call(json!({"endpoint": "b/k", "method": "OPEN", "objectid": format!("k{i}")}))
            .await;
        assert_eq!(
            o["success"], true,
            "k{i} was acknowledged before the backup"
        );
    }
    restored.stop().await;
}

#[tokio::test]
async fn flowhub_backup_copies_a_running_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(config_in(dir.path())).await;
    let mut ws = hub.ws().await;
    for i in 0..30 {
        let r = ws
            .call(json!({"endpoint": "c/d", "method": "CREATE", "data": {"id": format!("c{i}")}}))
            .await;
        assert_eq!(r["success"], true);
    }
    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowhub"))
        .arg("backup")
        .arg(&copy)
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("FLOWHUB_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("30 objects"), "{stdout}");
    // A second backup into the same place is refused: it would mix two copies.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_flowhub"))
        .arg("backup")
        .arg(&copy)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    hub.stop().await;
    let restored = TestHub::start_with(config_in(&copy)).await;
    let mut ws = restored.ws().await;
    let r = ws.call(json!({"endpoint": "c/d", "method": "LIST"})).await;
    assert_eq!(r["count"], 30);
    restored.stop().await;
}
