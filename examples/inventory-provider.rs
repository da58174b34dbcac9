//! A subsystem that serves `inventory/device` (application `inventory`) from its own memory.
//!
//! ```sh
//! cargo run --release -- serve                               # the hub, in one terminal
//! cargo run --release --example inventory-provider           # this provider, in another
//! curl -s http://127.0.0.1:7340/api/inventory/inventory/device/
//! curl -s -X POST http://127.0.0.1:7340/api/inventory/inventory/device/dev-1 \
//!   --header 'Flow-Request-Method: RUN' --data '{"action": "reboot"}'
//! ```
//!
//! It reaches the hub like the `flowhub` client subcommands: `FLOWHUB_URL` (default
//! `ws://127.0.0.1:7340/ws`), `FLOWHUB_TOKEN` or `FLOWHUB_USER` / `FLOWHUB_PASSWORD`; it waits
//! for the hub if it is not up yet and comes back by itself when the hub restarts.
//!
//! It serves all seven methods on a few seeded devices, per namespace:
//!
//! - LIST with the seed's parameters (sorting, a condition tree, pagination) and `count`;
//! - OPEN, CREATE, UPDATE (a JSON merge patch, with an optional expected `version`), DELETE;
//! - INDEX (one device's search entry, or the catalogue of fields);
//! - RUN with `{"action": "reboot"}` (the device goes `rebooting`, then `up` again a few
//!   seconds later) or `{"action": "ping"}`.
//!
//! Every change is published to the hub (`publish` frames) so that subscribers see it
//! (`flowhub watch inventory/device`). If the hub refuses a publish, the provider says so once
//! and goes on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use flowhub_client::{
    Answer, ChangeKind, Client, ClientConfig, Invocation, Method, Provide, Publish, WeakClient,
};
use serde_json::{json, Map, Value};

const ENDPOINT: &str = "inventory/device";
const APPLICATION: &str = "inventory";

/// One namespace's devices, in creation order.
#[derive(Default)]
struct Devices {
    order: Vec<String>,
    by_id: HashMap<String, Value>,
}

