//! How a client reaches and authenticates with the hub, and the bounds it keeps.
//!
//! [`ClientConfig::from_env`] reads the same variables as the `flowhub` client subcommands
//! (`FLOWHUB_URL`, `FLOWHUB_TOKEN`, `FLOWHUB_USER` / `FLOWHUB_PASSWORD`), so a subsystem started
//! next to the CLI reaches the same hub with the same credentials.

use std::time::Duration;

use crate::error::Error;

/// Where the hub's WebSocket is when `FLOWHUB_URL` is not set (the `flowhub` CLI's default).
pub const DEFAULT_URL: &str = "ws://127.0.0.1:7340/ws";

/// How frames are encoded on the socket. The hub answers each frame in the encoding it came
/// in, and sends `invoke` frames in the encoding of the `provide` frame; the client reads both
/// encodings whatever it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Text frames carrying JSON.
    #[default]
    Json,
    /// Binary frames carrying MessagePack (smaller and cheaper to decode for large payloads).
    MessagePack,
}

/// How the client authenticates.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credentials (a hub with authentication off).
    #[default]
    None,
    /// A token from the hub's authentication engine, sent in every frame's `token` field.
    Token(String),
    /// A user name and password: on every (re)connect the client logs in with `CREATE` on
    /// `auth/token` (data `{"username", "password"}`) and uses the reply's `data.token`.
    Password {
        /// The user name.
        username: String,
        /// The password; never logged.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs and panics.
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token(_) => f.write_str("Token(<hidden>)"),
            Credentials::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"<hidden>")
                .finish(),
        }
    }
}

/// Reconnection delays: exponential, capped, with jitter.
///
/// The n-th retry after a failure waits a random time between half and all of
/// `min(initial × factorⁿ, max)`, so many clients cut off by one hub restart do not come back
/// in lockstep. A connection that stays up for 5 s starts the sequence over.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first delay (before jitter).
    pub initial: Duration,
    /// The cap on any delay (before jitter).
    pub max: Duration,
    /// How much each failed attempt multiplies the delay by (at least 1).
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.factor.max(1.0);
        let secs = self.initial.as_secs_f64() * factor.powi(attempt.min(64) as i32);
        let max = self.max.as_secs_f64();
        if secs.is_finite() && secs < max {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }

    /// The delay before retry number `attempt`, jittered into `[ceiling / 2, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A random number in `[0, 1)` from the standard library's randomly keyed hasher; jitter needs
/// no cryptographic quality and this keeps a random number crate out of the dependencies.
fn random_unit() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Everything a [`Client`](crate::Client) needs to know. Build one with [`ClientConfig::new`]
/// or [`ClientConfig::from_env`] and adjust it with the `with_*` methods or the public fields.
///
/// ```
/// use std::time::Duration;
/// use flowhub_client::{ClientConfig, Encoding};
///
/// let config = ClientConfig::new("http://127.0.0.1:7340")
///     .with_token("secret")
///     .with_encoding(Encoding::MessagePack)
///     .with_call_timeout(Duration::from_secs(5));
/// assert_eq!(config.url, "ws://127.0.0.1:7340/ws");
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The hub's WebSocket URL, e.g. `ws://127.0.0.1:7340/ws` (see [`normalize_url`]).
    pub url: String,
    /// How the client authenticates.
    pub credentials: Credentials,
    /// The encoding of the frames this client sends.
    pub encoding: Encoding,
    /// How long a call waits for its reply when the call sets no timeout of its own. It
    /// includes waiting for a connection when the hub is unreachable.
    pub call_timeout: Duration,
    /// How long one connection attempt (TCP, WebSocket handshake and login) may take.
    pub connect_timeout: Duration,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Whether [`Client::connect`](crate::Client::connect) keeps trying (with `backoff`) until
    /// the hub is reachable, instead of failing on the first refused connection.
    pub wait_for_hub: bool,
    /// Frames waiting for the socket (calls, results, provides). Full: callers wait for room.
    pub outbound_queue: usize,
    /// Calls and publishes waiting for their reply at once; more wait for one to finish.
    pub max_calls_in_flight: usize,
    /// Invocations a provider handles at once. Past it, new invocations are rejected with the
    /// reason `busy`, so the hub tries another provider rather than queueing behind this one.
    pub max_invocations: usize,
    /// The largest frame the client sends (the hub's `max_frame_bytes`, 1 MiB by default). A
    /// larger call fails locally with [`Error::Invalid`] instead of a reply the client could
    /// not match to it.
    pub max_frame_bytes: usize,
    /// The largest message the client accepts from the hub.
    pub max_message_bytes: usize,
    /// How often the client pings an idle hub; a hub silent for twice this long is taken as
    /// gone and the connection is replaced.
    pub ping_interval: Duration,
}

impl ClientConfig {
    /// A configuration for the hub at `url` (a `ws://`, `wss://`, `http://` or `https://` URL, or
    /// `host:port`; see [`normalize_url`]), with no credentials and default bounds.
    pub fn new(url: &str) -> ClientConfig {
        ClientConfig {
            url: normalize_url(url),
            credentials: Credentials::None,
            encoding: Encoding::Json,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            wait_for_hub: false,
            outbound_queue: 1024,
            max_calls_in_flight: 1024,
            max_invocations: 256,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            ping_interval: Duration::from_secs(15),
        }
    }

    /// The configuration the `flowhub` client subcommands use: `FLOWHUB_URL` (default
    /// [`DEFAULT_URL`]), then `FLOWHUB_TOKEN`, else `FLOWHUB_USER` with `FLOWHUB_PASSWORD`.
    /// Empty variables count as unset. A user without a password (or the reverse) is an error.
    pub fn from_env() -> Result<ClientConfig, Error> {
        Self::from_vars(std::env::vars())
    }

