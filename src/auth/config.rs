//! The `[auth]` section of the configuration: the mode, token lifetime, Argon2id parameters,
//! login throttling, the unauthenticated WebSocket grace period, the first admin and the roles.
//!
//! Only read at start (the roles may then change at runtime through `auth/role`). Secrets in
//! here (the bootstrap admin password) are wrapped in [`Secret`], whose `Debug` never shows
//! them and which is never serialized.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::rules::Role;

pub use crate::protocol::request::Secret;

/// The authentication settings (`[auth]` in the file; `auth = "none"` is short for
/// `[auth] mode = "none"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `on` (the default): every call authenticates and is authorized by the roles. `none`:
    /// open mode for local development, every call is accepted (logged loudly at start).
    /// `FLOWHUB_AUTH`.
    pub mode: String,
    /// How long a token from `auth/token` lives, in seconds. `FLOWHUB_TOKEN_LIFETIME_S`.
    pub token_lifetime_s: u64,
    /// Time a WebSocket has to authenticate (a login frame, or a call with a valid token)
    /// before the hub closes it with 4001. `FLOWHUB_AUTH_TIMEOUT_MS`.
    pub auth_timeout_ms: u64,
    /// Argon2id memory cost in KiB (OWASP's 19 MiB by default).
    pub argon2_memory_kib: u32,
    /// Argon2id passes over the memory.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (each on the blocking pool); more wait their turn,
    /// so a login flood cannot take every core.
    pub max_concurrent_hashes: usize,
    /// Failed logins per user name, and per client address, within `throttle_window_s`
    /// before further attempts get `RATE_LIMITED` until the window ends.
    pub throttle_failures: u32,
    /// The throttle's window in seconds.
    pub throttle_window_s: u64,
    /// How long a verified `Authorization: Basic` pair is remembered (in memory, as a keyed
    /// hash), so that an integrator calling with Basic credentials does not pay a password
    /// hash on every request; 0 turns the cache off.
    pub basic_cache_s: u64,
    /// The first admin's name, created at start if no user of that name exists.
    /// `FLOWHUB_ADMIN_USER`, default `admin`.
    pub admin_user: String,
    /// The first admin's password. `FLOWHUB_ADMIN_PASSWORD`; without it, a first start (no
    /// users at all) makes a random one, shows it once and writes it 0600 to
    /// `<data_dir>/admin-password`.
    #[serde(skip_serializing)]
    pub admin_password: Option<Secret>,
    /// Roles by name: what each may call, provide and subscribe to. `admin` is built in.
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: "on".into(),
            token_lifetime_s: 24 * 3600,
            auth_timeout_ms: 10_000,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 2,
            throttle_failures: 5,
            throttle_window_s: 60,
            basic_cache_s: 300,
            admin_user: "admin".into(),
            admin_password: None,
            roles: BTreeMap::new(),
        }
    }
}

impl AuthConfig {
    /// Open mode: no authentication at all.
    pub fn is_open(&self) -> bool {
        self.mode == "none"
    }

    /// Open mode, for tests and local development.
    pub fn open() -> AuthConfig {
        AuthConfig {
            mode: "none".into(),
            ..AuthConfig::default()
        }
    }

    /// Checks every value; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.mode.as_str(), "on" | "none") {
            return Err(format!(
                "auth.mode (FLOWHUB_AUTH) must be \"on\" or \"none\", not {:?}",
                self.mode
            ));
        }
        for (name, v) in [
            ("auth.token_lifetime_s", self.token_lifetime_s),
            ("auth.auth_timeout_ms", self.auth_timeout_ms),
            ("auth.throttle_window_s", self.throttle_window_s),
            ("auth.throttle_failures", u64::from(self.throttle_failures)),
            ("auth.argon2_iterations", u64::from(self.argon2_iterations)),
            (
                "auth.argon2_parallelism",
                u64::from(self.argon2_parallelism),
            ),
            (
                "auth.max_concurrent_hashes",
                self.max_concurrent_hashes as u64,
            ),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        super::password::params(self).map_err(|e| format!("auth.argon2_*: {e}"))?;
        super::users::validate_username(&self.admin_user)
            .map_err(|e| format!("auth.admin_user: {}", e.message))?;
        if let Some(p) = &self.admin_password {
            super::password::validate_password(&p.0).map_err(|e| {
                format!(
                    "auth.admin_password (FLOWHUB_ADMIN_PASSWORD): {}",
                    e.message
                )
            })?;
        }
        for (name, role) in &self.roles {
            role.validate(name)
                .map_err(|e| format!("auth.roles.{name}: {}", e.message))?;
        }
        Ok(())
    }
}

/// Reads `auth` either as a mode string (`auth = "none"`) or as the `[auth]` table.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AuthConfig, D::Error> {
    let value = toml::Value::deserialize(d)?;
    match value {
        toml::Value::String(mode) => Ok(AuthConfig {
            mode,
            ..AuthConfig::default()
        }),
        table => table.try_into().map_err(serde::de::Error::custom),
    }
}
