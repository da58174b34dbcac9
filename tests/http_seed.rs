//! Every HTTP example of the Flow API seed, sent as written, against a hub seeded with the
//! seed's addresses; then the rest of the HTTP bridge contract: the six call fields in headers
//! and in the query string, path resolution, verb defaults, parameter forms, namespaces, the
//! application segment, MessagePack replies, and WebSocket replies equal to HTTP envelopes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Enc, HttpReply, TestHub};
use serde_json::{json, Value};

/// The seed's `Authorization` header, sent as written (the hub does not enforce auth yet).
const BASIC: (&str, &str) = (
    "Authorization",
    "Basic Zmxvd0BtYWludHJhYy5zZTpOT19QQVNTV09SRA==",
);
const ADDRESSES: &str = "/api/address/address/address/";
const DEVICE_PATH: &str = "/api/inventory/inventory/device";
const DEVICE_ID: &str = "3a472a78-4e3e-4858-8acc-eb754f9d1328";
const OSTRA: &str = "b46bb7bf-c88e-439a-a396-87bbda0ffad9";
const LARSS: &str = "b93aefc2-0bc7-4f87-a5ab-08c66326cee3";
const AKERALLEN: &str = "d08be5ee-b207-4ee6-acf4-325dc0062d86";
const ANGSVAGEN: &str = "ec71cf34-3e01-4c79-b66d-af14db5d5c4c";

/// The seed's sorting example header.
const SORTING: &str =
    r#"{"parameters": {"sorting": true,"sorting.by": "streetNumber","sorting.order": "ASC"}}"#;
/// The seed's filtering example header.
const FILTERING: &str = r#"{"parameters": {"condition": true,"condition.values": {"items": [], "subgroups": [{"items": [{"key": "city","operator": "EQUAL","value": "Envik"}],"subgroups": [],"logic": "AND"}], "logic": "AND"},"sorting": true}}"#;
/// The seed's pagination example header.
const PAGINATION: &str =
    r#"{"parameters": {"pagination": true, "pagination.size": 1,"pagination.from": 0}}"#;

/// The seed's pagination result, field by field (`created` is the hub's).
fn ostra() -> Value {
    json!({
        "id": OSTRA,
        "attributes": {},
        "streetName": "Östra Backgärdet",
        "streetNumber": 222,
        "streetLitteral": "A",
        "postalCode": "39927",
        "city": "Götefred",
        "countryCode": "SE",
        "apartmentNo": "1501",
        "refType": "vgvytmuane",
        "latitude": -76.4406,
        "longitude": 127.0144,
        "segment": ["3b1d3419-c263-4ab1-abeb-a2df32a84855"],
        "_name": ""
    })
}

fn address(
    id: Option<&str>,
    street: &str,
    number: u64,
    letter: &str,
    postal: &str,
    city: &str,
) -> Value {
    let mut a = json!({
        "attributes": {},
        "streetName": street,
        "streetNumber": number,
        "streetLitteral": letter,
        "postalCode": postal,
        "city": city,
        "countryCode": "SE",
        "apartmentNo": format!("{}", 1000 + number),
        "refType": "street",
        "latitude": 57.0 + number as f64 / 1000.0,
        "longitude": 12.0 - number as f64 / 1000.0,
        "segment": [],
        "_name": ""
    });
    if let Some(id) = id {
        a["id"] = json!(id);
    }
    a
}

/// The twelve addresses, in creation order: Östra Backgärdet first; Larss Gata the only one in
/// Envik; Övre Åkerallén (4) and Övre Ängsvägen (5) the lowest street numbers. Creation order
/// differs from street-number order, so a sort that did nothing would show.
fn addresses() -> Vec<Value> {
    vec![
        ostra(),
        address(None, "Kvarngatan", 48, "B", "39930", "Götefred"),
        address(Some(LARSS), "Larss Gata", 6, "G", "12431", "Envik"),
        address(None, "Hamnvägen", 101, "", "45120", "Söderås"),
        address(
            Some(AKERALLEN),
            "Övre Åkerallén",
            4,
            "",
            "39927",
            "Götefred",
        ),
        address(None, "Björkstigen", 15, "C", "45121", "Söderås"),
        address(None, "Lärkvägen", 31, "", "33410", "Norrby"),
        address(
            Some(ANGSVAGEN),
            "Övre Ängsvägen",
            5,
            "A",
            "39928",
            "Götefred",
        ),
        address(None, "Skolgatan", 9, "", "33411", "Norrby"),
        address(None, "Ekbacken", 23, "D", "45122", "Söderås"),
        address(None, "Tallvägen", 7, "", "39931", "Götefred"),
        address(None, "Strandvägen", 12, "B", "33412", "Norrby"),
    ]
}

/// Headers of one request.
type Headers<'a> = Vec<(&'a str, &'a str)>;

const SORTED_NUMBERS: [u64; 12] = [4, 5, 6, 7, 9, 12, 15, 23, 31, 48, 101, 222];

async fn post_create(hub: &TestHub, path: &str, headers: &[(&str, &str)], data: &Value) -> Value {
    let mut h = vec![
        ("Flow-Request-Method", "CREATE"),
        ("Content-Type", "application/json"),
    ];
    h.extend_from_slice(headers);
    let r = hub
        .http("POST", path, &h, data.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 200, "CREATE {path}: {}", body_text(&r));
    let v = r.json();
    assert_eq!(v["success"], true, "{v}");
    v["data"].clone()
}

