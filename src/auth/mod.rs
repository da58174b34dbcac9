//! The authentication engine: users, tokens, roles and rules, login throttling.
//!
//! Where it sits: every call goes through [`crate::dispatch::Dispatcher::call_with`], which
//! first asks [`Auth::authenticate`] who is calling (a token in the call, `Authorization:
//! Basic` over HTTP, or the WebSocket's login), then [`Auth::authorize`] whether the roles of
//! that user allow the method on the endpoint in the namespace, and only then routes the call.
//! A WebSocket's `provide` is checked with [`Auth::may_provide`], a subscription with
//! [`Auth::may_subscribe`]. The engine's own endpoints (`auth/token`, `auth/user`,
//! `auth/role`) are answered in [`endpoints`].
//!
//! State: users, token hashes and runtime roles are objects of the reserved store endpoints
//! `auth/user`, `auth/token` and `auth/role`, written through the sequencer and the log, so
//! they survive restarts and snapshots; normal calls can never reach them (the dispatcher
//! refuses `auth/` names before the store). In memory the engine caches them in maps, so a
//! call's authentication is a hash and a map lookup. A token stops working when it expires
//! or is revoked, on connections already open too: every use checks it, and WebSocket
//! sessions logged in with it are closed with [`CLOSE_UNAUTHENTICATED`].
//!
//! Never: a password or a token in a log line, a reply or the store. Passwords are kept as
//! Argon2id PHC strings, tokens as SHA-256 hashes; `Debug` of every type holding a secret
//! hides it.

pub mod config;
pub mod endpoints;
pub mod password;
pub mod rules;
pub mod throttle;
pub mod tokens;
pub mod users;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

pub use config::{AuthConfig, Secret};
pub use rules::{Action, Grant, Role, Rules, ADMIN};
pub use tokens::TokenEntry;
pub use users::User;

use crate::protocol::frame::Login;
use crate::protocol::{Caller, ErrorCode, FlowError};
use crate::query::ListQuery;
use crate::store::{Store, StoreError, WriteOp};

/// The engine's endpoints, answered by [`endpoints::call`].
pub const ENDPOINTS: [&str; 3] = ["auth/role", "auth/token", "auth/user"];
/// The store endpoint of token hashes.
pub const TOKEN_ENDPOINT: &str = "auth/token";
/// The store endpoint of runtime roles.
pub const ROLE_ENDPOINT: &str = "auth/role";
/// WebSocket close code: not authenticated within the grace period, or the session's token
/// expired or was revoked.
pub const CLOSE_UNAUTHENTICATED: u16 = 4001;
/// File in the data directory that receives a generated first admin password.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// Whether `endpoint` is one of the engine's own.
pub fn is_auth_endpoint(endpoint: &str) -> bool {
    ENDPOINTS.contains(&endpoint)
}

fn unauthorized(message: impl Into<String>) -> FlowError {
    FlowError::new(ErrorCode::Unauthorized, message)
}

fn forbidden(message: impl Into<String>) -> FlowError {
    FlowError::new(ErrorCode::Forbidden, message)
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `None` in open mode: nobody in particular, allowed everything.
    pub user: Option<Arc<User>>,
    /// The token the call was authenticated with, if it was a token.
    pub token: Option<Arc<TokenEntry>>,
}

impl Identity {
    /// The identity of every call in open mode.
    pub fn open() -> Identity {
        Identity {
            user: None,
            token: None,
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| &*u.name)
    }

    /// An admin, or anybody in open mode.
    pub fn is_admin(&self) -> bool {
        self.user
            .as_ref()
            .is_none_or(|u| u.roles.iter().any(|r| r == ADMIN))
    }

    /// The caller as providers see it: this user and its roles.
    pub fn caller(&self, base: &Caller) -> Caller {
        let mut c = base.clone();
        if let Some(u) = &self.user {
            c.user = Some(u.name.to_string());
            c.roles.clone_from(&u.roles);
        }
        c
    }
}

/// How a call came authenticated besides a token in the call itself.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `Authorization: Basic` over HTTP: user name and password.
    pub basic: Option<(String, Secret)>,
    /// The WebSocket session (its login, if any).
    pub session: Option<Arc<Session>>,
    /// The client's address, for throttling.
    pub peer: Option<IpAddr>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("basic", &self.basic.as_ref().map(|(u, _)| u))
            .field("session", &self.session.is_some())
            .field("peer", &self.peer)
            .finish()
    }
}

