//! Reading fields straight out of stored JSON text, without building a tree.
//!
//! Records are kept as the JSON text they are served as; a condition, a sort key or an index
//! looks a field up by scanning that text: keys are compared in place, values not asked for
//! are skipped, and a scalar comes back borrowed (a string without escapes is not even
//! copied). Only an array or an object that a query reaches is parsed into a tree.
//!
//! The text is the hub's own serialization (compact, valid), but the scanner never trusts it:
//! anything unexpected makes a lookup answer "missing", never panic.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::path::Path;

/// A field's value as a query sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonRef<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    /// An array or an object, as a tree.
    Container(Cow<'a, Value>),
}

impl<'a> JsonRef<'a> {
    /// A view of a tree value.
    pub fn of(v: &'a Value) -> JsonRef<'a> {
        match v {
            Value::Null => JsonRef::Null,
            Value::Bool(b) => JsonRef::Bool(*b),
            Value::Number(n) => JsonRef::Number(n.clone()),
            Value::String(s) => JsonRef::Str(Cow::Borrowed(s)),
            other => JsonRef::Container(Cow::Borrowed(other)),
        }
    }

    /// The value as a tree.
    pub fn to_value(&self) -> Value {
        match self {
            JsonRef::Null => Value::Null,
            JsonRef::Bool(b) => Value::Bool(*b),
            JsonRef::Number(n) => Value::Number(n.clone()),
            JsonRef::Str(s) => Value::String(s.to_string()),
            JsonRef::Container(v) => v.as_ref().clone(),
        }
    }

    /// The JSON type's name, as the INDEX catalogue counts it.
    pub fn type_name(&self) -> &'static str {
        match self {
            JsonRef::Null => "null",
            JsonRef::Bool(_) => "boolean",
            JsonRef::Number(_) => "number",
            JsonRef::Str(_) => "string",
            JsonRef::Container(v) if v.is_array() => "array",
            JsonRef::Container(_) => "object",
        }
    }
}

/// Anything whose fields a query can look up: a tree object, or an object's JSON text.
pub trait Fields {
    fn field(&self, path: &Path) -> Option<JsonRef<'_>>;
}

impl Fields for Map<String, Value> {
    fn field(&self, path: &Path) -> Option<JsonRef<'_>> {
        path.get(self).map(JsonRef::of)
    }
}

impl Fields for [u8] {
    fn field(&self, path: &Path) -> Option<JsonRef<'_>> {
        get(self, path.segments())
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        if self.peek()? == b {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// The raw text of a string (without quotes) and whether it holds escapes; the cursor
    /// must be on the opening quote.
    fn raw_string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
        let raw = self.s.get(start..self.i)?;
        self.i += 1;
        Some((raw, escaped))
    }

    fn string(&mut self) -> Option<Cow<'a, str>> {
        let (raw, escaped) = self.raw_string()?;
        if escaped {
            // Rare: let serde_json undo the escapes.
            let quoted = self.s.get(self.i - raw.len() - 2..self.i)?;
            serde_json::from_slice::<String>(quoted)
                .ok()
                .map(Cow::Owned)
        } else {
            std::str::from_utf8(raw).ok().map(Cow::Borrowed)
        }
    }

    /// Skips one value of any kind.
    fn skip(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.raw_string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.raw_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                ) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }

    /// Reads one value.
    fn value(&mut self) -> Option<JsonRef<'a>> {
        self.ws();
        let start = self.i;
        match self.peek()? {
            b'"' => self.string().map(JsonRef::Str),
            b'{' | b'[' => {
                self.skip()?;
                let text = self.s.get(start..self.i)?;
                serde_json::from_slice::<Value>(text)
                    .ok()
                    .map(|v| JsonRef::Container(Cow::Owned(v)))
            }
            b't' => self.literal(b"true", JsonRef::Bool(true)),
            b'f' => self.literal(b"false", JsonRef::Bool(false)),
            b'n' => self.literal(b"null", JsonRef::Null),
            _ => {
                self.skip()?;
                number(std::str::from_utf8(self.s.get(start..self.i)?).ok()?).map(JsonRef::Number)
            }
        }
    }

    fn literal(&mut self, word: &[u8], v: JsonRef<'a>) -> Option<JsonRef<'a>> {
        if self.s.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(v)
        } else {
            None
        }
    }

    /// Moves to the value of `key` in the object at the cursor.
    fn member(&mut self, key: &str) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            return None;
        }
        loop {
            let (raw, escaped) = self.raw_string()?;
            let hit = if escaped {
                let quoted = self.s.get(self.i - raw.len() - 2..self.i)?;
                serde_json::from_slice::<String>(quoted)
                    .ok()
                    .is_some_and(|k| k == key)
            } else {
                raw == key.as_bytes()
            };
            self.eat(b':')?;
            if hit {
                return Some(());
            }
            self.skip()?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                _ => return None,
            }
            self.ws();
        }
    }

    /// Moves to element `n` of the array at the cursor.
    fn element(&mut self, n: usize) -> Option<()> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            return None;
        }
        for _ in 0..n {
            self.skip()?;
            self.eat(b',')?;
        }
        Some(())
    }
}