/// A hub holding the twelve addresses (created over HTTP as the seed's integrators would) and
/// the seed's device.
async fn seeded() -> (TestHub, Vec<Value>) {
    let hub = TestHub::start().await;
    let mut stored = Vec::new();
    for a in addresses() {
        stored.push(post_create(&hub, ADDRESSES, &[BASIC], &a).await);
    }
    post_create(&hub, "/api/inventory/inventory/device/", &[], &device()).await;
    (hub, stored)
}

fn device() -> Value {
    json!({
        "id": DEVICE_ID,
        "name": "5128v1.3 (Core-MGNT-switch)",
        "model": "5128v1.3",
        "location": {"site": "Envik", "rack": 4},
        "ports": [1, 2, 3]
    })
}

fn body_text(r: &HttpReply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// An HTTP reply that must be a successful envelope; returns it.
fn ok(r: &HttpReply) -> Value {
    assert_eq!(r.status, 200, "{}", body_text(r));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(v["dataType"], "JSON", "{v}");
    assert!(
        v.get("errorcode").is_none() && v.get("errorid").is_none(),
        "{v}"
    );
    v
}

/// An HTTP reply that must be an error envelope with this status and code; returns it.
fn err(r: &HttpReply, status: u16, code: &str) -> Value {
    let v = r.json();
    assert_eq!(r.status, status, "{v}");
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(v["errorcode"], code, "{v}");
    assert_eq!(v["dataType"], "JSON", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let errorid = v["errorid"].as_str().expect("errorid is a string");
    uuid::Uuid::parse_str(errorid).expect("errorid is a UUID");
    assert!(v.get("data").is_none(), "{v}");
    v
}

fn numbers(list: &Value) -> Vec<u64> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["streetNumber"].as_u64().unwrap())
        .collect()
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_rfc3339(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s} is not RFC 3339 UTC: {e}"));
}

/// Every field of `expected` is in `actual` with the same value.
fn assert_fields(actual: &Value, expected: &Value) {
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&actual[k], v, "field {k} of {actual}");
    }
}

async fn get(hub: &TestHub, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    hub.http("GET", path, headers, b"").await
}

async fn list_all(hub: &TestHub, headers: &[(&str, &str)]) -> Value {
    let mut h = vec![("Flow-Request-Method", "LIST")];
    h.extend_from_slice(headers);
    ok(&get(hub, ADDRESSES, &h).await)
}

#[tokio::test]
async fn seed_sorting_example() {
    let (hub, stored) = seeded().await;
    let r = get(
        &hub,
        ADDRESSES,
        &[
            ("Flow-Request-Method", "LIST"),
            ("Flow-Request-Parameter", SORTING),
            BASIC,
        ],
    )
    .await;
    let v = ok(&r);
    assert_eq!(v["count"], 12);
    assert_eq!(numbers(&v), SORTED_NUMBERS);
    let first = &v["data"][0];
    assert_eq!(first["id"], AKERALLEN);
    assert_eq!(first["streetName"], "Övre Åkerallén");
    assert_eq!(first["streetNumber"], 4);
    assert_eq!(first["attributes"], json!({}));
    assert_rfc3339(&first["created"]);
    let second = &v["data"][1];
    assert_eq!(second["id"], ANGSVAGEN);
    assert_eq!(second["streetName"], "Övre Ängsvägen");
    assert_eq!(second["streetNumber"], 5);
    // Every stored address comes back exactly once, as stored.
    let mut listed: Vec<Value> = v["data"].as_array().unwrap().clone();
    let mut expected = stored.clone();
    let key = |a: &Value| a["id"].as_str().unwrap().to_string();
    listed.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(listed, expected);

    // The same call with DESC gives the reverse order.
    let desc = SORTING.replace("ASC", "DESC");
    let v = ok(&get(
        &hub,
        ADDRESSES,
        &[
            ("Flow-Request-Method", "LIST"),
            ("Flow-Request-Parameter", &desc),
            BASIC,
        ],
    )
    .await);
    let mut reversed = SORTED_NUMBERS;
    reversed.reverse();
    assert_eq!(numbers(&v), reversed);
    assert_eq!(v["count"], 12);
    hub.stop().await;
}

#[tokio::test]
async fn seed_filtering_example() {
    let (hub, _) = seeded().await;
    let v = ok(&get(
        &hub,
        ADDRESSES,
        &[
            ("Flow-Request-Method", "LIST"),
            ("Flow-Request-Parameter", FILTERING),
            BASIC,
        ],
    )
    .await);
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_fields(
        &v["data"][0],
        &json!({"id": LARSS, "streetName": "Larss Gata", "streetNumber": 6,
            "streetLitteral": "G", "postalCode": "12431", "city": "Envik"}),
    );
    // The filter really filters: another city gives its own addresses only.
    let norrby = FILTERING.replace("Envik", "Norrby");
    let v = ok(&get(
        &hub,
        ADDRESSES,
        &[
            ("Flow-Request-Method", "LIST"),
            ("Flow-Request-Parameter", &norrby),
            BASIC,
        ],
    )
    .await);
    assert_eq!(v["count"], 3);
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["city"] == "Norrby"));
    hub.stop().await;
}

