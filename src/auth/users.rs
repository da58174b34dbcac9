//! Users: name, roles, namespaces and an Argon2id password hash.
//!
//! Users are objects of the reserved store endpoint `auth/user` (default namespace, id = the
//! user name), written through the sequencer and the log like every other object, so they
//! survive restarts, backups and snapshots. The stored object holds the PHC string under
//! `password_hash`; [`User::public`] is the only view that leaves the hub, and it has no hash.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::protocol::FlowError;
use crate::store::Record;

/// The store endpoint users are kept under.
pub const ENDPOINT: &str = "auth/user";

/// One user, as cached from its stored object.
#[derive(Debug, Clone)]
pub struct User {
    pub name: Arc<str>,
    pub roles: Vec<String>,
    /// The namespaces that `$own` in a grant stands for.
    pub namespaces: Vec<String>,
    /// The PHC string; never leaves the hub.
    pub phc: Arc<str>,
    /// The stored object's version: a newer write replaces an older one in the cache, never
    /// the reverse.
    pub version: u64,
    pub created: Value,
    pub updated: Value,
}

impl User {
    /// Reads a stored `auth/user` object.
    pub fn from_record(r: &Record) -> Option<User> {
        let f = r.fields();
        Some(User {
            name: r.id.clone(),
            roles: strings(f.get("roles")),
            namespaces: strings(f.get("namespaces")),
            phc: f.get("password_hash")?.as_str()?.into(),
            version: r.version,
            created: f.get("created").cloned().unwrap_or(Value::Null),
            updated: f.get("updated").cloned().unwrap_or(Value::Null),
        })
    }

    /// The user as `auth/user` shows it: no password hash.
    pub fn public(&self) -> Map<String, Value> {
        let v = json!({
            "id": &*self.name,
            "username": &*self.name,
            "roles": self.roles,
            "namespaces": self.namespaces,
            "created": self.created,
            "updated": self.updated,
            "version": self.version,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// User names: 1 to 64 letters, digits, `_`, `-`, `.` or `@` (no `:`, which Basic
/// credentials split on).
pub fn validate_username(name: &str) -> Result<(), FlowError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(FlowError::invalid(format!(
            "user name {name:?}: 1 to 64 letters, digits, '_', '-', '.' or '@'"
        )))
    }
}

/// A list of strings from a request's data (`roles`, `namespaces`).
pub fn string_list(data: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, FlowError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| FlowError::invalid(format!("{key} must be a list of strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(FlowError::invalid(format!(
            "{key} must be a list of strings"
        ))),
    }
}