/// Parses an `Authorization` header: `Basic` gives user and password; any other scheme is
/// `None` (a `Bearer` token is taken as the call's token by the HTTP bridge).
pub fn parse_basic(value: &str) -> Result<Option<(String, Secret)>, FlowError> {
    let value = value.trim();
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let bad = || unauthorized("Authorization: Basic must carry base64 of user:password");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some((user.to_string(), Secret(password.to_string()))))
}

/// A WebSocket's authentication state.
pub struct Session {
    state: watch::Sender<SessionState>,
}

#[derive(Debug, Clone)]
enum SessionState {
    /// Nothing authenticated yet: closed when the grace period ends.
    Pending,
    /// A call came with a valid token: the socket may stay; calls still carry their token.
    Seen,
    /// Logged in: calls may omit the token.
    Login(Arc<TokenEntry>),
}

impl Session {
    pub fn new() -> Arc<Session> {
        Arc::new(Session {
            state: watch::Sender::new(SessionState::Pending),
        })
    }

    fn login_token(&self) -> Option<Arc<TokenEntry>> {
        match &*self.state.borrow() {
            SessionState::Login(t) => Some(t.clone()),
            _ => None,
        }
    }

    fn seen(&self) {
        self.state.send_if_modified(|s| {
            if matches!(s, SessionState::Pending) {
                *s = SessionState::Seen;
                true
            } else {
                false
            }
        });
    }

    fn log_in(&self, token: Arc<TokenEntry>) {
        self.state.send_replace(SessionState::Login(token));
    }
}

/// A verified `Authorization: Basic` pair, remembered for a while by a keyed hash.
struct BasicHit {
    user: Arc<str>,
    /// The user's version when verified: any change to the user (a new password) voids it.
    version: u64,
    until: Instant,
}

/// The authentication engine. Cloning is shallow.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthConfig,
    /// Where users, tokens and roles are kept.
    store: Store,
    users: DashMap<String, Arc<User>>,
    /// Live tokens by id (SHA-256 of the token, hex).
    tokens: DashMap<String, Arc<TokenEntry>>,
    /// The roles in force: the configuration's with the runtime ones over them.
    rules: RwLock<Arc<Rules>>,
    /// Serializes role changes, so that each rebuild of `rules` sees the latest.
    role_writes: tokio::sync::Mutex<()>,
    /// Made on first use: building it hashes a dummy password.
    hasher: OnceLock<password::Hasher>,
    throttle: throttle::Throttle,
    basic_cache: DashMap<[u8; 32], BasicHit>,
    /// Random per process: the Basic cache's keys cannot be computed without it.
    basic_key: [u8; 32],
    /// Grows with every change that may take a right away (roles, users, revocations), so
    /// long-lived grants (subscriptions) can be re-checked when it moves.
    generation: std::sync::atomic::AtomicU64,
}

/// Most Basic pairs remembered at once.
const BASIC_CACHE_MAX: usize = 10_000;

impl Auth {
    /// An engine over `store` with nothing loaded: open mode unless `config` says otherwise.
    fn empty(config: &AuthConfig, store: Store) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                config: config.clone(),
                store,
                users: DashMap::new(),
                tokens: DashMap::new(),
                rules: RwLock::new(Arc::new(Rules {
                    roles: config.roles.clone(),
                })),
                role_writes: tokio::sync::Mutex::new(()),
                hasher: OnceLock::new(),
                throttle: throttle::Throttle::new(
                    config.throttle_failures,
                    Duration::from_secs(config.throttle_window_s),
                ),
                basic_cache: DashMap::new(),
                basic_key: rand::random(),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Open mode over `store`, loading nothing (a dispatcher built without configuration).
    pub fn open(store: Store) -> Auth {
        Auth::empty(&AuthConfig::open(), store)
    }

    /// Loads users, tokens and roles from the store, creates the first admin if there is
    /// none (see [`AuthConfig::admin_password`]) and starts the sweep of expired tokens.
    ///
    /// Never fails: a first admin that cannot be created (the disk is full) is logged as an
    /// error, and the hub serves whoever can authenticate.
    pub async fn start(config: &AuthConfig, store: Store, data_dir: &Path) -> Auth {
        let auth = Auth::empty(config, store);
        auth.load();
        if config.is_open() {
            tracing::warn!(
                "AUTHENTICATION IS OFF (auth = \"none\" / FLOWHUB_AUTH=none): every caller may \
                 do everything. Use this for local development only"
            );
        }
        if let Err(e) = auth.bootstrap(data_dir).await {
            tracing::error!("{e}");
        }
        let weak = Arc::downgrade(&auth.inner);
        tokio::spawn(sweep(weak));
        auth
    }

