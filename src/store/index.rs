//! Secondary indexes: for one field path, the objects of a collection by value.
//!
//! Keys follow the order of `query::order` (null < booleans < numbers < strings). An object
//! whose field is an array or an object is kept in `others`, one whose field is missing in
//! `missing`. Postings map creation sequence numbers to the records themselves, so a lookup
//! yields candidates in the endpoint's natural order without another lookup per object.
//!
//! Every lookup returns a superset of the matches, and says when it is exactly the matches
//! (`exact`): the executor tests the whole condition on the candidates unless the lookup was
//! exact for the only constraint, so an index can never change a result, only its cost.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Number, Value};

use super::record::Record;
use crate::query::order::cmp_numbers;
use crate::query::{Fields, Item, JsonRef, Operator, Path};

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

impl IndexKey {
    /// The key of a field read from stored text; `None` for arrays and objects.
    pub fn of_ref(v: &JsonRef<'_>) -> Option<IndexKey> {
        Some(match v {
            JsonRef::Null => IndexKey::Null,
            JsonRef::Bool(b) => IndexKey::Bool(*b),
            JsonRef::Number(n) => IndexKey::Num(n.clone()),
            JsonRef::Str(s) => IndexKey::Str(s.as_ref().into()),
            JsonRef::Container(_) => return None,
        })
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

/// Records by creation sequence number.
pub type Postings = BTreeMap<u64, Arc<Record>>;

/// The result of an index lookup: the union of some posting sets, and whether it is exactly
/// the objects that satisfy the item. The sets are merged only when there are several: the
/// common lookup (one EQUAL) hands its posting set over as it is.
pub struct Candidates<'a> {
    parts: Vec<&'a Postings>,
    pub exact: bool,
}

impl<'a> Candidates<'a> {
    pub fn new() -> Candidates<'a> {
        Candidates {
            parts: Vec::new(),
            exact: true,
        }
    }

    /// At most this many objects (the sets may overlap).
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.is_empty())
    }

    /// The union of `self` and `other`.
    pub fn union(mut self, other: Candidates<'a>) -> Candidates<'a> {
        self.parts.extend(other.parts);
        self.exact &= other.exact;
        self
    }

    /// Whether the object created at `seq` is a candidate.
    pub fn contains(&self, seq: u64) -> bool {
        self.parts.iter().any(|p| p.contains_key(&seq))
    }

    /// The candidates, each once, in creation order.
    pub fn records(self) -> Vec<&'a Arc<Record>> {
        match self.parts.as_slice() {
            [] => Vec::new(),
            [one] => one.values().collect(),
            many => {
                let mut merged: BTreeMap<u64, &'a Arc<Record>> = BTreeMap::new();
                for p in many {
                    merged.extend(p.iter().map(|(k, v)| (*k, v)));
                }
                merged.into_values().collect()
            }
        }
    }
}

impl Default for Candidates<'_> {
    fn default() -> Self {
        Candidates::new()
    }
}

/// The index of one field path in one collection.
#[derive(Debug)]
pub struct FieldIndex {
    pub path: Path,
    keys: BTreeMap<IndexKey, Postings>,
    /// Objects whose field holds an array or an object.
    others: Postings,
    /// Objects without the field.
    missing: Postings,
}

impl FieldIndex {
    pub fn new(path: Path) -> FieldIndex {
        FieldIndex {
            path,
            keys: BTreeMap::new(),
            others: Postings::new(),
            missing: Postings::new(),
        }
    }

    fn slot(&mut self, record: &Record) -> (&mut Postings, Option<IndexKey>) {
        match record.json.field(&self.path) {
            None => (&mut self.missing, None),
            Some(v) => match IndexKey::of_ref(&v) {
                Some(k) => (self.keys.entry(k.clone()).or_default(), Some(k)),
                None => (&mut self.others, None),
            },
        }
    }

    pub fn insert(&mut self, record: &Arc<Record>) {
        self.slot(record)
            .0
            .insert(record.created_seq, record.clone());
    }

    pub fn remove(&mut self, record: &Record) {
        let (postings, key) = self.slot(record);
        postings.remove(&record.created_seq);
        if let Some(k) = key {
            if self.keys.get(&k).is_some_and(BTreeMap::is_empty) {
                self.keys.remove(&k);
            }
        }
    }

    /// The objects grouped by value in the order of `query::order` (ascending, or descending),
    /// each group in creation order; `None` when some objects hold arrays or objects here, whose
    /// order the index does not keep.
    pub fn ordered_groups(
        &self,
        descending: bool,
    ) -> Option<Box<dyn Iterator<Item = &Postings> + '_>> {
        if !self.others.is_empty() {
            return None;
        }
        let missing = std::iter::once(&self.missing);
        Some(if descending {
            Box::new(self.keys.values().rev().chain(missing))
        } else {
            Box::new(missing.chain(self.keys.values()))
        })
    }

    /// Number of distinct scalar values.
    pub fn distinct(&self) -> usize {
        self.keys.len()
    }

    /// Candidates for one condition item on this path, or `None` when the index cannot narrow
    /// the operator (the executor then scans).
    pub fn candidates(&self, item: &Item) -> Option<Candidates<'_>> {
        let mut out = Candidates::new();
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
                // Ranges compare within a type only (numbers with numbers, strings with strings).
                for (k, set) in self.keys.range::<IndexKey, _>((lo, hi)) {
                    if k.same_class(&key) {
                        extend(&mut out, set);
                    }
                }
            }
            Operator::StartsWith => {
                let prefix = item.value.as_str()?;
                let start = IndexKey::Str(prefix.into());
                for (k, set) in self.keys.range(start..) {
                    match k {
                        IndexKey::Str(s) if s.starts_with(prefix) => extend(&mut out, set),
                        _ => break,
                    }
                }
            }
            Operator::Exists if item.value == Value::Bool(false) => extend(&mut out, &self.missing),
            _ => return None,
        }
        Some(out)
    }

    fn equal_into<'a>(&'a self, v: &Value, out: &mut Candidates<'a>) {
        match IndexKey::of(v) {
            Some(k) => {
                if let Some(set) = self.keys.get(&k) {
                    extend(out, set);
                }
                if k == IndexKey::Null {
                    extend(out, &self.missing);
                }
            }
            None => {
                // Arrays and objects are compared in full by the executor.
                extend(out, &self.others);
                out.exact = false;
            }
        }
    }
}

fn extend<'a>(out: &mut Candidates<'a>, set: &'a Postings) {
    if !set.is_empty() {
        out.parts.push(set);
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
        let records: Vec<Arc<Record>> = objs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Arc::new(Record::new(
                    format!("o{i}").into(),
                    i as u64,
                    i as u64,
                    o.as_object().unwrap().clone(),
                ))
            })
            .collect();
        for r in &records {
            idx.insert(r);
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
                    assert!(got.contains(i as u64), "{op} {v}: object {o} missing");
                } else if got.exact {
                    assert!(!got.contains(i as u64), "{op} {v}: exact lookup holds {o}");
                }
            }
        }
        idx.remove(&records[1]);
        let after = idx.candidates(&item("EQUAL", json!(2))).unwrap();
        assert!(!after.contains(1));
    }
}
