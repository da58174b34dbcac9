//! The condition tree: parsed from a structured input (so that most inputs are trees), then
//! evaluated against a fuzzed object both as a tree and as its stored JSON text, which must
//! agree (a live query tests one or the other, a LIST the text). Sort keys: the order of
//! field values read from the tree and from the text must agree too.
#![no_main]

use arbitrary::Arbitrary;
use flowhub::query::{cmp_refs, cmp_values, Group, Path};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};

const KEYS: [&str; 12] = [
    "id", "city", "n", "a", "o", "a.0", "a.1", "o.p", "o.p.0", "o.p.1.q", "s", "0",
];

#[derive(Arbitrary, Debug)]
enum Key {
    Known(u8),
    Free(String),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Known(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
            Key::Free(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Known(u8),
    Arr(Vec<J>),
    Obj(Vec<(Key, J)>),
}

impl J {
    /// The value, nested at most `depth` more levels (what a frame's depth limit allows).
    fn value(&self, depth: usize) -> Value {
        match self {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Int(i) => Value::from(*i),
            J::UInt(u) => Value::from(*u),
            J::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            J::Str(s) => Value::String(s.clone()),
            J::Known(i) => ["Envik", "x", "", "Larss Gata", "5"][usize::from(*i) % 5].into(),
            J::Arr(_) | J::Obj(_) if depth == 0 => Value::Null,
            J::Arr(a) => Value::Array(a.iter().map(|j| j.value(depth - 1)).collect()),
            J::Obj(o) => Value::Object(
                o.iter()
                    .map(|(k, j)| (k.text(), j.value(depth - 1)))
                    .collect(),
            ),
        }
    }
}

const OPERATORS: [&str; 20] = [
    "EQUAL",
    "NOT_EQUAL",
    "GREATER",
    "GREATER_OR_EQUAL",
    "LESS",
    "LESS_OR_EQUAL",
    "CONTAINS",
    "NOT_CONTAINS",
    "STARTS_WITH",
    "ENDS_WITH",
    "IN",
    "NOT_IN",
    "EXISTS",
    "=",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "like",
];

#[derive(Arbitrary, Debug)]
struct Item {
    key: Key,
    op: u8,
    value: Option<J>,
}

#[derive(Arbitrary, Debug)]
struct G {
    items: Vec<Item>,
    subgroups: Vec<G>,
    logic: u8,
}

impl G {
    fn value(&self, depth: usize) -> Value {
        let mut g = Map::new();
        if depth == 0 {
            return Value::Object(g);
        }
        match self.logic % 4 {
            0 => {}
            1 => drop(g.insert("logic".into(), "AND".into())),
            2 => drop(g.insert("logic".into(), "or".into())),
            _ => drop(g.insert("logic".into(), "XOR".into())),
        }
        let items = self
            .items
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("key".into(), i.key.text().into());
                m.insert(
                    "operator".into(),
                    OPERATORS[usize::from(i.op) % OPERATORS.len()].into(),
                );
                if let Some(v) = &i.value {
                    m.insert("value".into(), v.value(8));
                }
                Value::Object(m)
            })
            .collect();
        g.insert("items".into(), Value::Array(items));
        if !self.subgroups.is_empty() {
            let subs = self.subgroups.iter().map(|s| s.value(depth - 1)).collect();
            g.insert("subgroups".into(), Value::Array(subs));
        }
        Value::Object(g)
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    condition: G,
    objects: Vec<Vec<(Key, J)>>,
    sort: Vec<Key>,
}

fn object(fields: &[(Key, J)]) -> Map<String, Value> {
    fields.iter().map(|(k, j)| (k.text(), j.value(8))).collect()
}

fuzz_target!(|input: Input| {
    let objects: Vec<Map<String, Value>> = input.objects.iter().map(|o| object(o)).collect();
    let texts: Vec<Vec<u8>> = objects
        .iter()
        .map(|o| serde_json::to_vec(o).expect("an object serializes"))
        .collect();
    // Deeper than the parser's limit of 16 groups now and then.
    let tree = input.condition.value(20);
    if let Ok(group) = Group::parse(&tree) {
        for (obj, text) in objects.iter().zip(&texts) {
            assert_eq!(
                group.matches(obj),
                group.matches(text.as_slice()),
                "tree and text disagree on {} for {tree}",
                String::from_utf8_lossy(text)
            );
        }
    }
    for key in &input.sort {
        let Some(path) = Path::parse(&key.text()) else {
            continue;
        };
        let refs: Vec<_> = texts
            .iter()
            .map(|t| flowhub::query::json::get(t, path.segments()))
            .collect();
        for (i, a) in objects.iter().enumerate() {
            let va = path.get(a);
            if let (Some(tree), Some(text)) = (va, &refs[i]) {
                assert!(
                    flowhub::query::values_equal(tree, &text.to_value()),
                    "{path}: {tree} read from the text as {text:?}"
                );
            }
            assert_eq!(
                va.is_some(),
                refs[i].is_some(),
                "{path} present in one form only"
            );
            for (j, b) in objects.iter().enumerate() {
                let by_tree = cmp_values(va, path.get(b));
                let by_text = cmp_refs(refs[i].as_ref(), refs[j].as_ref());
                assert_eq!(by_tree, by_text, "{path}: sort order differs");
                assert_eq!(
                    by_tree,
                    cmp_values(path.get(b), va).reverse(),
                    "{path}: the order is antisymmetric"
                );
            }
        }
    }
});
