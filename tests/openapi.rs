//! The OpenAPI 3.1 descriptions (`/api/openapi.json`, `/api/<application>/openapi.json`),
//! generated from the live endpoint registry: what they contain, that they parse as OpenAPI 3.1
//! (the `oas3` crate) with every reference resolving, that their schemas are valid JSON Schema,
//! and that the hub's real replies match the schemas the documents give for them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::TestHub;
use flowhub::protocol::{ErrorCode, Method};
use serde_json::{json, Value};

/// Endpoints created on three applications, as (application, endpoint, collection path).
const ENDPOINTS: [(&str, &str, &str); 4] = [
    (
        "address",
        "address/address",
        "/api/address/address/address/",
    ),
    (
        "inventory",
        "inventory/device",
        "/api/inventory/inventory/device/",
    ),
    (
        "inventory",
        "inventory/port",
        "/api/inventory/inventory/port/",
    ),
    (
        "scheduler",
        "scheduler/queue",
        "/api/scheduler/scheduler/queue/",
    ),
];
const VERBS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn hub_with_endpoints() -> TestHub {
    let hub = TestHub::start().await;
    for (_, _, path) in ENDPOINTS {
        let r = hub
            .http(
                "POST",
                path,
                &[("Flow-Request-Method", "CREATE")],
                br#"{"id": "first", "name": "x"}"#,
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    hub
}

async fn fetch(hub: &TestHub, path: &str) -> (Value, String) {
    let r = hub.http("GET", path, &[], b"").await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let text = String::from_utf8(r.body.clone()).expect("the document is UTF-8");
    (
        serde_json::from_str(&text).expect("the document is JSON"),
        text,
    )
}

/// Resolves a local `$ref` ("#/a/b") in `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    doc.pointer(pointer)
}

/// The `$ref`s of the document that point at nothing in it, and how many there are in all.
fn dangling_refs(doc: &Value) -> (Vec<String>, usize) {
    let mut stack = vec![doc];
    let mut dangling = Vec::new();
    let mut seen = 0;
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    seen += 1;
                    if resolve(doc, r).is_none() {
                        dangling.push(r.clone());
                    }
                }
                stack.extend(o.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    (dangling, seen)
}

fn assert_refs_resolve(doc: &Value) {
    let (dangling, seen) = dangling_refs(doc);
    assert!(dangling.is_empty(), "dangling $refs: {dangling:?}");
    assert!(seen > 0, "the document uses components");
}

/// The parameters of one operation (path-level and its own), resolved, as (in, name).
fn parameters(doc: &Value, path: &str, verb: &str) -> BTreeSet<(String, String)> {
    let item = &doc["paths"][path];
    let mut out = BTreeSet::new();
    for list in [&item["parameters"], &item[verb]["parameters"]] {
        for p in list.as_array().into_iter().flatten() {
            let p = match p.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(doc, r).unwrap(),
                None => p,
            };
            out.insert((
                p["in"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn check_document(doc: &Value, text: &str, expected: &[(&str, &str, &str)]) {
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(doc["info"]["version"].is_string());
    assert_refs_resolve(doc);

    // Exactly the expected endpoints, each with both paths and all five verbs.
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = BTreeSet::new();
    for (app, endpoint, collection) in expected {
        assert_eq!(*collection, format!("/api/{app}/{endpoint}/"));
        want.insert(collection.to_string());
        want.insert(format!("{collection}{{objectid}}"));
    }
    assert_eq!(paths, want.iter().map(String::as_str).collect());
    let mut operation_ids = BTreeSet::new();
    for (app, endpoint, collection) in expected {
        for (path, with_id) in [
            (collection.to_string(), false),
            (format!("{collection}{{objectid}}"), true),
        ] {
            let item = &doc["paths"][&path];
            assert_eq!(item["x-flow-endpoint"], *endpoint);
            assert_eq!(item["x-flow-application"], *app);
            for verb in VERBS {
                let op = &item[verb];
                assert!(op.is_object(), "{path} {verb}");
                assert!(
                    operation_ids.insert(op["operationId"].as_str().unwrap().to_string()),
                    "operationIds are unique"
                );
                // Every Flow-Request-* header and its query-string twin.
                let params = parameters(doc, &path, verb);
                for (header, query) in [
                    ("Flow-Request-Method", "method"),
                    ("Flow-Request-Namespace", "namespace"),
                    ("Flow-Request-Parameters", "parameters"),
                    ("Flow-Request-Parameter", "parameter"),
                ] {
                    assert!(
                        params.contains(&("header".into(), header.into())),
                        "{path} {verb} {header}"
                    );
                    assert!(
                        params.contains(&("query".into(), query.into())),
                        "{path} {verb} {query}"
                    );
                }
                let id_in_path = params.contains(&("path".into(), "objectid".into()));
                let id_in_header = params
                    .contains(&("header".into(), "Flow-Request-ObjectId".into()))
                    && params.contains(&("query".into(), "objectid".into()));
                assert_eq!(id_in_path, with_id, "{path} {verb}");
                assert_eq!(id_in_header, !with_id, "{path} {verb}");
                // The success reply and one reply per HTTP status of every error class.
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("200"));
                for code in ErrorCode::ALL {
                    let status = code.http_status().to_string();
                    let r = &responses[&status];
                    let r = resolve(doc, r["$ref"].as_str().unwrap()).unwrap();
                    assert!(
                        r["description"].as_str().unwrap().contains(code.as_str()),
                        "{status} names {code}"
                    );
                }
                // Bodies where the Flow method takes data.
                let methods: Vec<&str> = op["x-flow-methods"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap())
                    .collect();
                let default = Method::parse(methods[0]).unwrap();
                assert_eq!(
                    op.get("requestBody").is_some(),
                    default.needs_data(),
                    "{path} {verb}"
                );
            }
            // The verbs default to the methods the bridge gives them.
            let default = |verb: &str| {
                item[verb]["x-flow-methods"][0]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            let (get, post) = if with_id {
                ("OPEN", "UPDATE")
            } else {
                ("LIST", "CREATE")
            };
            assert_eq!(default("get"), get);
            assert_eq!(default("post"), post);
            assert_eq!(default("put"), "UPDATE");
            assert_eq!(default("patch"), "UPDATE");
            assert_eq!(default("delete"), "DELETE");
            if !with_id {
                let carried: Vec<Value> = item["get"]["x-flow-methods"].as_array().unwrap().clone();
                assert!(carried.contains(&json!("INDEX")) && carried.contains(&json!("DELETE")));
                let carried: Vec<Value> =
                    item["post"]["x-flow-methods"].as_array().unwrap().clone();
                assert!(carried.contains(&json!("UPDATE")) && carried.contains(&json!("RUN")));
            }
        }
    }

    // The envelope: success and error variants, the error codes from the catalogue.
    let schemas = &doc["components"]["schemas"];
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(schemas["ErrorCode"]["enum"], json!(codes));
    let required: Vec<&str> = schemas["ErrorEnvelope"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "status",
        "success",
        "message",
        "errorcode",
        "dataType",
        "errorid",
    ] {
        assert!(required.contains(&field), "{field}");
    }
    assert_eq!(schemas["Envelope"]["oneOf"].as_array().unwrap().len(), 2);
    // Security: Basic and Flow-Auth-Token declared, not (yet) required.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["basicAuth"]["type"], "http");
    assert_eq!(schemes["basicAuth"]["scheme"], "basic");
    assert_eq!(schemes["flowAuthToken"]["type"], "apiKey");
    assert_eq!(schemes["flowAuthToken"]["in"], "header");
    assert_eq!(schemes["flowAuthToken"]["name"], "Flow-Auth-Token");
    assert!(
        doc["security"].as_array().unwrap().contains(&json!({})),
        "auth is optional for now"
    );

    // A well-kept OpenAPI 3.1 parser reads it, and every reference of every operation resolves.
    let spec = oas3::from_json(text).expect("the document parses as OpenAPI 3.1");
    spec.validate_version()
        .expect("a supported OpenAPI version");
    let mut operations = 0;
    for (path, method, op) in spec.operations() {
        operations += 1;
        for p in &op.parameters {
            p.resolve(&spec)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        }
        if let Some(body) = &op.request_body {
            let body = body.resolve(&spec).unwrap();
            assert!(body.content.contains_key("application/json"));
            assert!(body.content.contains_key("application/msgpack"));
        }
        for (status, r) in op.responses.iter().flatten() {
            let r = r
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
            for media in r.content.values() {
                media
                    .schema(&spec)
                    .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
            }
        }
    }
    assert_eq!(operations, expected.len() * 2 * VERBS.len());
    let components = spec.components.as_ref().unwrap();
    for (name, schema) in &components.schemas {
        schema
            .resolve(&spec)
            .unwrap_or_else(|e| panic!("schema {name}: {e}"));
        // Each schema is valid JSON Schema 2020-12 (the dialect of OpenAPI 3.1).
        let raw = &doc["components"]["schemas"][name];
        assert!(
            jsonschema::meta::is_valid(raw),
            "schema {name} is no valid JSON Schema"
        );
    }
}

#[tokio::test]
async fn the_all_in_one_document_describes_every_endpoint() {
    let hub = hub_with_endpoints().await;
    let (doc, text) = fetch(&hub, "/api/openapi.json").await;
    check_document(&doc, &text, &ENDPOINTS);
    hub.stop().await;
}

#[tokio::test]
async fn an_application_document_describes_only_that_application() {
    let hub = hub_with_endpoints().await;
    for app in ["address", "inventory", "scheduler"] {
        let (doc, text) = fetch(&hub, &format!("/api/{app}/openapi.json")).await;
        let mine: Vec<(&str, &str, &str)> = ENDPOINTS.into_iter().filter(|e| e.0 == app).collect();
        check_document(&doc, &text, &mine);
        assert!(doc["info"]["title"].as_str().unwrap().contains(app));
    }
    // An application with no endpoint has no document.
    let r = hub
        .http("GET", "/api/nosuchapp/openapi.json", &[], b"")
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errorcode"], "DO_NOT_EXIST");
    hub.stop().await;
}

#[tokio::test]
async fn the_documents_follow_the_registry() {
    let hub = TestHub::start().await;
    let (doc, text) = fetch(&hub, "/api/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["paths"], json!({}));
    oas3::from_json(&text).unwrap();
    let r = hub
        .http(
            "POST",
            "/api/billing/billing/invoice/",
            &[],
            br#"{"total": 10}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let (doc, _) = fetch(&hub, "/api/openapi.json").await;
    assert!(doc["paths"].get("/api/billing/billing/invoice/").is_some());
    assert!(doc["paths"]
        .get("/api/billing/billing/invoice/{objectid}")
        .is_some());
    let (doc, _) = fetch(&hub, "/api/billing/openapi.json").await;
    assert_eq!(doc["paths"].as_object().unwrap().len(), 2);
    hub.stop().await;
}

/// Validates `instance` against the component schema `name` of `doc`.
fn assert_matches(doc: &Value, name: &str, instance: &Value) {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} does not match {name}: {errors:?}"
    );
}

/// The hub's real replies match the schemas the document gives for them, and each error
/// comes with the HTTP status the document lists its code under.
#[tokio::test]
async fn real_replies_match_the_documented_schemas() {
    let hub = hub_with_endpoints().await;
    let (doc, _) = fetch(&hub, "/api/openapi.json").await;
    let coll = "/api/address/address/address/";
    let list = hub
        .http(
            "GET",
            coll,
            &[("Flow-Request-Parameters", "sorting.by=name")],
            b"",
        )
        .await;
    assert_matches(&doc, "ListEnvelope", &list.json());
    assert_matches(&doc, "Envelope", &list.json());
    let open = hub.http("GET", &format!("{coll}first"), &[], b"").await;
    assert_matches(&doc, "ObjectEnvelope", &open.json());
    assert_matches(&doc, "StoredObject", &open.json()["data"]);
    let update = hub
        .http("POST", &format!("{coll}first"), &[], br#"{"name": "y"}"#)
        .await;
    assert_matches(&doc, "ObjectEnvelope", &update.json());
    // Error replies: the envelope, and the status of the code's class as documented.
    let statuses = &doc["components"]["schemas"]["ErrorCode"]["x-http-status"];
    let errors = [
        hub.http("GET", &format!("{coll}missing"), &[], b"").await,
        hub.http("GET", coll, &[("Flow-Request-Method", "FETCH")], b"")
            .await,
        hub.http("GET", coll, &[("Flow-Request-Parameters", "{bad")], b"")
            .await,
        hub.http("POST", coll, &[], br#"{"id": "first"}"#).await,
        hub.http(
            "POST",
            &format!("{coll}first"),
            &[("Flow-Request-Method", "RUN")],
            b"{}",
        )
        .await,
    ];
    let mut seen = BTreeMap::new();
    for r in errors {
        let v = r.json();
        assert_matches(&doc, "ErrorEnvelope", &v);
        assert_matches(&doc, "Envelope", &v);
        let code = v["errorcode"].as_str().unwrap().to_string();
        assert_eq!(statuses[&code], json!(r.status), "{v}");
        // The response of that status lists the code.
        let op = &doc["paths"][coll]["get"]["responses"][r.status.to_string()];
        let described = resolve(&doc, op["$ref"].as_str().unwrap()).unwrap();
        assert!(described["description"].as_str().unwrap().contains(&code));
        seen.insert(code, r.status);
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    // A reply that breaks the envelope would not pass: the check can fail.
    let mut broken = list.json();
    broken["success"] = json!("yes");
    let schema = json!({"$ref": "#/components/schemas/Envelope", "components": doc["components"]});
    assert!(!jsonschema::is_valid(&schema, &broken));
    hub.stop().await;
}

/// The structural checks above catch a broken document (so they can fail).
#[tokio::test]
async fn the_checks_catch_broken_documents() {
    let hub = hub_with_endpoints().await;
    let (doc, _) = fetch(&hub, "/api/address/openapi.json").await;
    let mut dangling = doc.clone();
    dangling["components"]["schemas"]
        .as_object_mut()
        .unwrap()
        .remove("ErrorCode");
    assert_eq!(
        dangling_refs(&dangling).0,
        ["#/components/schemas/ErrorCode"]
    );
    let mut no_name = doc.clone();
    no_name["components"]["parameters"]["method"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    assert!(oas3::from_json(no_name.to_string()).is_err());
    let mut bad_paths = doc.clone();
    bad_paths["paths"] = json!([1, 2]);
    assert!(oas3::from_json(bad_paths.to_string()).is_err());
    assert!(!jsonschema::meta::is_valid(&json!({"type": 5})));
    hub.stop().await;
}

/// Validates `instance` against the JSON schema an operation documents for its `status`.
fn assert_matches_response(doc: &Value, path: &str, verb: &str, status: u16, instance: &Value) {
    let r = &doc["paths"][path][verb]["responses"][status.to_string()];
    let r = resolve(doc, r["$ref"].as_str().unwrap()).unwrap();
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [r["content"]["application/json"]["schema"]],
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{verb} {path} {status}: {instance} does not match: {errors:?}"
    );
}

/// `Flow-Request-Method` may choose another method than the verb's: LIST on an operation
/// that names an object, OPEN on the one that lists. Each reply matches the success schema
/// the operation documents; an empty `Flow-Request-ObjectId` (no object id, SPEC 7.2) is
/// documented as allowed, and ids and namespaces with control characters are not.
#[tokio::test]
async fn replies_to_any_method_match_the_operations_documented_schema() {
    let hub = hub_with_endpoints().await;
    let (doc, _) = fetch(&hub, "/api/openapi.json").await;
    let coll = "/api/address/address/address/";
    let item = "/api/address/address/address/{objectid}";
    for (path, url, verb, method) in [
        (item, "/api/address/address/address/first", "get", "LIST"),
        (item, "/api/address/address/address/first", "delete", "LIST"),
        (item, "/api/address/address/address/first", "get", "INDEX"),
        (coll, coll, "get", "INDEX"),
        (
            coll,
            "/api/address/address/address/?objectid=first",
            "get",
            "OPEN",
        ),
        (coll, coll, "get", "LIST"),
    ] {
        let r = hub
            .http(
                &verb.to_uppercase(),
                url,
                &[("Flow-Request-Method", method)],
                b"",
            )
            .await;
        assert_eq!(r.status, 200, "{method} {url}: {}", body_text(&r));
        assert_matches_response(&doc, path, verb, 200, &r.json());
    }
    let r = hub
        .http("GET", coll, &[("Flow-Request-ObjectId", "")], b"")
        .await;
    assert_eq!(r.status, 200, "{}", body_text(&r));
    let params = &doc["components"]["parameters"];
    let id = &params["FlowRequestObjectId"]["schema"];
    assert!(id.get("minLength").is_none_or(|m| m == 0), "{id}");
    let plain = jsonschema::validator_for(id).unwrap();
    let in_path = jsonschema::validator_for(&params["objectidPath"]["schema"]).unwrap();
    let namespace = jsonschema::validator_for(&params["namespace"]["schema"]).unwrap();
    assert!(plain.is_valid(&json!("")) && plain.is_valid(&json!("dev-1 ä")));
    assert!(!in_path.is_valid(&json!("")) && in_path.is_valid(&json!("first")));
    // What the schemas refuse, the hub refuses.
    for (bad, encoded) in [
        ("a/b", "a%2Fb"),
        ("a\u{1}b", "a%01b"),
        ("a\u{85}b", "a%C2%85b"),
    ] {
        assert!(!plain.is_valid(&json!(bad)) && !in_path.is_valid(&json!(bad)));
        let r = hub
            .http("GET", &format!("{coll}?objectid={encoded}"), &[], b"")
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", body_text(&r));
    }
    assert!(namespace.is_valid(&json!("tenant-ä")) && !namespace.is_valid(&json!("a\u{7f}")));
    let r = hub
        .http("GET", &format!("{coll}?namespace=a%01b"), &[], b"")
        .await;
    assert_eq!(r.status, 400, "{}", body_text(&r));
    hub.stop().await;
}

fn body_text(r: &common::HttpReply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}
