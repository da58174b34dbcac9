//! The hub answers over both transports on a real socket.

mod common;

use common::TestHub;
use serde_json::json;

#[tokio::test]
async fn create_over_ws_then_open_over_http() {
    let hub = TestHub::start().await;
    let mut ws = hub.ws().await;
    let created = ws
        .call(
            json!({"endpoint": "inventory/device", "method": "CREATE", "data": {"name": "switch"}}),
        )
        .await;
    assert_eq!(created["success"], true, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let r = hub
        .http(
            "GET",
            "/api/inventory/inventory/device",
            &[
                ("Flow-Request-ObjectId", &id),
                ("Flow-Request-Method", "OPEN"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["name"], "switch");
    hub.stop().await;
}

#[tokio::test]
async fn a_list_larger_than_max_list_items_must_paginate() {
    let config = common::Config {
        max_list_items: 5,
        ..common::Config::default()
    };
    let hub = TestHub::start_with(config).await;
    let mut ws = hub.ws().await;
    for i in 0..7 {
        let r = ws
            .call(json!({"endpoint": "big/list", "method": "CREATE", "data": {"n": i}}))
            .await;
        assert_eq!(r["success"], true);
    }
    let all = hub
        .http(
            "GET",
            "/api/big/big/list/",
            &[("Flow-Request-Method", "LIST")],
            b"",
        )
        .await;
    assert_eq!(all.status, 413);
    assert_eq!(all.json()["errorcode"], "TOO_LARGE");
    assert!(all.json()["message"].as_str().unwrap().contains("7 match"));
    let page = ws
        .call(json!({"endpoint": "big/list", "method": "LIST",
            "parameters": {"pagination.size": 5, "pagination.from": 5}}))
        .await;
    assert_eq!(page["count"], 7);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    hub.stop().await;
}
