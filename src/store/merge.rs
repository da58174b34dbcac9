//! JSON merge patch (RFC 7386): a `null` in the patch removes a field, an object merges
//! recursively, anything else replaces.
//!
//! [`merge_patch`] works on trees; [`merge_text`] applies a patch to an object's stored text
//! directly: the members the patch leaves alone are copied as the text they are, so an UPDATE
//! of one field costs no parse of the others.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Applies `patch` to `target` in place.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.shift_remove(key);
            }
            Value::Object(p) => match target.get_mut(key) {
                Some(Value::Object(t)) => merge_patch(t, p),
                _ => {
                    let mut fresh = Map::new();
                    merge_patch(&mut fresh, p);
                    target.insert(key.clone(), Value::Object(fresh));
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// A member name of an object's text: borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of an object's text, in order, each value as its text.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members of an object's text, in order: each key (which must have no escapes) and
/// its value's text. One pass over the bytes, skipping values without reading them: the
/// text is the hub's own, written by a JSON serializer. `None` for a key with an escape
/// and for anything that is not an object's text; the parser ([`Members`]) then decides.
fn scan_members(text: &[u8]) -> Option<Vec<(Cow<'_, str>, &[u8])>> {
    let mut members = Vec::with_capacity(8);
    let mut i = skip_ws(text, 0);
    if text.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(text, i + 1);
    if text.get(i) == Some(&b'}') {
        return (skip_ws(text, i + 1) == text.len()).then_some(members);
    }
    loop {
        // The key: a string without escapes.
        if text.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let len = memchr::memchr2(b'"', b'\\', &text[start..])?;
        if text[start + len] != b'"' {
            return None;
        }
        let key = std::str::from_utf8(&text[start..start + len]).ok()?;
        i = skip_ws(text, start + len + 1);
        if text.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(text, i + 1);
        let value_start = i;
        i = skip_value(text, i)?;
        members.push((Cow::Borrowed(key), &text[value_start..i]));
        i = skip_ws(text, i);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b'}') => break,
            _ => return None,
        }
    }
    (skip_ws(text, i + 1) == text.len()).then_some(members)
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while matches!(text.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the string that starts (with its quote) at `i`.
fn skip_string(text: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', &text[i..])?;
        if text[i] == b'"' {
            return Some(i + 1);
        }
        // An escape: the backslash and the byte it escapes (a `\u` escape's hex digits
        // hold no quote or backslash).
        i += 2;
        if i > text.len() {
            return None;
        }
    }
}

/// The end of the value that starts at `i`.
fn skip_value(text: &[u8], i: usize) -> Option<usize> {
    match text.get(i)? {
        b'"' => skip_string(text, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match text.get(j)? {
                    b'"' => {
                        j = skip_string(text, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        // A number, `true`, `false` or `null`: up to the next delimiter.
        _ => {
            let len = text[i..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(text.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

/// `object` (the text of a JSON object, written by the hub) with `patch` applied, then
/// `set` — members the hub manages, such as `updated` and `version` — put in: exactly the
/// text that parsing `object`, [`merge_patch`], inserting `set` in order and writing the
/// tree back would give, with key order kept (a replaced member stays where it was, new ones
/// follow in the patch's order, then any of `set` the object lacked). `None` if `object` is
/// not an object's text.
pub fn merge_text(
    object: &[u8],
    patch: &Map<String, Value>,
    set: &[(&str, Value)],
) -> Option<Vec<u8>> {
    let members: Vec<(Cow<str>, &[u8])> = match scan_members(object) {
        Some(m) => m,
        // A key with escapes (or text the scanner does not expect): the parser reads it.
        None => {
            let Members(members) = serde_json::from_slice(object).ok()?;
            members
                .into_iter()
                .map(|(Key(k), raw)| (k, raw.get().as_bytes()))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(object.len() + 64);
    out.push(b'{');
    let put = |out: &mut Vec<u8>, key: &str, value: Result<&[u8], &Value>| {
        if out.len() > 1 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        match value {
            Ok(raw) => out.extend_from_slice(raw),
            Err(Value::String(s)) => write_str(out, s),
            Err(v) => {
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
    };
    // Linear lookups for the usual few members; a set for large objects.
    let names: Option<std::collections::HashSet<&str>> =
        (members.len() > 16).then(|| members.iter().map(|(k, _)| k.as_ref()).collect());
    let has = |name: &str| match &names {
        Some(set) => set.contains(name),
        None => members.iter().any(|(k, _)| k == name),
    };
    for (key, raw) in &members {
        if let Some((_, v)) = set.iter().find(|(k, _)| *k == key.as_ref()) {
            put(&mut out, key, Err(v));
            continue;
        }
        match patch.get(key.as_ref()) {
            None => put(&mut out, key, Ok(raw)),
            Some(Value::Null) => {}
            Some(Value::Object(p)) => {
                let mut target = match serde_json::from_slice::<Value>(raw) {
                    Ok(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                merge_patch(&mut target, p);
                put(&mut out, key, Err(&Value::Object(target)));
            }
            Some(v) => put(&mut out, key, Err(v)),
        }
    }
    for (key, v) in patch {
        if has(key) || set.iter().any(|(k, _)| k == key) {
            continue;
        }
        match v {
            Value::Null => {}
            Value::Object(p) => {
                let mut fresh = Map::new();
                merge_patch(&mut fresh, p);
                put(&mut out, key, Err(&Value::Object(fresh)));
            }
            v => put(&mut out, key, Err(v)),
        }
    }
    for (key, v) in set {
        if !has(key) {
            put(&mut out, key, Err(v));
        }
    }
    out.push(b'}');
    Some(out)
}

/// Writes `s` as a JSON string, exactly as `serde_json` does. A string with nothing to
/// escape (the usual case) is copied whole: the check is one branch-free pass over its bytes,
/// where the serializer looks up every byte in its escape table and copies in pieces.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let escapes = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escapes {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_scanner_finds_the_members_the_parser_finds() {
        let texts = [
            r#"{}"#,
            r#" { } "#,
            r#"{"a":1}"#,
            r#"{"id":"x","n":-1.5e-3,"t":true,"f":false,"z":null}"#,
            r#"{ "a" : "q\"}{[" , "b":{"c":"}]\\","d":[1,{"e":"\u0022"}]} ,"é":"☃" }"#,
            r#"{"list":[[],{},[{}]],"s":"a\\\"b"}"#,
            "{\"a\":\n1,\r\n\t\"b\":2}",
        ];
        for text in texts {
            let scanned = scan_members(text.as_bytes()).unwrap_or_else(|| panic!("{text}"));
            let Members(parsed) = serde_json::from_str(text).unwrap();
            let parsed: Vec<(String, Vec<u8>)> = parsed
                .into_iter()
                .map(|(Key(k), raw)| (k.into_owned(), raw.get().as_bytes().to_vec()))
                .collect();
            let scanned: Vec<(String, Vec<u8>)> = scanned
                .into_iter()
                .map(|(k, raw)| (k.into_owned(), raw.to_vec()))
                .collect();
            assert_eq!(scanned, parsed, "{text}");
        }
        // Left to the parser: keys with escapes, and what is not one object.
        for text in [
            r#"{"k\"ey":1}"#,
            r#"[1]"#,
            r#"{"a":1"#,
            r#"{"a":1}x"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{"a":"open}"#,
            r#""#,
        ] {
            assert!(scan_members(text.as_bytes()).is_none(), "{text}");
        }
    }

    #[test]
    fn strings_are_written_as_the_serializer_writes_them() {
        for s in [
            "",
            "plain",
            "quote \" and backslash \\",
            "control \u{1} \n \t \u{1f} del \u{7f}",
            "unicode é ☃ 😀 and a slash /",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.as_object().unwrap().clone();
            merge_patch(&mut t, patch.as_object().unwrap());
            assert_eq!(Value::Object(t), want);
        }
    }

    /// The tree way: parse, merge, insert the managed members, write.
    fn by_tree(object: &Value, patch: &Map<String, Value>, set: &[(&str, Value)]) -> Vec<u8> {
        let mut fields = object.as_object().unwrap().clone();
        merge_patch(&mut fields, patch);
        for (k, v) in set {
            fields.insert(k.to_string(), v.clone());
        }
        serde_json::to_vec(&fields).unwrap()
    }

    #[test]
    fn merging_text_gives_exactly_the_text_of_merging_the_tree() {
        let objects = [
            json!({"id": "a", "created": "t0", "updated": "t0", "version": 1, "name": "x", "n": 1.5}),
            json!({"id": "b", "updated": "t0", "version": 2, "nested": {"a": 1, "b": {"c": [1, 2]}}, "list": [1, {"x": null}]}),
            json!({"id": "c", "ke\"y": "v", "été": "☃", "big": 1e300, "neg": -0.0, "int": 18446744073709551615u64}),
            json!({"id": "d"}),
            json!({}),
        ];
        let patches = [
            json!({}),
            json!({"name": "y"}),
            json!({"name": null, "fresh": 3}),
            json!({"nested": {"b": {"c": null, "d": true}, "e": {"f": null}}}),
            json!({"nested": 5, "list": {"now": "an object", "gone": null}}),
            json!({"ke\"y": null, "été": {"x": 1}, "z": [null]}),
            json!({"a": 1, "b": null, "c": {"d": null}, "id": "ignored?"}),
        ];
        let set = [("updated", json!("t1")), ("version", json!(9))];
        for object in &objects {
            let text = serde_json::to_vec(object).unwrap();
            for patch in &patches {
                let patch = patch.as_object().unwrap();
                let want = by_tree(object, patch, &set);
                let got = merge_text(&text, patch, &set).unwrap();
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(want).unwrap(),
                    "object {object} patch {patch:?}"
                );
            }
        }
    }

    #[test]
    fn merging_into_text_that_is_no_object_gives_nothing() {
        let patch = Map::new();
        assert!(merge_text(b"[1]", &patch, &[]).is_none());
        assert!(merge_text(b"{\"a\":", &patch, &[]).is_none());
        assert!(merge_text(b"", &patch, &[]).is_none());
    }
}
