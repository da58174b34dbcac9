//! flowhub: a real-time record and RPC hub serving the Flow API over WebSocket and HTTP.
//!
//! The path of a call: [`transport`] (bytes on a socket) → [`protocol`] (typed request) →
//! [`dispatch`] (what the call means) → [`store`] (records, queries, the sequencer) →
//! [`log`] (durability). See `ARCHITECTURE.md` for the map.

pub mod auth;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod log;
pub mod ops;
pub mod protocol;
pub mod query;
pub mod router;
pub mod server;
pub mod store;
pub mod transport;
