//! The engine's own endpoints (SPEC section 13).
//!
//! - `auth/token`: CREATE issues a token (from `{username, password}` in the data, or for
//!   whoever the call authenticated as, e.g. with `Authorization: Basic`); OPEN `current`
//!   says who you are; LIST shows your tokens (an admin's: everybody's), DELETE revokes one
//!   (`current`, a token id, or the token itself). Tokens are shown by id, never in clear,
//!   except in the one reply that hands a new one out.
//! - `auth/user`: admins manage users (CREATE, UPDATE incl. the password, DELETE, LIST,
//!   OPEN); a user may OPEN itself. Password hashes never leave the hub.
//! - `auth/role`: admins read and change roles at runtime; changes apply to the next call.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::rules::{validate_role_name, Grant, Role, ADMIN};
use super::users::{string_list, validate_username, User, ENDPOINT as USER_ENDPOINT};
use super::{forbidden, tokens, unauthorized, Auth, Credentials, Identity, ROLE_ENDPOINT};
use crate::protocol::params::{list_query, normalize};
use crate::protocol::{ErrorCode, FlowError, Method, Request, Success};
use crate::query::list_objects;
use crate::store::WriteOp;

/// Answers a call on `auth/token`, `auth/user` or `auth/role`. `who` is `None` only for a
/// CREATE on `auth/token` that carried no credentials of its own (it must then bring a user
/// name and password in its data).
pub async fn call(
    auth: &Auth,
    req: &Request,
    who: Option<&Identity>,
    creds: &Credentials,
) -> Result<Success, FlowError> {
    if let Some(app) = req.application.as_deref().filter(|a| *a != "auth") {
        return Err(FlowError::not_found(format!(
            "endpoint {} is served by application auth, not {app}",
            req.endpoint
        )));
    }
    if let Some(id) = &req.objectid {
        crate::protocol::request::validate_objectid(id)?;
    }
    match req.endpoint.as_str() {
        "auth/token" => token(auth, req, who, creds).await,
        "auth/user" => user(auth, req, admin_or_self(who)?).await,
        "auth/role" => role(auth, req, admin(who)?).await,
        other => Err(FlowError::not_found(format!(
            "endpoint {other} does not exist"
        ))),
    }
}

fn admin_or_self(who: Option<&Identity>) -> Result<&Identity, FlowError> {
    who.ok_or_else(|| unauthorized("authentication required"))
}

fn admin(who: Option<&Identity>) -> Result<&Identity, FlowError> {
    let who = who.ok_or_else(|| unauthorized("authentication required"))?;
    if who.is_admin() {
        Ok(who)
    } else {
        Err(forbidden(format!(
            "only admins manage roles; user {:?} is not one",
            who.name().unwrap_or("-")
        )))
    }
}

fn data(req: &Request) -> Result<Map<String, Value>, FlowError> {
    match &req.data {
        Some(Value::Object(o)) => Ok(o.clone()),
        None | Some(Value::Null) => Ok(Map::new()),
        Some(_) => Err(FlowError::invalid(format!(
            "data of {} on {} must be a JSON object",
            req.method, req.endpoint
        ))),
    }
}

fn objectid(req: &Request) -> Result<&str, FlowError> {
    req.objectid.as_deref().ok_or_else(|| {
        FlowError::invalid(format!(
            "{} on {} needs an objectid",
            req.method, req.endpoint
        ))
    })
}

fn string(data: &Map<String, Value>, key: &str) -> Result<Option<String>, FlowError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FlowError::invalid(format!("{key} must be a string"))),
    }
}

/// A LIST over objects the engine built, with the usual parameters.
fn list(req: &Request, objects: Vec<Map<String, Value>>) -> Result<Success, FlowError> {
    let params = match &req.parameters {
        Some(p) => normalize(p)?,
        None => Map::new(),
    };
    let (page, count) = list_objects(objects, &list_query(&params)?);
    Ok(Success {
        data: crate::protocol::Data::Value(Value::Array(
            page.into_iter().map(Value::Object).collect(),
        )),
        count: Some(count as u64),
    })
}

fn not_allowed(req: &Request, allowed: &str) -> FlowError {
    FlowError::invalid(format!(
        "{} answers {allowed}, not {}",
        req.endpoint, req.method
    ))
}