    pub fn is_open(&self) -> bool {
        self.inner.config.is_open()
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Seconds a throttled client should wait (`Retry-After`).
    pub fn retry_after_s(&self) -> u64 {
        self.inner.throttle.window().as_secs().max(1)
    }

    fn hasher(&self) -> Result<&password::Hasher, FlowError> {
        if let Some(h) = self.inner.hasher.get() {
            return Ok(h);
        }
        let h = password::Hasher::new(&self.inner.config).map_err(FlowError::internal)?;
        Ok(self.inner.hasher.get_or_init(|| h))
    }

    fn all_records(&self, endpoint: &str) -> Vec<Arc<crate::store::Record>> {
        self.inner
            .store
            .list(endpoint, "", &ListQuery::default())
            .items
    }

    /// Fills the caches from the store.
    fn load(&self) {
        let i = &self.inner;
        for r in self.all_records(users::ENDPOINT) {
            if let Some(u) = User::from_record(&r) {
                i.users.insert(u.name.to_string(), Arc::new(u));
            }
        }
        for r in self.all_records(TOKEN_ENDPOINT) {
            let f = r.fields();
            let (Some(user), Some(issued), Some(expires)) = (
                f.get("user").and_then(Value::as_str),
                f.get("issued_ms").and_then(Value::as_u64),
                f.get("expires_ms").and_then(Value::as_u64),
            ) else {
                continue;
            };
            i.tokens.insert(
                r.id.to_string(),
                Arc::new(TokenEntry {
                    id: r.id.clone(),
                    user: user.into(),
                    issued_ms: issued,
                    expires_ms: expires,
                    revoked: Default::default(),
                }),
            );
        }
        self.rebuild_rules();
        tracing::info!(
            users = i.users.len(),
            tokens = i.tokens.len(),
            roles = i.rules.read().roles.len(),
            "authentication state loaded"
        );
    }

    /// The configuration's roles with the stored (runtime) ones over them.
    fn rebuild_rules(&self) {
        let mut roles = self.inner.config.roles.clone();
        for r in self.all_records(ROLE_ENDPOINT) {
            let mut f = r.fields();
            let grants = f.remove("grants").unwrap_or(Value::Array(Vec::new()));
            match serde_json::from_value::<Vec<Grant>>(grants) {
                Ok(grants) => {
                    roles.insert(r.id.to_string(), Role { grants });
                }
                Err(e) => {
                    tracing::error!(role = %r.id, error = %e, "a stored role does not parse; ignored")
                }
            }
        }
        *self.inner.rules.write() = Arc::new(Rules { roles });
        self.changed();
    }

    /// A number that grows whenever a role, a user or a token changes in a way that may take
    /// a right away. A subscription checked with [`Auth::may_subscribe`] at generation `g`
    /// needs checking again only once this is past `g`.
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The roles in force.
    pub fn rules(&self) -> Arc<Rules> {
        self.inner.rules.read().clone()
    }

    /// Creates the first admin: from `admin_user` / `admin_password` when that user does not
    /// exist yet; else, on a first start with authentication on and no user at all, with a
    /// random password shown once on stderr and written 0600 to the data directory.
    async fn bootstrap(&self, data_dir: &Path) -> Result<(), String> {
        let c = &self.inner.config;
        let name = c.admin_user.clone();
        if self.inner.users.contains_key(&name) {
            return Ok(());
        }
        let generated = match &c.admin_password {
            Some(p) => {
                self.create_user(&name, p.0.clone(), vec![ADMIN.into()], Vec::new())
                    .await
                    .map_err(|e| format!("cannot create the admin user {name:?}: {}", e.message))?;
                tracing::info!(user = %name, "created the admin user from FLOWHUB_ADMIN_USER / FLOWHUB_ADMIN_PASSWORD");
                return Ok(());
            }
            None if c.is_open() || !self.inner.users.is_empty() => return Ok(()),
            None => tokens::random_string(18),
        };
        self.create_user(&name, generated.clone(), vec![ADMIN.into()], Vec::new())
            .await
            .map_err(|e| format!("cannot create the admin user {name:?}: {}", e.message))?;
        let path = data_dir.join(ADMIN_PASSWORD_FILE);
        let written = write_private(&path, &format!("{name}:{generated}\n"));
        // Straight to stderr, once, and never through the log: log lines are shipped and kept.
        eprintln!(
            "\nflowhub: first start: created the admin user {name:?} with the password\n\n    {generated}\n\n\
             It is shown only this once{}. Log in with it, e.g.\n    curl -u {name}:PASSWORD http://HOST/api/...\n",
            match &written {
                Ok(()) => format!(" and kept in {} (mode 0600; delete it once you have it)", path.display()),
                Err(_) => String::new(),
            }
        );
        match written {
            Ok(()) => {
                tracing::warn!(user = %name, file = %path.display(), "first start: created an admin user with a generated password (see stderr, or the file)")
            }
            Err(e) => {
                tracing::error!(user = %name, file = %path.display(), error = %e, "first start: created an admin user, but its password could not be written to the file; it was shown on stderr")
            }
        }
        Ok(())
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.inner.users.get(name).map(|u| u.clone())
    }

    /// Caches a user read back from the store, unless a newer version is cached already.
    fn cache_user(&self, user: User) -> Arc<User> {
        let user = Arc::new(user);
        let mut e = self
            .inner
            .users
            .entry(user.name.to_string())
            .or_insert_with(|| user.clone());
        if e.version < user.version {
            *e = user.clone();
        }
        let cached = e.clone();
        drop(e);
        self.changed();
        cached
    }

    async fn create_user(
        &self,
        name: &str,
        password: String,
        roles: Vec<String>,
        namespaces: Vec<String>,
    ) -> Result<Arc<User>, FlowError> {
        users::validate_username(name)?;
        password::validate_password(&password)?;
        let phc = self.hasher()?.hash(password).await?;
        let mut data = Map::new();
        data.insert("roles".into(), json!(roles));
        data.insert("namespaces".into(), json!(namespaces));
        data.insert("password_hash".into(), json!(phc));
        let record = self
            .write(WriteOp::Create {
                endpoint: users::ENDPOINT.into(),
                namespace: String::new(),
                id: Some(name.into()),
                data,
            })
            .await?;
        let user = User::from_record(&record)
            .ok_or_else(|| FlowError::internal("a stored user does not read back"))?;
        Ok(self.cache_user(user))
    }

    async fn write(&self, op: WriteOp) -> Result<Arc<crate::store::Record>, FlowError> {
        self.inner.store.write(op).await.map_err(|e| match e {
            StoreError::NotFound(id) => FlowError::not_found(format!("{id:?} does not exist")),
            e @ StoreError::AlreadyExists(_) => {
                FlowError::new(ErrorCode::AlreadyExists, e.to_string())
            }
            e @ StoreError::Conflict { .. } => FlowError::new(ErrorCode::Conflict, e.to_string()),
            e @ StoreError::Unavailable(_) => FlowError::new(ErrorCode::Unavailable, e.to_string()),
        })
    }

    /// Who is calling: the call's token if it has one, else `Authorization: Basic`, else the
    /// WebSocket's login. `UNAUTHORIZED` when there is none or it is not valid;
    /// `RATE_LIMITED` when Basic credentials come too often wrong.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        creds: &Credentials,
    ) -> Result<Identity, FlowError> {
        if !self.is_open() && token.is_none() {
            if let Some((user, password)) = &creds.basic {
                let user = self.verify_basic(user, password, creds.peer).await?;
                return Ok(Identity {
                    user: Some(user),
                    token: None,
                });
            }
        }
        self.authenticate_now(token, creds)
    }

