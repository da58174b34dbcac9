//! The hub's own endpoints, answered by the dispatcher from its registry.
//!
//! `hub/endpoint`: LIST gives every endpoint with who serves each method, OPEN one of them by
//! name (SPEC 11.6).

use serde_json::{json, Map, Value};

use super::registry::{EndpointInfo, Registry};
use crate::protocol::params::{list_query, normalize};
use crate::protocol::{FlowError, Method, Request, Success};
use crate::query::list_objects;

/// Answers a call on a system endpoint (`hub/endpoint` is the only one).
pub fn call(registry: &Registry, req: &Request) -> Result<Success, FlowError> {
    let application = super::registry::stored_application(&req.endpoint);
    if let Some(app) = req.application.as_deref().filter(|a| *a != application) {
        return Err(FlowError::not_found(format!(
            "endpoint {} is served by application {application}, not {app}",
            req.endpoint
        )));
    }
    if req
        .objectid
        .as_ref()
        .is_some_and(|id| id.len() > crate::protocol::request::MAX_OBJECTID_LEN)
    {
        return Err(FlowError::invalid("objectid is longer than 200 bytes"));
    }
    match req.method {
        Method::List => {
            let params = match &req.parameters {
                Some(p) => normalize(p)?,
                None => Map::new(),
            };
            let query = list_query(&params)?;
            let objects = registry.all().iter().map(describe).collect();
            let (page, count) = list_objects(objects, &query);
            Ok(Success {
                data: crate::protocol::Data::Value(Value::Array(
                    page.into_iter().map(Value::Object).collect(),
                )),
                count: Some(count as u64),
            })
        }
        Method::Open => {
            let id = req
                .objectid
                .as_deref()
                .ok_or_else(|| FlowError::invalid("OPEN needs an objectid"))?;
            let info = registry
                .all()
                .into_iter()
                .find(|e| e.endpoint == id)
                .ok_or_else(|| FlowError::not_found(format!("Endpoint {id} does not exist")))?;
            Ok(Success::value(Value::Object(describe(&info))))
        }
        m => Err(FlowError::invalid(format!(
            "{} answers LIST and OPEN, not {m}",
            req.endpoint
        ))),
    }
}

/// One endpoint as `hub/endpoint` shows it.
fn describe(e: &EndpointInfo) -> Map<String, Value> {
    let mut methods = Map::new();
    for m in e.methods() {
        let who = if e.kind == super::registry::Kind::System {
            "hub"
        } else if e.provided_methods.contains(m) {
            "provider"
        } else {
            "store"
        };
        methods.insert(m.as_str().into(), json!(who));
    }
    let mut o = Map::new();
    o.insert("id".into(), json!(e.endpoint));
    o.insert("endpoint".into(), json!(e.endpoint));
    o.insert("application".into(), json!(e.application));
    o.insert("kind".into(), json!(e.kind));
    o.insert("stored".into(), json!(e.stored));
    o.insert("providers".into(), json!(e.providers));
    if let Some(p) = e.policy {
        o.insert("policy".into(), json!(p.as_str()));
    }
    o.insert("methods".into(), Value::Object(methods));
    o
}
