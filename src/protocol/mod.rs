//! The wire protocol v1: calls, frames, the response envelope, error codes, parameters.
//!
//! This module turns bytes into typed calls and typed outcomes into bytes. It knows nothing of
//! sockets or storage: the transport feeds it bytes, the dispatcher gives it outcomes.
//! `protocol/SPEC.md` at the top of the repository is the human-readable contract.

pub mod envelope;
pub mod error;
pub mod frame;
pub mod params;
pub mod provider;
pub mod request;
pub mod subscribe;

pub use envelope::{encode, Data, Encoded, ErrorReply, Framing, Outcome, Success};
pub use error::{ErrorCode, FlowError};
pub use frame::{Encoding, Frame};
pub use request::{Caller, Method, Request};
