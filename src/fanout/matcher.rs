//! Matching a change to live queries without testing every query.
//!
//! Live queries are already grouped by endpoint and namespace (a change only meets the
//! queries of its own collection). Within a collection a query whose condition requires a
//! field to EQUAL a scalar — an item of the top-level AND, also through AND subgroups, as
//! the seed writes conditions — is filed under that (field, value) term. A change then looks
//! up, for every field some query is filed under, the old and the new state's value of that
//! field, and tests only the queries of those two buckets, plus the queries that have no
//! such term. Every candidate is tested with the whole condition (`Group::matches`) against
//! the old and the new state, which decides enter, change or leave; the index only narrows.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Number, Value};

use super::Sub;
use crate::query::{Fields, Group, JsonRef, Logic, Operator, Path};

/// A scalar as an index key: equal keys exactly when the query engine calls the values
/// EQUAL. Numbers that are integers (also `3.0`) within ±2^53 are keys; other numbers,
/// arrays and objects are not (such terms are never filed, such values never looked up).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TermKey {
    /// `null`, and a missing field (EQUAL null matches a missing field).
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
}

const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

fn number_key(n: &Number) -> Option<TermKey> {
    if let Some(i) = n.as_i64() {
        return (i.unsigned_abs() <= EXACT as u64).then_some(TermKey::Int(i));
    }
    if n.is_u64() {
        return None; // above i64::MAX
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= EXACT).then_some(TermKey::Int(f as i64))
}

impl TermKey {
    pub fn of_value(v: &Value) -> Option<TermKey> {
        match v {
            Value::Null => Some(TermKey::Null),
            Value::Bool(b) => Some(TermKey::Bool(*b)),
            Value::Number(n) => number_key(n),
            Value::String(s) => Some(TermKey::Str(s.clone())),
            _ => None,
        }
    }

    pub fn of_field(v: Option<&JsonRef<'_>>) -> Option<TermKey> {
        match v {
            None | Some(JsonRef::Null) => Some(TermKey::Null),
            Some(JsonRef::Bool(b)) => Some(TermKey::Bool(*b)),
            Some(JsonRef::Number(n)) => number_key(n),
            Some(JsonRef::Str(s)) => Some(TermKey::Str(s.to_string())),
            Some(JsonRef::Container(_)) => None,
        }
    }
}

/// The first EQUAL term every match must satisfy, if the condition has one that can be a key.
pub fn required_term(g: &Group) -> Option<(Path, TermKey)> {
    let parts = g.items.len() + g.subgroups.iter().filter(|s| !s.is_trivial()).count();
    if g.logic != Logic::And && parts != 1 {
        return None;
    }
    for item in &g.items {
        if item.op == Operator::Equal {
            if let Some(k) = TermKey::of_value(&item.value) {
                return Some((item.path.clone(), k));
            }
        }
    }
    g.subgroups
        .iter()
        .filter(|s| !s.is_trivial())
        .find_map(required_term)
}

/// The live queries of one collection.
#[derive(Default)]
pub struct QueryIndex {
    /// Queries filed under a required (field, value) term.
    by_term: HashMap<Path, HashMap<TermKey, Vec<Arc<Sub>>>>,
    /// Queries without such a term: tested against every change.
    rest: Vec<Arc<Sub>>,
}

impl QueryIndex {
    pub fn is_empty(&self) -> bool {
        self.by_term.is_empty() && self.rest.is_empty()
    }

    /// The number of live queries filed here.
    pub fn len(&self) -> usize {
        self.rest.len()
            + self
                .by_term
                .values()
                .flat_map(|k| k.values())
                .map(Vec::len)
                .sum::<usize>()
    }

    /// Every live query filed here.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Sub>> {
        self.by_term
            .values()
            .flat_map(|k| k.values())
            .flatten()
            .chain(&self.rest)
    }

    pub fn insert(&mut self, sub: Arc<Sub>, group: &Group) {
        match required_term(group) {
            Some((path, key)) => self
                .by_term
                .entry(path)
                .or_default()
                .entry(key)
                .or_default()
                .push(sub),
            None => self.rest.push(sub),
        }
    }

    pub fn remove(&mut self, sub: &Arc<Sub>, group: &Group) {
        match required_term(group) {
            Some((path, key)) => {
                if let Some(by_key) = self.by_term.get_mut(&path) {
                    if let Some(list) = by_key.get_mut(&key) {
                        list.retain(|s| !Arc::ptr_eq(s, sub));
                        if list.is_empty() {
                            by_key.remove(&key);
                        }
                    }
                    if by_key.is_empty() {
                        self.by_term.remove(&path);
                    }
                }
            }
            None => self.rest.retain(|s| !Arc::ptr_eq(s, sub)),
        }
    }

    /// Calls `f` with every query that may match `old` or `new` (each once).
    pub fn candidates<'a>(
        &'a self,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
        mut f: impl FnMut(&'a Arc<Sub>),
    ) {
        for (path, by_key) in &self.by_term {
            let key_of =
                |json: Option<&[u8]>| json.and_then(|j| TermKey::of_field(j.field(path).as_ref()));
            let a = key_of(old);
            let b = key_of(new).filter(|b| a.as_ref() != Some(b));
            // A query sits in one bucket only, and the two keys differ: no query twice.
            for key in [&a, &b].into_iter().flatten() {
                if let Some(list) = by_key.get(key) {
                    list.iter().for_each(&mut f);
                }
            }
        }
        self.rest.iter().for_each(&mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn g(v: Value) -> Group {
        Group::parse(&v).unwrap()
    }

    #[test]
    fn required_terms() {
        let seed = g(json!({"items": [], "subgroups": [{"items": [
            {"key": "city", "operator": "EQUAL", "value": "Envik"}], "logic": "AND"}], "logic": "AND"}));
        assert_eq!(
            required_term(&seed),
            Some((Path::parse("city").unwrap(), TermKey::Str("Envik".into())))
        );
        let or = g(json!({"logic": "OR", "items": [
            {"key": "a", "operator": "EQUAL", "value": 1}, {"key": "b", "operator": "EQUAL", "value": 2}]}));
        assert_eq!(required_term(&or), None);
        let one =
            g(json!({"logic": "OR", "items": [{"key": "a", "operator": "EQUAL", "value": 3.0}]}));
        assert_eq!(required_term(&one).map(|t| t.1), Some(TermKey::Int(3)));
        let arr = g(json!({"items": [{"key": "a", "operator": "EQUAL", "value": [1]}]}));
        assert_eq!(required_term(&arr), None);
        let gt = g(json!({"items": [{"key": "a", "operator": ">", "value": 1}]}));
        assert_eq!(required_term(&gt), None);
    }

    #[test]
    fn field_keys_agree_with_value_keys() {
        let json = br#"{"a":3,"b":3.0,"c":"x","d":null,"e":[1],"f":1.5}"#;
        let k = |p: &str| TermKey::of_field(json[..].field(&Path::parse(p).unwrap()).as_ref());
        assert_eq!(k("a"), TermKey::of_value(&json!(3.0)));
        assert_eq!(k("b"), Some(TermKey::Int(3)));
        assert_eq!(k("c"), Some(TermKey::Str("x".into())));
        assert_eq!(k("d"), Some(TermKey::Null));
        assert_eq!(k("missing"), Some(TermKey::Null));
        assert_eq!(k("e"), None);
        assert_eq!(k("f"), None);
    }
}
