//! A client for flowhub, the real-time record and RPC hub
//! serving the Flow API, over its WebSocket (protocol v1, `protocol/SPEC.md` in the flowhub
//! repository).
//!
//! With one [`Client`] a process can
//!
//! - **call** any endpoint, with any number of calls in flight on one socket
//!   ([`Client::call`], [`Call`]);
//! - **provide** endpoints: calls to them, made by anyone over WebSocket or HTTP, are routed
//!   to async handlers in this process ([`Client::provide`], [`Invocation`], [`Answer`]);
//! - **publish** changes to objects it keeps in its own store ([`Client::publish`]);
//! - **subscribe** to an object, an endpoint or a live query and receive every change once,
//!   in order, resumed without loss after a reconnect ([`Client::subscribe`],
//!   [`Subscribe`], [`Subscription`]);
//! - survive a hub restart or a broken network: it reconnects with capped, jittered
//!   exponential backoff and provides its endpoints again.
//!
//! ```no_run
//! use flowhub_client::{Answer, Call, Client, ClientConfig, Invocation, Method, Provide};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), flowhub_client::Error> {
//! // FLOWHUB_URL (default ws://127.0.0.1:7340/ws), FLOWHUB_TOKEN or FLOWHUB_USER/PASSWORD.
//! let client = Client::connect(ClientConfig::from_env()?).await?;
//!
//! // Serve RUN on inventory/device (other methods go to the hub's record store).
//! client
//!     .provide(
//!         Provide::new("inventory/device").application("inventory").methods([Method::Run]),
//!         |inv: Invocation| async move {
//!             match inv.data.as_ref().and_then(|d| d.get("action")).and_then(|a| a.as_str()) {
//!                 Some("reboot") => Answer::ok(json!({"rebooting": true, "id": inv.objectid})),
//!                 Some(other) => Answer::error("UNKNOWN_ACTION", format!("no action {other}")),
//!                 None => Answer::reject("not an action for this provider"),
//!             }
//!         },
//!     )
//!     .await?;
//!
//! // Call it like anybody else would.
//! let reply = client
//!     .call(Call::run("inventory/device", "dev-1", json!({"action": "reboot"})))
//!     .await?;
//! assert_eq!(reply.data["rebooting"], true);
//! # Ok(())
//! # }
//! ```
//!
//! # Failures
//!
//! An error envelope from the hub (or from a provider behind it) is [`Error::Hub`] with its
//! `errorcode`, `message` and `errorid`. A call whose frame reached the socket before the
//! connection dropped fails with [`Error::Disconnected`] and is **not** resent — it may have
//! been applied — while calls still queued go out on the next connection. Every wait has a
//! deadline ([`ClientConfig::call_timeout`] or [`Call::timeout`]) and every internal queue is
//! bounded (see [`ClientConfig`]). Frames from the hub that the client cannot read are logged
//! (with `tracing`) and skipped; they never panic the client.
//!
//! # Encoding
//!
//! Frames go out as JSON text by default, or MessagePack with
//! [`ClientConfig::with_encoding`]; replies are read in either encoding.

mod call;
mod client;
mod codec;
mod config;
mod connection;
mod error;
mod provider;
mod subscription;

pub use call::{Call, ChangeKind, Method, Publish, Reply};
pub use client::{Client, WeakClient};
pub use config::{normalize_url, Backoff, ClientConfig, Credentials, Encoding, DEFAULT_URL};
pub use connection::ConnectionState;
pub use error::{Error, HubError};
pub use provider::{Answer, BoxAnswer, Caller, Handler, Invocation, Policy, Provide};
pub use subscription::{
    Event, Live, Snapshot, Subscribe, Subscription, SubscriptionItem, Target,
    DEFAULT_SUBSCRIPTION_BUFFER,
};

/// Re-exported so handlers and callers can build values without a direct dependency.
pub use serde_json::{json, Value};
