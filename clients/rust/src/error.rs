//! Errors: what the hub (or a provider behind it) answered, and what went wrong locally.
//!
//! A call fails in one of two ways. Either the hub answered `success: false` — then
//! [`Error::Hub`] carries the envelope's `errorcode`, `message` and `errorid` unchanged — or the
//! answer never came: the connection dropped while the call was in flight
//! ([`Error::Disconnected`]), the deadline passed ([`Error::Timeout`]), the client was closed
//! ([`Error::Closed`]), and so on. Match on [`Error::errorcode`] for the first kind; the
//! catalogue of codes is section 8 of `protocol/SPEC.md` (providers may add their own).

use std::fmt;

/// An error envelope from the hub: `success: false` with its code, message and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    /// The envelope's `errorcode`, e.g. `DO_NOT_EXIST`, `NO_PROVIDER`, or a provider's own code.
    pub errorcode: String,
    /// The envelope's `message`, for humans; it may change between hub versions.
    pub message: String,
    /// The envelope's `errorid`: the hub's log line for this error carries the same UUID.
    pub errorid: Option<String>,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.errorcode, self.message)?;
        if let Some(id) = &self.errorid {
            write!(f, " (errorid {id})")?;
        }
        Ok(())
    }
}

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hub answered `success: false` (its own error or a provider's, passed on unchanged).
    #[error("{0}")]
    Hub(HubError),
    /// The connection was lost after the frame had been handed to the socket and before its
    /// reply came. The hub may or may not have carried the call out: the client never resends
    /// such a frame by itself, because it may have been a write.
    #[error("the connection to the hub was lost before the reply came")]
    Disconnected,
    /// No reply within the call's deadline (the frame may have been sent; see `Disconnected`).
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The client was closed (by [`Client::close`](crate::Client::close) or by dropping it).
    #[error("the client is closed")]
    Closed,
    /// The first connection to the hub could not be made.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The WebSocket URL tried.
        url: String,
        /// What went wrong (refused, DNS, handshake, TLS not supported, …).
        reason: String,
    },
    /// Logging in with user name and password failed (`CREATE` on `auth/token`).
    #[error("login failed: {0}")]
    Login(HubError),
    /// The configuration is unusable (a bad URL, a user without a password, …).
    #[error("configuration: {0}")]
    Config(String),
    /// The call was refused before sending: its frame is larger than `max_frame_bytes`, or it
    /// cannot be encoded.
    #[error("the call cannot be sent: {0}")]
    Invalid(String),
    /// The hub's reply could not be understood (a frame this client version does not know).
    #[error("unexpected reply from the hub: {0}")]
    Protocol(String),
}

impl Error {
    /// The hub's `errorcode` if the hub answered with an error envelope.
    pub fn errorcode(&self) -> Option<&str> {
        match self {
            Error::Hub(e) | Error::Login(e) => Some(&e.errorcode),
            _ => None,
        }
    }

    /// The hub's error envelope if there is one.
    pub fn hub(&self) -> Option<&HubError> {
        match self {
            Error::Hub(e) | Error::Login(e) => Some(e),
            _ => None,
        }
    }

    /// Whether trying the same call again later may succeed without changing it: the hub was
    /// unreachable, overloaded or had no provider, or the call timed out. For writes, a retry
    /// after `Disconnected` or `Timeout` may apply the write twice; use ids or expected
    /// versions to make such retries safe.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Disconnected | Error::Timeout(_) | Error::Connect { .. } => true,
            Error::Hub(e) => matches!(
                e.errorcode.as_str(),
                "NO_PROVIDER"
                    | "PROVIDER_TIMEOUT"
                    | "PROVIDER_LOST"
                    | "RATE_LIMITED"
                    | "UNAVAILABLE"
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_show_code_message_and_id() {
        let e = Error::Hub(HubError {
            errorcode: "DO_NOT_EXIST".into(),
            message: "Object does not exist".into(),
            errorid: Some("7981f103".into()),
        });
        assert_eq!(
            e.to_string(),
            "DO_NOT_EXIST: Object does not exist (errorid 7981f103)"
        );
        assert_eq!(e.errorcode(), Some("DO_NOT_EXIST"));
        assert!(!e.is_retryable());
        assert!(Error::Disconnected.is_retryable());
        assert_eq!(Error::Closed.errorcode(), None);
    }
}
