//! Tokens: random bearer secrets, kept only as hashes.
//!
//! A token is `fh1_` followed by 32 random bytes in base64url (256 bits: guessing is
//! hopeless, so a fast hash is the right way to store it; passwords, which are guessable,
//! get Argon2id instead). The hub keeps the SHA-256 of the token, in hex, as the token's id:
//! in its cache, in the record store (`auth/token`, with the user and the expiry) and so in
//! the log and the snapshots. The token itself exists only in the reply that hands it out.
//!
//! A [`TokenEntry`] is shared by every connection that logged in with it: revoking it cancels
//! its `revoked` token, which closes those connections, and calls check it on every use.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// What every token starts with (lets secret scanners recognize leaked tokens).
pub const PREFIX: &str = "fh1_";

/// A fresh random token.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A random printable string of `n` bytes of entropy (generated passwords, dummy hashes).
pub fn random_string(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The id a token is stored under: SHA-256 of the token, in hex.
pub fn token_id(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// One live token.
#[derive(Debug)]
pub struct TokenEntry {
    /// SHA-256 of the token, hex: its id in the store and in `auth/token`.
    pub id: Arc<str>,
    pub user: Arc<str>,
    /// When it was issued and when it stops working, Unix milliseconds.
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// Cancelled when the token is revoked (DELETE, its user deleted or its password changed
    /// by an admin): sessions logged in with it close.
    pub revoked: CancellationToken,
}

impl TokenEntry {
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }

    /// Usable now: neither revoked nor expired.
    pub fn valid(&self) -> bool {
        !self.revoked.is_cancelled() && !self.expired(now_ms())
    }

    /// How the token is shown (never the token itself).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "id": &*self.id,
            "user": &*self.user,
            "issued": rfc3339(self.issued_ms),
            "expires": rfc3339(self.expires_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_by_hash() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        let id = token_id(&a);
        assert_eq!(id.len(), 64);
        assert!(!id.contains(&a[PREFIX.len()..]));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
