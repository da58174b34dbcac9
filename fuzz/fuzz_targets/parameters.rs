//! LIST parameters in every accepted form: a text (JSON, `key=value&...`, `key=value;...`),
//! a JSON object (flat, wrapped, grouped) or a list of pairs; then the LIST query read from
//! them, run over a few objects.
#![no_main]

use flowhub::protocol::frame::decode_text;
use flowhub::protocol::params::{expected_version, list_query, normalize};
use flowhub::query::list_objects;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let raw = if mode & 1 == 0 {
        // A header, a query-string value or a frame's string: text.
        Value::String(text.to_string())
    } else {
        // A frame's `parameters` as JSON: decoded within the frame's depth limit.
        match decode_text(text, 31) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    let Ok(params) = normalize(&raw) else {
        return;
    };
    let _ = expected_version(&params);
    let Ok(query) = list_query(&params) else {
        return;
    };
    let objects: Vec<_> = [
        json!({"city": "Envik", "streetNumber": 3, "a": [1, "x"]}),
        json!({"city": "Götefred", "streetNumber": 2.5, "o": {"p": null}}),
        json!({"streetNumber": "4", "city": null}),
        json!({}),
    ]
    .into_iter()
    .filter_map(|v| match v {
        Value::Object(o) => Some(o),
        _ => None,
    })
    .collect();
    let total = objects.len();
    let (page, count) = list_objects(objects, &query);
    assert!(count <= total && page.len() <= count);
});
