//! Dotted field paths (`address.city`, `segment.0`) and their lookup in an object.

use serde_json::{Map, Value};

/// A field path: segments separated by `.`. A segment that is a non-negative integer also
/// indexes into arrays (`segment.0` is the first element of `segment`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    raw: String,
    segments: Vec<String>,
}

impl Path {
    /// Parses a path; `None` when it is empty or has an empty segment.
    pub fn parse(raw: &str) -> Option<Path> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > 512 {
            return None;
        }
        let segments: Vec<String> = raw.split('.').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) || segments.len() > 32 {
            return None;
        }
        Some(Path {
            raw: raw.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The value at this path, or `None` when some segment is missing.
    pub fn get<'a>(&self, object: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        let mut cur = object.get(first)?;
        for seg in rest {
            cur = match cur {
                Value::Object(o) => o.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_array_lookup() {
        let v = json!({"a": {"b": [10, {"c": "x"}]}, "d": 1});
        let o = v.as_object().unwrap();
        assert_eq!(Path::parse("d").unwrap().get(o), Some(&json!(1)));
        assert_eq!(Path::parse("a.b.0").unwrap().get(o), Some(&json!(10)));
        assert_eq!(Path::parse("a.b.1.c").unwrap().get(o), Some(&json!("x")));
        assert_eq!(Path::parse("a.x").unwrap().get(o), None);
        assert_eq!(Path::parse("d.e").unwrap().get(o), None);
        assert!(Path::parse("a..b").is_none());
        assert!(Path::parse("").is_none());
    }
}