    /// [`from_env`](Self::from_env) over the given variables instead of the process's.
    pub fn from_vars<I, K, V>(vars: I) -> Result<ClientConfig, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let (mut url, mut token, mut user, mut password) = (None, None, None, None);
        for (k, v) in vars {
            let v: String = v.into();
            if v.is_empty() {
                continue;
            }
            match k.as_ref() {
                "FLOWHUB_URL" => url = Some(v),
                "FLOWHUB_TOKEN" => token = Some(v),
                "FLOWHUB_USER" => user = Some(v),
                "FLOWHUB_PASSWORD" => password = Some(v),
                _ => {}
            }
        }
        let mut config = ClientConfig::new(url.as_deref().unwrap_or(DEFAULT_URL));
        config.credentials = match (token, user, password) {
            (Some(t), _, _) => Credentials::Token(t),
            (None, Some(username), Some(password)) => Credentials::Password { username, password },
            (None, Some(_), None) => {
                return Err(Error::Config(
                    "FLOWHUB_USER is set but FLOWHUB_PASSWORD is not".into(),
                ))
            }
            (None, None, Some(_)) => {
                return Err(Error::Config(
                    "FLOWHUB_PASSWORD is set but FLOWHUB_USER is not".into(),
                ))
            }
            (None, None, None) => Credentials::None,
        };
        Ok(config)
    }

    /// Authenticate with `token`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Credentials::Token(token.into());
        self
    }

    /// Log in with a user name and password on every (re)connect.
    pub fn with_password(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Credentials::Password {
            username: username.into(),
            password: password.into(),
        };
        self
    }

    /// Send frames in `encoding`.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Wait at most `timeout` for a reply, unless a call sets its own.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Reconnect with `backoff`.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Let [`Client::connect`](crate::Client::connect) wait until the hub is reachable.
    pub fn with_wait_for_hub(mut self, wait: bool) -> Self {
        self.wait_for_hub = wait;
        self
    }
}

/// Turns what a user may write for the hub's address into its WebSocket URL, the way the
/// `flowhub` CLI reads `FLOWHUB_URL`:
///
/// - `ws://…` and `wss://…` stay as they are;
/// - `http://host:port` and `https://host:port` (with no path, or `/`) become
///   `ws://host:port/ws` and `wss://host:port/ws`; with another path only the scheme changes;
/// - `host:port` alone becomes `ws://host:port/ws`.
///
/// ```
/// use flowhub_client::normalize_url;
/// assert_eq!(normalize_url("http://127.0.0.1:7340/"), "ws://127.0.0.1:7340/ws");
/// assert_eq!(normalize_url("https://hub.example/flow/ws"), "wss://hub.example/flow/ws");
/// assert_eq!(normalize_url("localhost:7340"), "ws://localhost:7340/ws");
/// assert_eq!(normalize_url("ws://10.0.0.1:7340/ws"), "ws://10.0.0.1:7340/ws");
/// ```
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("ws://") || lower.starts_with("wss://") {
        return url.to_string();
    }
    let (scheme, rest) = if lower.starts_with("http://") {
        ("ws", &url["http://".len()..])
    } else if lower.starts_with("https://") {
        ("wss", &url["https://".len()..])
    } else {
        ("ws", url)
    };
    match rest.find('/') {
        None => format!("{scheme}://{rest}/ws"),
        Some(i) if rest[i..] == *"/" => format!("{scheme}://{}/ws", &rest[..i]),
        Some(_) => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_like_the_cli() {
        let c = ClientConfig::from_vars([("X", "1")]).unwrap();
        assert_eq!(c.url, DEFAULT_URL);
        assert_eq!(c.credentials, Credentials::None);

        let c = ClientConfig::from_vars([
            ("FLOWHUB_URL", "http://10.1.2.3:7000"),
            ("FLOWHUB_TOKEN", "t0k"),
            ("FLOWHUB_USER", "ignored"),
        ])
        .unwrap();
        assert_eq!(c.url, "ws://10.1.2.3:7000/ws");
        assert_eq!(c.credentials, Credentials::Token("t0k".into()));

        let c = ClientConfig::from_vars([
            ("FLOWHUB_USER", "admin"),
            ("FLOWHUB_PASSWORD", "pw"),
            ("FLOWHUB_TOKEN", ""),
        ])
        .unwrap();
        assert_eq!(
            c.credentials,
            Credentials::Password {
                username: "admin".into(),
                password: "pw".into()
            }
        );
        assert!(
            !format!("{c:?}").contains("pw\""),
            "the password is not in Debug"
        );

        assert!(matches!(
            ClientConfig::from_vars([("FLOWHUB_USER", "admin")]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            ClientConfig::from_vars([("FLOWHUB_PASSWORD", "pw")]),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn urls() {
        assert_eq!(normalize_url("HTTP://h:1"), "ws://h:1/ws");
        assert_eq!(normalize_url("https://h"), "wss://h/ws");
        assert_eq!(normalize_url(" ws://h:1/ws "), "ws://h:1/ws");
        assert_eq!(normalize_url("http://h:1/other"), "ws://h:1/other");
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 2.0,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
        let mut seen = std::collections::HashSet::new();
        for attempt in 0..50 {
            let d = b.delay(attempt % 6);
            let c = b.ceiling(attempt % 6);
            assert!(d >= c / 2 && d <= c, "{d:?} within [{:?}, {c:?}]", c / 2);
            seen.insert(d);
        }
        assert!(seen.len() > 10, "delays are jittered");
    }
}
