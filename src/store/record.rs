//! A stored object: the JSON text it is served as, and nothing else.
//!
//! The text is the record: replies copy it into the envelope, conditions, sort keys and
//! indexes read fields out of it (`query::json`), and an UPDATE parses it, merges, and writes
//! new text. Keeping one compact form per object (instead of a tree next to its text) keeps
//! memory, and so the time to load a snapshot, small.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::query::json::{get, JsonRef};

/// One version of one object. Immutable: a write makes a new `Record`, so readers hold an
/// `Arc` without locks.
#[derive(Debug)]
pub struct Record {
    pub id: Arc<str>,
    /// The commit sequence number of the CREATE that made the object: its place in the
    /// endpoint's natural order and the tie-breaker of every sort.
    pub created_seq: u64,
    /// The commit sequence number of the write that made this version.
    pub version: u64,
    /// The object as JSON text, including `id`, `created`, `updated` and `version`.
    pub json: Bytes,
    /// The object as MessagePack, made on first use and kept.
    msgpack: OnceLock<Bytes>,
}

impl Record {
    /// Builds a record from its fields (which must already hold the managed ones).
    pub fn new(id: Arc<str>, created_seq: u64, version: u64, fields: Map<String, Value>) -> Record {
        // Serializing a Map of Values cannot fail (keys are strings).
        let json = Bytes::from(serde_json::to_vec(&fields).unwrap_or_default());
        Record::with_json(id, created_seq, version, json)
    }

    /// A record from text the hub wrote itself (a log record or a snapshot entry).
    pub fn with_json(id: Arc<str>, created_seq: u64, version: u64, json: Bytes) -> Record {
        Record {
            id,
            created_seq,
            version,
            json,
            msgpack: OnceLock::new(),
        }
    }

    /// The fields as a tree, for a merge. Text the hub wrote always parses; should it not, the
    /// object is treated as empty and the fault logged.
    pub fn fields(&self) -> Map<String, Value> {
        match serde_json::from_slice::<Map<String, Value>>(&self.json) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(id = %self.id, error = %e, "a stored object's text does not parse");
                Map::new()
            }
        }
    }

    /// The MessagePack form, made on first use and kept.
    pub fn msgpack(&self) -> Bytes {
        self.msgpack
            .get_or_init(|| {
                let value: Value = serde_json::from_slice(&self.json).unwrap_or(Value::Null);
                Bytes::from(rmp_serde::to_vec(&value).unwrap_or_default())
            })
            .clone()
    }

    fn string_field(&self, key: &str) -> Option<String> {
        match get(&self.json, &[key.to_string()]) {
            Some(JsonRef::Str(s)) => Some(s.into_owned()),
            _ => None,
        }
    }

    /// The display name used by INDEX: `_name` if it is a non-empty string, else `name` if it
    /// is a string, else the empty string.
    pub fn display_name(&self) -> String {
        self.string_field("_name")
            .filter(|n| !n.is_empty())
            .or_else(|| self.string_field("name"))
            .unwrap_or_default()
    }

    pub fn updated(&self) -> String {
        self.string_field("updated").unwrap_or_default()
    }
}
