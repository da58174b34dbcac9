//! Roles and rules: what a user may call, provide and subscribe to.
//!
//! A role is a list of grants. A grant names endpoint patterns, namespace patterns and
//! methods, and says whether it also lets its holder provide the endpoints and subscribe to
//! them. A user holds roles; a request is allowed when one grant of one of the user's roles
//! matches it. Nothing is allowed that no grant names (default deny).
//!
//! Patterns: `*` matches any run of characters (`/` included), so `inventory/*` matches
//! `inventory/device`, and `*` alone matches everything. Namespace patterns also take
//! `$own` (any namespace in the user's `namespaces` list) and `$user` (the namespace named
//! like the user), which is how tenants are kept apart by rules: a role granting `*` in
//! `$own` lets each user reach only its own namespaces. The empty pattern `""` is the
//! default namespace.
//!
//! The built-in role `admin` may do everything, including managing users and roles; it cannot
//! be redefined. Endpoints under `auth/` are never matched by a grant: the authentication
//! engine answers them itself (admins only, except a user's own tokens).

use serde::{Deserialize, Serialize};

use crate::protocol::{FlowError, Method};

/// The built-in role that may do everything.
pub const ADMIN: &str = "admin";

/// One grant of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Endpoint patterns, e.g. `["inventory/*", "address/address"]`.
    pub endpoints: Vec<String>,
    /// Namespace patterns; `["*"]` (every namespace) when left out.
    #[serde(default = "every")]
    pub namespaces: Vec<String>,
    /// Method names or `"*"`; `["*"]` when left out. An empty list grants no call.
    #[serde(default = "every")]
    pub methods: Vec<String>,
    /// May provide (serve) the matching endpoints.
    #[serde(default)]
    pub provide: bool,
    /// May subscribe to the matching endpoints in the matching namespaces.
    #[serde(default)]
    pub subscribe: bool,
}

fn every() -> Vec<String> {
    vec!["*".into()]
}

/// A role: what its holders may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Call(Method),
    Provide,
    Subscribe,
}

impl Action {
    pub fn describe(self) -> String {
        match self {
            Action::Call(m) => m.as_str().to_string(),
            Action::Provide => "provide".into(),
            Action::Subscribe => "subscribe to".into(),
        }
    }
}

/// The facts about a user that rules look at.
pub struct Subject<'a> {
    pub user: &'a str,
    pub roles: &'a [String],
    pub namespaces: &'a [String],
}

impl Role {
    /// Checks patterns and method names.
    pub fn validate(&self, name: &str) -> Result<(), FlowError> {
        validate_role_name(name)?;
        if name == ADMIN {
            return Err(FlowError::invalid(
                "the admin role is built in and cannot be defined",
            ));
        }
        for g in &self.grants {
            if g.endpoints.is_empty() {
                return Err(FlowError::invalid(
                    "a grant needs at least one endpoint pattern",
                ));
            }
            for p in g.endpoints.iter().chain(&g.namespaces) {
                if p.len() > 200 || p.chars().any(char::is_control) {
                    return Err(FlowError::invalid(format!("pattern {p:?} is not valid")));
                }
            }
            for m in &g.methods {
                if m != "*" {
                    Method::parse(m)?;
                }
            }
        }
        Ok(())
    }

    /// Whether one of this role's grants allows `action` on `endpoint` in `namespace`.
    fn allows(&self, who: &Subject<'_>, action: Action, endpoint: &str, namespace: &str) -> bool {
        self.grants.iter().any(|g| {
            let action_ok = match action {
                Action::Call(m) => g
                    .methods
                    .iter()
                    .any(|p| p == "*" || p.eq_ignore_ascii_case(m.as_str())),
                Action::Provide => g.provide,
                Action::Subscribe => g.subscribe,
            };
            // A provider serves every namespace of an endpoint: providing looks at the
            // endpoint only.
            let ns_ok = action == Action::Provide
                || g.namespaces
                    .iter()
                    .any(|p| namespace_matches(p, who, namespace));
            action_ok && ns_ok && g.endpoints.iter().any(|p| glob(p, endpoint))
        })
    }
}

/// Role names: 1 to 64 letters, digits, `_`, `-` or `.`.
pub fn validate_role_name(name: &str) -> Result<(), FlowError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(FlowError::invalid(format!(
            "role name {name:?}: 1 to 64 letters, digits, '_', '-' or '.'"
        )))
    }
}