    /// [`Auth::authenticate`] for calls that bring no password (a token, or a WebSocket
    /// session's login): no hashing, so it answers at once.
    pub fn authenticate_now(
        &self,
        token: Option<&str>,
        creds: &Credentials,
    ) -> Result<Identity, FlowError> {
        if self.is_open() {
            return Ok(Identity::open());
        }
        if let Some(t) = token {
            let who = self.identify_token(t)?;
            if let Some(s) = &creds.session {
                s.seen();
            }
            return Ok(who);
        }
        if let Some(s) = &creds.session {
            return self.session_identity(s, None);
        }
        Err(unauthorized(
            "authentication required: send a token (the call's token field, the Flow-Auth-Token \
             header or the token query parameter), Authorization: Basic, or log in on the WebSocket",
        ))
    }

    /// The identity of a token (`UNAUTHORIZED` if unknown, expired or revoked).
    pub fn identify_token(&self, token: &str) -> Result<Identity, FlowError> {
        if self.is_open() {
            return Ok(Identity::open());
        }
        let id = tokens::token_id(token);
        let entry = self
            .inner
            .tokens
            .get(&id)
            .map(|e| e.clone())
            .ok_or_else(|| unauthorized("the token is not valid (unknown or revoked)"))?;
        self.identify_entry(&entry)
    }

