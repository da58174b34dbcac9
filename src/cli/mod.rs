//! Subcommands besides `serve`, for operators and scripts.
//!
//! Client subcommands (`call`, `watch`) talk to a running hub over its WebSocket. They reach the hub at
//! `FLOWHUB_URL` (default: the local hub) and authenticate with `FLOWHUB_TOKEN` (or
//! `FLOWHUB_USER` / `FLOWHUB_PASSWORD` once the hub checks credentials).
//!
//! Data directory tools (`repair`, `log dump`) work on the files of a data directory: `repair`
//! takes the directory's lock (so never while a hub runs on it), `log dump` only reads.

use std::path::PathBuf;

use crate::config::{Config, Overrides};

pub mod backup;
pub mod call;
pub mod log;
pub mod repair;
pub mod watch;

/// Which data directory a data directory tool works on: the same layers as `flowhub serve`
/// (configuration file, then `FLOWHUB_DATA_DIR`, then `--data-dir`).
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// TOML configuration file to take `data_dir` from [env: FLOWHUB_CONFIG].
    #[arg(long, env = "FLOWHUB_CONFIG", hide_env = true)]
    pub config: Option<PathBuf>,
    /// Data directory [env: FLOWHUB_DATA_DIR] [default: ./flowhub-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// The data directory these arguments (and the environment) name.
    pub fn resolve(&self) -> Result<PathBuf, String> {
        let flags = Overrides {
            data_dir: self.data_dir.clone(),
            ..Overrides::default()
        };
        Config::load(self.config.as_deref(), std::env::vars(), &flags).map(|c| c.data_dir)
    }
}

/// Where the hub's WebSocket is when `FLOWHUB_URL` is not set.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:7340/ws";

/// The WebSocket URL of a hub named the way users write it: `ws://` and `wss://` URLs as they
/// are; `http://host:port` (or `https://`, or a bare `host:port`) is that hub's `/ws`; a path
/// other than `/` is kept.
pub fn ws_url(url: &str) -> String {
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
        Some(i) if &rest[i..] == "/" => format!("{scheme}://{}/ws", &rest[..i]),
        Some(_) => format!("{scheme}://{rest}"),
    }
}

impl ClientArgs {
    /// The hub's WebSocket URL (see [`ws_url`]).
    pub fn ws_url(&self) -> String {
        ws_url(&self.url)
    }
}

/// Connection settings shared by every client subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The hub's URL: ws://host:port/ws, or http://host:port (its /ws is used).
    #[arg(long, env = "FLOWHUB_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Authentication token.
    #[arg(long, env = "FLOWHUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// User name, to log in with a password.
    #[arg(long, env = "FLOWHUB_USER")]
    pub user: Option<String>,
    /// Password of `--user`.
    #[arg(long, env = "FLOWHUB_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn hub_urls_as_users_write_them() {
        for (given, want) in [
            ("ws://127.0.0.1:7340/ws", "ws://127.0.0.1:7340/ws"),
            ("http://10.1.2.3:7000", "ws://10.1.2.3:7000/ws"),
            ("http://10.1.2.3:7000/", "ws://10.1.2.3:7000/ws"),
            ("https://hub.example", "wss://hub.example/ws"),
            ("localhost:7340", "ws://localhost:7340/ws"),
            ("http://h:1/prefix/ws", "ws://h:1/prefix/ws"),
        ] {
            assert_eq!(super::ws_url(given), want, "{given}");
        }
    }
}
