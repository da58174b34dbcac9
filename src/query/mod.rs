//! The query language of LIST and (later) live queries: field paths, the condition tree, sort
//! keys, pagination, and the one total order over JSON values.
//!
//! This module is pure: it evaluates conditions and compares values. The protocol parses
//! parameters into these types; the store plans and runs them against its indexes.

pub mod condition;
pub mod json;
pub mod order;
pub mod path;

pub use condition::{Group, Item, Logic, Operator};
pub use json::{Fields, JsonRef};
pub use order::{cmp_refs, cmp_values, ref_equals, values_equal};
pub use path::Path;

/// One sort key: a field path and a direction.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub path: Path,
    pub descending: bool,
}

/// A page of the result: skip `from` matches, return at most `size` (all when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Page {
    pub from: usize,
    pub size: Option<usize>,
}

/// A parsed LIST: filter, then sort, then page. `count` in the reply is the number of matches
/// before paging.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListQuery {
    pub condition: Option<Group>,
    /// Empty: the endpoint's natural order (creation order).
    pub sort: Vec<SortKey>,
    pub page: Page,
}

/// Runs a LIST over plain objects (the hub's own small endpoints, such as `hub/endpoint`):
/// filter, stable sort, page. Returns the page and the number of matches.
pub fn list_objects(
    objects: Vec<serde_json::Map<String, serde_json::Value>>,
    query: &ListQuery,
) -> (Vec<serde_json::Map<String, serde_json::Value>>, usize) {
    let mut matched: Vec<_> = objects
        .into_iter()
        .filter(|o| query.condition.as_ref().is_none_or(|c| c.matches(o)))
        .collect();
    if !query.sort.is_empty() {
        matched.sort_by(|a, b| {
            for key in &query.sort {
                let o = cmp_values(key.path.get(a), key.path.get(b));
                let o = if key.descending { o.reverse() } else { o };
                if o.is_ne() {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let count = matched.len();
    let page = matched
        .into_iter()
        .skip(query.page.from)
        .take(query.page.size.unwrap_or(usize::MAX))
        .collect();
    (page, count)
}