    fn identify_entry(&self, entry: &Arc<TokenEntry>) -> Result<Identity, FlowError> {
        if entry.revoked.is_cancelled() {
            return Err(unauthorized("the token has been revoked"));
        }
        if entry.expired(tokens::now_ms()) {
            return Err(unauthorized(
                "the token has expired; get a new one from auth/token",
            ));
        }
        let user = self
            .user(&entry.user)
            .ok_or_else(|| unauthorized("the token's user no longer exists"))?;
        Ok(Identity {
            user: Some(user),
            token: Some(entry.clone()),
        })
    }

    /// The identity of a WebSocket frame: its own `token` if it has one, else the session's
    /// login. For frames other than calls (provide, subscribe), which never carry passwords.
    pub fn session_identity(
        &self,
        session: &Session,
        token: Option<&str>,
    ) -> Result<Identity, FlowError> {
        if self.is_open() {
            return Ok(Identity::open());
        }
        if let Some(t) = token {
            let who = self.identify_token(t)?;
            session.seen();
            return Ok(who);
        }
        match session.login_token() {
            Some(t) => self.identify_entry(&t),
            None => Err(unauthorized(
                "authentication required: log in first ({\"type\": \"login\", \"token\": ...}) or \
                 send a token with the frame",
            )),
        }
    }

    /// The identity behind a WebSocket frame that is not a call (`provide`, `subscribe`): the
    /// frame's own token if it has one, else the connection's login. Never checks a password.
    pub fn frame_identity(
        &self,
        creds: &Credentials,
        token: Option<&str>,
    ) -> Result<Identity, FlowError> {
        if self.is_open() {
            return Ok(Identity::open());
        }
        match (&creds.session, token) {
            (Some(s), _) => self.session_identity(s, token),
            (None, Some(t)) => self.identify_token(t),
            (None, None) => Err(unauthorized("authentication required")),
        }
    }

    /// Whether `who` may call `method` on `endpoint` in `namespace` (`FORBIDDEN` if not).
    pub fn authorize(
        &self,
        who: &Identity,
        action: Action,
        endpoint: &str,
        namespace: &str,
    ) -> Result<(), FlowError> {
        let Some(user) = &who.user else {
            return Ok(());
        };
        let subject = rules::Subject {
            user: &user.name,
            roles: &user.roles,
            namespaces: &user.namespaces,
        };
        // Checked under the read lock: no reference count touched on the hot path.
        self.inner
            .rules
            .read()
            .check(&subject, action, endpoint, namespace)
    }

    /// Whether `who` may provide `endpoint`: called by the WebSocket session before
    /// `Router::provide`.
    pub fn may_provide(&self, who: &Identity, endpoint: &str) -> Result<(), FlowError> {
        self.authorize(who, Action::Provide, endpoint, "")
    }

    /// Whether `who` may subscribe to `endpoint` in `namespace` (for the fan-out's subscribe
    /// frames). The engine's own endpoints can never be subscribed to, by anyone.
    pub fn may_subscribe(
        &self,
        who: &Identity,
        endpoint: &str,
        namespace: &str,
    ) -> Result<(), FlowError> {
        if endpoint.starts_with("auth/") {
            return Err(forbidden(
                "the authentication engine's endpoints cannot be subscribed to",
            ));
        }
        self.authorize(who, Action::Subscribe, endpoint, namespace)
    }

