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