#[tokio::test]
async fn seed_pagination_example() {
    let (hub, stored) = seeded().await;
    let v = ok(&get(
        &hub,
        ADDRESSES,
        &[
            ("Flow-Request-Method", "LIST"),
            ("Flow-Request-Parameter", PAGINATION),
            BASIC,
        ],
    )
    .await);
    assert_eq!(v["count"], 12);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    // Natural order is creation order: the first address created, with every field the seed
    // shows, and the hub's managed fields.
    assert_fields(&data[0], &ostra());
    assert_rfc3339(&data[0]["created"]);
    assert_rfc3339(&data[0]["updated"]);
    assert!(data[0]["version"].is_u64());

    // Walking the pages one at a time visits every address once, in creation order.
    let mut walked = Vec::new();
    for from in 0..13 {
        let p = format!(
            r#"{{"parameters": {{"pagination": true, "pagination.size": 1, "pagination.from": {from}}}}}"#
        );
        let v = ok(&get(
            &hub,
            ADDRESSES,
            &[
                ("Flow-Request-Method", "LIST"),
                ("Flow-Request-Parameter", &p),
            ],
        )
        .await);
        assert_eq!(v["count"], 12);
        walked.extend(ids(&v));
    }
    let created: Vec<String> = stored
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(walked, created);
    hub.stop().await;
}

#[tokio::test]
async fn seed_websocket_list_with_all_three_parameter_groups() {
    let (hub, _) = seeded().await;
    let mut ws = hub.ws().await;
    let reply = ws
        .call(json!({
            "endpoint": "address/address",
            "method": "LIST",
            "token": "Token generated by Authentication engine",
            "parameters": {
                "sorting": true,
                "sorting.by": "streetNumber",
                "sorting.order": "ASC",
                "condition": true,
                "condition.values": {
                    "items": [],
                    "subgroups": [{
                        "items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}],
                        "subgroups": [],
                        "logic": "AND"
                    }],
                    "logic": "AND"
                },
                "pagination": true,
                "pagination.size": 1,
                "pagination.from": 0
            }
        }))
        .await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["status"], 0);
    assert_eq!(reply["dataType"], "JSON");
    assert_eq!(reply["count"], 1);
    assert_fields(
        &reply["data"][0],
        &json!({"id": LARSS, "streetName": "Larss Gata", "streetNumber": 6,
            "streetLitteral": "G", "postalCode": "12431", "city": "Envik"}),
    );
    hub.stop().await;
}

/// The seed's OPEN and UPDATE examples over HTTP, headers double-quoted as the seed writes
/// them, and UPDATE merging into the stored object.
#[tokio::test]
async fn seed_device_open_and_update() {
    let (hub, _) = seeded().await;
    let quoted_id = format!("\"{DEVICE_ID}\"");
    let open_headers = [
        (
            "Flow-Auth-Token",
            "\"Token generated by Authentication engine\"",
        ),
        ("Flow-Request-ObjectId", quoted_id.as_str()),
        ("Flow-Request-Method", "\"OPEN\""),
    ];
    let opened = ok(&get(&hub, DEVICE_PATH, &open_headers).await);
    let before = opened["data"].clone();
    assert_fields(&before, &device());
    assert_rfc3339(&before["created"]);
    assert_rfc3339(&before["updated"]);
    assert_eq!(opened.get("count"), None, "OPEN has no count: {opened}");

    // One millisecond at least between the writes, so that `updated` can differ.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = hub
        .http(
            "POST",
            DEVICE_PATH,
            &[
                (
                    "Flow-Auth-Token",
                    "\"Token generated by Authentication engine\"",
                ),
                ("Flow-Request-ObjectId", quoted_id.as_str()),
                ("Flow-Request-Method", "\"UPDATE\""),
            ],
            b"{\n\"name\": \"New name for switch\"\n}",
        )
        .await;
    let updated = ok(&r)["data"].clone();
    assert_eq!(updated["id"], DEVICE_ID);
    assert_eq!(updated["name"], "New name for switch");
    // Merged: the other fields are kept.
    assert_eq!(updated["model"], before["model"]);
    assert_eq!(updated["location"], before["location"]);
    assert_eq!(updated["ports"], before["ports"]);
    // Managed fields: id and created stay, updated and version move on.
    assert_eq!(updated["created"], before["created"]);
    assert_ne!(updated["updated"], before["updated"]);
    assert_rfc3339(&updated["updated"]);
    assert!(
        humantime::parse_rfc3339(updated["updated"].as_str().unwrap()).unwrap()
            > humantime::parse_rfc3339(before["updated"].as_str().unwrap()).unwrap()
    );
    assert!(updated["version"].as_u64().unwrap() > before["version"].as_u64().unwrap());

    // The change is stored: OPEN gives the updated object, over HTTP and over the WebSocket
    // (the seed's WebSocket form of the same call).
    let reopened = ok(&get(&hub, DEVICE_PATH, &open_headers).await);
    assert_eq!(reopened["data"], updated);
    let mut ws = hub.ws().await;
    let reply = ws
        .call(
            json!({"endpoint": "inventory/device", "method": "OPEN", "objectid": DEVICE_ID,
            "token": "Token generated by Authentication engine"}),
        )
        .await;
    assert_eq!(reply["data"], updated);

    // The seed's WebSocket UPDATE: the same merge.
    let reply = ws
        .call(
            json!({"endpoint": "inventory/device", "method": "UPDATE", "objectid": DEVICE_ID,
            "token": "Token generated by Authentication engine",
            "data": {"name": "Another name", "model": null}}),
        )
        .await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["data"]["name"], "Another name");
    assert!(
        reply["data"].get("model").is_none(),
        "null removes a field: {reply}"
    );
    assert_eq!(reply["data"]["location"], before["location"]);
    assert_eq!(reply["data"]["created"], before["created"]);
    hub.stop().await;
}

