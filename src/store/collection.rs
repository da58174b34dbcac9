//! One endpoint's objects in one namespace: the objects, their natural order, the secondary
//! indexes and the field statistics that INDEX reports, and the LIST executor over them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::index::FieldIndex;
use super::record::Record;
use crate::query::{cmp_values, Group, ListQuery, Logic, Path, SortKey};

/// How many objects of each JSON type hold a field, for the INDEX catalogue.
#[derive(Debug, Default, Clone, Copy)]
pub struct TypeCounts {
    pub null: u64,
    pub boolean: u64,
    pub number: u64,
    pub string: u64,
    pub array: u64,
    pub object: u64,
}

impl TypeCounts {
    fn slot(&mut self, v: &Value) -> &mut u64 {
        match v {
            Value::Null => &mut self.null,
            Value::Bool(_) => &mut self.boolean,
            Value::Number(_) => &mut self.number,
            Value::String(_) => &mut self.string,
            Value::Array(_) => &mut self.array,
            Value::Object(_) => &mut self.object,
        }
    }
    pub fn total(&self) -> u64 {
        self.null + self.boolean + self.number + self.string + self.array + self.object
    }
}

/// Nested objects are described down to this depth in the catalogue.
const STATS_DEPTH: usize = 3;

/// A page of LIST results and the number of matches before paging.
pub struct ListResult {
    pub items: Vec<Arc<Record>>,
    pub count: u64,
}

/// The objects of one endpoint in one namespace.
#[derive(Debug, Default)]
pub struct Collection {
    by_id: HashMap<Arc<str>, Arc<Record>>,
    /// Natural order: by creation sequence number.
    by_seq: BTreeMap<u64, Arc<Record>>,
    indexes: Vec<FieldIndex>,
    stats: BTreeMap<String, TypeCounts>,
}

impl Collection {
    pub fn new(indexed: &[Path]) -> Collection {
        let mut c = Collection::default();
        for p in indexed {
            c.add_index(p.clone());
        }
        c
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Record>> {
        self.by_id.get(id)
    }

    pub fn is_indexed(&self, path: &Path) -> bool {
        self.indexes.iter().any(|i| &i.path == path)
    }

    pub fn index(&self, path: &Path) -> Option<&FieldIndex> {
        self.indexes.iter().find(|i| &i.path == path)
    }

    pub fn indexed_paths(&self) -> impl Iterator<Item = &Path> {
        self.indexes.iter().map(|i| &i.path)
    }

    /// Builds an index over the current objects; a no-op when the path is indexed already.
    pub fn add_index(&mut self, path: Path) {
        if self.is_indexed(&path) {
            return;
        }
        let mut idx = FieldIndex::new(path);
        for r in self.by_seq.values() {
            idx.insert(r.created_seq, &r.fields);
        }
        self.indexes.push(idx);
    }

    /// Replaces (or inserts) the object `record.id` with `record`.
    pub fn put(&mut self, record: Arc<Record>) {
        self.remove(&record.id);
        for idx in &mut self.indexes {
            idx.insert(record.created_seq, &record.fields);
        }
        count_fields(&mut self.stats, &record.fields, "", 0, 1);
        self.by_seq.insert(record.created_seq, record.clone());
        self.by_id.insert(record.id.clone(), record);
    }

    /// Removes the object `id`, returning its last version.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Record>> {
        let old = self.by_id.remove(id)?;
        self.by_seq.remove(&old.created_seq);
        for idx in &mut self.indexes {
            idx.remove(old.created_seq, &old.fields);
        }
        count_fields(&mut self.stats, &old.fields, "", 0, -1);
        Some(old)
    }

    /// Field statistics for INDEX: path → counts per type.
    pub fn stats(&self) -> &BTreeMap<String, TypeCounts> {
        &self.stats
    }

    /// Runs a LIST: candidates from the indexes, the full condition on each, sort, page.
    pub fn list(&self, query: &ListQuery) -> ListResult {
        let condition = query.condition.as_ref().filter(|g| !g.is_trivial());
        let mut matches: Vec<&Arc<Record>> = match condition.and_then(|g| self.candidates(g)) {
            Some(seqs) => seqs
                .iter()
                .filter_map(|s| self.by_seq.get(s))
                .filter(|r| condition.is_none_or(|g| g.matches(&r.fields)))
                .collect(),
            None if condition.is_none() && query.sort.is_empty() => {
                // Natural order, nothing to test: take the page straight from the ordered map.
                let count = self.by_seq.len() as u64;
                let size = query.page.size.unwrap_or(usize::MAX);
                let items = self
                    .by_seq
                    .values()
                    .skip(query.page.from)
                    .take(size)
                    .cloned()
                    .collect();
                return ListResult { items, count };
            }
            None => self
                .by_seq
                .values()
                .filter(|r| condition.is_none_or(|g| g.matches(&r.fields)))
                .collect(),
        };
        let count = matches.len() as u64;
        let from = query.page.from.min(matches.len());
        let end = match query.page.size {
            Some(size) => from.saturating_add(size).min(matches.len()),
            None => matches.len(),
        };
        if !query.sort.is_empty() && from < end {
            let cmp = |a: &&Arc<Record>, b: &&Arc<Record>| compare(&query.sort, a, b);
            if end < matches.len() {
                // Only the first `end` matter: partition around them, then sort those.
                matches.select_nth_unstable_by(end - 1, cmp);
                matches.truncate(end);
            }
            matches.sort_unstable_by(cmp);
        }
        let items = if from < end {
            matches[from..end].iter().map(|r| (*r).clone()).collect()
        } else {
            Vec::new()
        };
        ListResult { items, count }
    }

