//! The condition tree of LIST: `items` ({key, operator, value}), nested `subgroups`, and a
//! `logic` of AND or OR joining them, exactly as the seed writes it.
//!
//! Semantics (also in `protocol/SPEC.md`):
//! - A group with no items and no subgroups matches everything.
//! - EQUAL / NOT_EQUAL compare by value (`1` equals `1.0`); a missing field equals `null`.
//! - GREATER, GREATER_OR_EQUAL, LESS, LESS_OR_EQUAL compare numbers with numbers and strings
//!   with strings; across types they do not match.
//! - CONTAINS: a substring of a string field, or an element of an array field.
//! - STARTS_WITH / ENDS_WITH: string prefix / suffix.
//! - IN / NOT_IN: the field equals one / none of the values of an array.
//! - EXISTS: `true` (or no value) matches a present field, `false` a missing one.

use serde_json::Value;

use super::json::{Fields, JsonRef};
use super::order::{cmp_numbers, ref_equals, values_equal};
use super::path::Path;

/// How a group joins its items and subgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logic {
    And,
    Or,
}

/// A comparison operator of the condition language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Equal,
    NotEqual,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    In,
    NotIn,
    Exists,
}

impl Operator {
    pub const ALL: [Operator; 13] = [
        Operator::Equal,
        Operator::NotEqual,
        Operator::Greater,
        Operator::GreaterOrEqual,
        Operator::Less,
        Operator::LessOrEqual,
        Operator::Contains,
        Operator::NotContains,
        Operator::StartsWith,
        Operator::EndsWith,
        Operator::In,
        Operator::NotIn,
        Operator::Exists,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equal => "EQUAL",
            Operator::NotEqual => "NOT_EQUAL",
            Operator::Greater => "GREATER",
            Operator::GreaterOrEqual => "GREATER_OR_EQUAL",
            Operator::Less => "LESS",
            Operator::LessOrEqual => "LESS_OR_EQUAL",
            Operator::Contains => "CONTAINS",
            Operator::NotContains => "NOT_CONTAINS",
            Operator::StartsWith => "STARTS_WITH",
            Operator::EndsWith => "ENDS_WITH",
            Operator::In => "IN",
            Operator::NotIn => "NOT_IN",
            Operator::Exists => "EXISTS",
        }
    }

    /// Parses an operator name, in any case; `=`, `!=`, `>`, `>=`, `<`, `<=` are accepted too.
    pub fn parse(s: &str) -> Option<Operator> {
        let s = s.trim();
        let alias = match s {
            "=" | "==" => Some(Operator::Equal),
            "!=" | "<>" => Some(Operator::NotEqual),
            ">" => Some(Operator::Greater),
            ">=" => Some(Operator::GreaterOrEqual),
            "<" => Some(Operator::Less),
            "<=" => Some(Operator::LessOrEqual),
            _ => None,
        };
        alias.or_else(|| {
            Operator::ALL
                .into_iter()
                .find(|o| o.as_str().eq_ignore_ascii_case(s))
        })
    }
}

/// One comparison: the field at `path`, an operator, a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: Path,
    pub op: Operator,
    pub value: Value,
}

/// A node of the condition tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub items: Vec<Item>,
    pub subgroups: Vec<Group>,
    pub logic: Logic,
}

/// Deepest condition tree accepted.
pub const MAX_GROUP_DEPTH: usize = 16;
/// Most items accepted in one condition tree, all groups together.
pub const MAX_ITEMS: usize = 1024;

impl Group {
    /// Parses `condition.values`. Errors are messages for `INVALID_PARAMETERS`.
    pub fn parse(value: &Value) -> Result<Group, String> {
        let mut budget = MAX_ITEMS;
        Self::parse_at(value, 0, "condition.values", &mut budget)
    }

