//! The fixed catalogue of error codes and the one error type that crosses the wire.
//!
//! Every layer maps its own failures to a [`FlowError`] exactly once; the transport turns it
//! into the seed's error envelope (`success: false`, `message`, `errorcode`, `errorid`) and, for
//! HTTP, into the status code of the error's class.

use std::fmt;

/// An error code of the wire protocol. The catalogue is closed: `protocol/SPEC.md` lists every
/// code with its meaning and HTTP status, and clients may match on the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    DoNotExist,
    InvalidRequest,
    InvalidParameters,
    Unauthorized,
    Forbidden,
    Conflict,
    AlreadyExists,
    NoProvider,
    ProviderTimeout,
    ProviderError,
    ProviderLost,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, in catalogue order (used by the docs test and the OpenAPI generator).
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::DoNotExist,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidParameters,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Conflict,
        ErrorCode::AlreadyExists,
        ErrorCode::NoProvider,
        ErrorCode::ProviderTimeout,
        ErrorCode::ProviderError,
        ErrorCode::ProviderLost,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as it appears in `errorcode`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DoNotExist => "DO_NOT_EXIST",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::InvalidParameters => "INVALID_PARAMETERS",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::NoProvider => "NO_PROVIDER",
            ErrorCode::ProviderTimeout => "PROVIDER_TIMEOUT",
            ErrorCode::ProviderError => "PROVIDER_ERROR",
            ErrorCode::ProviderLost => "PROVIDER_LOST",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status code of the error's class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::InvalidParameters => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::DoNotExist => 404,
            ErrorCode::Conflict | ErrorCode::AlreadyExists => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::ProviderError | ErrorCode::ProviderLost => 502,
            ErrorCode::NoProvider | ErrorCode::Unavailable => 503,
            ErrorCode::ProviderTimeout => 504,
        }
    }

    /// Parses a code name; used by clients and tests.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call: a code from the catalogue and a message meant for a human.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FlowError {
    pub code: ErrorCode,
    pub message: String,
}

impl FlowError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FlowError {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DoNotExist, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn params(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameters, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
