//! Parameters: the forms the seed allows, normalized to one flat map, then read as a LIST query.
//!
//! Accepted forms, all equivalent:
//! - a JSON object of flat keys: `{"sorting": true, "sorting.by": "streetNumber"}`;
//! - the same wrapped: `{"parameters": {...}}` (as the seed's HTTP examples send it);
//! - a JSON text of either (a header value, a query-string value);
//! - key-value pairs: `sorting=true&sorting.by=streetNumber` (also separated by `;` or new
//!   lines), or a JSON array of `{"key": k, "value": v}` or `[k, v]` pairs. A value that parses
//!   as JSON is taken as JSON (`true`, `1`, `{...}`), otherwise as a string.
//! - groups as nested objects: `{"sorting": {"by": "city", "order": "DESC"}}`.

use serde_json::{Map, Value};

use super::error::FlowError;
use crate::query::{Group, ListQuery, Page, Path, SortKey};

/// The keys of LIST; another key under one of these prefixes is a typo and an error.
const LIST_KEYS: [&str; 8] = [
    "sorting",
    "sorting.by",
    "sorting.order",
    "condition",
    "condition.values",
    "pagination",
    "pagination.size",
    "pagination.from",
];

/// Longest parameters text accepted, in bytes.
pub const MAX_PARAMETERS_LEN: usize = 64 * 1024;

/// Normalizes any accepted form to one flat map.
pub fn normalize(raw: &Value) -> Result<Map<String, Value>, FlowError> {
    let mut out = Map::new();
    normalize_into(raw, &mut out, 0)?;
    Ok(out)
}

fn normalize_into(raw: &Value, out: &mut Map<String, Value>, depth: u8) -> Result<(), FlowError> {
    if depth > 3 {
        return Err(FlowError::params("parameters are wrapped too deeply"));
    }
    match raw {
        Value::Null => Ok(()),
        Value::String(s) => normalize_text(s, out, depth),
        Value::Object(obj) => {
            for (k, v) in obj {
                match (k.as_str(), v) {
                    ("parameters" | "parameter", _) => normalize_into(v, out, depth + 1)?,
                    ("sorting" | "condition" | "pagination", Value::Object(inner)) => {
                        if k != "condition" || !is_condition_tree(inner) {
                            out.insert(k.clone(), Value::Bool(true));
                            for (ik, iv) in inner {
                                out.insert(format!("{k}.{ik}"), iv.clone());
                            }
                        } else {
                            out.insert("condition".into(), Value::Bool(true));
                            out.insert("condition.values".into(), v.clone());
                        }
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok(())
        }
        Value::Array(pairs) => {
            for pair in pairs {
                let (k, v) = match pair {
                    Value::Object(o) if o.contains_key("key") => {
                        (o.get("key"), o.get("value").cloned().unwrap_or(Value::Null))
                    }
                    Value::Array(kv) if kv.len() == 2 => (kv.first(), kv[1].clone()),
                    _ => {
                        return Err(FlowError::params(
                            "a parameters list holds {\"key\": k, \"value\": v} objects or [k, v] pairs",
                        ))
                    }
                };
                let Some(Value::String(k)) = k else {
                    return Err(FlowError::params("a parameter key must be a string"));
                };
                let v = match v {
                    Value::String(s) => json_or_string(&s),
                    other => other,
                };
                out.insert(k.clone(), v);
            }
            Ok(())
        }
        _ => Err(FlowError::params(
            "parameters must be an object, a list of pairs or a text",
        )),
    }
}

fn is_condition_tree(obj: &Map<String, Value>) -> bool {
    obj.contains_key("items") || obj.contains_key("subgroups") || obj.contains_key("logic")
}

fn normalize_text(s: &str, out: &mut Map<String, Value>, depth: u8) -> Result<(), FlowError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > MAX_PARAMETERS_LEN {
        return Err(FlowError::too_large(format!(
            "parameters are longer than {MAX_PARAMETERS_LEN} bytes"
        )));
    }
    if s.starts_with('{') || s.starts_with('[') {
        let v: Value = serde_json::from_str(s)
            .map_err(|e| FlowError::params(format!("parameters are not valid JSON: {e}")))?;
        return normalize_into(&v, out, depth + 1);
    }
    let pairs: Vec<(String, String)> = if s.contains('&') {
        form_urlencoded::parse(s.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    } else {
        s.split([';', '\n'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').ok_or_else(|| {
                    FlowError::params(format!("parameter {p:?} is not key=value"))
                })?;
                let dec = |x: &str| {
                    percent_encoding::percent_decode_str(x.trim())
                        .decode_utf8_lossy()
                        .into_owned()
                };
                Ok((dec(k), dec(v)))
            })
            .collect::<Result<_, FlowError>>()?
    };
    for (k, v) in pairs {
        if k.is_empty() {
            return Err(FlowError::params("a parameter has an empty key"));
        }
        out.insert(k, json_or_string(&v));
    }
    Ok(())
}

fn json_or_string(s: &str) -> Value {
    let t = s.trim();
    let looks_json = t.starts_with(['{', '[', '"'])
        || matches!(t, "true" | "false" | "null")
        || t.parse::<f64>().is_ok();
    if looks_json {
        if let Ok(v) = serde_json::from_str(t) {
            return v;
        }
    }
    Value::String(s.to_string())
}

/// Reads a flag such as `sorting`: `true`/`false` in JSON or as text; absent is `None`.
fn flag(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, FlowError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(Value::Number(n)) => Ok(Some(n.as_f64() != Some(0.0))),
        Some(other) => Err(FlowError::params(format!(
            "{key} must be true or false, not {other}"
        ))),
    }
}

