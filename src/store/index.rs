//! Secondary indexes: for one field path, the objects of a collection by value.
//!
//! Keys follow the order of `query::order` (null < booleans < numbers < strings). An object
//! whose field is an array or an object is kept in `others`, one whose field is missing in
//! `missing`; postings are sets of creation sequence numbers, so a lookup yields candidates in
//! the endpoint's natural order. Every lookup returns a superset of the matches: the executor
//! still tests the whole condition on each candidate, so an index can never change a result,
//! only its cost.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde_json::{Number, Value};

use crate::query::order::cmp_numbers;
use crate::query::{Item, Operator, Path};

/// A scalar value as an index key.
#[derive(Debug, Clone)]
pub enum IndexKey {
    Null,
    Bool(bool),
    Num(Number),
    Str(Box<str>),
}

impl IndexKey {
    /// The key of a scalar value; `None` for arrays and objects.
    pub fn of(v: &Value) -> Option<IndexKey> {
        Some(match v {
            Value::Null => IndexKey::Null,
            Value::Bool(b) => IndexKey::Bool(*b),
            Value::Number(n) => IndexKey::Num(n.clone()),
            Value::String(s) => IndexKey::Str(s.as_str().into()),
            _ => return None,
        })
    }

    fn rank(&self) -> u8 {
        match self {
            IndexKey::Null => 0,
            IndexKey::Bool(_) => 1,
            IndexKey::Num(_) => 2,
            IndexKey::Str(_) => 3,
        }
    }

    fn same_class(&self, other: &IndexKey) -> bool {
        self.rank() == other.rank()
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (IndexKey::Bool(a), IndexKey::Bool(b)) => a.cmp(b),
            (IndexKey::Num(a), IndexKey::Num(b)) => cmp_numbers(a, b),
            (IndexKey::Str(a), IndexKey::Str(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}
impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for IndexKey {}

/// The index of one field path in one collection.
#[derive(Debug)]
pub struct FieldIndex {
    pub path: Path,
    keys: BTreeMap<IndexKey, BTreeSet<u64>>,
    /// Objects whose field holds an array or an object.
    others: BTreeSet<u64>,
    /// Objects without the field.
    missing: BTreeSet<u64>,
}

impl FieldIndex {
    pub fn new(path: Path) -> FieldIndex {
        FieldIndex {
            path,
            keys: BTreeMap::new(),
            others: BTreeSet::new(),
            missing: BTreeSet::new(),
        }
    }

    pub fn insert(&mut self, seq: u64, fields: &serde_json::Map<String, Value>) {
        match self.path.get(fields) {
            None => {
                self.missing.insert(seq);
            }
            Some(v) => match IndexKey::of(v) {
                Some(k) => {
                    self.keys.entry(k).or_default().insert(seq);
                }
                None => {
                    self.others.insert(seq);
                }
            },
        }
    }

    pub fn remove(&mut self, seq: u64, fields: &serde_json::Map<String, Value>) {
        match self.path.get(fields) {
            None => {
                self.missing.remove(&seq);
            }
            Some(v) => match IndexKey::of(v) {
                Some(k) => {
                    if let Some(set) = self.keys.get_mut(&k) {
                        set.remove(&seq);
                        if set.is_empty() {
                            self.keys.remove(&k);
                        }
                    }
                }
                None => {
                    self.others.remove(&seq);
                }
            },
        }
    }

    /// Number of distinct scalar values.
    pub fn distinct(&self) -> usize {
        self.keys.len()
    }

    /// Candidates for one condition item on this path, or `None` when the index cannot narrow
    /// the operator (the executor then scans).
    pub fn candidates(&self, item: &Item) -> Option<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        match item.op {
            Operator::Equal => self.equal_into(&item.value, &mut out),
            Operator::In => {
                for v in item.value.as_array()? {
                    self.equal_into(v, &mut out);
                }
            }
            Operator::Greater
            | Operator::GreaterOrEqual
            | Operator::Less
            | Operator::LessOrEqual => {
                let key = IndexKey::of(&item.value)?;
                let (lo, hi) = match item.op {
                    Operator::Greater => (Bound::Excluded(&key), Bound::Unbounded),
                    Operator::GreaterOrEqual => (Bound::Included(&key), Bound::Unbounded),
                    Operator::Less => (Bound::Unbounded, Bound::Excluded(&key)),
                    _ => (Bound::Unbounded, Bound::Included(&key)),
                };
                for (k, set) in self.keys.range::<IndexKey, _>((lo, hi)) {
                    if k.same_class(&key) {
                        out.extend(set);
                    }
                }
            }
            Operator::StartsWith => {
                let prefix = item.value.as_str()?;
                let start = IndexKey::Str(prefix.into());
                for (k, set) in self.keys.range(start..) {
                    match k {
                        IndexKey::Str(s) if s.starts_with(prefix) => out.extend(set),
                        _ => break,
                    }
                }
            }
            Operator::Exists if item.value == Value::Bool(false) => out.extend(&self.missing),
            _ => return None,
        }
        Some(out)
    }

    fn equal_into(&self, v: &Value, out: &mut BTreeSet<u64>) {
        match IndexKey::of(v) {
            Some(k) => {
                if let Some(set) = self.keys.get(&k) {
                    out.extend(set);
                }
                if k == IndexKey::Null {
                    out.extend(&self.missing);
                }
            }
            None => out.extend(&self.others),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(op: &str, v: Value) -> Item {
        let g = crate::query::Group::parse(
            &json!({"items": [{"key": "n", "operator": op, "value": v}]}),
        )
        .unwrap();
        g.items[0].clone()
    }

    #[test]
    fn lookups_are_supersets_of_matches() {
        let objs = [
            json!({"n": 1}),
            json!({"n": 2.0}),
            json!({"n": "2"}),
            json!({}),
            json!({"n": [2]}),
            json!({"n": null}),
            json!({"n": 3}),
            json!({"n": "abc"}),
            json!({"n": true}),
        ];
        let mut idx = FieldIndex::new(Path::parse("n").unwrap());
        for (i, o) in objs.iter().enumerate() {
            idx.insert(i as u64, o.as_object().unwrap());
        }
        let probes = [
            ("EQUAL", json!(2)),
            ("EQUAL", json!(null)),
            ("EQUAL", json!([2])),
            ("IN", json!([1, "2"])),
            ("GREATER", json!(1)),
            ("LESS_OR_EQUAL", json!(2)),
            ("GREATER", json!("a")),
            ("STARTS_WITH", json!("ab")),
            ("EXISTS", json!(false)),
        ];
        for (op, v) in probes {
            let it = item(op, v.clone());
            let got = idx.candidates(&it).unwrap();
            for (i, o) in objs.iter().enumerate() {
                if it.matches(o.as_object().unwrap()) {
                    assert!(got.contains(&(i as u64)), "{op} {v}: object {o} missing");
                }
            }
        }
        idx.remove(1, objs[1].as_object().unwrap());
        assert!(!idx
            .candidates(&item("EQUAL", json!(2)))
            .unwrap()
            .contains(&1));
    }
}
