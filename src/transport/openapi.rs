//! OpenAPI 3.1 descriptions generated from the live endpoint registry.

use serde_json::{json, Value};

use crate::dispatch::EndpointInfo;

/// The OpenAPI document for `endpoints` (all of them, or one application's).
pub fn document(endpoints: &[EndpointInfo], application: Option<&str>) -> Value {
    let mut paths = serde_json::Map::new();
    for e in endpoints
        .iter()
        .filter(|e| application.is_none_or(|a| a == e.application))
    {
        let base = format!("/api/{}/{}/", e.application, e.endpoint);
        paths.insert(base.clone(), json!({
            "get": {"summary": format!("LIST {}", e.endpoint), "responses": {"200": {"description": "the envelope"}}},
            "post": {"summary": format!("CREATE on {}", e.endpoint), "responses": {"200": {"description": "the envelope"}}},
        }));
        paths.insert(format!("{base}{{objectid}}"), json!({
            "get": {"summary": format!("OPEN an object of {}", e.endpoint), "responses": {"200": {"description": "the envelope"}}},
        }));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": application.map_or("flowhub".to_string(), |a| format!("flowhub: {a}")), "version": "1"},
        "paths": paths,
    })
}
