//! One endpoint's objects in one namespace: the objects, their natural order, the secondary
//! indexes and the field statistics that INDEX reports, and the LIST executor over them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::index::{Candidates, FieldIndex};
use super::record::Record;
use crate::query::json::walk;
use crate::query::{cmp_refs, Fields, Group, JsonRef, ListQuery, Logic, Path, SortKey};

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
    fn slot(&mut self, v: &JsonRef<'_>) -> &mut u64 {
        match v.type_name() {
            "null" => &mut self.null,
            "boolean" => &mut self.boolean,
            "number" => &mut self.number,
            "string" => &mut self.string,
            "array" => &mut self.array,
            _ => &mut self.object,
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
    /// Ids are chosen by callers: the hasher is seeded per map (foldhash), fast on short
    /// keys without being predictable from outside.
    by_id: HashMap<Arc<str>, Arc<Record>, foldhash::fast::RandomState>,
    /// Natural order: by creation sequence number.
    by_seq: BTreeMap<u64, Arc<Record>>,
    indexes: Vec<FieldIndex>,
    /// The sequence number of the last change applied here: a read under the collection's
    /// lock reflects exactly the changes up to it (a subscription's snapshot position).
    pub last_seq: u64,
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

    /// Every object, in natural order.
    pub fn records(&self) -> impl Iterator<Item = &Arc<Record>> {
        self.by_seq.values()
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
            idx.insert(r);
        }
        self.indexes.push(idx);
    }

    /// Replaces (or inserts) the object `record.id` with `record`.
    pub fn put(&mut self, record: Arc<Record>) {
        if let Some(old) = self.by_id.insert(record.id.clone(), record.clone()) {
            self.by_seq.remove(&old.created_seq);
            for idx in &mut self.indexes {
                idx.remove(&old);
            }
        }
        for idx in &mut self.indexes {
            idx.insert(&record);
        }
        self.by_seq.insert(record.created_seq, record);
    }

    /// Removes the object `id`, returning its last version.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Record>> {
        let old = self.by_id.remove(id)?;
        self.by_seq.remove(&old.created_seq);
        for idx in &mut self.indexes {
            idx.remove(&old);
        }
        Some(old)
    }

    /// Field statistics for INDEX: path → counts per type, sorted by path. Read from every
    /// object when asked (INDEX is an inspection call; writes pay nothing for it).
    pub fn stats(&self) -> BTreeMap<String, TypeCounts> {
        let mut stats: BTreeMap<String, TypeCounts> = BTreeMap::new();
        for r in self.by_seq.values() {
            walk(&r.json, STATS_DEPTH, &mut |path, v| {
                let entry = match stats.get_mut(path) {
                    Some(e) => e,
                    None => stats.entry(path.to_string()).or_default(),
                };
                *entry.slot(v) += 1;
            });
        }
        stats
    }

    /// Runs a LIST: candidates from the indexes, the full condition on each, sort, page.
    pub fn list(&self, query: &ListQuery) -> ListResult {
        let condition = query.condition.as_ref().filter(|g| !g.is_trivial());
        let test = |r: &&Arc<Record>| condition.is_none_or(|g| g.matches(&r.json[..]));
        let matches: Vec<&Arc<Record>> = match condition.and_then(|g| self.candidates(g)) {
            // An exact lookup for the only constraint needs no second test.
            Some(c) if c.exact => c.records(),
            Some(c) => c.records().into_iter().filter(test).collect(),
            None if condition.is_none() => {
                if query.sort.is_empty() {
                    // Natural order, nothing to test: the page straight from the ordered map.
                    let (from, end) = page_bounds(query, self.by_seq.len());
                    let items = self
                        .by_seq
                        .values()
                        .skip(from)
                        .take(end - from)
                        .cloned()
                        .collect();
                    return ListResult {
                        items,
                        count: self.by_seq.len() as u64,
                    };
                }
                if let Some(result) = self.list_by_index(query) {
                    return result;
                }
                self.by_seq.values().collect()
            }
            None => self.by_seq.values().filter(test).collect(),
        };
        let count = matches.len() as u64;
        let (from, end) = page_bounds(query, matches.len());
        let items = if from >= end {
            Vec::new()
        } else if query.sort.is_empty() {
            matches[from..end].iter().map(|r| (*r).clone()).collect()
        } else {
            sorted_page(&matches, &query.sort, from, end)
        };
        ListResult { items, count }
    }

    /// An unfiltered sorted LIST read in order from the first sort key's index: only the
    /// groups up to the page's end are visited. `None` when that key has no usable index.
    fn list_by_index(&self, query: &ListQuery) -> Option<ListResult> {
        let first = query.sort.first()?;
        let groups = self.index(&first.path)?.ordered_groups(first.descending)?;
        let rest = &query.sort[1..];
        let total = self.by_seq.len();
        let (from, end) = page_bounds(query, total);
        let mut items = Vec::with_capacity(end - from);
        let mut pos = 0;
        for set in groups {
            if pos >= end {
                break;
            }
            let group_end = pos + set.len();
            if group_end > from {
                let members: Vec<&Arc<Record>> = set.values().collect();
                let lo = from.saturating_sub(pos);
                let hi = (end - pos).min(members.len());
                if rest.is_empty() {
                    items.extend(members[lo..hi].iter().map(|r| (*r).clone()));
                } else {
                    items.extend(sorted_page(&members, rest, lo, hi));
                }
            }
            pos = group_end;
        }
        Some(ListResult {
            items,
            count: total as u64,
        })
    }

    /// The candidate set of a group from the indexes, or `None` when it needs a scan. The set
    /// is exact when it holds precisely the objects that satisfy the group.
    fn candidates(&self, group: &Group) -> Option<Candidates<'_>> {
        let constraints =
            group.items.len() + group.subgroups.iter().filter(|g| !g.is_trivial()).count();
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
            // Any narrowed part bounds an AND: take the smallest. It is exact only when it is
            // the group's one constraint.
            Logic::And => parts.flatten().min_by_key(|c| c.len()).map(|mut c| {
                c.exact &= constraints == 1;
                c
            }),
            // An OR is bounded only when every part is, and exact when every part is.
            Logic::Or => {
                let mut all = Candidates::new();
                for p in parts {
                    all = all.union(p?);
                }
                Some(all)
            }
        }
    }
}

