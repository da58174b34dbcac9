//! One committed change as subscribers receive it, serialized once per form and shared.
//!
//! An event frame is a short per-subscription head (`type`, `subscription`, `kind`, `live`)
//! followed by a tail that is the same for every subscriber who asked for the same encoding
//! and data form (`endpoint`, `namespace`, `objectid`, `version`, `position`, `data`). The
//! tail is built at most once per (JSON | MessagePack) × (object | patch) on first use and
//! kept with the event; a delivery copies the head and the tail into one frame.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::protocol::Encoding;
use crate::store::{Change, ChangeKind, Record};

const HEAD: &str = "{\"type\":\"event\",\"subscription\":";
const KIND: &str = ",\"kind\":\"";
const LIVE: &str = "\",\"live\":\"";

/// How a change looks from a live query: the object came into the result, changed inside
/// it, or left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    Enter,
    Change,
    Leave,
}

impl Live {
    pub fn as_str(self) -> &'static str {
        match self {
            Live::Enter => "enter",
            Live::Change => "change",
            Live::Leave => "leave",
        }
    }
}

/// A committed change on its way to subscribers.
#[derive(Debug)]
pub struct Event {
    /// The position in the hub's change sequence (the commit sequence number).
    pub seq: u64,
    pub kind: ChangeKind,
    /// Published by a provider: the old state is unknown.
    pub published: bool,
    pub endpoint: String,
    pub namespace: String,
    pub id: Arc<str>,
    pub old: Option<Arc<Record>>,
    pub new: Option<Arc<Record>>,
    /// Encoded tails: [json object, json patch, msgpack object, msgpack patch].
    tails: [OnceLock<Tail>; 4],
}

/// The shared part of an event frame.
#[derive(Debug)]
struct Tail {
    /// MessagePack: the map's entries after the head's.
    bytes: Bytes,
    /// JSON: the fields after the head and the closing brace.
    text: String,
    /// MessagePack: how many map entries `bytes` holds.
    entries: u32,
}

impl Event {
    pub fn new(c: Change) -> Event {
        Event {
            seq: c.seq,
            kind: c.kind,
            published: c.published,
            endpoint: c.endpoint,
            namespace: c.namespace,
            id: c.id,
            old: c.old,
            new: c.new,
            tails: Default::default(),
        }
    }

    /// Roughly what keeping the event costs, for the resume window's byte bound.
    pub fn size(&self) -> usize {
        let rec = |r: &Option<Arc<Record>>| r.as_ref().map_or(0, |r| r.json.len() + 64);
        256 + self.endpoint.len() + self.namespace.len() + rec(&self.old) + rec(&self.new)
    }

    /// The object's state the event reports: the new one, or the last one of a delete.
    fn state(&self) -> Option<&Arc<Record>> {
        self.new.as_ref().or(self.old.as_ref())
    }

