//! A stored object: its fields and its encoded forms, made once when it is written.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value};

/// One version of one object. Immutable: a write makes a new `Record`, so readers hold an
/// `Arc` without locks and replies copy `json` straight into the envelope.
#[derive(Debug)]
pub struct Record {
    pub id: Arc<str>,
    /// The commit sequence number of the CREATE that made the object: its place in the
    /// endpoint's natural order and the tie-breaker of every sort.
    pub created_seq: u64,
    /// The commit sequence number of the write that made this version.
    pub version: u64,
    /// The fields, including `id`, `created`, `updated` and `version`.
    pub fields: Map<String, Value>,
    /// `fields` as JSON, serialized once by the sequencer.
    pub json: Bytes,
    /// `fields` as MessagePack, serialized on first use.
    msgpack: OnceLock<Bytes>,
}

impl Record {
    /// Builds a record; `fields` must already hold the managed fields.
    pub fn new(id: Arc<str>, created_seq: u64, version: u64, fields: Map<String, Value>) -> Record {
        // Serializing a Map of Values cannot fail (keys are strings).
        let json = Bytes::from(serde_json::to_vec(&fields).unwrap_or_default());
        Record {
            id,
            created_seq,
            version,
            fields,
            json,
            msgpack: OnceLock::new(),
        }
    }

    /// A record read back from the log: `json` is `fields` as stored.
    pub fn with_json(
        id: Arc<str>,
        created_seq: u64,
        version: u64,
        fields: Map<String, Value>,
        json: Bytes,
    ) -> Record {
        Record {
            id,
            created_seq,
            version,
            fields,
            json,
            msgpack: OnceLock::new(),
        }
    }

    /// The MessagePack form, made on first use and kept.
    pub fn msgpack(&self) -> Bytes {
        self.msgpack
            .get_or_init(|| Bytes::from(rmp_serde::to_vec(&self.fields).unwrap_or_default()))
            .clone()
    }

    /// The display name used by INDEX: `_name` if it is a non-empty string, else `name` if it
    /// is a string, else the empty string.
    pub fn display_name(&self) -> &str {
        match (self.fields.get("_name"), self.fields.get("name")) {
            (Some(Value::String(n)), _) if !n.is_empty() => n,
            (_, Some(Value::String(n))) => n,
            _ => "",
        }
    }

    pub fn updated(&self) -> &str {
        self.fields
            .get("updated")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}
