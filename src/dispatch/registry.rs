//! The endpoint registry: which endpoints exist, who serves them, under which application.
//!
//! An endpoint exists when the record store has objects of it (its application is its first
//! segment), when connections provide it (its application is the one they declared), or when
//! it is one of the hub's own system endpoints (`hub/endpoint`).

use std::borrow::Cow;

use serde::Serialize;

use crate::protocol::provider::{MethodSet, Policy};
use crate::protocol::Method;
use crate::router::Router;
use crate::store::Store;

/// The hub's own endpoints, answered by the dispatcher itself.
pub const SYSTEM: [&str; 1] = ["hub/endpoint"];

/// Who serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Objects kept in the hub's record store.
    Stored,
    /// Served by providers (methods none of them serves fall back to the store).
    Provided,
    /// The hub's own.
    System,
}

/// One registered endpoint, as the OpenAPI description and `hub/endpoint` show it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointInfo {
    pub endpoint: String,
    pub application: String,
    pub kind: Kind,
    /// The record store has objects of it.
    pub stored: bool,
    /// Connections providing it.
    pub providers: usize,
    /// The policy of its providers, when it has some.
    #[serde(skip)]
    pub policy: Option<Policy>,
    /// The methods its providers serve.
    #[serde(skip)]
    pub provided_methods: MethodSet,
}

impl EndpointInfo {
    /// The methods a call may use on this endpoint: every store method, RUN only when a
    /// provider serves it; on a system endpoint only what the hub answers.
    pub fn methods(&self) -> Vec<Method> {
        match self.kind {
            Kind::System => vec![Method::List, Method::Open],
            _ => Method::ALL
                .into_iter()
                .filter(|m| *m != Method::Run || self.provided_methods.contains(*m))
                .collect(),
        }
    }
}

/// The HTTP application of a hub-stored endpoint: its first segment.
pub use crate::protocol::request::default_application as stored_application;

/// The registry, over the store's endpoints and the router's.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    router: Router,
}

impl Registry {
    pub fn new(store: Store, router: Router) -> Registry {
        Registry { store, router }
    }

    /// The application of a known endpoint, `None` when the endpoint is unknown. Cheap: it
    /// runs on every call.
    pub fn application<'e>(&self, endpoint: &'e str) -> Option<Cow<'e, str>> {
        if let Some(route) = self.router.lookup(endpoint) {
            return Some(Cow::Owned(route.application.to_string()));
        }
        if SYSTEM.contains(&endpoint)
            || crate::auth::is_auth_endpoint(endpoint)
            || self.store.has_endpoint(endpoint)
        {
            return Some(Cow::Borrowed(stored_application(endpoint)));
        }
        None
    }

    /// Whether an endpoint of this name is known.
    pub fn contains(&self, endpoint: &str) -> bool {
        SYSTEM.contains(&endpoint)
            || crate::auth::is_auth_endpoint(endpoint)
            || self.store.has_endpoint(endpoint)
            || self.router.lookup(endpoint).is_some()
    }

    /// Every endpoint, sorted by name.
    pub fn all(&self) -> Vec<EndpointInfo> {
        let mut all: Vec<EndpointInfo> = SYSTEM
            .iter()
            .map(|e| EndpointInfo {
                endpoint: e.to_string(),
                application: stored_application(e).to_string(),
                kind: Kind::System,
                stored: false,
                providers: 0,
                policy: None,
                provided_methods: MethodSet::EMPTY,
            })
            .collect();
        let provided = self.router.endpoints();
        for p in &provided {
            all.push(EndpointInfo {
                endpoint: p.endpoint.clone(),
                application: p.application.clone(),
                kind: Kind::Provided,
                stored: self.store.has_endpoint(&p.endpoint),
                providers: p.providers,
                policy: Some(p.policy),
                provided_methods: p.methods,
            });
        }
        for e in self.store.endpoints() {
            // The authentication engine keeps its state under reserved names: not endpoints
            // anybody can call.
            if crate::protocol::request::is_reserved(&e) || provided.iter().any(|p| p.endpoint == e)
            {
                continue;
            }
            all.push(EndpointInfo {
                application: stored_application(&e).to_string(),
                endpoint: e,
                kind: Kind::Stored,
                stored: true,
                providers: 0,
                policy: None,
                provided_methods: MethodSet::EMPTY,
            });
        }
        all.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        all
    }
}