fn namespace_matches(pattern: &str, who: &Subject<'_>, namespace: &str) -> bool {
    match pattern {
        "$own" => who.namespaces.iter().any(|n| n == namespace),
        "$user" => who.user == namespace,
        p => glob(p, namespace),
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it has taken up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Every role by name (the configuration's, replaced or added to by `auth/role` at runtime).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub roles: std::collections::BTreeMap<String, Role>,
}

impl Rules {
    /// Whether `who` may do `action` on `endpoint` in `namespace`.
    pub fn allows(
        &self,
        who: &Subject<'_>,
        action: Action,
        endpoint: &str,
        namespace: &str,
    ) -> bool {
        if who.roles.iter().any(|r| r == ADMIN) {
            return true;
        }
        if crate::protocol::request::is_reserved(endpoint) && endpoint != "hub/endpoint" {
            return false;
        }
        who.roles.iter().any(|r| {
            self.roles
                .get(r)
                .is_some_and(|role| role.allows(who, action, endpoint, namespace))
        })
    }

    /// [`Rules::allows`], as the error a refused caller gets.
    pub fn check(
        &self,
        who: &Subject<'_>,
        action: Action,
        endpoint: &str,
        namespace: &str,
    ) -> Result<(), FlowError> {
        if self.allows(who, action, endpoint, namespace) {
            return Ok(());
        }
        let ns = if namespace.is_empty() {
            "the default namespace".to_string()
        } else {
            format!("namespace {namespace:?}")
        };
        Err(FlowError::new(
            crate::protocol::ErrorCode::Forbidden,
            format!(
                "user {:?} may not {} {endpoint} in {ns}: no grant of its roles ({}) allows it",
                who.user,
                action.describe(),
                if who.roles.is_empty() {
                    "none".to_string()
                } else {
                    who.roles.join(", ")
                }
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "a/b"));
        assert!(glob("inventory/*", "inventory/device"));
        assert!(!glob("inventory/*", "inventoryx/device"));
        assert!(!glob("inventory/*", "address/address"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abcdf"));
        assert!(glob("", ""));
        assert!(!glob("", "x"));
        assert!(glob("tenant-*", "tenant-a"));
    }

    fn rules() -> Rules {
        let toml = r#"
            [gui]
            grants = [{ endpoints = ["*"], methods = ["LIST", "OPEN"], subscribe = true }]
            [inventory]
            grants = [{ endpoints = ["inventory/*"], methods = [], provide = true }]
            [tenant]
            grants = [{ endpoints = ["*"], namespaces = ["$own"] }]
        "#;
        Rules {
            roles: toml::from_str(toml).unwrap(),
        }
    }

    #[test]
    fn grants_match_methods_endpoints_and_namespaces() {
        let r = rules();
        let roles = vec!["gui".to_string()];
        let gui = Subject {
            user: "g",
            roles: &roles,
            namespaces: &[],
        };
        assert!(r.allows(&gui, Action::Call(Method::List), "address/address", ""));
        assert!(r.allows(&gui, Action::Subscribe, "address/address", "x"));
        assert!(!r.allows(&gui, Action::Call(Method::Update), "address/address", ""));
        assert!(!r.allows(&gui, Action::Provide, "address/address", ""));
        assert!(!r.allows(&gui, Action::Call(Method::List), "auth/user", ""));

        let roles = vec!["inventory".to_string()];
        let inv = Subject {
            user: "i",
            roles: &roles,
            namespaces: &[],
        };
        assert!(r.allows(&inv, Action::Provide, "inventory/device", ""));
        assert!(!r.allows(&inv, Action::Provide, "address/address", ""));
        assert!(!r.allows(&inv, Action::Call(Method::List), "inventory/device", ""));

        let roles = vec!["tenant".to_string()];
        let own = vec!["acme".to_string()];
        let t = Subject {
            user: "t",
            roles: &roles,
            namespaces: &own,
        };
        assert!(r.allows(&t, Action::Call(Method::Update), "a/b", "acme"));
        assert!(!r.allows(&t, Action::Call(Method::Update), "a/b", "globex"));
        assert!(!r.allows(&t, Action::Call(Method::Update), "a/b", ""));

        let admin = vec![ADMIN.to_string()];
        let a = Subject {
            user: "a",
            roles: &admin,
            namespaces: &[],
        };
        assert!(r.allows(&a, Action::Provide, "anything/at-all", "x"));
    }

    #[test]
    fn bad_roles_are_refused() {
        let bad = Role {
            grants: vec![Grant {
                endpoints: vec!["*".into()],
                namespaces: every(),
                methods: vec!["FETCH".into()],
                provide: false,
                subscribe: false,
            }],
        };
        assert!(bad.validate("x").is_err());
        assert!(Role::default().validate(ADMIN).is_err());
        assert!(Role::default().validate("a b").is_err());
    }
}
