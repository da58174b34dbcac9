//! Authentication and permissions over real sockets (SPEC 13): credentials on every path,
//! tokens that expire and are revoked, the permission matrix of roles and namespaces, runtime
//! rule changes, login throttling, the WebSocket login and grace period, and that no secret
//! ever shows in a reply, a log line or the data directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Config, TestHub, WsClient};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_PW: &str = "admin-secret-1";

/// Authentication on, an admin `admin` / [`ADMIN_PW`], cheap Argon2 (the parameters are the
/// hub's business, not the test's), no fsync.
fn config() -> Config {
    let mut c = Config {
        durability: "never".into(),
        ..Config::default()
    };
    c.auth.admin_password = Some(flowhub::auth::Secret(ADMIN_PW.into()));
    c.auth.argon2_memory_kib = 1024;
    c.auth.argon2_iterations = 1;
    let roles = r#"
        [gui]
        grants = [{ endpoints = ["*"], methods = ["LIST", "OPEN", "INDEX"], subscribe = true }]
        [inventory]
        grants = [{ endpoints = ["inventory/*"], methods = [], provide = true }]
        [tenant]
        grants = [{ endpoints = ["*"], namespaces = ["$own"] }]
        [writer]
        grants = [{ endpoints = ["address/*"] }]
    "#;
    c.auth.roles = toml::from_str(roles).unwrap();
    c
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

async fn create_address(hub: &TestHub, headers: &[(&str, &str)], query: &str) -> common::HttpReply {
    let mut h = vec![("Flow-Request-Method", "CREATE")];
    h.extend_from_slice(headers);
    hub.http(
        "POST",
        &format!("/api/address/address/address/{query}"),
        &h,
        br#"{"streetName": "Larss Gata", "city": "Envik"}"#,
    )
    .await
}

fn assert_fails(r: &common::HttpReply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["errorcode"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// A token for `user` from `auth/token` with Basic credentials.
async fn token(hub: &TestHub, user: &str, pw: &str) -> String {
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/token/",
            &[("Authorization", &basic(user, pw))],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["data"]["user"], user, "{v}");
    assert!(v["data"]["expires"].is_string(), "{v}");
    v["data"]["token"].as_str().unwrap().to_string()
}

/// Makes a user as the admin.
async fn make_user(hub: &TestHub, name: &str, roles: &[&str], namespaces: &[&str]) {
    let body = json!({"username": name, "password": format!("{name}-password"), "roles": roles, "namespaces": namespaces});
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/user/",
            &[
                ("Authorization", &basic("admin", ADMIN_PW)),
                ("Flow-Request-Method", "CREATE"),
            ],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["data"].get("password_hash").is_none());
}

/// The close frame's code and reason, skipping data frames.
async fn close_code(ws: &mut WsClient) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.ws.next())
            .await
            .expect("a close within 10 s");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn seed_calls_authenticate_with_basic_token_header_and_query_string() {
    let hub = TestHub::start_secure(config()).await;
    // Without credentials, with a wrong password, with a bad token: 401.
    assert_fails(&create_address(&hub, &[], "").await, 401, "UNAUTHORIZED");
    let wrong = basic("admin", "not-the-password");
    assert_fails(
        &create_address(&hub, &[("Authorization", &wrong)], "").await,
        401,
        "UNAUTHORIZED",
    );
    let nobody = basic("nobody", "whatever-password");
    assert_fails(
        &create_address(&hub, &[("Authorization", &nobody)], "").await,
        401,
        "UNAUTHORIZED",
    );
    assert_fails(
        &create_address(&hub, &[("Flow-Auth-Token", "fh1_forged")], "").await,
        401,
        "UNAUTHORIZED",
    );
    assert_fails(
        &create_address(&hub, &[], "?token=fh1_forged").await,
        401,
        "UNAUTHORIZED",
    );
    let r = hub.http("GET", "/api/openapi.json", &[], b"").await;
    assert_fails(&r, 401, "UNAUTHORIZED");

    // Basic, the token header, the query string and Bearer all work.
    let good = basic("admin", ADMIN_PW);
    let r = create_address(&hub, &[("Authorization", &good)], "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["success"], true);
    let t = token(&hub, "admin", ADMIN_PW).await;
    assert!(t.starts_with("fh1_"));
    let r = create_address(&hub, &[("Flow-Auth-Token", &t)], "").await;
    assert_eq!(r.status, 200);
    let r = create_address(&hub, &[], &format!("?token={t}")).await;
    assert_eq!(r.status, 200);
    let bearer = format!("Bearer {t}");
    let r = hub
        .http(
            "GET",
            "/api/address/address/address/",
            &[("Authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"], 3);
    let r = hub
        .http("GET", "/api/openapi.json", &[("Flow-Auth-Token", &t)], b"")
        .await;
    assert_eq!(r.status, 200);

    // OPEN on the current token says who you are.
    let r = hub
        .http(
            "GET",
            "/api/auth/auth/token/current",
            &[("Flow-Auth-Token", &t)],
            b"",
        )
        .await;
    let v = r.json();
    assert_eq!(v["data"]["user"], "admin", "{v}");
    assert_eq!(v["data"]["roles"], json!(["admin"]), "{v}");
    assert!(v["data"].get("token").is_none(), "{v}");

    // DELETE revokes it: it stops working at once.
    let r = hub
        .http(
            "DELETE",
            "/api/auth/auth/token/current",
            &[("Flow-Auth-Token", &t)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_fails(
        &create_address(&hub, &[("Flow-Auth-Token", &t)], "").await,
        401,
        "UNAUTHORIZED",
    );
    hub.stop().await;
}

#[tokio::test]
async fn tokens_expire() {
    let mut c = config();
    c.auth.token_lifetime_s = 1;
    let hub = TestHub::start_secure(c).await;
    let t = token(&hub, "admin", ADMIN_PW).await;
    assert_eq!(
        create_address(&hub, &[("Flow-Auth-Token", &t)], "")
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = create_address(&hub, &[("Flow-Auth-Token", &t)], "").await;
    assert_fails(&r, 401, "UNAUTHORIZED");
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));
    hub.stop().await;
}

#[tokio::test]
async fn websocket_token_per_call_login_frame_grace_period_and_revocation() {
    let mut c = config();
    c.auth.auth_timeout_ms = 400;
    let hub = TestHub::start_secure(c).await;
    let t = token(&hub, "admin", ADMIN_PW).await;

    // A socket that never authenticates is closed with 4001 after the grace period.
    let mut idle = hub.ws().await;
    let r = idle
        .call(json!({"endpoint": "address/address", "method": "LIST"}))
        .await;
    assert_eq!(r["errorcode"], "UNAUTHORIZED", "{r}");
    assert_eq!(r["success"], false);
    let (code, reason) = close_code(&mut idle).await;
    assert_eq!(code, 4001, "{reason}");

    // A token in each call, as the seed shows; a valid one keeps the socket open.
    let mut ws = hub.ws().await;
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "CREATE", "token": t, "data": {"city": "Envik"}}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "LIST", "token": "fh1_bad"}))
        .await;
    assert_eq!(r["errorcode"], "UNAUTHORIZED", "{r}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "LIST", "token": t}))
        .await;
    assert_eq!(r["count"], 1, "{r}");

    // A login with user and password issues a token; later calls omit it.
    let mut a = hub.ws().await;
    let r = a
        .call(json!({"type": "login", "username": "admin", "password": "wrong-password"}))
        .await;
    assert_eq!(r["errorcode"], "UNAUTHORIZED", "{r}");
    let r = a
        .call(json!({"type": "login", "username": "admin", "password": ADMIN_PW}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let own = r["data"]["token"].as_str().unwrap().to_string();
    let r = a
        .call(json!({"endpoint": "address/address", "method": "LIST"}))
        .await;
    assert_eq!(r["count"], 1, "{r}");

    // A login with a token; revoking it closes the socket.
    let mut b = hub.ws().await;
    let r = b.call(json!({"type": "login", "token": t})).await;
    assert_eq!(r["data"]["user"], "admin", "{r}");
    assert!(r["data"].get("token").is_none(), "{r}");
    let r = b
        .call(json!({"endpoint": "address/address", "method": "LIST"}))
        .await;
    assert_eq!(r["count"], 1, "{r}");
    let r = a
        .call(json!({"endpoint": "auth/token", "method": "DELETE", "objectid": t}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let (code, reason) = close_code(&mut b).await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    // The per-call socket's token is gone too.
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "LIST", "token": t}))
        .await;
    assert_eq!(r["errorcode"], "UNAUTHORIZED", "{r}");
    // CREATE on auth/token with {username, password}, as the Rust client logs in.
    let r = ws
        .call(json!({"endpoint": "auth/token", "method": "CREATE", "data": {"username": "admin", "password": ADMIN_PW}}))
        .await;
    assert!(r["data"]["token"].as_str().is_some_and(|x| x != own), "{r}");
    hub.stop().await;
}

#[tokio::test]
async fn frames_sent_right_after_a_login_frame_see_the_login() {
    let hub = TestHub::start_secure(config()).await;
    // Login, a call, a subscription and another call, back to back without waiting: each
    // frame after the login is read only once the login is done, so none is refused.
    for _ in 0..5 {
        let mut ws = hub.ws().await;
        let frames = [
            json!({"type": "login", "requestid": "l", "username": "admin", "password": ADMIN_PW}),
            json!({"requestid": "c", "endpoint": "address/address", "method": "CREATE", "data": {"city": "Borg"}}),
            json!({"type": "subscribe", "requestid": "s", "endpoint": "address/address"}),
            json!({"requestid": "d", "endpoint": "address/address", "method": "CREATE", "data": {"city": "Envik"}}),
        ];
        for f in &frames {
            ws.send(f, common::Enc::Json).await;
        }
        let mut replies = std::collections::BTreeMap::new();
        while replies.len() < frames.len() {
            let v = ws.recv().await.expect("the socket stays open");
            if let Some(rid) = v["requestid"].as_str() {
                replies.insert(rid.to_string(), v);
            }
        }
        for (rid, r) in &replies {
            assert_eq!(r["success"], true, "{rid}: {r}");
        }
    }
}

#[tokio::test]
async fn gui_role_may_list_and_open_but_not_update() {
    let hub = TestHub::start_secure(config()).await;
    let admin = basic("admin", ADMIN_PW);
    let r = create_address(&hub, &[("Authorization", &admin)], "").await;
    let id = r.json()["data"]["id"].as_str().unwrap().to_string();
    make_user(&hub, "screen", &["gui"], &[]).await;
    let gui = basic("screen", "screen-password");
    let r = hub
        .http(
            "GET",
            "/api/address/address/address/",
            &[("Authorization", &gui)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"], 1);
    let r = hub
        .http(
            "GET",
            &format!("/api/address/address/address/{id}"),
            &[("Authorization", &gui)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let r = hub
        .http(
            "POST",
            &format!("/api/address/address/address/{id}"),
            &[("Authorization", &gui), ("Flow-Request-Method", "UPDATE")],
            br#"{"city": "Nowhere"}"#,
        )
        .await;
    assert_fails(&r, 403, "FORBIDDEN");
    assert_fails(
        &create_address(&hub, &[("Authorization", &gui)], "").await,
        403,
        "FORBIDDEN",
    );
    // Users are for admins.
    let r = hub
        .http(
            "GET",
            "/api/auth/auth/user/",
            &[("Authorization", &gui)],
            b"",
        )
        .await;
    assert_fails(&r, 403, "FORBIDDEN");
    // Over the WebSocket the same, and it may not provide.
    let t = token(&hub, "screen", "screen-password").await;
    let mut ws = hub.ws().await;
    ws.call(json!({"type": "login", "token": t})).await;
    let r = ws
        .call(json!({"endpoint": "address/address", "method": "UPDATE", "objectid": id, "data": {"a": 1}}))
        .await;
    assert_eq!(r["errorcode"], "FORBIDDEN", "{r}");
    let r = ws
        .call(json!({"type": "provide", "endpoint": "address/address"}))
        .await;
    assert_eq!(r["errorcode"], "FORBIDDEN", "{r}");
    hub.stop().await;
}

#[tokio::test]
async fn subsystem_role_provides_inventory_only() {
    let hub = TestHub::start_secure(config()).await;
    make_user(&hub, "inventory-svc", &["inventory"], &[]).await;
    let mut ws = hub.ws().await;
    // Before logging in, providing is refused.
    let r = ws
        .call(json!({"type": "provide", "endpoint": "inventory/device"}))
        .await;
    assert_eq!(r["errorcode"], "UNAUTHORIZED", "{r}");
    let r = ws
        .call(json!({"type": "login", "username": "inventory-svc", "password": "inventory-svc-password"}))
        .await;
    assert_eq!(r["data"]["roles"], json!(["inventory"]), "{r}");
    let r = ws
        .call(json!({"type": "provide", "endpoint": "inventory/device", "methods": ["RUN"]}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    let r = ws
        .call(json!({"type": "provide", "endpoint": "address/address"}))
        .await;
    assert_eq!(r["errorcode"], "FORBIDDEN", "{r}");
    // A provider's token in the provide frame itself works too (the Rust client sends it).
    let t = token(&hub, "inventory-svc", "inventory-svc-password").await;
    let mut other = hub.ws().await;
    let r = other
        .call(json!({"type": "provide", "endpoint": "inventory/switch", "token": t}))
        .await;
    assert_eq!(r["success"], true, "{r}");
    // It may provide but not call.
    let r = other
        .call(json!({"endpoint": "inventory/device", "method": "LIST", "token": t}))
        .await;
    assert_eq!(r["errorcode"], "FORBIDDEN", "{r}");
    // Callers see the provider's user in invokes: the admin's call reaches it.
    let admin = token(&hub, "admin", ADMIN_PW).await;
    let mut caller = hub.ws().await;
    caller
        .send(
            &json!({"requestid": "c1", "endpoint": "inventory/device", "method": "RUN", "objectid": "d1", "data": {}, "token": admin}),
            common::Enc::Json,
        )
        .await;
    let invoke = ws.recv().await.unwrap();
    assert_eq!(invoke["type"], "invoke", "{invoke}");
    assert_eq!(invoke["caller"]["user"], "admin", "{invoke}");
    assert_eq!(invoke["caller"]["roles"], json!(["admin"]), "{invoke}");
    hub.stop().await;
}

#[tokio::test]
async fn namespace_rules_keep_tenants_apart() {
    let hub = TestHub::start_secure(config()).await;
    make_user(&hub, "acme", &["tenant"], &["acme"]).await;
    make_user(&hub, "globex", &["tenant"], &["globex"]).await;
    let acme = basic("acme", "acme-password");
    let globex = basic("globex", "globex-password");
    let r = create_address(
        &hub,
        &[("Authorization", &acme), ("Flow-Request-Namespace", "acme")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = create_address(
        &hub,
        &[
            ("Authorization", &globex),
            ("Flow-Request-Namespace", "globex"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    for (who, ns, ok) in [
        (&acme, "acme", true),
        (&acme, "globex", false),
        (&acme, "", false),
        (&globex, "globex", true),
        (&globex, "acme", false),
    ] {
        let r = hub
            .http(
                "GET",
                "/api/address/address/address/",
                &[("Authorization", who), ("Flow-Request-Namespace", ns)],
                b"",
            )
            .await;
        if ok {
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["count"], 1);
        } else {
            assert_fails(&r, 403, "FORBIDDEN");
        }
    }
    hub.stop().await;
}

#[tokio::test]
async fn runtime_rule_changes_take_effect_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut c = config();
    c.data_dir = data.path().to_path_buf();
    c.durability = "always".into();
    let hub = TestHub::start_secure(c.clone()).await;
    let admin = basic("admin", ADMIN_PW);
    let r = create_address(&hub, &[("Authorization", &admin)], "").await;
    let id = r.json()["data"]["id"].as_str().unwrap().to_string();
    make_user(&hub, "screen", &["gui"], &[]).await;
    let gui = basic("screen", "screen-password");
    let update = |hub: &TestHub| {
        let path = format!("/api/address/address/address/{id}");
        let gui = gui.clone();
        let hub_addr = hub.addr;
        async move {
            common::http(
                hub_addr,
                "POST",
                &path,
                &[("Authorization", &gui), ("Flow-Request-Method", "UPDATE")],
                br#"{"city": "Nowhere"}"#,
            )
            .await
        }
    };
    assert_fails(&update(&hub).await, 403, "FORBIDDEN");
    // Only admins change roles.
    let change = json!({"grants": [{"endpoints": ["address/*"], "methods": ["LIST", "OPEN", "UPDATE"], "subscribe": true}]});
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/role/gui",
            &[("Authorization", &gui), ("Flow-Request-Method", "UPDATE")],
            change.to_string().as_bytes(),
        )
        .await;
    assert_fails(&r, 403, "FORBIDDEN");
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/role/gui",
            &[("Authorization", &admin), ("Flow-Request-Method", "UPDATE")],
            change.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["data"]["source"], "runtime");
    assert_eq!(update(&hub).await.status, 200);
    hub.stop().await;

    // The rule, the user and the admin are kept in the data directory.
    let hub = TestHub::start_secure(c.clone()).await;
    assert_eq!(update(&hub).await.status, 200);
    let r = hub
        .http(
            "GET",
            "/api/auth/auth/role/",
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    let roles = r.json()["data"].clone();
    assert!(
        roles
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "admin" && r["source"] == "builtin"),
        "{roles}"
    );
    // Deleting the runtime definition falls back to the file's.
    let r = hub
        .http(
            "DELETE",
            "/api/auth/auth/role/gui",
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_fails(&update(&hub).await, 403, "FORBIDDEN");
    // A new role at runtime, given to a user.
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/role/",
            &[("Authorization", &admin), ("Flow-Request-Method", "CREATE")],
            br#"{"name": "editor", "grants": [{"endpoints": ["address/address"], "methods": ["UPDATE"]}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/user/screen",
            &[("Authorization", &admin), ("Flow-Request-Method", "UPDATE")],
            br#"{"roles": ["gui", "editor"]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(update(&hub).await.status, 200);
    hub.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_user_and_per_address() {
    let mut c = config();
    c.auth.throttle_failures = 3;
    c.auth.throttle_window_s = 30;
    let hub = TestHub::start_secure(c).await;
    let wrong = basic("admin", "not-the-password");
    for _ in 0..3 {
        assert_fails(
            &create_address(&hub, &[("Authorization", &wrong)], "").await,
            401,
            "UNAUTHORIZED",
        );
    }
    // Now even the right password waits for the window to end.
    let r = create_address(&hub, &[("Authorization", &basic("admin", ADMIN_PW))], "").await;
    assert_fails(&r, 429, "RATE_LIMITED");
    assert_eq!(r.header("Retry-After"), Some("30"));
    // The address is throttled too, for any user, over the WebSocket as well.
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/token/",
            &[("Authorization", &basic("someone", "some-password"))],
            b"",
        )
        .await;
    assert_fails(&r, 429, "RATE_LIMITED");
    let mut ws = hub.ws().await;
    let r = ws
        .call(json!({"type": "login", "username": "admin", "password": ADMIN_PW}))
        .await;
    assert_eq!(r["errorcode"], "RATE_LIMITED", "{r}");
    hub.stop().await;
}

#[tokio::test]
async fn admins_manage_users_and_hashes_never_leave_the_hub() {
    let hub = TestHub::start_secure(config()).await;
    let admin = basic("admin", ADMIN_PW);
    make_user(&hub, "alice", &["writer"], &["a"]).await;
    let r = hub
        .http(
            "GET",
            "/api/auth/auth/user/",
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    let v = r.json();
    assert_eq!(v["count"], 2, "{v}");
    assert!(!r.body.windows(7).any(|w| w == b"argon2i"), "{v}");
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u.get("password_hash").is_none()));
    let r = hub
        .http(
            "GET",
            "/api/auth/auth/user/alice",
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    assert_eq!(r.json()["data"]["roles"], json!(["writer"]));
    // A user may read itself, not others.
    let alice = basic("alice", "alice-password");
    let r = hub
        .http(
            "GET",
            "/api/auth/auth/user/alice",
            &[("Authorization", &alice)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let r = hub
        .http(
            "GET",
            "/api/auth/auth/user/admin",
            &[("Authorization", &alice)],
            b"",
        )
        .await;
    assert_fails(&r, 403, "FORBIDDEN");
    // A duplicate is refused; so is a short password.
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/user/",
            &[("Authorization", &admin), ("Flow-Request-Method", "CREATE")],
            br#"{"username": "alice", "password": "another-password"}"#,
        )
        .await;
    assert_fails(&r, 409, "ALREADY_EXISTS");
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/user/",
            &[("Authorization", &admin), ("Flow-Request-Method", "CREATE")],
            br#"{"username": "bob", "password": "short"}"#,
        )
        .await;
    assert_fails(&r, 400, "INVALID_REQUEST");
    // A new password revokes the user's tokens and replaces the old password.
    let t = token(&hub, "alice", "alice-password").await;
    let r = hub
        .http(
            "POST",
            "/api/auth/auth/user/alice",
            &[("Authorization", &admin), ("Flow-Request-Method", "UPDATE")],
            br#"{"password": "alice-new-password"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_fails(
        &create_address(&hub, &[("Flow-Auth-Token", &t)], "").await,
        401,
        "UNAUTHORIZED",
    );
    assert_fails(
        &create_address(&hub, &[("Authorization", &alice)], "").await,
        401,
        "UNAUTHORIZED",
    );
    let alice2 = basic("alice", "alice-new-password");
    assert_eq!(
        create_address(&hub, &[("Authorization", &alice2)], "")
            .await
            .status,
        200
    );
    // Deleting a user revokes its tokens.
    let t = token(&hub, "alice", "alice-new-password").await;
    let r = hub
        .http(
            "DELETE",
            "/api/auth/auth/user/alice",
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_fails(
        &create_address(&hub, &[("Flow-Auth-Token", &t)], "").await,
        401,
        "UNAUTHORIZED",
    );
    // The last admin stays one.
    let r = hub
        .http(
            "DELETE",
            "/api/auth/auth/user/admin",
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    assert_fails(&r, 409, "CONFLICT");
    // The engine's store endpoints are not reachable as records, nor listed.
    let r = hub
        .http(
            "GET",
            "/api/hub/hub/endpoint/",
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    assert!(
        !String::from_utf8_lossy(&r.body).contains("auth/"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    hub.stop().await;
}

/// `flowhub serve` with authentication on, JSON logs at debug level and cheap Argon2 from a
/// config file; `env` on top.
fn serve(data: &std::path::Path, env: &[(&str, &str)]) -> std::process::Command {
    let file = data.join("hub.toml");
    std::fs::write(
        &file,
        "[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowhub"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .env_clear()
        .env("FLOWHUB_LISTEN", "127.0.0.1:0")
        .env("FLOWHUB_LOG_FORMAT", "json")
        .env("FLOWHUB_LOG", "debug")
        .env("FLOWHUB_DATA_DIR", data)
        .env("FLOWHUB_AUTH", "on")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Stops a spawned hub with SIGTERM (so it writes its last snapshot) and waits.
fn terminate(mut child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the hub did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir`, read whole.
fn files(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_password_or_token_in_replies_logs_or_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let admin_pw = "Adm1n-Pa55word-for-the-grep";
    let alice_pw = "Al1ce-Pa55word-for-the-grep";
    let (child, addr, log) = common::spawn_serve(&mut serve(
        data.path(),
        &[
            ("FLOWHUB_ADMIN_USER", "root"),
            ("FLOWHUB_ADMIN_PASSWORD", admin_pw),
        ],
    ));
    let mut replies: Vec<u8> = Vec::new();
    let mut keep = |r: &common::HttpReply| {
        replies.extend_from_slice(&r.body);
        for (k, v) in &r.headers {
            replies.extend_from_slice(format!("{k}: {v}\n").as_bytes());
        }
    };
    let root = basic("root", admin_pw);
    let r = common::http(
        addr,
        "POST",
        "/api/auth/auth/user/",
        &[("Authorization", &root), ("Flow-Request-Method", "CREATE")],
        json!({"username": "alice", "password": alice_pw, "roles": ["admin"]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    keep(&r);
    let r = common::http(
        addr,
        "POST",
        "/api/auth/auth/token/",
        &[("Authorization", &basic("alice", alice_pw))],
        b"",
    )
    .await;
    let token = r.json()["data"]["token"].as_str().unwrap().to_string();
    // The one reply that hands the token out is the only place it may appear.
    let mut calls = vec![
        common::http(
            addr,
            "GET",
            &format!("/api/auth/auth/token/current?token={token}"),
            &[],
            b"",
        )
        .await,
        common::http(
            addr,
            "GET",
            "/api/auth/auth/token/",
            &[("Flow-Auth-Token", &token)],
            b"",
        )
        .await,
        common::http(
            addr,
            "GET",
            "/api/auth/auth/user/",
            &[("Flow-Auth-Token", &token)],
            b"",
        )
        .await,
        common::http(
            addr,
            "GET",
            "/api/auth/auth/user/alice",
            &[("Flow-Auth-Token", &token)],
            b"",
        )
        .await,
        common::http(
            addr,
            "GET",
            "/api/hub/hub/endpoint/",
            &[("Flow-Auth-Token", &token)],
            b"",
        )
        .await,
        common::http(
            addr,
            "GET",
            "/api/openapi.json",
            &[("Flow-Auth-Token", &token)],
            b"",
        )
        .await,
        common::http(
            addr,
            "GET",
            "/api/auth/auth/user/",
            &[("Authorization", &basic("alice", "wrong-password!"))],
            b"",
        )
        .await,
        common::http(
            addr,
            "GET",
            "/api/address/address/address/",
            &[("Flow-Auth-Token", &format!("{token}x"))],
            b"",
        )
        .await,
    ];
    let r = common::http(
        addr,
        "POST",
        "/api/address/address/address/",
        &[
            ("Flow-Auth-Token", &token),
            ("Flow-Request-Method", "CREATE"),
        ],
        br#"{"city": "Envik"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    calls.push(r);
    for r in &calls {
        keep(r);
    }
    // Over the WebSocket: a login with the password, a call with the token, a bad login.
    let mut ws = WsClient::connect(&format!("ws://{addr}/ws")).await;
    let r = ws
        .call(json!({"type": "login", "username": "alice", "password": alice_pw}))
        .await;
    let ws_token = r["data"]["token"].as_str().unwrap().to_string();
    let mut ws_replies = vec![
        ws.call(json!({"endpoint": "address/address", "method": "LIST", "token": token}))
            .await,
        ws.call(json!({"type": "login", "username": "alice", "password": format!("{alice_pw}!")}))
            .await,
        ws.call(json!({"endpoint": "auth/token", "method": "OPEN", "objectid": "current"}))
            .await,
    ];
    ws_replies.push(
        ws.call(json!({"endpoint": "auth/token", "method": "DELETE", "objectid": "current"}))
            .await,
    );
    for r in &ws_replies {
        replies.extend_from_slice(r.to_string().as_bytes());
    }
    drop(ws);
    terminate(child);

    let log = log.lock().unwrap().clone();
    assert!(log.contains("failed login"), "{log}");
    let mut stored = Vec::new();
    files(data.path(), &mut stored);
    assert!(stored
        .iter()
        .any(|(p, _)| p.to_string_lossy().contains("snapshot")));
    for secret in [
        admin_pw,
        alice_pw,
        &token,
        &ws_token,
        &token[4..],
        &ws_token[4..],
    ] {
        assert!(!contains(&replies, secret), "a reply shows a secret");
        assert!(!log.contains(secret), "the log shows a secret:\n{log}");
        for (path, bytes) in &stored {
            assert!(
                !contains(bytes, secret),
                "{} holds a secret",
                path.display()
            );
        }
    }
    // What the store keeps instead: an Argon2id PHC string and token hashes.
    assert!(stored.iter().any(|(_, b)| contains(b, "$argon2id$")));
}

#[tokio::test]
async fn first_start_creates_an_admin_with_a_password_shown_once_and_kept_0600() {
    let data = tempfile::tempdir().unwrap();
    let (child, addr, log) = common::spawn_serve(&mut serve(data.path(), &[]));
    // The password file appears with the admin.
    let file = data.path().join("admin-password");
    // The admin is made right after the listening line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let (user, pw) = text.trim_end().split_once(':').unwrap();
    assert_eq!(user, "admin");
    assert!(pw.len() >= 20, "{pw}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let r = common::http(
        addr,
        "GET",
        "/api/address/address/address/",
        &[("Authorization", &basic(user, pw))],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body)); // known admin, no such endpoint yet
    let r = common::http(addr, "GET", "/api/address/address/address/", &[], b"").await;
    assert_eq!(r.status, 401);
    terminate(child);
    let log = log.lock().unwrap().clone();
    // Shown once on stderr, outside the structured log lines.
    assert_eq!(log.matches(pw).count(), 1, "{log}");
    for line in log.lines().filter(|l| l.starts_with('{')) {
        assert!(!line.contains(pw), "{line}");
    }

    // A second start keeps the admin and shows no password.
    let (child, addr, log) = common::spawn_serve(&mut serve(data.path(), &[]));
    let r = common::http(
        addr,
        "GET",
        "/api/hub/hub/endpoint/",
        &[("Authorization", &basic(user, pw))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    terminate(child);
    assert!(!log.lock().unwrap().contains(pw));
}

#[tokio::test]
async fn open_mode_is_announced_loudly() {
    let data = tempfile::tempdir().unwrap();
    let (child, addr, log) =
        common::spawn_serve(&mut serve(data.path(), &[("FLOWHUB_AUTH", "none")]));
    let r = common::http(addr, "GET", "/api/hub/hub/endpoint/", &[], b"").await;
    assert_eq!(r.status, 200);
    terminate(child);
    assert!(log.lock().unwrap().contains("AUTHENTICATION IS OFF"));
    assert!(!data.path().join("admin-password").exists());
}

#[tokio::test]
async fn tls_serves_https_and_wss_on_the_one_listener() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key_pair.serialize_pem()).unwrap();
    let mut c = config();
    c.tls_cert = Some(cert_file);
    c.tls_key = Some(key_file);
    let hub = TestHub::start_secure(c).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    // HTTPS: a seed call with Basic credentials.
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    let req = format!(
        "GET /api/hub/hub/endpoint/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("admin", ADMIN_PW)
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await.unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"success\":true"), "{text}");

    // WSS: a login frame and a call.
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    for frame in [
        json!({"type": "login", "requestid": 1, "username": "admin", "password": ADMIN_PW}),
        json!({"requestid": 2, "endpoint": "hub/endpoint", "method": "LIST"}),
    ] {
        futures_util::SinkExt::send(&mut ws, Message::text(frame.to_string()))
            .await
            .unwrap();
        let reply = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => break serde_json::from_str::<serde_json::Value>(&t).unwrap(),
                _ => continue,
            }
        };
        assert_eq!(reply["success"], true, "{reply}");
        assert_eq!(reply["requestid"], frame["requestid"]);
    }

    // Plain HTTP on the TLS port gets no reply.
    let mut plain = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    hub.stop().await;
}

#[tokio::test]
async fn flowhub_call_logs_in_with_user_and_password_or_a_token() {
    let hub = TestHub::start_secure(config()).await;
    let t = token(&hub, "admin", ADMIN_PW).await;
    let run = |env: Vec<(&'static str, String)>| {
        let url = hub.ws_url();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowhub"))
                .args(["call", "hub/endpoint", "LIST"])
                .env_clear()
                .env("FLOWHUB_URL", url)
                .envs(env)
                .output()
                .unwrap();
            let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (out.status.code(), reply)
        })
    };
    let (code, reply) = run(vec![]).await.unwrap();
    assert_eq!(
        (code, &reply["errorcode"]),
        (Some(1), &json!("UNAUTHORIZED")),
        "{reply}"
    );
    let (code, reply) = run(vec![
        ("FLOWHUB_USER", "admin".into()),
        ("FLOWHUB_PASSWORD", "wrong-password".into()),
    ])
    .await
    .unwrap();
    assert_eq!(
        (code, &reply["errorcode"]),
        (Some(1), &json!("UNAUTHORIZED")),
        "{reply}"
    );
    let (code, reply) = run(vec![
        ("FLOWHUB_USER", "admin".into()),
        ("FLOWHUB_PASSWORD", ADMIN_PW.into()),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{reply}");
    let (code, reply) = run(vec![("FLOWHUB_TOKEN", t)]).await.unwrap();
    assert_eq!(code, Some(0), "{reply}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_logs_in_provides_and_calls_with_authentication_on() {
    use flowhub_client::{Answer, Call, Client, ClientConfig, Invocation, Method, Provide};
    let hub = TestHub::start_secure(config()).await;
    make_user(&hub, "inventory-svc", &["inventory"], &[]).await;
    make_user(&hub, "screen", &["gui"], &[]).await;
    let provider = Client::connect(
        ClientConfig::new(&hub.ws_url()).with_password("inventory-svc", "inventory-svc-password"),
    )
    .await
    .unwrap();
    provider
        .provide(
            Provide::new("inventory/device").methods([Method::List]),
            |inv: Invocation| async move {
                Answer::list(vec![json!({"id": "d1", "asked_by": inv.caller.user})], 1)
            },
        )
        .await
        .unwrap();
    // Its role does not let it provide elsewhere.
    let err = provider
        .provide(
            Provide::new("address/address"),
            |_inv: Invocation| async move { Answer::ok(json!({})) },
        )
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("FORBIDDEN"), "{err}");
    let gui = Client::connect(
        ClientConfig::new(&hub.ws_url()).with_password("screen", "screen-password"),
    )
    .await
    .unwrap();
    let r = gui.call(Call::list("inventory/device")).await.unwrap();
    assert_eq!(r.data[0]["asked_by"], "screen");
    let err = gui
        .call(Call::create("inventory/device", json!({"id": "x"})))
        .await
        .unwrap_err();
    assert_eq!(err.errorcode(), Some("FORBIDDEN"), "{err}");
    // A wrong password fails the connect with the hub's error.
    let err =
        Client::connect(ClientConfig::new(&hub.ws_url()).with_password("screen", "wrong-password"))
            .await
            .unwrap_err();
    assert_eq!(err.errorcode(), Some("UNAUTHORIZED"), "{err}");
    hub.stop().await;
}
