//! The layered configuration: defaults in code, then a TOML file (`--config`), then
//! `FLOWHUB_*` environment variables, then command-line flags; each layer overrides the one
//! before. Every setting is a field of [`Config`]; the same names are used in the file (as
//! keys) and in the environment (upper-cased, prefixed with `FLOWHUB_`).
//!
//! The configuration is read once at start; nothing reads files or the environment after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Every setting of the hub. See `docs/CONFIGURATION.md` for a commented example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the one listener: HTTP `/api/...`, WebSocket `/ws`, `/health`.
    /// `FLOWHUB_LISTEN`, default `127.0.0.1:7340`.
    pub listen: String,
    /// Directory of the hub's durable state. `FLOWHUB_DATA_DIR`, default `./flowhub-data`.
    pub data_dir: PathBuf,
    /// When writes reach the disk: `always` (fsync before every acknowledgement, the
    /// default), `interval` (fsync every `fsync_interval_ms`; a machine crash may lose that
    /// window), `never` (no fsync: tests and benchmarks), `memory` (no log at all: nothing
    /// survives a stop). `FLOWHUB_DURABILITY`.
    pub durability: String,
    /// The fsync period of `durability = "interval"`.
    pub fsync_interval_ms: u64,
    /// A log segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Under `durability = "always"`, log segments are written full of zeros ahead of time
    /// (one spare segment in the background), so that an fsync writes the data alone.
    /// `FLOWHUB_PREALLOCATE`.
    pub preallocate: bool,
    /// A snapshot is taken once the log written since the last one is at least this large
    /// and at least as large as that snapshot; the segments it covers are then removed.
    pub snapshot_min_bytes: u64,
    /// Log filter in `tracing` syntax (`info`, `flowhub=debug`). `FLOWHUB_LOG`.
    pub log: String,
    /// `text` (human) or `json` (one object per line). `FLOWHUB_LOG_FORMAT`.
    pub log_format: String,
    /// Largest WebSocket message answered normally; larger ones get `TOO_LARGE`, and messages
    /// over four times this close the connection with code 1009.
    pub max_frame_bytes: usize,
    /// Largest HTTP request body; larger ones get `TOO_LARGE` (HTTP 413).
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a frame or body.
    pub max_depth: usize,
    /// Connections held at once; further connections wait in the accept queue.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 address: its /64) may hold at once; a
    /// further one is refused (HTTP 429, or close 1013 after a WebSocket upgrade). 0: no
    /// limit. Behind a reverse proxy every client has the proxy's address.
    pub max_connections_per_address: usize,
    /// HTTP requests one client address may send per second (as many at once); more get
    /// `RATE_LIMITED` (429) with `Retry-After`. 0: no limit.
    pub http_requests_per_s_per_address: u64,
    /// Calls in flight on one WebSocket; past this the hub stops reading from that socket
    /// until a reply has been sent.
    pub max_calls_in_flight: usize,
    /// Frames waiting to be written to one WebSocket.
    pub outbound_queue: usize,
    /// Time a new connection has to complete its TLS handshake and send its HTTP request or
    /// WebSocket upgrade (and then an HTTP request its body).
    pub handshake_timeout_ms: u64,
    /// A WebSocket that sent no frame for this long is sent a ping (answered by every
    /// WebSocket client, browsers included, without the application's help). 0: no pings.
    pub ping_interval_ms: u64,
    /// A WebSocket that sent nothing, not even a pong, for this long is closed with 4002.
    /// At least twice `ping_interval_ms`. 0: never.
    pub idle_timeout_ms: u64,
    /// Time calls in flight get to finish on SIGTERM or Ctrl-C.
    pub shutdown_grace_ms: u64,
    /// A LIST on a collection at least this large indexes the fields it filters or sorts on.
    pub auto_index_min: usize,
    /// Most objects one LIST reply may hold; a LIST whose page would hold more is refused
    /// with `TOO_LARGE` and must paginate.
    pub max_list_items: usize,
    /// Recent change events kept so that a client that reconnects gets what it missed.
    pub resume_window: usize,
    /// Approximate bytes those events (with the object states they hold) may take.
    pub resume_window_bytes: usize,
    /// Bytes of log segments a snapshot covers that are kept (the newest) rather than
    /// removed, so that clients further back than the window, or from before a restart,
    /// resume from the log. 0 removes them all; unset: as much as `snapshot_min_bytes`
    /// (the log on disk at most doubles).
    pub resume_log_bytes: Option<u64>,
    /// Bytes of change events one connection may have waiting to be written; a subscriber
    /// that falls further behind is disconnected with close code 3008.
    pub max_outbound_bytes: usize,
    /// Subscriptions one WebSocket connection may hold.
    pub max_subscriptions: usize,
    /// Fields indexed from the start, per endpoint: `"address/address" = ["city"]`.
    pub index: BTreeMap<String, Vec<String>>,
    /// How long a call routed to a provider may take before the caller gets
    /// `PROVIDER_TIMEOUT`; a caller may ask for less, never more.
    pub call_timeout_ms: u64,
    /// `call_timeout_ms` per endpoint: `"scheduler/queue" = 60000`.
    pub call_timeout: BTreeMap<String, u64>,
    /// Authentication: `[auth]` (see `docs/CONFIGURATION.md`), or `auth = "none"`.
    #[serde(deserialize_with = "crate::auth::config::deserialize")]
    pub auth: crate::auth::AuthConfig,
    /// PEM certificate chain: with `tls_key`, the listener speaks TLS (HTTPS and WSS).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7340".into(),
            data_dir: PathBuf::from("./flowhub-data"),
            durability: "always".into(),
            fsync_interval_ms: 100,
            segment_bytes: 64 << 20,
            preallocate: true,
            snapshot_min_bytes: 64 << 20,
            log: "info".into(),
            log_format: "text".into(),
            max_frame_bytes: 1 << 20,
            max_body_bytes: 1 << 20,
            max_depth: 32,
            max_connections: 16_384,
            max_connections_per_address: 1024,
            http_requests_per_s_per_address: 0,
            max_calls_in_flight: 256,
            outbound_queue: 1024,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            auto_index_min: 1000,
            max_list_items: 10_000,
            resume_window: 100_000,
            resume_window_bytes: 64 << 20,
            resume_log_bytes: None,
            max_outbound_bytes: 1 << 20,
            max_subscriptions: 1024,
            index: BTreeMap::new(),
            call_timeout_ms: 10_000,
            call_timeout: BTreeMap::new(),
            auth: crate::auth::AuthConfig::default(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub durability: Option<String>,
    pub log: Option<String>,
    pub log_format: Option<String>,
}

