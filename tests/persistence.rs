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