    /// Checks a password, throttled per user and per address. The same work is done whether
    /// the user exists or not.
    pub async fn verify_password(
        &self,
        name: &str,
        password: &str,
        peer: Option<IpAddr>,
    ) -> Result<Arc<User>, FlowError> {
        let i = &self.inner;
        i.throttle.check(name, peer)?;
        let user = self.user(name);
        let ok = password.len() <= password::MAX_PASSWORD_LEN
            && self
                .hasher()?
                .verify(password.to_string(), user.as_ref().map(|u| u.phc.clone()))
                .await;
        match (ok, user) {
            (true, Some(u)) => {
                i.throttle.succeeded(name);
                Ok(u)
            }
            _ => {
                i.throttle.failed(name, peer);
                tracing::info!(user = %name, peer = ?peer, "failed login");
                Err(unauthorized("wrong user name or password"))
            }
        }
    }

    /// [`Auth::verify_password`] for `Authorization: Basic`, with a short-lived cache of
    /// verified pairs (keyed by an HMAC-like hash under a per-process random key) so that
    /// integrators do not pay Argon2 on every request.
    async fn verify_basic(
        &self,
        name: &str,
        password: &Secret,
        peer: Option<IpAddr>,
    ) -> Result<Arc<User>, FlowError> {
        let i = &self.inner;
        let ttl = Duration::from_secs(i.config.basic_cache_s);
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(i.basic_key);
            h.update(name.as_bytes());
            h.update([0]);
            h.update(password.0.as_bytes());
            h.finalize().into()
        };
        if !ttl.is_zero() {
            let hit = i
                .basic_cache
                .get(&key)
                .map(|h| (h.user.clone(), h.version, h.until));
            if let Some((user, version, until)) = hit {
                if let Some(u) = self.user(&user) {
                    let same = u.name.as_bytes().ct_eq(name.as_bytes()).into();
                    if same && u.version == version && Instant::now() < until {
                        return Ok(u);
                    }
                }
                i.basic_cache.remove(&key);
            }
        }
        let user = self.verify_password(name, &password.0, peer).await?;
        if !ttl.is_zero() {
            if i.basic_cache.len() >= BASIC_CACHE_MAX {
                let now = Instant::now();
                i.basic_cache.retain(|_, h| now < h.until);
            }
            if i.basic_cache.len() < BASIC_CACHE_MAX {
                i.basic_cache.insert(
                    key,
                    BasicHit {
                        user: user.name.clone(),
                        version: user.version,
                        until: Instant::now() + ttl,
                    },
                );
            }
        }
        Ok(user)
    }

    /// Issues a token for `user`: `(token, entry)`. The token itself is returned to the
    /// caller once and kept nowhere.
    pub async fn issue_token(&self, user: &User) -> Result<(String, Arc<TokenEntry>), FlowError> {
        let token = tokens::new_token();
        let id = tokens::token_id(&token);
        let issued_ms = tokens::now_ms();
        let expires_ms =
            issued_ms.saturating_add(self.inner.config.token_lifetime_s.saturating_mul(1000));
        let mut data = Map::new();
        data.insert("user".into(), json!(&*user.name));
        data.insert("issued_ms".into(), json!(issued_ms));
        data.insert("expires_ms".into(), json!(expires_ms));
        self.write(WriteOp::Create {
            endpoint: TOKEN_ENDPOINT.into(),
            namespace: String::new(),
            id: Some(id.clone()),
            data,
        })
        .await?;
        let entry = Arc::new(TokenEntry {
            id: id.clone().into(),
            user: user.name.clone(),
            issued_ms,
            expires_ms,
            revoked: Default::default(),
        });
        self.inner.tokens.insert(id, entry.clone());
        Ok((token, entry))
    }

    /// What a login or `auth/token` CREATE replies.
    pub fn token_reply(&self, token: Option<&str>, entry: &TokenEntry, user: &User) -> Value {
        let mut v = json!({
            "id": &*entry.id,
            "expires": tokens::rfc3339(entry.expires_ms),
            "user": &*user.name,
            "roles": user.roles,
            "namespaces": user.namespaces,
        });
        if let Some(t) = token {
            v["token"] = json!(t);
        }
        v
    }

    /// Revokes a token by id: sessions logged in with it close, and it is deleted from the
    /// store. `false` if no such token was live.
    pub async fn revoke(&self, id: &str) -> Result<bool, FlowError> {
        let Some((_, entry)) = self.inner.tokens.remove(id) else {
            return Ok(false);
        };
        entry.revoked.cancel();
        self.changed();
        match self
            .write(WriteOp::Delete {
                endpoint: TOKEN_ENDPOINT.into(),
                namespace: String::new(),
                id: id.into(),
                expected: None,
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code == ErrorCode::DoNotExist => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Revokes every token of a user.
    async fn revoke_user_tokens(&self, user: &str) -> Result<(), FlowError> {
        let ids: Vec<String> = self
            .inner
            .tokens
            .iter()
            .filter(|t| &*t.user == user)
            .map(|t| t.key().clone())
            .collect();
        for id in ids {
            self.revoke(&id).await?;
        }
        Ok(())
    }

    /// The login frame: with a token, the session adopts it; with a user name and password,
    /// a token is issued (and returned) and the session adopts it. Calls on the socket may
    /// then omit the token.
    pub async fn login(
        &self,
        session: &Session,
        login: Login,
        peer: Option<IpAddr>,
    ) -> Result<Value, FlowError> {
        if self.is_open() {
            return Ok(json!({"user": null, "roles": [], "auth": "none"}));
        }
        match login {
            Login::Token(t) => {
                let id = tokens::token_id(&t);
                let entry = self
                    .inner
                    .tokens
                    .get(&id)
                    .map(|e| e.clone())
                    .ok_or_else(|| unauthorized("the token is not valid (unknown or revoked)"))?;
                let who = self.identify_entry(&entry)?;
                session.log_in(entry.clone());
                let user = who.user.ok_or_else(|| FlowError::internal("no user"))?;
                Ok(self.token_reply(None, &entry, &user))
            }
            Login::Password { username, password } => {
                let user = self.verify_password(&username, &password.0, peer).await?;
                let (token, entry) = self.issue_token(&user).await?;
                session.log_in(entry.clone());
                Ok(self.token_reply(Some(&token), &entry, &user))
            }
        }
    }

    /// Resolves when a WebSocket session must be closed: it did not authenticate within
    /// `auth_timeout_ms`, or the token it logged in with expired or was revoked. The reason
    /// goes into the close frame (code [`CLOSE_UNAUTHENTICATED`]). Never resolves in open mode.
    pub async fn guard(&self, session: Arc<Session>) -> String {
        if self.is_open() {
            return std::future::pending().await;
        }
        let grace = Duration::from_millis(self.inner.config.auth_timeout_ms);
        let deadline = tokio::time::Instant::now() + grace;
        let mut rx = session.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                SessionState::Pending => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {
                            crate::limits::breach(crate::limits::Limit::AuthTimeout);
                            return format!("not authenticated within {} ms", grace.as_millis());
                        }
                        r = rx.changed() => if r.is_err() { return std::future::pending().await },
                    }
                }
                SessionState::Seen => {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
                SessionState::Login(t) => {
                    let left = Duration::from_millis(t.expires_ms.saturating_sub(tokens::now_ms()));
                    tokio::select! {
                        () = tokio::time::sleep(left) => return "the session's token expired".into(),
                        () = t.revoked.cancelled() => return "the session's token was revoked".into(),
                        r = rx.changed() => if r.is_err() { return std::future::pending().await },
                    }
                }
            }
        }
    }
}