/// The provider's state: its devices and the client it publishes changes through.
struct Inventory {
    namespaces: Mutex<BTreeMap<String, Devices>>,
    /// Grows with every write, like the hub's versions.
    version: AtomicU64,
    /// Weak, because the client holds this handler: a strong handle would keep both alive.
    client: OnceLock<WeakClient>,
    /// Set once the hub has refused a publish, so the log says it once.
    publish_refused: AtomicBool,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Inventory {
    fn seeded() -> Inventory {
        let inv = Inventory {
            namespaces: Mutex::default(),
            version: AtomicU64::new(0),
            client: OnceLock::new(),
            publish_refused: AtomicBool::new(false),
        };
        for (id, name, site, model) in [
            ("dev-1", "5128v1.3 (Core-MGNT-switch)", "Envik", "switch"),
            ("dev-2", "Edge router north", "Envik", "router"),
            ("dev-3", "Access point lobby", "Götefred", "access-point"),
        ] {
            let data =
                json!({"id": id, "name": name, "site": site, "model": model, "status": "up"});
            let Value::Object(data) = data else {
                unreachable!("a JSON object literal")
            };
            let _ = inv.create("", None, data);
        }
        inv
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Devices>> {
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the managed fields first, like the hub does.
    fn stamp(&self, id: &str, created: &str, fields: Map<String, Value>) -> Value {
        let mut obj = Map::new();
        obj.insert("id".into(), json!(id));
        obj.insert("created".into(), json!(created));
        obj.insert("updated".into(), json!(now()));
        obj.insert(
            "version".into(),
            json!(self.version.fetch_add(1, Ordering::Relaxed) + 1),
        );
        for (k, v) in fields {
            if !matches!(k.as_str(), "id" | "created" | "updated" | "version") {
                obj.insert(k, v);
            }
        }
        Value::Object(obj)
    }

    fn create(
        &self,
        ns: &str,
        objectid: Option<&str>,
        data: Map<String, Value>,
    ) -> Result<Value, Answer> {
        let id = match (objectid, data.get("id")) {
            (Some(a), Some(Value::String(b))) if a != b => {
                return Err(invalid(format!("objectid {a:?} and data.id {b:?} differ")))
            }
            (Some(a), _) => a.to_string(),
            (None, Some(Value::String(b))) => b.clone(),
            (None, None | Some(Value::Null)) => uuid::Uuid::new_v4().to_string(),
            (None, Some(_)) => return Err(invalid("data.id must be a string")),
        };
        let mut namespaces = self.lock();
        let devices = namespaces.entry(ns.to_string()).or_default();
        if devices.by_id.contains_key(&id) {
            return Err(Answer::error(
                "ALREADY_EXISTS",
                format!("an object with id {id:?} already exists"),
            ));
        }
        let obj = self.stamp(&id, &now(), data);
        devices.order.push(id.clone());
        devices.by_id.insert(id, obj.clone());
        Ok(obj)
    }

    fn open(&self, ns: &str, id: &str) -> Result<Value, Answer> {
        self.lock()
            .get(ns)
            .and_then(|d| d.by_id.get(id))
            .cloned()
            .ok_or_else(not_found)
    }

    fn update(
        &self,
        ns: &str,
        id: &str,
        patch: &Value,
        expected: Option<u64>,
    ) -> Result<Value, Answer> {
        let mut namespaces = self.lock();
        let current = namespaces
            .get_mut(ns)
            .and_then(|d| d.by_id.get_mut(id))
            .ok_or_else(not_found)?;
        check_version(current, expected)?;
        let mut merged = current.clone();
        merge_patch(&mut merged, patch);
        let Value::Object(fields) = merged else {
            unreachable!("merging an object patch into an object gives an object")
        };
        let created = current["created"].as_str().unwrap_or_default().to_string();
        *current = self.stamp(id, &created, fields);
        Ok(current.clone())
    }

    fn delete(&self, ns: &str, id: &str, expected: Option<u64>) -> Result<Value, Answer> {
        let mut namespaces = self.lock();
        let devices = namespaces.get_mut(ns).ok_or_else(not_found)?;
        check_version(devices.by_id.get(id).ok_or_else(not_found)?, expected)?;
        devices.order.retain(|o| o != id);
        devices.by_id.remove(id).ok_or_else(not_found)
    }

    fn list(&self, ns: &str, params: &Map<String, Value>) -> Result<Answer, Answer> {
        let query = ListQuery::parse(params)?;
        let namespaces = self.lock();
        let mut matches: Vec<&Value> = match namespaces.get(ns) {
            Some(d) => d
                .order
                .iter()
                .filter_map(|id| d.by_id.get(id))
                .filter(|o| query.condition.as_ref().is_none_or(|c| c.matches(o)))
                .collect(),
            None => Vec::new(),
        };
        let count = matches.len() as u64;
        if let Some((key, desc)) = &query.sort {
            // A stable sort keeps creation order among ties, also under DESC.
            matches.sort_by(|a, b| {
                let o = compare(a.pointer(key), b.pointer(key));
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        let page = matches
            .into_iter()
            .skip(query.from)
            .take(query.size.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Ok(Answer::list(page, count))
    }

    fn index(&self, ns: &str, id: Option<&str>) -> Result<Value, Answer> {
        if let Some(id) = id {
            let obj = self.open(ns, id)?;
            return Ok(
                json!({"id": id, "_name": obj["name"], "version": obj["version"],
                             "updated": obj["updated"], "terms": {}}),
            );
        }
        let namespaces = self.lock();
        let mut fields: BTreeMap<String, u64> = BTreeMap::new();
        let mut count = 0;
        if let Some(d) = namespaces.get(ns) {
            for obj in d.by_id.values() {
                count += 1;
                for k in obj.as_object().into_iter().flat_map(|o| o.keys()) {
                    *fields.entry(k.clone()).or_default() += 1;
                }
            }
        }
        let fields: Vec<Value> = fields
            .into_iter()
            .map(|(field, count)| json!({"field": field, "count": count, "indexed": false}))
            .collect();
        Ok(json!({"endpoint": ENDPOINT, "namespace": ns, "count": count, "fields": fields}))
    }

    async fn run(self: &Arc<Self>, inv: &Invocation) -> Result<Value, Answer> {
        let id = inv
            .objectid
            .as_deref()
            .ok_or_else(|| invalid("RUN needs an objectid"))?;
        let device = self.open(&inv.namespace, id)?;
        let action = inv
            .data
            .as_ref()
            .and_then(|d| d.get("action"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(r#"RUN takes {"action": "reboot"} or {"action": "ping"}"#))?;
        match action {
            "reboot" => {
                let updated =
                    self.update(&inv.namespace, id, &json!({"status": "rebooting"}), None)?;
                self.publish(ChangeKind::Update, &inv.namespace, id, &updated)
                    .await;
                // The device comes back a little later; subscribers see that change too.
                let this = self.clone();
                let (ns, id2) = (inv.namespace.clone(), id.to_string());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if let Ok(up) = this.update(&ns, &id2, &json!({"status": "up"}), None) {
                        this.publish(ChangeKind::Update, &ns, &id2, &up).await;
                    }
                });
                Ok(json!({"rebooting": true, "id": id, "name": device["name"],
                          "expectedDowntimeSeconds": 5}))
            }
            "ping" => Ok(json!({"id": id, "reachable": device["status"] == "up",
                                "status": device["status"]})),
            other => Err(Answer::error(
                "UNKNOWN_ACTION",
                format!("device action {other:?} is unknown; actions are reboot and ping"),
            )
            .with_status(400)),
        }
    }

    /// Announces a change to the hub; a hub without `publish` is logged once and ignored.
    async fn publish(&self, kind: ChangeKind, ns: &str, id: &str, state: &Value) {
        let Some(client) = self.client.get().and_then(WeakClient::upgrade) else {
            return;
        };
        let change = Publish::new(kind, ENDPOINT, id)
            .namespace(ns)
            .data(state.clone())
            .timeout(Duration::from_secs(5));
        match client.publish(change).await {
            Ok(_) => tracing::debug!(kind = kind.as_str(), id, "published"),
            Err(e) if e.errorcode().is_some() => {
                if !self.publish_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the hub refused a publish (it may not support publish yet); changes are served but not pushed to subscribers");
                }
            }
            Err(e) => tracing::warn!(error = %e, id, "publishing a change failed"),
        }
    }

    async fn handle(self: Arc<Self>, inv: Invocation) -> Answer {
        let ns = inv.namespace.as_str();
        let id = inv.objectid.as_deref();
        let params = match &inv.parameters {
            Some(Value::Object(p)) => p.clone(),
            _ => Map::new(),
        };
        let result: Result<Answer, Answer> = async {
            Ok(match inv.method {
                Method::List => return self.list(ns, &params),
                Method::Open => Answer::ok(self.open(ns, need_id(id)?)?),
                Method::Index => Answer::ok(self.index(ns, id)?),
                Method::Create => {
                    let data = need_object(&inv.data, "CREATE")?;
                    let created = self.create(ns, id, data)?;
                    let new_id = created["id"].as_str().unwrap_or_default().to_string();
                    self.publish(ChangeKind::Create, ns, &new_id, &created)
                        .await;
                    Answer::ok(created)
                }
                Method::Update => {
                    let id = need_id(id)?;
                    let patch = Value::Object(need_object(&inv.data, "UPDATE")?);
                    let expected = expected_version(&params, Some(&patch))?;
                    let updated = self.update(ns, id, &patch, expected)?;
                    self.publish(ChangeKind::Update, ns, id, &updated).await;
                    Answer::ok(updated)
                }
                Method::Delete => {
                    let id = need_id(id)?;
                    let gone = self.delete(ns, id, expected_version(&params, None)?)?;
                    self.publish(ChangeKind::Delete, ns, id, &gone).await;
                    Answer::ok(gone)
                }
                Method::Run => Answer::ok(self.run(&inv).await?),
            })
        }
        .await;
        let answer = result.unwrap_or_else(|a| a);
        tracing::info!(method = %inv.method, objectid = ?inv.objectid, namespace = ns,
                       ok = matches!(answer, Answer::Success { .. }), "served");
        answer
    }
}

fn invalid(message: impl Into<String>) -> Answer {
    Answer::error("INVALID_REQUEST", message)
}

fn not_found() -> Answer {
    Answer::error("DO_NOT_EXIST", "Object does not exist")
}

fn need_id(id: Option<&str>) -> Result<&str, Answer> {
    id.ok_or_else(|| invalid("this method needs an objectid"))
}

fn need_object(data: &Option<Value>, method: &str) -> Result<Map<String, Value>, Answer> {
    match data {
        Some(Value::Object(o)) => Ok(o.clone()),
        _ => Err(invalid(format!("data of {method} must be a JSON object"))),
    }
}

/// The expected version: the `version` parameter, else `data.version` (UPDATE only).
fn expected_version(
    params: &Map<String, Value>,
    data: Option<&Value>,
) -> Result<Option<u64>, Answer> {
    let v = params
        .get("version")
        .or_else(|| data.and_then(|d| d.get("version")));
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
        Some(Value::String(s)) if s.parse::<u64>().is_ok() => Ok(s.parse().ok()),
        Some(other) => Err(Answer::error(
            "INVALID_PARAMETERS",
            format!("version must be a non-negative integer, not {other}"),
        )),
    }
}

fn check_version(current: &Value, expected: Option<u64>) -> Result<(), Answer> {
    match (expected, current["version"].as_u64()) {
        (Some(e), Some(v)) if e != v => Err(Answer::error(
            "CONFLICT",
            format!("object is at version {v}, not the expected {e}"),
        )),
        _ => Ok(()),
    }
}

/// RFC 7386: `null` removes a field, objects merge recursively, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.shift_remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The part of the seed's LIST parameters this provider supports: one sort key, a condition
/// tree, pagination.
struct ListQuery {
    /// JSON pointer of the sort key, and whether it is descending.
    sort: Option<(String, bool)>,
    condition: Option<Group>,
    from: usize,
    size: Option<usize>,
}

impl ListQuery {
    fn parse(p: &Map<String, Value>) -> Result<ListQuery, Answer> {
        let bad = |m: String| Answer::error("INVALID_PARAMETERS", m);
        let on = |group: &str| match p.get(group) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => p.keys().any(|k| k.starts_with(&format!("{group}."))),
        };
        let sort = match (on("sorting"), p.get("sorting.by")) {
            (true, Some(Value::String(by))) if !by.trim().is_empty() => {
                let desc = match p.get("sorting.order").and_then(Value::as_str) {
                    None => false,
                    Some(o) if o.eq_ignore_ascii_case("ASC") => false,
                    Some(o) if o.eq_ignore_ascii_case("DESC") => true,
                    Some(o) => {
                        return Err(bad(format!("sorting.order must be ASC or DESC, not {o:?}")))
                    }
                };
                Some((pointer(by.trim()), desc))
            }
            _ => None,
        };
        let condition = match (on("condition"), p.get("condition.values")) {
            (true, Some(Value::String(text))) => Some(
                serde_json::from_str(text)
                    .map_err(|e| bad(format!("condition.values is not valid JSON: {e}")))
                    .and_then(|v| Group::parse(&v).map_err(bad))?,
            ),
            (true, Some(v)) => Some(Group::parse(v).map_err(bad)?),
            _ => None,
        };
        let number = |key: &str| -> Result<Option<usize>, Answer> {
            match p.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64().map(|n| n as usize)),
                Some(Value::String(s)) if s.parse::<usize>().is_ok() => Ok(s.parse().ok()),
                Some(v) => Err(bad(format!(
                    "{key} must be a non-negative integer, not {v}"
                ))),
            }
        };
        let paging = on("pagination");
        Ok(ListQuery {
            sort,
            condition,
            from: if paging {
                number("pagination.from")?.unwrap_or(0)
            } else {
                0
            },
            size: if paging {
                number("pagination.size")?
            } else {
                None
            },
        })
    }
}

/// `a.b` → `/a/b`.
fn pointer(path: &str) -> String {
    path.split('.').fold(String::new(), |mut p, seg| {
        p.push('/');
        p.push_str(seg);
        p
    })
}

/// A condition group: items and subgroups joined by AND or OR.
struct Group {
    or: bool,
    items: Vec<(String, String, Value)>,
    subgroups: Vec<Group>,
}

impl Group {
    fn parse(v: &Value) -> Result<Group, String> {
        let obj = v.as_object().ok_or("condition.values must be an object")?;
        let or = match obj.get("logic").and_then(Value::as_str) {
            None => false,
            Some(l) if l.eq_ignore_ascii_case("AND") => false,
            Some(l) if l.eq_ignore_ascii_case("OR") => true,
            Some(l) => return Err(format!("logic must be \"AND\" or \"OR\", not {l:?}")),
        };
        let mut items = Vec::new();
        for item in obj
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = item["key"]
                .as_str()
                .ok_or("an item's key must be a string")?;
            let op = item["operator"]
                .as_str()
                .ok_or("an item's operator must be a string")?
                .trim()
                .to_ascii_uppercase();
            if !matches!(
                op.as_str(),
                "EQUAL" | "NOT_EQUAL" | "CONTAINS" | "STARTS_WITH" | "GREATER" | "LESS" | "IN"
            ) {
                return Err(format!("operator {op:?} is not supported by this provider"));
            }
            items.push((
                pointer(key),
                op,
                item.get("value").cloned().unwrap_or(Value::Null),
            ));
        }
        let subgroups = obj
            .get("subgroups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(Group::parse)
            .collect::<Result<_, _>>()?;
        Ok(Group {
            or,
            items,
            subgroups,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let mut results = self
            .items
            .iter()
            .map(|(key, op, value)| {
                let field = obj.pointer(key);
                match op.as_str() {
                    "EQUAL" => field.unwrap_or(&Value::Null) == value,
                    "NOT_EQUAL" => field.unwrap_or(&Value::Null) != value,
                    "CONTAINS" => match (field, value) {
                        (Some(Value::String(f)), Value::String(v)) => f.contains(v.as_str()),
                        (Some(Value::Array(a)), v) => a.contains(v),
                        _ => false,
                    },
                    "STARTS_WITH" => matches!((field, value),
                        (Some(Value::String(f)), Value::String(v)) if f.starts_with(v.as_str())),
                    "GREATER" => comparable(field, value) && compare(field, Some(value)).is_gt(),
                    "LESS" => comparable(field, value) && compare(field, Some(value)).is_lt(),
                    _ => value
                        .as_array()
                        .is_some_and(|vs| vs.contains(field.unwrap_or(&Value::Null))),
                }
            })
            .chain(self.subgroups.iter().map(|g| g.matches(obj)));
        if self.or {
            results.any(|r| r)
        } else {
            results.all(|r| r)
        }
    }
}

fn comparable(field: Option<&Value>, value: &Value) -> bool {
    matches!(
        (field, value),
        (Some(Value::Number(_)), Value::Number(_)) | (Some(Value::String(_)), Value::String(_))
    )
}

/// Missing < null < booleans < numbers < strings < anything else, as in the hub's order.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None => 0,
            Some(Value::Null) => 1,
            Some(Value::Bool(_)) => 2,
            Some(Value::Number(_)) => 3,
            Some(Value::String(_)) => 4,
            Some(_) => 5,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(std::cmp::Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Ctrl-C, or SIGTERM from a service manager.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let config = ClientConfig::from_env()?.with_wait_for_hub(true);
    tracing::info!(url = %config.url, "connecting to the hub");
    let client = Client::connect(config).await?;

    let inventory = Arc::new(Inventory::seeded());
    let _ = inventory.client.set(client.downgrade());
    let state = inventory.clone();
    let reply = client
        .provide(
            Provide::new(ENDPOINT)
                .application(APPLICATION)
                .methods(Method::ALL),
            move |inv: Invocation| state.clone().handle(inv),
        )
        .await?;
    tracing::info!(endpoint = ENDPOINT, application = APPLICATION, providers = %reply.data["providers"],
                   "serving; try: curl -s http://127.0.0.1:7340/api/inventory/inventory/device/");

    stop_signal().await?;
    tracing::info!("stopping");
    if let Err(e) = client.unprovide(ENDPOINT).await {
        tracing::warn!(error = %e, "unprovide failed");
    }
    client.close().await;
    Ok(())
}
