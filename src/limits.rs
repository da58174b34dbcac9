//! The names of the hub's limits and the counter of their breaches.
//!
//! Every limit a client can run into (`protocol/SPEC.md` section 9) is answered with a
//! documented error or close code where it is enforced, and counted here in
//! `flowhub_limit_breaches_total{limit="<name>"}` through the `metrics` facade. The name is
//! the configuration key of the limit, so an operator who sees a counter grow knows which
//! setting to look at. Without a recorder installed (tests, embedders) a count is a no-op.
//!
//! This module knows no socket, call or store: any layer may count a breach.

/// The counter's name.
pub const BREACHES: &str = "flowhub_limit_breaches_total";

/// The limits counted, by their configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The hub held `max_connections`: the next connection waits in the accept queue.
    MaxConnections,
    /// One address held `max_connections_per_address`: a new connection is refused.
    MaxConnectionsPerAddress,
    /// An address sent HTTP requests faster than `http_requests_per_s_per_address` (429).
    HttpRequestsPerAddress,
    /// A TLS handshake, an HTTP request head or body did not arrive within
    /// `handshake_timeout_ms`.
    HandshakeTimeout,
    /// A WebSocket message over `max_frame_bytes` (`TOO_LARGE`, or close 1009 past 4×).
    MaxFrameBytes,
    /// An HTTP body over `max_body_bytes` (413).
    MaxBodyBytes,
    /// A socket reached `max_calls_in_flight`: the hub stopped reading it for a while.
    MaxCallsInFlight,
    /// A subscribe past `max_subscriptions` (`TOO_LARGE`).
    MaxSubscriptions,
    /// A subscriber fell `max_outbound_bytes` behind (close 3008).
    MaxOutboundBytes,
    /// A LIST page over `max_list_items` (`TOO_LARGE`).
    MaxListItems,
    /// A WebSocket did not authenticate within `auth.auth_timeout_ms` (close 4001).
    AuthTimeout,
    /// A WebSocket sent nothing, not even a pong, for `idle_timeout_ms` (close 4002).
    IdleTimeout,
}

impl Limit {
    /// The `limit` label: the configuration key.
    pub fn name(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerAddress => "max_connections_per_address",
            Limit::HttpRequestsPerAddress => "http_requests_per_s_per_address",
            Limit::HandshakeTimeout => "handshake_timeout_ms",
            Limit::MaxFrameBytes => "max_frame_bytes",
            Limit::MaxBodyBytes => "max_body_bytes",
            Limit::MaxCallsInFlight => "max_calls_in_flight",
            Limit::MaxSubscriptions => "max_subscriptions",
            Limit::MaxOutboundBytes => "max_outbound_bytes",
            Limit::MaxListItems => "max_list_items",
            Limit::AuthTimeout => "auth_timeout_ms",
            Limit::IdleTimeout => "idle_timeout_ms",
        }
    }
}

/// Counts one breach of `limit`.
pub fn breach(limit: Limit) {
    metrics::counter!(BREACHES, "limit" => limit.name()).increment(1);
}

/// The WebSocket close code of a connection that sent nothing (no frame, no pong) for
/// `idle_timeout_ms`. Private-use range, next to 4001 (not authenticated in time).
pub const CLOSE_IDLE: u16 = 4002;

/// The WebSocket close code of an upgrade refused because its address holds
/// `max_connections_per_address` already: 1013 "Try Again Later" (RFC 6455's registry:
/// a temporary condition of the server).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