fn number(text: &str) -> Option<Number> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Number::from(i));
    }
    if let Ok(u) = text.parse::<u64>() {
        return Some(Number::from(u));
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

/// The value at `segments` in the JSON text of an object, or `None` when it is missing. A
/// segment that is a non-negative integer also indexes into arrays.
pub fn get<'a>(json: &'a [u8], segments: &[String]) -> Option<JsonRef<'a>> {
    let mut c = Cursor { s: json, i: 0 };
    for seg in segments {
        c.ws();
        match c.peek()? {
            b'{' => c.member(seg)?,
            b'[' => c.element(seg.parse().ok()?)?,
            _ => return None,
        }
    }
    c.value()
}

/// Calls `f` with the dotted path and the value of every field of the object in `json`,
/// descending into nested objects down to `depth` levels (their own entry comes after their
/// fields').
pub fn walk(json: &[u8], depth: usize, f: &mut dyn FnMut(&str, &JsonRef<'_>)) {
    fn fields(
        c: &mut Cursor<'_>,
        prefix: &mut String,
        depth: usize,
        f: &mut dyn FnMut(&str, &JsonRef<'_>),
    ) -> Option<()> {
        c.eat(b'{')?;
        c.ws();
        if c.peek()? == b'}' {
            c.i += 1;
            return Some(());
        }
        loop {
            let key = c.string()?;
            c.eat(b':')?;
            let len = prefix.len();
            if len > 0 {
                prefix.push('.');
            }
            prefix.push_str(&key);
            c.ws();
            if c.peek()? == b'{' && depth > 1 {
                let start = c.i;
                fields(c, prefix, depth - 1, f)?;
                let text = c.s.get(start..c.i)?;
                if let Ok(v) = serde_json::from_slice::<Value>(text) {
                    f(prefix, &JsonRef::Container(Cow::Owned(v)));
                }
            } else {
                let v = c.value()?;
                f(prefix, &v);
            }
            prefix.truncate(len);
            c.ws();
            match c.peek()? {
                b',' => c.i += 1,
                b'}' => {
                    c.i += 1;
                    return Some(());
                }
                _ => return None,
            }
            c.ws();
        }
    }
    let mut c = Cursor { s: json, i: 0 };
    let _ = fields(&mut c, &mut String::new(), depth, f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(v: &Value, path: &str) -> Option<Value> {
        let text = serde_json::to_vec(v).unwrap();
        get(&text, Path::parse(path).unwrap().segments()).map(|r| r.to_value())
    }

    #[test]
    fn lookups_agree_with_the_tree() {
        let v = json!({"a": {"b": [10, {"c": "x\"y\\u00e9"}], "e": {}}, "d": -1.5e3, "big": u64::MAX,
            "s": "Övre Åkerallén", "t": true, "n": null, "esc\"key": 7, "arr": [[1, 2], {"k": [3]}]});
        for p in [
            "a",
            "a.b",
            "a.b.0",
            "a.b.1",
            "a.b.1.c",
            "a.e",
            "d",
            "big",
            "s",
            "t",
            "n",
            "esc\"key",
            "arr.0.1",
            "arr.1.k.0",
            "a.x",
            "d.e",
            "a.b.7",
            "arr.k",
            "missing",
        ] {
            let tree = Path::parse(p).unwrap().get(v.as_object().unwrap()).cloned();
            assert_eq!(at(&v, p), tree, "path {p}");
        }
    }

    #[test]
    fn numbers_read_back_as_written() {
        // Found by the `condition` fuzz target: serde_json's default float parser is
        // best-effort and read this subnormal back one unit off, so a container read from a
        // record's text, and every tree parsed from it, disagreed with the scalar read and
        // with the value written (the `float_roundtrip` feature fixes it).
        let x = 2.198_996_662_601_435_4e-308_f64;
        let v = json!({"x": x, "o": {"x": x}});
        let text = serde_json::to_vec(&v).unwrap();
        let tree: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(tree, v);
        assert_eq!(at(&v, "o"), Some(json!({"x": x})));
        let want: Value = serde_json::from_str("2.1989966626014354e-308").unwrap();
        assert_eq!(want.as_f64(), Some(x));
        let group = crate::query::Group::parse(
            &json!({"items": [{"key": "x", "operator": "EQUAL", "value": want}]}),
        )
        .unwrap();
        assert!(group.matches(text.as_slice()) && group.matches(tree.as_object().unwrap()));
    }

    #[test]
    fn broken_text_is_missing_not_a_panic() {
        let path = Path::parse("a.b").unwrap();
        for text in [
            &b""[..],
            b"{",
            b"{\"a\":",
            b"{\"a\":{\"b\"",
            b"[1,2",
            b"{\"a\":{\"b\":tru}}",
            b"\"",
            b"{\"a\"::1}",
            b"{\"a\\",
        ] {
            let _ = get(text, path.segments());
            walk(text, 3, &mut |_, _| {});
        }
    }

    #[test]
    fn walk_lists_nested_fields() {
        let text =
            serde_json::to_vec(&json!({"a": 1, "b": {"c": "x", "d": {"e": null}}, "f": [1]}))
                .unwrap();
        let mut seen = Vec::new();
        walk(&text, 2, &mut |p, v| {
            seen.push(format!("{p}:{}", v.type_name()))
        });
        assert_eq!(
            seen,
            [
                "a:number",
                "b.c:string",
                "b.d:object",
                "b:object",
                "f:array"
            ]
        );
    }
}
