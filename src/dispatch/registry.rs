//! The endpoint registry: which endpoints exist, who serves them, under which application.
//!
//! Today every endpoint is hub-stored: it exists once its first object was created, and its
//! HTTP application is its first segment. Provided endpoints join this registry when
//! providers register them.

use serde::Serialize;

use crate::store::Store;

/// Who serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Objects kept in the hub's record store.
    Stored,
}

/// One registered endpoint, as the OpenAPI description and `hub/endpoint` show it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointInfo {
    pub endpoint: String,
    pub application: String,
    pub kind: Kind,
}

/// The HTTP application of a hub-stored endpoint: its first segment.
pub fn stored_application(endpoint: &str) -> &str {
    endpoint.split('/').next().unwrap_or(endpoint)
}

/// The registry, over the store's endpoints.
#[derive(Clone)]
pub struct Registry {
    store: Store,
}

impl Registry {
    pub fn new(store: Store) -> Registry {
        Registry { store }
    }

    /// The application of a known endpoint, `None` when the endpoint is unknown. Cheap: it
    /// runs on every call.
    pub fn application<'e>(&self, endpoint: &'e str) -> Option<&'e str> {
        self.store
            .has_endpoint(endpoint)
            .then(|| stored_application(endpoint))
    }

    /// Whether an endpoint of this name is known.
    pub fn contains(&self, endpoint: &str) -> bool {
        self.store.has_endpoint(endpoint)
    }

    /// Every endpoint, sorted by name.
    pub fn all(&self) -> Vec<EndpointInfo> {
        self.store
            .endpoints()
            .into_iter()
            .map(|e| EndpointInfo {
                application: stored_application(&e).to_string(),
                endpoint: e,
                kind: Kind::Stored,
            })
            .collect()
    }
}