#[tokio::test]
async fn seed_error_example() {
    let (hub, _) = seeded().await;
    let missing = "7981f103-142e-41bf-ae39-ff1341de35f6";
    let r = get(
        &hub,
        DEVICE_PATH,
        &[
            (
                "Flow-Auth-Token",
                "\"Token generated by Authentication engine\"",
            ),
            ("Flow-Request-ObjectId", missing),
            ("Flow-Request-Method", "\"OPEN\""),
        ],
    )
    .await;
    let v = err(&r, 404, "DO_NOT_EXIST");
    assert_eq!(v["message"], "Object does not exist");
    // Each error gets its own id.
    let again = err(
        &get(&hub, &format!("{DEVICE_PATH}/{missing}"), &[]).await,
        404,
        "DO_NOT_EXIST",
    );
    assert_ne!(v["errorid"], again["errorid"]);
    hub.stop().await;
}

/// Each of the six call fields works as a header and as its query-string twin.
#[tokio::test]
async fn every_call_field_as_header_and_as_query_string() {
    let (hub, _) = seeded().await;
    // Flow-Request-Method / method, Flow-Request-ObjectId / objectid.
    let by_header = ok(&get(
        &hub,
        "/api/address/address/address",
        &[
            ("Flow-Request-Method", "OPEN"),
            ("Flow-Request-ObjectId", LARSS),
        ],
    )
    .await);
    assert_eq!(by_header["data"]["streetName"], "Larss Gata");
    let by_query = ok(&get(
        &hub,
        &format!("/api/address/address/address?method=OPEN&objectid={LARSS}"),
        &[],
    )
    .await);
    assert_eq!(by_query, by_header);
    // The method field decides over the verb default: INDEX on a GET.
    let index = ok(&get(
        &hub,
        &format!("{ADDRESSES}?method=INDEX&objectid={LARSS}"),
        &[],
    )
    .await);
    assert_ne!(
        index["data"], by_header["data"],
        "INDEX is not OPEN: {index}"
    );

    // Flow-Auth-Token / token: accepted either way.
    for (path, headers) in [
        (
            ADDRESSES.to_string(),
            vec![("Flow-Auth-Token", "some-token")],
        ),
        (format!("{ADDRESSES}?token=some-token"), vec![]),
    ] {
        assert_eq!(list_all_at(&hub, &path, &headers).await["count"], 12);
    }

    // Flow-Request-Namespace / namespace.
    let data = json!({"streetName": "Tenant Street", "streetNumber": 1, "city": "Envik"});
    post_create(&hub, &format!("{ADDRESSES}?namespace=tenant-q"), &[], &data).await;
    for (path, headers) in [
        (
            ADDRESSES.to_string(),
            vec![("Flow-Request-Namespace", "tenant-q")],
        ),
        (format!("{ADDRESSES}?namespace=tenant-q"), vec![]),
    ] {
        let v = list_all_at(&hub, &path, &headers).await;
        assert_eq!(v["count"], 1, "{path}: {v}");
        assert_eq!(v["data"][0]["streetName"], "Tenant Street");
    }
    assert_eq!(list_all(&hub, &[]).await["count"], 12);

    // Flow-Request-Parameters / parameters and Flow-Request-Parameter / parameter.
    let sorting = r#"{"sorting": true, "sorting.by": "streetNumber", "sorting.order": "DESC"}"#;
    let encoded: String = form_urlencoded::byte_serialize(sorting.as_bytes()).collect();
    for (path, headers) in [
        (
            ADDRESSES.to_string(),
            vec![("Flow-Request-Parameters", sorting)],
        ),
        (
            ADDRESSES.to_string(),
            vec![("Flow-Request-Parameter", sorting)],
        ),
        (format!("{ADDRESSES}?parameters={encoded}"), vec![]),
        (format!("{ADDRESSES}?parameter={encoded}"), vec![]),
    ] {
        let v = list_all_at(&hub, &path, &headers).await;
        assert_eq!(numbers(&v)[0], 222, "{path} {headers:?}");
        assert_eq!(numbers(&v)[11], 4, "{path} {headers:?}");
    }
    hub.stop().await;
}

async fn list_all_at(hub: &TestHub, path: &str, headers: &[(&str, &str)]) -> Value {
    let mut h = vec![("Flow-Request-Method", "LIST")];
    h.extend_from_slice(headers);
    ok(&get(hub, path, &h).await)
}

