//! Client subcommands: small tools that talk to a running hub over its WebSocket, for
//! operators and scripts. They reach the hub at `FLOWHUB_URL` (default: the local hub) and
//! authenticate with `FLOWHUB_TOKEN` (or `FLOWHUB_USER` / `FLOWHUB_PASSWORD` once the hub
//! checks credentials).

pub mod call;

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