    /// Builds the frame for one subscription, named by `sid`.
    pub fn frame(
        &self,
        encoding: Encoding,
        sid: &Sid,
        live: Option<Live>,
        patch: bool,
    ) -> (Message, usize) {
        // An object entering a live query is new to the subscriber: it gets it whole.
        let patch = patch && self.kind == ChangeKind::Update && live != Some(Live::Enter);
        let slot = match (encoding, patch) {
            (Encoding::Json, false) => 0,
            (Encoding::Json, true) => 1,
            (Encoding::MsgPack, false) => 2,
            (Encoding::MsgPack, true) => 3,
        };
        let tail = self.tails[slot].get_or_init(|| self.tail(encoding, patch));
        match encoding {
            Encoding::Json => {
                let tail_str = tail.text.as_str();
                let kind = self.kind.as_str();
                let live_str = live.map(Live::as_str);
                // The exact length: a buffer as long as its capacity becomes `Bytes` without
                // a second allocation.
                let len = HEAD.len()
                    + sid.json.len()
                    + KIND.len()
                    + kind.len()
                    + live_str.map_or(0, |l| LIVE.len() + l.len())
                    + 2
                    + tail_str.len();
                let mut s = String::with_capacity(len);
                s.push_str(HEAD);
                s.push_str(&sid.json);
                s.push_str(KIND);
                s.push_str(kind);
                if let Some(l) = live_str {
                    s.push_str(LIVE);
                    s.push_str(l);
                }
                s.push_str("\",");
                s.push_str(tail_str);
                let n = s.len();
                (Message::Text(Utf8Bytes::from(s)), n)
            }
            Encoding::MsgPack => {
                let mut out = Vec::with_capacity(48 + sid.msgpack.len() + tail.bytes.len());
                let head = 3 + u32::from(live.is_some());
                let _ = rmp::encode::write_map_len(&mut out, head + tail.entries);
                let _ = rmp::encode::write_str(&mut out, "type");
                let _ = rmp::encode::write_str(&mut out, "event");
                let _ = rmp::encode::write_str(&mut out, "subscription");
                out.extend_from_slice(&sid.msgpack);
                let _ = rmp::encode::write_str(&mut out, "kind");
                let _ = rmp::encode::write_str(&mut out, self.kind.as_str());
                if let Some(l) = live {
                    let _ = rmp::encode::write_str(&mut out, "live");
                    let _ = rmp::encode::write_str(&mut out, l.as_str());
                }
                out.extend_from_slice(&tail.bytes);
                let n = out.len();
                (Message::Binary(Bytes::from(out)), n)
            }
        }
    }

    /// The data as a merge patch (UPDATE only): RFC 7386 from the old state to the new.
    fn patch_value(&self) -> Value {
        match (&self.old, &self.new) {
            (Some(old), Some(new)) => Value::Object(diff(&old.fields(), &new.fields())),
            (_, Some(new)) => Value::Object(new.fields()),
            _ => Value::Null,
        }
    }