#[tokio::test]
async fn a_header_wins_over_the_query_string() {
    let (hub, _) = seeded().await;
    // Method: the header's OPEN, not the query's LIST.
    let v = ok(&get(
        &hub,
        &format!("{ADDRESSES}?method=LIST&objectid={LARSS}"),
        &[("Flow-Request-Method", "OPEN")],
    )
    .await);
    assert_eq!(v["data"]["id"], LARSS);
    // Object id: the header's.
    let v = ok(&get(
        &hub,
        &format!("{ADDRESSES}?method=OPEN&objectid={OSTRA}"),
        &[("Flow-Request-ObjectId", LARSS)],
    )
    .await);
    assert_eq!(v["data"]["id"], LARSS);
    // Namespace: the header's (empty tenant-h, not the default one with twelve).
    let data = json!({"streetName": "Header Street", "streetNumber": 2});
    post_create(
        &hub,
        ADDRESSES,
        &[("Flow-Request-Namespace", "tenant-h")],
        &data,
    )
    .await;
    let v = list_all_at(
        &hub,
        &format!("{ADDRESSES}?namespace="),
        &[("Flow-Request-Namespace", "tenant-h")],
    )
    .await;
    assert_eq!(v["count"], 1);
    let v = list_all_at(
        &hub,
        &format!("{ADDRESSES}?namespace=tenant-h"),
        &[("Flow-Request-Namespace", "tenant-x")],
    )
    .await;
    assert_eq!(v["count"], 0);
    // Parameters: the header's order, the query string's for keys the header does not set.
    let v = list_all_at(
        &hub,
        &format!("{ADDRESSES}?parameters=sorting.by%3DstreetNumber%26sorting.order%3DASC"),
        &[("Flow-Request-Parameters", "sorting.order=DESC")],
    )
    .await;
    assert_eq!(numbers(&v)[0], 222, "{v}");
    let v = list_all_at(
        &hub,
        &format!("{ADDRESSES}?parameter=sorting.by%3DstreetNumber%26sorting.order%3DDESC"),
        &[("Flow-Request-Parameter", "sorting.order=ASC")],
    )
    .await;
    assert_eq!(numbers(&v)[0], 4, "{v}");
    hub.stop().await;
}

#[tokio::test]
async fn trailing_slash_and_path_resolution() {
    let (hub, _) = seeded().await;
    // A trailing slash: the path is the endpoint, GET lists.
    assert_eq!(ok(&get(&hub, ADDRESSES, &[]).await)["count"], 12);
    // No trailing slash, and the whole path is a known endpoint: that endpoint.
    assert_eq!(
        ok(&get(&hub, "/api/address/address/address", &[]).await)["count"],
        12
    );
    // No trailing slash, the whole path is no endpoint: the last segment is the object id.
    let v = ok(&get(&hub, &format!("{ADDRESSES}{LARSS}"), &[]).await);
    assert_eq!(v["data"]["id"], LARSS);
    assert!(v.get("count").is_none());
    // A trailing slash after the id: the id is part of the endpoint name, which is unknown.
    let e = err(
        &get(&hub, &format!("{ADDRESSES}{LARSS}/"), &[]).await,
        404,
        "DO_NOT_EXIST",
    );
    assert!(e["message"].as_str().unwrap().contains("ndpoint"), "{e}");
    // An object id in a header: the whole path is the endpoint (the seed's OPEN).
    let v = ok(&get(&hub, DEVICE_PATH, &[("Flow-Request-ObjectId", DEVICE_ID)]).await);
    assert_eq!(v["data"]["id"], DEVICE_ID);
    // ... also in the query string ...
    let v = ok(&get(&hub, &format!("{DEVICE_PATH}?objectid={DEVICE_ID}"), &[]).await);
    assert_eq!(v["data"]["id"], DEVICE_ID);
    // ... so a path that ends in an id, with an id in a header, names an unknown endpoint.
    err(
        &get(
            &hub,
            &format!("{ADDRESSES}{LARSS}"),
            &[("Flow-Request-ObjectId", OSTRA)],
        )
        .await,
        404,
        "DO_NOT_EXIST",
    );
    // The id in the path is percent-decoded.
    let odd = "id with space";
    post_create(
        &hub,
        "/api/inventory/inventory/device/",
        &[],
        &json!({"id": odd, "name": "odd"}),
    )
    .await;
    let v = ok(&get(
        &hub,
        "/api/inventory/inventory/device/id%20with%20space",
        &[],
    )
    .await);
    assert_eq!(v["data"]["id"], odd);
    // A path with no endpoint after the application.
    err(&get(&hub, "/api/address/", &[]).await, 404, "DO_NOT_EXIST");
    err(&get(&hub, "/api/", &[]).await, 404, "DO_NOT_EXIST");
    hub.stop().await;
}