/// The first and one-past-last positions of the page among `len` matches.
fn page_bounds(query: &ListQuery, len: usize) -> (usize, usize) {
    let from = query.page.from.min(len);
    let end = match query.page.size {
        Some(size) => from.saturating_add(size).min(len),
        None => len,
    };
    (from, end)
}

/// Positions `from..end` of `matches` in the sort order of LIST: the keys in turn, then
/// creation order, so that pages never overlap or skip. Each key is looked up once per
/// object, and only the first `end` objects are fully sorted.
fn sorted_page(
    matches: &[&Arc<Record>],
    keys: &[SortKey],
    from: usize,
    end: usize,
) -> Vec<Arc<Record>> {
    let k = keys.len();
    let mut values: Vec<Option<JsonRef<'_>>> = Vec::with_capacity(matches.len() * k);
    let mut order: Vec<(u64, usize)> = Vec::with_capacity(matches.len());
    for (i, r) in matches.iter().enumerate() {
        values.extend(keys.iter().map(|key| r.json.field(&key.path)));
        order.push((r.created_seq, i));
    }
    let cmp = |a: &(u64, usize), b: &(u64, usize)| {
        for (j, key) in keys.iter().enumerate() {
            let o = cmp_refs(values[a.1 * k + j].as_ref(), values[b.1 * k + j].as_ref());
            let o = if key.descending { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.0.cmp(&b.0)
    };
    if end < order.len() {
        order.select_nth_unstable_by(end - 1, cmp);
        order.truncate(end);
    }
    order.sort_unstable_by(cmp);
    order[from..end]
        .iter()
        .map(|&(_, i)| matches[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::params::{list_query, normalize};
    use serde_json::{json, Value};

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
            .map(|mut o: Value| {
                if o["tag"] == 4 {
                    o.as_object_mut().unwrap().remove("n");
                }
                o
            })
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
            json!({"sorting.by": "n", "pagination.size": 40, "pagination.from": 0}),
            json!({"sorting.by": ["n", "tag"], "sorting.order": ["DESC", "DESC"], "pagination.size": 13, "pagination.from": 40}),
            json!({"sorting.by": ["city", "n"], "pagination.size": 30, "pagination.from": 60}),
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
        // Objects without the sort field come first in ascending order, last in descending.
        let (asc, _) = ids(&indexed, json!({"sorting.by": "n", "pagination.size": 1}));
        let (desc, _) = ids(
            &indexed,
            json!({"sorting.by": "n", "sorting.order": "DESC"}),
        );
        assert_eq!(asc[0], "o4");
        assert_eq!(desc.last().unwrap(), "o193");
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