    fn tail(&self, encoding: Encoding, patch: bool) -> Tail {
        match encoding {
            Encoding::Json => {
                let mut out = Vec::with_capacity(128 + self.state().map_or(0, |r| r.json.len()));
                out.extend_from_slice(b"\"endpoint\":");
                push_json_str(&mut out, &self.endpoint);
                out.extend_from_slice(b",\"namespace\":");
                push_json_str(&mut out, &self.namespace);
                out.extend_from_slice(b",\"objectid\":");
                push_json_str(&mut out, &self.id);
                out.extend_from_slice(
                    format!(",\"version\":{0},\"position\":{0}", self.seq).as_bytes(),
                );
                if patch {
                    out.extend_from_slice(b",\"patch\":true,\"data\":");
                    let _ = serde_json::to_writer(&mut out, &self.patch_value());
                } else {
                    out.extend_from_slice(b",\"data\":");
                    match self.state() {
                        Some(r) => out.extend_from_slice(&r.json),
                        None => out.extend_from_slice(b"null"),
                    }
                }
                out.push(b'}');
                Tail {
                    bytes: Bytes::new(),
                    // Written from JSON text the hub made and serde_json output only.
                    text: String::from_utf8(out).unwrap_or_else(|_| "\"data\":null}".into()),
                    entries: 0,
                }
            }
            Encoding::MsgPack => {
                let mut out = Vec::with_capacity(128);
                for (k, v) in [
                    ("endpoint", self.endpoint.as_str()),
                    ("namespace", self.namespace.as_str()),
                    ("objectid", &self.id),
                ] {
                    let _ = rmp::encode::write_str(&mut out, k);
                    let _ = rmp::encode::write_str(&mut out, v);
                }
                for k in ["version", "position"] {
                    let _ = rmp::encode::write_str(&mut out, k);
                    let _ = rmp::encode::write_uint(&mut out, self.seq);
                }
                let mut entries = 6; // endpoint, namespace, objectid, version, position, data
                if patch {
                    let _ = rmp::encode::write_str(&mut out, "patch");
                    let _ = rmp::encode::write_bool(&mut out, true);
                    let _ = rmp::encode::write_str(&mut out, "data");
                    let _ = rmp_serde::encode::write_named(&mut out, &self.patch_value());
                    entries += 1;
                } else {
                    let _ = rmp::encode::write_str(&mut out, "data");
                    match self.state() {
                        Some(r) => out.extend_from_slice(&r.msgpack()),
                        None => {
                            let _ = rmp::encode::write_nil(&mut out);
                        }
                    }
                }
                Tail {
                    bytes: Bytes::from(out),
                    text: String::new(),
                    entries,
                }
            }
        }
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A subscription id as it appears in frames, encoded once.
#[derive(Debug, Clone)]
pub struct Sid {
    /// As a JSON string, quotes included.
    pub json: String,
    /// As a MessagePack str.
    pub msgpack: Vec<u8>,
}

impl Sid {
    pub fn new(id: &str) -> Sid {
        let mut msgpack = Vec::with_capacity(id.len() + 5);
        let _ = rmp::encode::write_str(&mut msgpack, id);
        Sid {
            // Serializing a &str cannot fail.
            json: serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into()),
            msgpack,
        }
    }
}

/// The RFC 7386 merge patch that turns `old` into `new`: changed and added fields with their
/// new values, removed fields as `null`, nested objects as nested patches. (A field whose new
/// value is `null` cannot be expressed by a merge patch; it comes as a removal.)
pub fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in new {
        match (old.get(k), v) {
            (Some(o), v) if o == v => {}
            (Some(Value::Object(o)), Value::Object(n)) => {
                out.insert(k.clone(), Value::Object(diff(o, n)));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::merge::merge_patch;
    use serde_json::json;

    #[test]
    fn a_diff_applied_as_a_merge_patch_gives_the_new_state() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1], "gone": true});
        let new = json!({"a": 1, "b": {"c": 5, "d": 3, "x": "y"}, "e": [2], "added": 1});
        let p = diff(old.as_object().unwrap(), new.as_object().unwrap());
        assert_eq!(
            Value::Object(p.clone()),
            json!({"b": {"c": 5, "x": "y"}, "e": [2], "added": 1, "gone": null})
        );
        let mut t = old.as_object().unwrap().clone();
        merge_patch(&mut t, &p);
        assert_eq!(Value::Object(t), new);
    }

    fn record(v: Value, version: u64) -> Arc<Record> {
        let fields = v.as_object().unwrap().clone();
        Arc::new(Record::new("o1".into(), 1, version, fields))
    }

    #[test]
    fn frames_in_both_encodings_decode_to_the_same_event() {
        let ev = Event::new(Change {
            seq: 9,
            kind: ChangeKind::Update,
            published: false,
            endpoint: "a/b".into(),
            namespace: "t".into(),
            id: "o1".into(),
            old: Some(record(json!({"id": "o1", "n": 1}), 4)),
            new: Some(record(json!({"id": "o1", "n": 2}), 9)),
        });
        let sid = Sid::new("s\"1");
        for patch in [false, true] {
            let (m, _) = ev.frame(Encoding::Json, &sid, Some(Live::Change), patch);
            let Message::Text(t) = m else { panic!("text") };
            let a: Value = serde_json::from_str(&t).unwrap();
            let (m, _) = ev.frame(Encoding::MsgPack, &sid, Some(Live::Change), patch);
            let Message::Binary(b) = m else {
                panic!("binary")
            };
            let b: Value = rmp_serde::from_slice(&b).unwrap();
            assert_eq!(a, b);
            assert_eq!(a["subscription"], "s\"1");
            assert_eq!(a["live"], "change");
            assert_eq!(a["position"], 9);
            let want = if patch {
                json!({"n": 2})
            } else {
                json!({"id": "o1", "n": 2})
            };
            assert_eq!(a["data"], want, "{a}");
        }
    }
}
