//! The total order over JSON values used for sorting and for range conditions.
//!
//! Across types: missing < `null` < booleans < numbers < strings < arrays < objects. Within a
//! type: `false` < `true`; numbers by value (integers exactly, `1` equals `1.0`); strings by
//! Unicode code point (byte order of UTF-8); arrays element by element, then by length;
//! objects by their fields in order, then by count.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::json::JsonRef;

fn rank(v: Option<&Value>) -> u8 {
    match v {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// Compares two JSON numbers by value: exactly when both are integers, else as `f64`.
pub fn cmp_numbers(a: &Number, b: &Number) -> Ordering {
    if let (Some(x), Some(y)) = (as_i128(a), as_i128(b)) {
        return x.cmp(&y);
    }
    let x = a.as_f64().unwrap_or(f64::NAN);
    let y = b.as_f64().unwrap_or(f64::NAN);
    x.total_cmp(&y)
}

fn as_i128(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// The total order of the module doc; `None` is a missing field.
pub fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => cmp_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for (p, q) in x.iter().zip(y) {
                let o = cmp_values(Some(p), Some(q));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            for ((kp, p), (kq, q)) in x.iter().zip(y) {
                let o = kp.cmp(kq).then_with(|| cmp_values(Some(p), Some(q)));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal,
    }
}

fn ref_rank(v: Option<&JsonRef<'_>>) -> u8 {
    match v {
        None => 0,
        Some(JsonRef::Null) => 1,
        Some(JsonRef::Bool(_)) => 2,
        Some(JsonRef::Number(_)) => 3,
        Some(JsonRef::Str(_)) => 4,
        Some(JsonRef::Container(c)) if c.is_array() => 5,
        Some(JsonRef::Container(_)) => 6,
    }
}

/// The same total order over field values read from stored text.
pub fn cmp_refs(a: Option<&JsonRef<'_>>, b: Option<&JsonRef<'_>>) -> Ordering {
    let (ra, rb) = (ref_rank(a), ref_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Some(JsonRef::Bool(x)), Some(JsonRef::Bool(y))) => x.cmp(y),
        (Some(JsonRef::Number(x)), Some(JsonRef::Number(y))) => cmp_numbers(x, y),
        (Some(JsonRef::Str(x)), Some(JsonRef::Str(y))) => x.cmp(y),
        (Some(JsonRef::Container(x)), Some(JsonRef::Container(y))) => cmp_values(Some(x), Some(y)),
        _ => Ordering::Equal,
    }
}

/// Equality between a field read from stored text and a value of a condition.
pub fn ref_equals(a: &JsonRef<'_>, b: &Value) -> bool {
    match (a, b) {
        (JsonRef::Null, Value::Null) => true,
        (JsonRef::Bool(x), Value::Bool(y)) => x == y,
        (JsonRef::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Ordering::Equal,
        (JsonRef::Str(x), Value::String(y)) => x == y,
        (JsonRef::Container(x), y) => values_equal(x, y),
        _ => false,
    }
}

/// Equality as conditions see it: numbers by value, containers deeply (objects regardless of
/// field order).
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| values_equal(p, q)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_across_types() {
        let vals = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1),
            json!(2.5),
            json!(3),
            json!(""),
            json!("a"),
            json!("b"),
            json!([]),
            json!([1]),
            json!({}),
        ];
        assert_eq!(cmp_values(None, Some(&vals[0])), Ordering::Less);
        for w in vals.windows(2) {
            assert_eq!(
                cmp_values(Some(&w[0]), Some(&w[1])),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(values_equal(&json!(1), &json!(1.0)));
        assert_eq!(
            cmp_values(Some(&json!(u64::MAX)), Some(&json!(i64::MAX))),
            Ordering::Greater
        );
        assert_eq!(
            cmp_values(
                Some(&json!(9007199254740993_i64)),
                Some(&json!(9007199254740992_i64))
            ),
            Ordering::Greater
        );
    }
}
