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

/// Connection settings shared by every client subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The hub's WebSocket URL.
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