/// A group is on when its flag is true, or when the flag is absent and one of its keys is set.
fn enabled(params: &Map<String, Value>, group: &str) -> Result<bool, FlowError> {
    Ok(match flag(params, group)? {
        Some(b) => b,
        None => params.keys().any(|k| {
            k.strip_prefix(group)
                .is_some_and(|rest| rest.starts_with('.'))
        }),
    })
}

fn usize_param(params: &Map<String, Value>, key: &str) -> Result<Option<usize>, FlowError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(Some(
            usize::try_from(n.as_u64().unwrap_or(0)).unwrap_or(usize::MAX),
        )),
        Some(Value::String(s)) if s.trim().parse::<usize>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err(FlowError::params(format!(
            "{key} must be a non-negative integer, not {other}"
        ))),
    }
}

fn string_list(v: &Value, key: &str) -> Result<Vec<String>, FlowError> {
    match v {
        Value::String(s) => Ok(s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()),
        Value::Array(list) => list
            .iter()
            .map(|e| {
                e.as_str()
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| FlowError::params(format!("{key} must list strings")))
            })
            .collect(),
        other => Err(FlowError::params(format!(
            "{key} must be a string or a list, not {other}"
        ))),
    }
}

/// Reads a LIST query from normalized parameters.
pub fn list_query(params: &Map<String, Value>) -> Result<ListQuery, FlowError> {
    for key in params.keys() {
        let group = key.split('.').next().unwrap_or("");
        if matches!(group, "sorting" | "condition" | "pagination")
            && !LIST_KEYS.contains(&key.as_str())
        {
            return Err(FlowError::params(format!(
                "unknown parameter {key:?}; LIST takes {}",
                LIST_KEYS.join(", ")
            )));
        }
    }
    let mut query = ListQuery::default();
    if enabled(params, "sorting")? {
        let by = match params.get("sorting.by") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => string_list(v, "sorting.by")?,
        };
        let orders = match params.get("sorting.order") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => string_list(v, "sorting.order")?,
        };
        if orders.len() > by.len().max(1) {
            return Err(FlowError::params(
                "sorting.order has more entries than sorting.by",
            ));
        }
        let mut descending = Vec::with_capacity(orders.len());
        for o in &orders {
            descending.push(match o.to_ascii_uppercase().as_str() {
                "ASC" => false,
                "DESC" => true,
                _ => {
                    return Err(FlowError::params(format!(
                        "sorting.order must be ASC or DESC, not {o:?}"
                    )))
                }
            });
        }
        for (i, field) in by.iter().enumerate() {
            let path = Path::parse(field).ok_or_else(|| {
                FlowError::params(format!("sorting.by {field:?} is not a field path"))
            })?;
            // One order given for several keys applies to all of them.
            let desc = descending.get(i).or(if descending.len() == 1 {
                descending.first()
            } else {
                None
            });
            query.sort.push(SortKey {
                path,
                descending: desc.copied().unwrap_or(false),
            });
        }
        if query.sort.len() > 8 {
            return Err(FlowError::params("sorting.by takes at most 8 keys"));
        }
    }
    if enabled(params, "condition")? {
        match params.get("condition.values") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let v: Value = serde_json::from_str(s).map_err(|e| {
                    FlowError::params(format!("condition.values is not valid JSON: {e}"))
                })?;
                query.condition = Some(Group::parse(&v).map_err(FlowError::params)?);
            }
            Some(v) => query.condition = Some(Group::parse(v).map_err(FlowError::params)?),
        }
    }
    if enabled(params, "pagination")? {
        query.page = Page {
            from: usize_param(params, "pagination.from")?.unwrap_or(0),
            size: usize_param(params, "pagination.size")?,
        };
    }
    Ok(query)
}