    /// The candidate set of a group from the indexes, or `None` when it needs a scan.
    fn candidates(&self, group: &Group) -> Option<BTreeSet<u64>> {
        let parts = group
            .items
            .iter()
            .map(|item| self.index(&item.path).and_then(|idx| idx.candidates(item)))
            .chain(
                group
                    .subgroups
                    .iter()
                    .filter(|g| !g.is_trivial())
                    .map(|g| self.candidates(g)),
            );
        match group.logic {
            // Any narrowed part bounds an AND: take the smallest.
            Logic::And => parts.flatten().min_by_key(BTreeSet::len),
            // An OR is bounded only when every part is.
            Logic::Or => {
                let mut all = BTreeSet::new();
                for p in parts {
                    all.extend(p?);
                }
                Some(all)
            }
        }
    }
}

/// The sort order of LIST: the keys in turn, then creation order so that pages are stable.
fn compare(keys: &[SortKey], a: &Record, b: &Record) -> Ordering {
    for k in keys {
        let o = cmp_values(k.path.get(&a.fields), k.path.get(&b.fields));
        let o = if k.descending { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.created_seq.cmp(&b.created_seq)
}

fn count_fields(
    stats: &mut BTreeMap<String, TypeCounts>,
    fields: &Map<String, Value>,
    prefix: &str,
    depth: usize,
    delta: i64,
) {
    for (k, v) in fields {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let (Value::Object(inner), true) = (v, depth + 1 < STATS_DEPTH) {
            count_fields(stats, inner, &path, depth + 1, delta);
        }
        let entry = stats.entry(path).or_default();
        let slot = entry.slot(v);
        *slot = slot.saturating_add_signed(delta);
        if entry.total() == 0 {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            stats.remove(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::params::{list_query, normalize};
    use serde_json::json;

    fn coll(indexed: &[&str], objs: &[Value]) -> Collection {
        let paths: Vec<Path> = indexed.iter().map(|p| Path::parse(p).unwrap()).collect();
        let mut c = Collection::new(&paths);
        for (i, o) in objs.iter().enumerate() {
            let mut f = o.as_object().unwrap().clone();
            f.insert("id".into(), json!(format!("o{i}")));
            c.put(Arc::new(Record::new(
                format!("o{i}").into(),
                i as u64 + 1,
                i as u64 + 1,
                f,
            )));
        }
        c
    }

    fn ids(c: &Collection, params: Value) -> (Vec<String>, u64) {
        let q = list_query(&normalize(&params).unwrap()).unwrap();
        let r = c.list(&q);
        (r.items.iter().map(|r| r.id.to_string()).collect(), r.count)
    }

    #[test]
    fn indexed_and_scanned_lists_agree() {
        let objs: Vec<Value> = (0..200)
            .map(|i| json!({"city": (["Envik", "Götefred", "Åby"][i % 3]), "n": (i * 37) % 50, "tag": i % 7}))
            .collect();
        let plain = coll(&[], &objs);
        let indexed = coll(&["city", "n"], &objs);
        let queries = [
            json!({"condition.values": {"items": [{"key": "city", "operator": "EQUAL", "value": "Envik"}]},
                "sorting.by": "n", "pagination.size": 5, "pagination.from": 3}),
            json!({"condition.values": {"logic": "OR", "items": [{"key": "n", "operator": "LESS", "value": 5},
                {"key": "city", "operator": "IN", "value": ["Åby"]}]}, "sorting.by": ["tag", "n"], "sorting.order": ["DESC", "ASC"]}),
            json!({"condition.values": {"subgroups": [{"items": [{"key": "n", "operator": "GREATER_OR_EQUAL", "value": 40}]}],
                "items": [{"key": "tag", "operator": "NOT_EQUAL", "value": 3}]}}),
            json!({"pagination.size": 7, "pagination.from": 190}),
            json!({"sorting.by": "n", "sorting.order": "DESC", "pagination.size": 10, "pagination.from": 195}),
        ];
        for q in queries {
            assert_eq!(ids(&plain, q.clone()), ids(&indexed, q.clone()), "{q}");
        }
        let (page, count) = ids(
            &indexed,
            json!({"condition.values": {"items": [
            {"key": "city", "operator": "EQUAL", "value": "Envik"}]}}),
        );
        assert_eq!(count, 67);
        assert_eq!(page.len(), 67);
    }

    #[test]
    fn pagination_is_stable_under_ties() {
        let objs: Vec<Value> = (0..50).map(|i| json!({"k": i % 2})).collect();
        let c = coll(&[], &objs);
        let mut seen = Vec::new();
        for from in (0..50).step_by(7) {
            let (page, _) = ids(
                &c,
                json!({"sorting.by": "k", "pagination.size": 7, "pagination.from": from}),
            );
            seen.extend(page);
        }
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 50, "every object exactly once across pages");
    }

    #[test]
    fn stats_follow_writes() {
        let mut c = coll(&[], &[json!({"a": 1, "b": {"c": "x"}})]);
        assert_eq!(c.stats()["a"].number, 1);
        assert_eq!(c.stats()["b.c"].string, 1);
        c.remove("o0");
        assert!(c.stats().is_empty());
    }
}