/// Deletes expired tokens from the cache and the store, once a minute, for as long as the
/// engine lives.
async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let auth = Auth { inner };
        let now = tokens::now_ms();
        let expired: Vec<String> = auth
            .inner
            .tokens
            .iter()
            .filter(|t| t.expired(now))
            .map(|t| t.key().clone())
            .collect();
        for id in expired {
            if let Err(e) = auth.revoke(&id).await {
                tracing::warn!(error = %e, "could not delete an expired token");
                break;
            }
        }
    }
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The roles as `auth/role` shows them.
pub fn describe_roles(
    rules: &Rules,
    config: &BTreeMap<String, Role>,
    runtime: &[String],
) -> Vec<Map<String, Value>> {
    let mut out = vec![role_object(ADMIN, None, "builtin")];
    for (name, role) in &rules.roles {
        let source = if runtime.iter().any(|r| r == name) {
            "runtime"
        } else if config.contains_key(name) {
            "config"
        } else {
            "runtime"
        };
        out.push(role_object(name, Some(role), source));
    }
    out
}

fn role_object(name: &str, role: Option<&Role>, source: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(name));
    m.insert("name".into(), json!(name));
    m.insert("source".into(), json!(source));
    match role {
        Some(r) => {
            m.insert(
                "grants".into(),
                serde_json::to_value(&r.grants).unwrap_or(Value::Null),
            );
        }
        None => {
            m.insert("grants".into(), json!([{"endpoints": ["*"], "namespaces": ["*"], "methods": ["*"], "provide": true, "subscribe": true}]));
            m.insert("builtin".into(), json!(true));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    async fn engine() -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(StoreConfig::default(), Box::new(crate::log::MemoryOnly), 0);
        let mut config = AuthConfig {
            argon2_memory_kib: 256,
            argon2_iterations: 1,
            admin_password: Some(Secret("admin-password".into())),
            ..AuthConfig::default()
        };
        config.roles = toml::from_str(
            r#"
            [gui]
            grants = [{ endpoints = ["*"], methods = ["LIST", "OPEN"], subscribe = true }]
            [tenant]
            grants = [{ endpoints = ["*"], namespaces = ["$own"], subscribe = true }]
            [inventory]
            grants = [{ endpoints = ["inventory/*"], methods = [], provide = true }]
            "#,
        )
        .unwrap();
        (Auth::start(&config, store, dir.path()).await, dir)
    }

    async fn who(auth: &Auth, name: &str, roles: &[&str], namespaces: &[&str]) -> Identity {
        let user = auth
            .create_user(
                name,
                format!("{name}-password"),
                roles.iter().map(|r| r.to_string()).collect(),
                namespaces.iter().map(|r| r.to_string()).collect(),
            )
            .await
            .unwrap();
        Identity {
            user: Some(user),
            token: None,
        }
    }

    #[tokio::test]
    async fn subscribe_and_provide_follow_the_roles() {
        let (auth, _dir) = engine().await;
        let before = auth.generation();
        let gui = who(&auth, "gui", &["gui"], &[]).await;
        assert!(
            auth.generation() > before,
            "a new user moves the generation"
        );
        let acme = who(&auth, "acme", &["tenant"], &["acme"]).await;
        let inv = who(&auth, "inv", &["inventory"], &[]).await;
        assert!(auth.may_subscribe(&gui, "address/address", "").is_ok());
        assert!(auth.may_provide(&gui, "address/address").is_err());
        assert!(auth.may_subscribe(&acme, "address/address", "acme").is_ok());
        let e = auth
            .may_subscribe(&acme, "address/address", "globex")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(auth.may_subscribe(&inv, "inventory/device", "").is_err());
        assert!(auth.may_provide(&inv, "inventory/device").is_ok());
        assert!(auth.may_provide(&inv, "address/address").is_err());
        // Nobody subscribes to the engine's own endpoints, not even an admin.
        let admin = Identity {
            user: auth.user("admin"),
            token: None,
        };
        assert!(admin.is_admin());
        assert!(auth.may_subscribe(&admin, "address/address", "x").is_ok());
        assert!(auth.may_subscribe(&admin, "auth/token", "").is_err());
        // A frame's token or the connection's login identifies it.
        let creds = Credentials {
            session: Some(Session::new()),
            ..Credentials::default()
        };
        let e = auth.frame_identity(&creds, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        let user = auth.user("gui").unwrap();
        let (token, _) = auth.issue_token(&user).await.unwrap();
        let by_token = auth.frame_identity(&creds, Some(&token)).unwrap();
        assert_eq!(by_token.name(), Some("gui"));
        // Open mode allows everything.
        assert!(auth.may_subscribe(&Identity::open(), "a/b", "c").is_ok());
    }

    #[tokio::test]
    async fn unknown_users_and_wrong_passwords_fail_alike() {
        let (auth, _dir) = engine().await;
        let a = auth
            .verify_password("admin", "wrong-password", None)
            .await
            .unwrap_err();
        let b = auth
            .verify_password("nobody", "wrong-password", None)
            .await
            .unwrap_err();
        assert_eq!(a, b);
        assert!(auth
            .verify_password("admin", "admin-password", None)
            .await
            .is_ok());
    }

    #[test]
    fn basic_credentials_parse() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pa:ss")
        );
        let (u, p) = parse_basic(&v).unwrap().unwrap();
        assert_eq!((u.as_str(), p.0.as_str()), ("alice", "pa:ss"));
        assert!(parse_basic("Bearer x").unwrap().is_none());
        assert!(parse_basic("Basic !!!").is_err());
        assert_eq!(format!("{p:?}"), "<hidden>");
    }
}