/// The expected version of an UPDATE or DELETE (`version` parameter), if given.
pub fn expected_version(params: &Map<String, Value>) -> Result<Option<u64>, FlowError> {
    match params.get("version") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err(FlowError::params(format!(
            "version must be a non-negative integer, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(v: Value) -> Result<ListQuery, FlowError> {
        list_query(&normalize(&v)?)
    }

    #[test]
    fn all_forms_give_the_same_query() {
        let object = q(json!({"parameters": {"sorting": true, "sorting.by": "streetNumber",
            "sorting.order": "ASC", "pagination": true, "pagination.size": 1, "pagination.from": 0}}))
        .unwrap();
        let forms = [
            json!({"sorting": true, "sorting.by": "streetNumber", "sorting.order": "ASC",
                "pagination": true, "pagination.size": 1, "pagination.from": 0}),
            json!(r#"{"parameters": {"sorting": true,"sorting.by": "streetNumber","sorting.order": "ASC", "pagination": true, "pagination.size": 1,"pagination.from": 0}}"#),
            json!("sorting=true&sorting.by=streetNumber&sorting.order=ASC&pagination=true&pagination.size=1&pagination.from=0"),
            json!("sorting=true; sorting.by=streetNumber; sorting.order=ASC; pagination.size=1; pagination.from=0"),
            json!([{"key": "sorting.by", "value": "streetNumber"}, {"key": "sorting.order", "value": "ASC"},
                ["pagination.size", "1"], ["pagination.from", 0]]),
            json!({"sorting": {"by": "streetNumber", "order": "ASC"}, "pagination": {"size": 1, "from": 0}}),
        ];
        for f in forms {
            assert_eq!(q(f.clone()).unwrap(), object, "{f}");
        }
        assert_eq!(
            object.page,
            Page {
                from: 0,
                size: Some(1)
            }
        );
        assert_eq!(object.sort[0].path.as_str(), "streetNumber");
    }

    #[test]
    fn flags_switch_groups_off_and_several_keys_sort() {
        let off = q(json!({"sorting": false, "sorting.by": "a"})).unwrap();
        assert!(off.sort.is_empty());
        let multi =
            q(json!({"sorting.by": ["city", "streetNumber"], "sorting.order": ["DESC", "ASC"]}))
                .unwrap();
        assert!(multi.sort[0].descending && !multi.sort[1].descending);
        let csv = q(json!({"sorting.by": "city,streetNumber", "sorting.order": "DESC"})).unwrap();
        assert!(csv.sort.iter().all(|k| k.descending));
    }

    #[test]
    fn bad_parameters_are_named() {
        for bad in [
            json!("{not json"),
            json!({"sorting.order": "UP", "sorting.by": "a"}),
            json!({"pagination.size": -1}),
            json!({"sorting.bye": "a"}),
            json!({"condition.values": 5}),
            json!(42),
            json!("novalue"),
        ] {
            let e = q(bad.clone()).unwrap_err();
            assert!(
                matches!(e.code, super::super::ErrorCode::InvalidParameters),
                "{bad}: {e}"
            );
        }
    }
}