async fn token(
    auth: &Auth,
    req: &Request,
    who: Option<&Identity>,
    creds: &Credentials,
) -> Result<Success, FlowError> {
    match req.method {
        Method::Create => {
            let d = data(req)?;
            let user: Arc<User> = match (string(&d, "username")?, string(&d, "password")?) {
                (Some(name), Some(password)) => {
                    auth.verify_password(&name, &password, creds.peer).await?
                }
                (None, None) => match who.and_then(|w| w.user.clone()) {
                    Some(u) => u,
                    None if who.is_some() => {
                        return Err(FlowError::invalid(
                            "authentication is off (open mode): a token needs a username and password in the data",
                        ))
                    }
                    None => {
                        return Err(unauthorized(
                            "CREATE on auth/token needs credentials: {\"username\", \"password\"} as data, \
                             or Authorization: Basic over HTTP",
                        ))
                    }
                },
                _ => return Err(FlowError::invalid("give both username and password")),
            };
            let (token, entry) = auth.issue_token(&user).await?;
            tracing::info!(user = %user.name, token_id = %&entry.id[..12], "token issued");
            Ok(Success::value(auth.token_reply(
                Some(&token),
                &entry,
                &user,
            )))
        }
        Method::Open => {
            let who = who.ok_or_else(|| unauthorized("authentication required"))?;
            let id = objectid(req)?;
            if id == "current" {
                let Some(user) = &who.user else {
                    return Ok(Success::value(
                        json!({"user": null, "roles": [], "auth": "none"}),
                    ));
                };
                let mut v = json!({
                    "user": &*user.name,
                    "roles": user.roles,
                    "namespaces": user.namespaces,
                });
                if let Some(t) = &who.token {
                    v["id"] = json!(&*t.id);
                    v["issued"] = json!(tokens::rfc3339(t.issued_ms));
                    v["expires"] = json!(tokens::rfc3339(t.expires_ms));
                }
                return Ok(Success::value(v));
            }
            let entry = find_token(auth, id, who)?;
            Ok(Success::value(entry.describe()))
        }
        Method::List => {
            let who = who.ok_or_else(|| unauthorized("authentication required"))?;
            let mut all: Vec<Arc<tokens::TokenEntry>> = auth
                .inner
                .tokens
                .iter()
                .filter(|t| who.is_admin() || Some(&*t.user) == who.name())
                .map(|t| t.clone())
                .collect();
            all.sort_by_key(|t| t.issued_ms);
            let objects = all
                .iter()
                .filter_map(|t| match t.describe() {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
                .collect();
            list(req, objects)
        }
        Method::Delete => {
            let who = who.ok_or_else(|| unauthorized("authentication required"))?;
            let id = objectid(req)?;
            let entry = if id == "current" {
                who.token.clone().ok_or_else(|| {
                    FlowError::invalid("this call was not authenticated with a token")
                })?
            } else {
                find_token(auth, id, who)?
            };
            auth.revoke(&entry.id).await?;
            tracing::info!(user = %entry.user, token_id = %&entry.id[..12], "token revoked");
            Ok(Success::value(json!({"id": &*entry.id, "revoked": true})))
        }
        _ => Err(not_allowed(req, "CREATE, OPEN, LIST and DELETE")),
    }
}

/// A token by id or by the token itself, if `who` may see it (its owner or an admin).
fn find_token(auth: &Auth, id: &str, who: &Identity) -> Result<Arc<tokens::TokenEntry>, FlowError> {
    let id = if id.starts_with(tokens::PREFIX) {
        tokens::token_id(id)
    } else {
        id.to_string()
    };
    let entry = auth
        .inner
        .tokens
        .get(&id)
        .map(|e| e.clone())
        .filter(|t| who.is_admin() || Some(&*t.user) == who.name())
        .ok_or_else(|| FlowError::not_found("no such token"))?;
    Ok(entry)
}

async fn user(auth: &Auth, req: &Request, who: &Identity) -> Result<Success, FlowError> {
    // A user may read itself; everything else is for admins.
    let own = req.method == Method::Open && req.objectid.as_deref() == who.name();
    if !who.is_admin() && !own {
        return Err(forbidden(format!(
            "only admins manage users; user {:?} is not one",
            who.name().unwrap_or("-")
        )));
    }
    match req.method {
        Method::List => {
            let mut users: Vec<Arc<User>> = auth.inner.users.iter().map(|u| u.clone()).collect();
            users.sort_by(|a, b| a.name.cmp(&b.name));
            list(req, users.iter().map(|u| u.public()).collect())
        }
        Method::Open => {
            let u = auth
                .user(objectid(req)?)
                .ok_or_else(|| FlowError::not_found("no such user"))?;
            Ok(Success::value(Value::Object(u.public())))
        }
        Method::Create => {
            let d = data(req)?;
            let name = match (
                req.objectid.clone(),
                string(&d, "username")?,
                string(&d, "id")?,
            ) {
                (Some(a), Some(b), _) | (Some(a), None, Some(b)) if a != b => {
                    return Err(FlowError::invalid("objectid and username differ"))
                }
                (Some(a), _, _) => a,
                (None, Some(b), _) | (None, None, Some(b)) => b,
                (None, None, None) => {
                    return Err(FlowError::invalid("a new user needs a username"))
                }
            };
            validate_username(&name)?;
            let password = string(&d, "password")?
                .ok_or_else(|| FlowError::invalid("a new user needs a password"))?;
            let roles = string_list(&d, "roles")?.unwrap_or_default();
            let namespaces = string_list(&d, "namespaces")?.unwrap_or_default();
            for r in &roles {
                validate_role_name(r)?;
            }
            if auth.user(&name).is_some() {
                return Err(FlowError::new(
                    ErrorCode::AlreadyExists,
                    format!("user {name:?} already exists"),
                ));
            }
            let u = auth.create_user(&name, password, roles, namespaces).await?;
            tracing::info!(user = %u.name, by = who.name().unwrap_or("-"), "user created");
            Ok(Success::value(Value::Object(u.public())))
        }
        Method::Update => {
            let name = objectid(req)?.to_string();
            let d = data(req)?;
            let current = auth
                .user(&name)
                .ok_or_else(|| FlowError::not_found("no such user"))?;
            let mut patch = Map::new();
            if let Some(roles) = string_list(&d, "roles")? {
                for r in &roles {
                    validate_role_name(r)?;
                }
                if current.roles.iter().any(|r| r == ADMIN) && !roles.iter().any(|r| r == ADMIN) {
                    last_admin_check(auth, &name)?;
                }
                patch.insert("roles".into(), json!(roles));
            }
            if let Some(ns) = string_list(&d, "namespaces")? {
                patch.insert("namespaces".into(), json!(ns));
            }
            let new_password = string(&d, "password")?;
            if let Some(p) = &new_password {
                super::password::validate_password(p)?;
                let phc = auth.hasher()?.hash(p.clone()).await?;
                patch.insert("password_hash".into(), json!(phc));
            }
            for k in d.keys() {
                if !matches!(
                    k.as_str(),
                    "roles" | "namespaces" | "password" | "id" | "username" | "version"
                ) {
                    return Err(FlowError::invalid(format!(
                        "auth/user takes roles, namespaces and password, not {k:?}"
                    )));
                }
            }
            let record = auth
                .write(WriteOp::Update {
                    endpoint: USER_ENDPOINT.into(),
                    namespace: String::new(),
                    id: name.clone(),
                    patch,
                    expected: None,
                })
                .await?;
            let u = User::from_record(&record)
                .ok_or_else(|| FlowError::internal("a stored user does not read back"))?;
            let u = auth.cache_user(u);
            if new_password.is_some() {
                // A new password ends every session opened with the old one.
                auth.revoke_user_tokens(&name).await?;
            }
            tracing::info!(user = %name, by = who.name().unwrap_or("-"), password_changed = new_password.is_some(), "user updated");
            Ok(Success::value(Value::Object(u.public())))
        }
        Method::Delete => {
            let name = objectid(req)?.to_string();
            let current = auth
                .user(&name)
                .ok_or_else(|| FlowError::not_found("no such user"))?;
            if current.roles.iter().any(|r| r == ADMIN) {
                last_admin_check(auth, &name)?;
            }
            auth.write(WriteOp::Delete {
                endpoint: USER_ENDPOINT.into(),
                namespace: String::new(),
                id: name.clone(),
                expected: None,
            })
            .await?;
            auth.inner.users.remove(&name);
            auth.changed();
            auth.revoke_user_tokens(&name).await?;
            tracing::info!(user = %name, by = who.name().unwrap_or("-"), "user deleted (its tokens revoked)");
            Ok(Success::value(json!({"id": name, "deleted": true})))
        }
        _ => Err(not_allowed(req, "LIST, OPEN, CREATE, UPDATE and DELETE")),
    }
}

/// Refuses to take the admin role from the last admin (nobody could manage users after).
fn last_admin_check(auth: &Auth, name: &str) -> Result<(), FlowError> {
    let others = auth
        .inner
        .users
        .iter()
        .any(|u| u.key() != name && u.roles.iter().any(|r| r == ADMIN));
    if others {
        Ok(())
    } else {
        Err(FlowError::new(
            ErrorCode::Conflict,
            format!("{name:?} is the last admin; make another admin first"),
        ))
    }
}

/// The names of the roles defined (or redefined) at runtime.
fn runtime_roles(auth: &Auth) -> Vec<String> {
    auth.all_records(ROLE_ENDPOINT)
        .iter()
        .map(|r| r.id.to_string())
        .collect()
}

async fn role(auth: &Auth, req: &Request, who: &Identity) -> Result<Success, FlowError> {
    let runtime = runtime_roles(auth);
    match req.method {
        Method::List => {
            let rules = auth.rules();
            list(
                req,
                super::describe_roles(&rules, &auth.inner.config.roles, &runtime),
            )
        }
        Method::Open => {
            let id = objectid(req)?;
            let rules = auth.rules();
            super::describe_roles(&rules, &auth.inner.config.roles, &runtime)
                .into_iter()
                .find(|r| r.get("id") == Some(&json!(id)))
                .map(|r| Success::value(Value::Object(r)))
                .ok_or_else(|| FlowError::not_found(format!("no role {id:?}")))
        }
        Method::Create | Method::Update => {
            let d = data(req)?;
            let name = match (&req.objectid, string(&d, "name")?.or(string(&d, "id")?)) {
                (Some(a), Some(b)) if *a != b => {
                    return Err(FlowError::invalid("objectid and name differ"))
                }
                (Some(a), _) => a.clone(),
                (None, Some(b)) => b,
                (None, None) => return Err(FlowError::invalid("a role needs a name")),
            };
            let grants: Vec<Grant> = match d.get("grants") {
                Some(g) => serde_json::from_value(g.clone())
                    .map_err(|e| FlowError::invalid(format!("grants: {e}")))?,
                None => {
                    return Err(FlowError::invalid(
                        "a role needs grants (a list, may be empty)",
                    ))
                }
            };
            let role = Role { grants };
            role.validate(&name)?;
            let _serial = auth.inner.role_writes.lock().await;
            let runtime = runtime_roles(auth);
            let exists_runtime = runtime.contains(&name);
            let exists = exists_runtime || auth.inner.config.roles.contains_key(&name);
            if req.method == Method::Create && exists {
                return Err(FlowError::new(
                    ErrorCode::AlreadyExists,
                    format!("role {name:?} exists; UPDATE it"),
                ));
            }
            if req.method == Method::Update && !exists {
                return Err(FlowError::not_found(format!("no role {name:?}")));
            }
            let mut data = Map::new();
            data.insert(
                "grants".into(),
                serde_json::to_value(&role.grants)
                    .map_err(|e| FlowError::internal(e.to_string()))?,
            );
            let op = if exists_runtime {
                WriteOp::Update {
                    endpoint: ROLE_ENDPOINT.into(),
                    namespace: String::new(),
                    id: name.clone(),
                    patch: data,
                    expected: None,
                }
            } else {
                WriteOp::Create {
                    endpoint: ROLE_ENDPOINT.into(),
                    namespace: String::new(),
                    id: Some(name.clone()),
                    data,
                }
            };
            auth.write(op).await?;
            auth.rebuild_rules();
            tracing::info!(role = %name, by = who.name().unwrap_or("-"), "role changed");
            let rules = auth.rules();
            let runtime = vec![name.clone()];
            let shown = super::describe_roles(&rules, &auth.inner.config.roles, &runtime)
                .into_iter()
                .find(|r| r.get("id") == Some(&json!(name)))
                .unwrap_or_default();
            Ok(Success::value(Value::Object(shown)))
        }
        Method::Delete => {
            let name = objectid(req)?.to_string();
            let _serial = auth.inner.role_writes.lock().await;
            let runtime = runtime_roles(auth);
            if !runtime.contains(&name) {
                return Err(if auth.inner.config.roles.contains_key(&name) {
                    FlowError::invalid(format!(
                        "role {name:?} comes from the configuration file; UPDATE it (e.g. with no grants) to change it at runtime"
                    ))
                } else {
                    FlowError::not_found(format!("no role {name:?}"))
                });
            }
            auth.write(WriteOp::Delete {
                endpoint: ROLE_ENDPOINT.into(),
                namespace: String::new(),
                id: name.clone(),
                expected: None,
            })
            .await?;
            auth.rebuild_rules();
            tracing::info!(role = %name, by = who.name().unwrap_or("-"), "role deleted");
            Ok(Success::value(json!({"id": name, "deleted": true})))
        }
        _ => Err(not_allowed(req, "LIST, OPEN, CREATE, UPDATE and DELETE")),
    }
}