#[tokio::test]
async fn verb_defaults() {
    let hub = TestHub::start().await;
    let coll = "/api/notes/notes/";
    // POST without an id: CREATE.
    let r = hub
        .http("POST", coll, &[], br#"{"text": "one", "tag": "a"}"#)
        .await;
    let created = ok(&r)["data"].clone();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    let item = format!("{coll}{id}");
    // GET without an id: LIST; with one: OPEN.
    let v = ok(&get(&hub, coll, &[]).await);
    assert_eq!(v["count"], 1);
    assert_eq!(v["data"][0], created);
    assert_eq!(ok(&get(&hub, &item, &[]).await)["data"], created);
    // POST with an id: UPDATE (merged).
    let v = ok(&hub.http("POST", &item, &[], br#"{"text": "two"}"#).await);
    assert_eq!(v["data"]["text"], "two");
    assert_eq!(v["data"]["tag"], "a");
    // PUT and PATCH: UPDATE.
    let v = ok(&hub.http("PUT", &item, &[], br#"{"text": "three"}"#).await);
    assert_eq!(v["data"]["text"], "three");
    let v = ok(&hub.http("PATCH", &item, &[], br#"{"tag": null}"#).await);
    assert!(v["data"].get("tag").is_none(), "{v}");
    assert_eq!(v["data"]["text"], "three");
    // PUT and PATCH on the collection path with the id in a header.
    let v = ok(&hub
        .http(
            "PUT",
            coll,
            &[("Flow-Request-ObjectId", &id)],
            br#"{"n": 1}"#,
        )
        .await);
    assert_eq!(v["data"]["n"], 1);
    let v = ok(&hub
        .http(
            "PATCH",
            coll,
            &[("Flow-Request-ObjectId", &id)],
            br#"{"n": 2}"#,
        )
        .await);
    assert_eq!(v["data"]["n"], 2);
    // UPDATE without an id is refused.
    err(
        &hub.http("PUT", coll, &[], br#"{"n": 3}"#).await,
        400,
        "INVALID_REQUEST",
    );
    // DELETE without an id is refused; with one it deletes.
    err(
        &hub.http("DELETE", coll, &[], b"").await,
        400,
        "INVALID_REQUEST",
    );
    let v = ok(&hub.http("DELETE", &item, &[], b"").await);
    assert_eq!(v["data"]["id"], id.as_str());
    err(&get(&hub, &item, &[]).await, 404, "DO_NOT_EXIST");
    // GET carries DELETE when Flow-Request-Method says so (the seed: GET for DELETE).
    let r = hub
        .http("POST", coll, &[], br#"{"text": "gone soon"}"#)
        .await;
    let id2 = ok(&r)["data"]["id"].as_str().unwrap().to_string();
    ok(&get(
        &hub,
        &format!("{coll}{id2}"),
        &[("Flow-Request-Method", "DELETE")],
    )
    .await);
    assert_eq!(ok(&get(&hub, coll, &[]).await)["count"], 0);
    // POST with Flow-Request-Method CREATE and the id in a header: created under that id.
    let v = ok(&hub
        .http(
            "POST",
            "/api/notes/notes",
            &[
                ("Flow-Request-Method", "CREATE"),
                ("Flow-Request-ObjectId", "note-7"),
            ],
            br#"{"text": "seven"}"#,
        )
        .await);
    assert_eq!(v["data"]["id"], "note-7");
    // Verbs the bridge does not map: 405 with Allow, and the envelope.
    for verb in ["OPTIONS", "TRACE", "FETCH"] {
        let r = hub
            .http(verb, coll, &[("Flow-Request-Method", "LIST")], b"")
            .await;
        err(&r, 405, "INVALID_REQUEST");
        assert_eq!(r.header("Allow"), Some("GET, POST, PUT, PATCH, DELETE"));
    }
    hub.stop().await;
}

#[tokio::test]
async fn parameter_forms_give_the_same_results() {
    let (hub, _) = seeded().await;
    let ascending = [
        "sorting=true&sorting.by=streetNumber",
        "sorting=true&sorting.by=streetNumber&sorting.order=ASC",
        "sorting=true; sorting.by=streetNumber; sorting.order=ASC",
        r#"{"sorting": true, "sorting.by": "streetNumber", "sorting.order": "ASC"}"#,
        r#"{"parameters": {"sorting": true, "sorting.by": "streetNumber"}}"#,
        r#"{"sorting": {"by": "streetNumber", "order": "ASC"}}"#,
        r#"[{"key": "sorting.by", "value": "streetNumber"}]"#,
    ];
    for p in ascending {
        let v = list_all(&hub, &[("Flow-Request-Parameters", p)]).await;
        assert_eq!(numbers(&v), SORTED_NUMBERS, "{p}");
        assert_eq!(v["count"], 12);
    }
    // Filtering and pagination as key-value pairs, the condition tree as JSON in a value.
    let filter = r#"condition=true&condition.values={"items":[{"key":"city","operator":"EQUAL","value":"Envik"}],"subgroups":[],"logic":"AND"}"#;
    let v = list_all(&hub, &[("Flow-Request-Parameters", filter)]).await;
    assert_eq!(ids(&v), [LARSS]);
    let page = "pagination=true&pagination.size=2&pagination.from=1&sorting.by=streetNumber";
    let v = list_all(&hub, &[("Flow-Request-Parameters", page)]).await;
    assert_eq!(v["count"], 12);
    assert_eq!(numbers(&v), [5, 6]);
    // The same page as JSON without the wrapper.
    let v = list_all(
        &hub,
        &[(
            "Flow-Request-Parameters",
            r#"{"pagination": true, "pagination.size": 2, "pagination.from": 1, "sorting.by": "streetNumber"}"#,
        )],
    )
    .await;
    assert_eq!(numbers(&v), [5, 6]);
    // A group switched off is ignored.
    let v = list_all(
        &hub,
        &[(
            "Flow-Request-Parameters",
            r#"{"pagination": false, "pagination.size": 1}"#,
        )],
    )
    .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 12);
    hub.stop().await;
}

#[tokio::test]
async fn namespaces_are_isolated_over_http() {
    let (hub, _) = seeded().await;
    let ns_a = [("Flow-Request-Namespace", "tenant-a")];
    let ns_b = [("Flow-Request-Namespace", "tenant-b")];
    let mine = post_create(
        &hub,
        ADDRESSES,
        &ns_a,
        &json!({"id": "a-1", "city": "Envik", "streetNumber": 1}),
    )
    .await;
    // The same id may exist in another namespace, independently.
    post_create(
        &hub,
        ADDRESSES,
        &ns_b,
        &json!({"id": "a-1", "city": "Norrby"}),
    )
    .await;
    // LIST sees only its own namespace.
    assert_eq!(list_all(&hub, &ns_a).await["data"], json!([mine]));
    let v = list_all(&hub, &[]).await;
    assert_eq!(v["count"], 12);
    assert!(!ids(&v).contains(&"a-1".to_string()));
    let v = list_all(&hub, &[("Flow-Request-Parameter", FILTERING)]).await;
    assert_eq!(ids(&v), [LARSS], "the default namespace's Envik only");
    // OPEN, UPDATE and DELETE from elsewhere do not reach it.
    let item = format!("{ADDRESSES}a-1");
    err(&get(&hub, &item, &[]).await, 404, "DO_NOT_EXIST");
    err(
        &get(&hub, &item, &[("Flow-Request-Namespace", "tenant-c")]).await,
        404,
        "DO_NOT_EXIST",
    );
    err(
        &hub.http("POST", &item, &[], br#"{"city": "x"}"#).await,
        404,
        "DO_NOT_EXIST",
    );
    err(
        &hub.http("DELETE", &item, &[], b"").await,
        404,
        "DO_NOT_EXIST",
    );
    let v = ok(&hub
        .http("POST", &item, &ns_b, r#"{"city": "Söderås"}"#.as_bytes())
        .await);
    assert_eq!(v["data"]["city"], "Söderås");
    ok(&hub.http("DELETE", &item, &ns_b, b"").await);
    // Tenant a's object is untouched by all of that.
    assert_eq!(ok(&get(&hub, &item, &ns_a).await)["data"], mine);
    // A namespace given in UTF-8 is that namespace, not the default one.
    let ns_u = [("Flow-Request-Namespace", "kund-Åsa")];
    post_create(&hub, ADDRESSES, &ns_u, &json!({"id": "u-1"})).await;
    assert_eq!(ids(&list_all(&hub, &ns_u).await), ["u-1"]);
    assert_eq!(list_all(&hub, &[]).await["count"], 12);
    hub.stop().await;
}

#[tokio::test]
async fn the_application_segment_must_match() {
    let (hub, _) = seeded().await;
    let before = list_all(&hub, &[]).await;
    let wrong = "/api/inventory/address/address/";
    err(&get(&hub, wrong, &[]).await, 404, "DO_NOT_EXIST");
    err(
        &get(&hub, &format!("{wrong}{LARSS}"), &[]).await,
        404,
        "DO_NOT_EXIST",
    );
    err(
        &hub.http(
            "POST",
            wrong,
            &[("Flow-Request-Method", "CREATE")],
            br#"{"city": "x"}"#,
        )
        .await,
        404,
        "DO_NOT_EXIST",
    );
    err(
        &hub.http("POST", &format!("{wrong}{LARSS}"), &[], br#"{"city": "x"}"#)
            .await,
        404,
        "DO_NOT_EXIST",
    );
    err(
        &hub.http("DELETE", &format!("{wrong}{LARSS}"), &[], b"")
            .await,
        404,
        "DO_NOT_EXIST",
    );
    err(
        &get(
            &hub,
            "/api/nosuchapp/inventory/device",
            &[("Flow-Request-ObjectId", DEVICE_ID)],
        )
        .await,
        404,
        "DO_NOT_EXIST",
    );
    // Nothing was created, changed or deleted.
    assert_eq!(list_all(&hub, &[]).await, before);
    // A new endpoint belongs to its first segment: creating it under another application
    // fails and creates nothing.
    let r = hub
        .http("POST", "/api/inventory/fresh/things/", &[], br#"{"a": 1}"#)
        .await;
    let v = r.json();
    assert_eq!(v["success"], false, "{v}");
    assert!((400..500).contains(&r.status), "{v}");
    err(
        &get(&hub, "/api/fresh/fresh/things/", &[]).await,
        404,
        "DO_NOT_EXIST",
    );
    hub.stop().await;
}

fn msgpack(r: &HttpReply) -> Value {
    assert_eq!(r.header("Content-Type"), Some("application/msgpack"));
    rmp_serde::from_slice(&r.body).expect("the reply is MessagePack")
}

#[tokio::test]
async fn accept_msgpack_replies_in_messagepack_with_the_same_content() {
    let (hub, _) = seeded().await;
    let mp = ("Accept", "application/msgpack");
    let calls: Vec<(&str, String, Headers)> = vec![
        (
            "GET",
            ADDRESSES.to_string(),
            vec![("Flow-Request-Parameter", SORTING)],
        ),
        (
            "GET",
            ADDRESSES.to_string(),
            vec![("Flow-Request-Parameter", FILTERING)],
        ),
        (
            "GET",
            ADDRESSES.to_string(),
            vec![("Flow-Request-Parameter", PAGINATION)],
        ),
        (
            "GET",
            DEVICE_PATH.to_string(),
            vec![("Flow-Request-ObjectId", DEVICE_ID)],
        ),
        (
            "GET",
            format!("{ADDRESSES}{OSTRA}"),
            vec![("Flow-Request-Method", "INDEX")],
        ),
    ];
    for (verb, path, headers) in calls {
        let json_reply = ok(&hub.http(verb, &path, &headers, b"").await);
        let mut h = headers.clone();
        h.push(mp);
        let r = hub.http(verb, &path, &h, b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(msgpack(&r), json_reply, "{path} {headers:?}");
    }
    // Errors too, with their status; only the errorid differs.
    let missing = format!("{ADDRESSES}no-such-id");
    let mut j = err(&get(&hub, &missing, &[]).await, 404, "DO_NOT_EXIST");
    let r = get(&hub, &missing, &[mp]).await;
    assert_eq!(r.status, 404);
    let mut m = msgpack(&r);
    uuid::Uuid::parse_str(m["errorid"].as_str().unwrap()).unwrap();
    j.as_object_mut().unwrap().remove("errorid");
    m.as_object_mut().unwrap().remove("errorid");
    assert_eq!(m, j);
    // Errors raised before dispatch as well.
    let r = get(
        &hub,
        "/api/address/address/address/",
        &[mp, ("Flow-Request-Method", "FETCH")],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(msgpack(&r)["errorcode"], "INVALID_REQUEST");
    // A MessagePack body is accepted as the data.
    let body =
        rmp_serde::to_vec_named(&json!({"streetName": "Packgatan", "streetNumber": 300})).unwrap();
    let r = hub
        .http(
            "POST",
            ADDRESSES,
            &[("Content-Type", "application/msgpack"), mp],
            &body,
        )
        .await;
    assert_eq!(r.status, 200);
    let created = msgpack(&r);
    assert_eq!(created["data"]["streetName"], "Packgatan");
    let id = created["data"]["id"].as_str().unwrap();
    assert_eq!(
        ok(&get(&hub, &format!("{ADDRESSES}{id}"), &[]).await)["data"],
        created["data"]
    );
    hub.stop().await;
}

/// The same calls over HTTP, WebSocket JSON and WebSocket MessagePack give the same envelope
/// (the WebSocket adds `type` and `requestid`; error ids differ).
#[tokio::test]
async fn websocket_replies_equal_http_envelopes() {
    let (hub, _) = seeded().await;
    let mut ws = hub.ws().await;
    let sorting: Value = serde_json::from_str(SORTING).unwrap();
    let filtering: Value = serde_json::from_str(FILTERING).unwrap();
    let pagination: Value = serde_json::from_str(PAGINATION).unwrap();
    let cases: Vec<(String, Headers, Value)> = vec![
        (
            ADDRESSES.into(),
            vec![
                ("Flow-Request-Method", "LIST"),
                ("Flow-Request-Parameter", SORTING),
            ],
            json!({"endpoint": "address/address", "method": "LIST", "parameters": sorting}),
        ),
        (
            ADDRESSES.into(),
            vec![
                ("Flow-Request-Method", "LIST"),
                ("Flow-Request-Parameter", FILTERING),
            ],
            json!({"endpoint": "address/address", "method": "LIST", "parameters": filtering}),
        ),
        (
            ADDRESSES.into(),
            vec![
                ("Flow-Request-Method", "LIST"),
                ("Flow-Request-Parameter", PAGINATION),
            ],
            json!({"endpoint": "address/address", "method": "LIST", "parameters": pagination}),
        ),
        (
            DEVICE_PATH.into(),
            vec![
                ("Flow-Request-Method", "\"OPEN\""),
                ("Flow-Request-ObjectId", DEVICE_ID),
            ],
            json!({"endpoint": "inventory/device", "method": "OPEN", "objectid": DEVICE_ID,
                "token": "Token generated by Authentication engine"}),
        ),
        (
            format!("{ADDRESSES}{LARSS}"),
            vec![("Flow-Request-Method", "INDEX")],
            json!({"endpoint": "address/address", "method": "INDEX", "objectid": LARSS}),
        ),
        (
            DEVICE_PATH.into(),
            vec![
                ("Flow-Request-Method", "OPEN"),
                ("Flow-Request-ObjectId", "nope"),
            ],
            json!({"endpoint": "inventory/device", "method": "OPEN", "objectid": "nope"}),
        ),
        (
            ADDRESSES.into(),
            vec![
                ("Flow-Request-Method", "LIST"),
                ("Flow-Request-Parameters", "sorting.order=UP"),
            ],
            json!({"endpoint": "address/address", "method": "LIST",
                "parameters": {"sorting.order": "UP"}}),
        ),
    ];
    for (path, headers, frame) in cases {
        let r = get(&hub, &path, &headers).await;
        let mut http = r.json();
        let mut errorids = Vec::new();
        if let Some(id) = http.as_object_mut().unwrap().remove("errorid") {
            errorids.push(id);
        }
        for enc in [Enc::Json, Enc::MsgPack] {
            let mut reply = ws.call_enc(frame.clone(), enc).await;
            let o = reply.as_object_mut().unwrap();
            assert_eq!(o.remove("type"), Some(json!("reply")));
            assert!(o.remove("requestid").is_some());
            if let Some(id) = o.remove("errorid") {
                uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap();
                errorids.push(id);
            }
            assert_eq!(reply, http, "{enc:?} {frame}");
        }
        if http["success"] == false {
            assert_eq!(errorids.len(), 3, "{http}");
            assert!(errorids[0] != errorids[1] && errorids[1] != errorids[2]);
        } else {
            assert!(errorids.is_empty());
        }
    }
    hub.stop().await;
}