impl Config {
    /// Builds the configuration from all layers: `file` (if any), then `env`, then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, String> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        if let Some(v) = &flags.listen {
            config.listen.clone_from(v);
        }
        if let Some(v) = &flags.data_dir {
            config.data_dir.clone_from(v);
        }
        if let Some(v) = &flags.durability {
            config.durability.clone_from(v);
        }
        if let Some(v) = &flags.log {
            config.log.clone_from(v);
        }
        if let Some(v) = &flags.log_format {
            config.log_format.clone_from(v);
        }
        config.validate()?;
        Ok(config)
    }

    /// Applies `FLOWHUB_<FIELD>` variables. Unknown `FLOWHUB_*` names are left alone (client
    /// subcommands use `FLOWHUB_URL`, `FLOWHUB_TOKEN`, ...).
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), String> {
        fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("{key}={v:?} is not a number"))
        }
        for (key, v) in env {
            let Some(name) = key.strip_prefix("FLOWHUB_") else {
                continue;
            };
            match name {
                "LISTEN" => self.listen = v,
                "DATA_DIR" => self.data_dir = PathBuf::from(v),
                "DURABILITY" => self.durability = v,
                "FSYNC_INTERVAL_MS" => self.fsync_interval_ms = num(&key, &v)?,
                "SEGMENT_BYTES" => self.segment_bytes = num(&key, &v)?,
                "PREALLOCATE" => {
                    self.preallocate = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("{key}={v:?} is not true or false"))?
                }
                "SNAPSHOT_MIN_BYTES" => self.snapshot_min_bytes = num(&key, &v)?,
                "LOG" => self.log = v,
                "LOG_FORMAT" => self.log_format = v,
                "MAX_FRAME_BYTES" => self.max_frame_bytes = num(&key, &v)?,
                "MAX_BODY_BYTES" => self.max_body_bytes = num(&key, &v)?,
                "MAX_DEPTH" => self.max_depth = num(&key, &v)?,
                "MAX_CONNECTIONS" => self.max_connections = num(&key, &v)?,
                "MAX_CONNECTIONS_PER_ADDRESS" => self.max_connections_per_address = num(&key, &v)?,
                "MAX_CALLS_IN_FLIGHT" => self.max_calls_in_flight = num(&key, &v)?,
                "OUTBOUND_QUEUE" => self.outbound_queue = num(&key, &v)?,
                "HANDSHAKE_TIMEOUT_MS" => self.handshake_timeout_ms = num(&key, &v)?,
                "HTTP_REQUESTS_PER_S_PER_ADDRESS" => {
                    self.http_requests_per_s_per_address = num(&key, &v)?
                }
                "PING_INTERVAL_MS" => self.ping_interval_ms = num(&key, &v)?,
                "IDLE_TIMEOUT_MS" => self.idle_timeout_ms = num(&key, &v)?,
                "SHUTDOWN_GRACE_MS" => self.shutdown_grace_ms = num(&key, &v)?,
                "AUTO_INDEX_MIN" => self.auto_index_min = num(&key, &v)?,
                "MAX_LIST_ITEMS" => self.max_list_items = num(&key, &v)?,
                "CALL_TIMEOUT_MS" => self.call_timeout_ms = num(&key, &v)?,
                "AUTH" => self.auth.mode = v,
                "ADMIN_USER" => self.auth.admin_user = v,
                "ADMIN_PASSWORD" => {
                    self.auth.admin_password =
                        (!v.is_empty()).then_some(crate::protocol::request::Secret(v))
                }
                "TOKEN_LIFETIME_S" => self.auth.token_lifetime_s = num(&key, &v)?,
                "AUTH_TIMEOUT_MS" => self.auth.auth_timeout_ms = num(&key, &v)?,
                "TLS_CERT" => self.tls_cert = Some(PathBuf::from(v)),
                "TLS_KEY" => self.tls_key = Some(PathBuf::from(v)),
                "RESUME_WINDOW" => self.resume_window = num(&key, &v)?,
                "RESUME_WINDOW_BYTES" => self.resume_window_bytes = num(&key, &v)?,
                "RESUME_LOG_BYTES" => self.resume_log_bytes = Some(num(&key, &v)?),
                "MAX_OUTBOUND_BYTES" => self.max_outbound_bytes = num(&key, &v)?,
                "MAX_SUBSCRIPTIONS" => self.max_subscriptions = num(&key, &v)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        if !matches!(
            self.durability.as_str(),
            "always" | "interval" | "never" | "memory"
        ) {
            return Err(format!(
                "durability must be \"always\", \"interval\", \"never\" or \"memory\", not {:?}",
                self.durability
            ));
        }
        if self.segment_bytes < 4096 {
            return Err("segment_bytes must be at least 4096".into());
        }
        if self.fsync_interval_ms == 0 {
            return Err("fsync_interval_ms must be at least 1".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format must be \"text\" or \"json\", not {:?}",
                self.log_format
            ));
        }
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_body_bytes", self.max_body_bytes),
            ("max_depth", self.max_depth),
            ("max_connections", self.max_connections),
            ("max_calls_in_flight", self.max_calls_in_flight),
            ("outbound_queue", self.outbound_queue),
            ("max_outbound_bytes", self.max_outbound_bytes),
            ("max_subscriptions", self.max_subscriptions),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let port_ok = self
            .listen
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!(
                "listen must be a host and port such as 127.0.0.1:7340, not {:?}",
                self.listen
            ));
        }
        for (name, v) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("shutdown_grace_ms", self.shutdown_grace_ms),
            ("call_timeout_ms", self.call_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_list_items == 0 {
            return Err("max_list_items must be at least 1".into());
        }
        // A quiet client answers a ping every ping_interval_ms; one whose last frame came
        // just after a check is pinged two intervals later, so the idle timeout must allow
        // two intervals or live clients would be closed.
        if self.idle_timeout_ms != 0
            && (self.ping_interval_ms == 0
                || self.idle_timeout_ms < self.ping_interval_ms.saturating_mul(2))
        {
            return Err(format!(
                "idle_timeout_ms ({}) must be at least twice ping_interval_ms ({}), and pings must be on (ping_interval_ms > 0); 0 turns the idle timeout off",
                self.idle_timeout_ms, self.ping_interval_ms
            ));
        }
        self.auth.validate()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together: give both or neither".into());
        }
        if self.max_depth > 128 {
            return Err("max_depth must be at most 128".into());
        }
        for (endpoint, ms) in &self.call_timeout {
            crate::protocol::request::validate_endpoint(endpoint)
                .map_err(|e| format!("call_timeout: {}", e.message))?;
            if *ms == 0 {
                return Err(format!("call_timeout.{endpoint:?} must be at least 1"));
            }
        }
        for (endpoint, fields) in &self.index {
            crate::protocol::request::validate_endpoint(endpoint)
                .map_err(|e| format!("index: {}", e.message))?;
            for f in fields {
                if crate::query::Path::parse(f).is_none() {
                    return Err(format!("index.{endpoint:?}: {f:?} is not a field path"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nmax_depth = 10\n[index]\n\"address/address\" = [\"city\"]\n",
        )
        .unwrap();
        let env = vec![
            ("FLOWHUB_LISTEN".to_string(), "127.0.0.1:2".to_string()),
            ("FLOWHUB_URL".into(), "x".into()),
        ];
        let c = Config::load(Some(&file), env.clone(), &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.max_depth, 10);
        assert_eq!(c.index["address/address"], vec!["city".to_string()]);
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        assert_eq!(
            Config::load(Some(&file), env, &flags).unwrap().listen,
            "127.0.0.1:3"
        );
        assert_eq!(
            Config::load(None, vec![], &Overrides::default()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn connection_limits_and_keep_alive_come_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.toml");
        std::fs::write(
            &file,
            "max_connections_per_address = 7\nping_interval_ms = 1000\nidle_timeout_ms = 5000\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), vec![], &Overrides::default()).unwrap();
        assert_eq!(
            (
                c.max_connections_per_address,
                c.ping_interval_ms,
                c.idle_timeout_ms
            ),
            (7, 1000, 5000)
        );
        let env = vec![
            (
                "FLOWHUB_MAX_CONNECTIONS_PER_ADDRESS".to_string(),
                "0".to_string(),
            ),
            ("FLOWHUB_PING_INTERVAL_MS".into(), "0".into()),
            ("FLOWHUB_IDLE_TIMEOUT_MS".into(), "0".into()),
        ];
        let c = Config::load(Some(&file), env, &Overrides::default()).unwrap();
        assert_eq!(
            (
                c.max_connections_per_address,
                c.ping_interval_ms,
                c.idle_timeout_ms
            ),
            (0, 0, 0)
        );
        // The idle timeout must leave a quiet client two intervals to answer a ping.
        for (ping, idle) in [("1000", "1999"), ("0", "5000")] {
            let env = vec![
                ("FLOWHUB_PING_INTERVAL_MS".to_string(), ping.to_string()),
                ("FLOWHUB_IDLE_TIMEOUT_MS".into(), idle.into()),
            ];
            let e = Config::load(None, env, &Overrides::default()).unwrap_err();
            assert!(e.contains("idle_timeout_ms"), "{e}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        assert!(Config::load(Some(&file), vec![], &Overrides::default()).is_err());
        let env = vec![("FLOWHUB_MAX_DEPTH".to_string(), "deep".to_string())];
        assert!(Config::load(None, env, &Overrides::default()).is_err());
    }
}