    fn parse_at(
        value: &Value,
        depth: usize,
        at: &str,
        budget: &mut usize,
    ) -> Result<Group, String> {
        if depth > MAX_GROUP_DEPTH {
            return Err(format!(
                "condition is nested deeper than {MAX_GROUP_DEPTH} groups"
            ));
        }
        let obj = value
            .as_object()
            .ok_or_else(|| format!("{at} must be an object"))?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "items" | "subgroups" | "logic") {
                return Err(format!(
                    "{at} has an unknown field {key:?} (expected items, subgroups, logic)"
                ));
            }
        }
        let logic = match obj.get("logic") {
            None | Some(Value::Null) => Logic::And,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("AND") => Logic::And,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("OR") => Logic::Or,
            Some(other) => {
                return Err(format!("{at}.logic must be \"AND\" or \"OR\", not {other}"))
            }
        };
        let mut items = Vec::new();
        match obj.get("items") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    if *budget == 0 {
                        return Err(format!("condition has more than {MAX_ITEMS} items"));
                    }
                    *budget -= 1;
                    items.push(Item::parse(item, &format!("{at}.items[{i}]"))?);
                }
            }
            Some(_) => return Err(format!("{at}.items must be an array")),
        }
        let mut subgroups = Vec::new();
        match obj.get("subgroups") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, g) in list.iter().enumerate() {
                    subgroups.push(Self::parse_at(
                        g,
                        depth + 1,
                        &format!("{at}.subgroups[{i}]"),
                        budget,
                    )?);
                }
            }
            Some(_) => return Err(format!("{at}.subgroups must be an array")),
        }
        Ok(Group {
            items,
            subgroups,
            logic,
        })
    }

    /// Whether the group constrains nothing.
    pub fn is_trivial(&self) -> bool {
        self.items.is_empty() && self.subgroups.iter().all(Group::is_trivial)
    }

    /// Whether `object` (a tree, or an object's JSON text) satisfies the group.
    pub fn matches<F: Fields + ?Sized>(&self, object: &F) -> bool {
        let mut parts = self
            .items
            .iter()
            .map(|i| i.matches(object))
            .chain(
                self.subgroups
                    .iter()
                    .filter(|g| !g.is_trivial())
                    .map(|g| g.matches(object)),
            )
            .peekable();
        if parts.peek().is_none() {
            return true;
        }
        match self.logic {
            Logic::And => parts.all(|b| b),
            Logic::Or => parts.any(|b| b),
        }
    }
}

impl Item {
    fn parse(value: &Value, at: &str) -> Result<Item, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| format!("{at} must be an object"))?;
        let key = obj
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}.key must be a string"))?;
        let path =
            Path::parse(key).ok_or_else(|| format!("{at}.key {key:?} is not a field path"))?;
        let op_name = obj
            .get("operator")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}.operator must be a string"))?;
        let op = Operator::parse(op_name).ok_or_else(|| {
            let names: Vec<&str> = Operator::ALL.iter().map(|o| o.as_str()).collect();
            format!(
                "{at}.operator {op_name:?} is unknown; operators are {}",
                names.join(", ")
            )
        })?;
        let value = obj.get("value").cloned().unwrap_or(Value::Null);
        let ok = match op {
            Operator::Greater
            | Operator::GreaterOrEqual
            | Operator::Less
            | Operator::LessOrEqual => {
                matches!(value, Value::Number(_) | Value::String(_))
            }
            Operator::StartsWith | Operator::EndsWith => value.is_string(),
            Operator::In | Operator::NotIn => value.is_array(),
            Operator::Exists => matches!(value, Value::Bool(_) | Value::Null),
            _ => true,
        };
        if !ok {
            let wants = match op {
                Operator::StartsWith | Operator::EndsWith => "a string",
                Operator::In | Operator::NotIn => "an array",
                Operator::Exists => "true or false",
                _ => "a number or a string",
            };
            return Err(format!(
                "{at}: {} needs {wants} as value, not {value}",
                op.as_str()
            ));
        }
        Ok(Item { path, op, value })
    }

    /// Whether `object` (a tree, or an object's JSON text) satisfies this comparison.
    pub fn matches<F: Fields + ?Sized>(&self, object: &F) -> bool {
        self.test(object.field(&self.path).as_ref())
    }

    /// Tests a field's value (`None`: missing) against this comparison.
    pub fn test(&self, field: Option<&JsonRef<'_>>) -> bool {
        let want = &self.value;
        match self.op {
            Operator::Equal => equal(field, want),
            Operator::NotEqual => !equal(field, want),
            Operator::Greater => compare(field, want).is_some_and(|o| o.is_gt()),
            Operator::GreaterOrEqual => compare(field, want).is_some_and(|o| o.is_ge()),
            Operator::Less => compare(field, want).is_some_and(|o| o.is_lt()),
            Operator::LessOrEqual => compare(field, want).is_some_and(|o| o.is_le()),
            Operator::Contains => contains(field, want),
            Operator::NotContains => !contains(field, want),
            Operator::StartsWith => match (field, want) {
                (Some(JsonRef::Str(f)), Value::String(w)) => f.starts_with(w.as_str()),
                _ => false,
            },
            Operator::EndsWith => match (field, want) {
                (Some(JsonRef::Str(f)), Value::String(w)) => f.ends_with(w.as_str()),
                _ => false,
            },
            Operator::In => want
                .as_array()
                .is_some_and(|l| l.iter().any(|w| equal(field, w))),
            Operator::NotIn => !want
                .as_array()
                .is_some_and(|l| l.iter().any(|w| equal(field, w))),
            Operator::Exists => field.is_some() == !matches!(want, Value::Bool(false)),
        }
    }
}

fn equal(field: Option<&JsonRef<'_>>, want: &Value) -> bool {
    match field {
        None => want.is_null(),
        Some(f) => ref_equals(f, want),
    }
}

fn compare(field: Option<&JsonRef<'_>>, want: &Value) -> Option<std::cmp::Ordering> {
    match (field?, want) {
        (JsonRef::Number(f), Value::Number(w)) => Some(cmp_numbers(f, w)),
        (JsonRef::Str(f), Value::String(w)) => Some(f.as_ref().cmp(w.as_str())),
        _ => None,
    }
}

fn contains(field: Option<&JsonRef<'_>>, want: &Value) -> bool {
    match (field, want) {
        (Some(JsonRef::Str(f)), Value::String(w)) => f.contains(w.as_str()),
        (Some(JsonRef::Container(c)), w) => c
            .as_array()
            .is_some_and(|l| l.iter().any(|e| values_equal(e, w))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(v: Value) -> Group {
        Group::parse(&v).unwrap()
    }

    #[test]
    fn the_seed_condition() {
        let g = group(json!({"items": [], "subgroups": [{"items": [
            {"key": "city", "operator": "EQUAL", "value": "Envik"}], "subgroups": [], "logic": "AND"}],
            "logic": "AND"}));
        assert!(g.matches(json!({"city": "Envik"}).as_object().unwrap()));
        assert!(!g.matches(json!({"city": "Götefred"}).as_object().unwrap()));
        assert!(!g.matches(json!({}).as_object().unwrap()));
    }

    #[test]
    fn operators() {
        let o = json!({"n": 5, "s": "Larss Gata", "a": ["x", 2], "z": null});
        let o = o.as_object().unwrap();
        let t = |k: &str, op: &str, v: Value| {
            Item::parse(&json!({"key": k, "operator": op, "value": v}), "i")
                .unwrap()
                .matches(o)
        };
        assert!(t("n", "EQUAL", json!(5.0)));
        assert!(t("n", "GREATER", json!(4)) && !t("n", "GREATER", json!(5)));
        assert!(t("n", "GREATER_OR_EQUAL", json!(5)) && t("n", "LESS_OR_EQUAL", json!(5)));
        assert!(!t("n", "LESS", json!("9")), "no comparison across types");
        assert!(t("s", "CONTAINS", json!("ss G")) && t("s", "STARTS_WITH", json!("Lar")));
        assert!(t("s", "ENDS_WITH", json!("Gata")) && t("a", "CONTAINS", json!(2)));
        assert!(t("n", "IN", json!([1, 5])) && t("n", "NOT_IN", json!([1, 2])));
        assert!(t("z", "EXISTS", json!(true)) && t("q", "EXISTS", json!(false)));
        assert!(t("q", "EQUAL", json!(null)) && t("q", "NOT_EQUAL", json!(1)));
        assert!(t("n", ">=", json!(5)));
    }

    #[test]
    fn or_groups_and_errors() {
        let g = group(json!({"logic": "OR", "items": [
            {"key": "a", "operator": "EQUAL", "value": 1}, {"key": "b", "operator": "EQUAL", "value": 2}]}));
        assert!(g.matches(json!({"b": 2}).as_object().unwrap()));
        assert!(!g.matches(json!({"b": 3}).as_object().unwrap()));
        assert!(group(json!({"logic": "OR"})).matches(json!({}).as_object().unwrap()));
        for bad in [
            json!([]),
            json!({"logic": "XOR"}),
            json!({"items": [{"key": "a", "operator": "LIKE"}]}),
            json!({"items": [{"key": "a", "operator": "IN", "value": 3}]}),
            json!({"itmes": []}),
        ] {
            assert!(Group::parse(&bad).is_err(), "{bad}");
        }
        let mut deep = json!({});
        for _ in 0..40 {
            deep = json!({"subgroups": [deep]});
        }
        assert!(Group::parse(&deep).is_err());
    }
}
