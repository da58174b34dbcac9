//! Password hashing with Argon2id, off the async threads and bounded.
//!
//! Argon2id is slow and memory-hard on purpose. Each hash or verification runs on tokio's
//! blocking pool, and a semaphore lets only `max_concurrent_hashes` run at once, so a flood
//! of logins queues instead of taking every core from the calls the hub serves.
//!
//! Stored hashes are PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), which carry their
//! own parameters: changing the configured parameters affects new hashes only, and old ones
//! still verify.
//!
//! An unknown user is verified against a dummy hash made at start with the same parameters,
//! so "no such user" and "wrong password" take the same time.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use super::config::AuthConfig;
use crate::protocol::FlowError;

/// Shortest password accepted for a user.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (Argon2 takes any length; this bounds the work per request).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The Argon2id parameters the configuration names.
pub fn params(config: &AuthConfig) -> Result<Params, String> {
    Params::new(
        config.argon2_memory_kib,
        config.argon2_iterations,
        config.argon2_parallelism,
        None,
    )
    .map_err(|e| e.to_string())
}

/// Hashes and verifies passwords. Cloning is shallow.
#[derive(Clone)]
pub struct Hasher {
    argon: Arc<Argon2<'static>>,
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified when the user does not exist.
    dummy: Arc<str>,
}

impl Hasher {
    pub fn new(config: &AuthConfig) -> Result<Hasher, String> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params(config)?);
        let dummy = hash_with(&argon, &super::tokens::random_string(24))?;
        Ok(Hasher {
            argon: Arc::new(argon),
            permits: Arc::new(Semaphore::new(config.max_concurrent_hashes)),
            dummy: dummy.into(),
        })
    }

    /// A PHC string for `password` with a fresh random salt. Blocking: use [`Hasher::hash`]
    /// on async threads.
    pub fn hash_blocking(&self, password: &str) -> Result<String, String> {
        hash_with(&self.argon, password)
    }

    /// A PHC string for `password`, computed on the blocking pool.
    pub async fn hash(&self, password: String) -> Result<String, FlowError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| FlowError::internal("the password hasher is closed"))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.hash_blocking(&password))
            .await
            .map_err(|e| FlowError::internal(format!("password hashing failed: {e}")))?
            .map_err(|e| FlowError::internal(format!("password hashing failed: {e}")))
    }

    /// Whether `password` matches `phc`; with `phc = None` (no such user) the dummy hash is
    /// verified instead and the answer is `false`, in the same time.
    pub async fn verify(&self, password: String, phc: Option<Arc<str>>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.clone());
        let argon = self.argon.clone();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        ok && known
    }
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a new password's length.
pub fn validate_password(password: &str) -> Result<(), FlowError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(FlowError::invalid(format!(
            "a password has at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(FlowError::invalid(format!(
            "a password has at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> AuthConfig {
        AuthConfig {
            argon2_memory_kib: 256,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_carry_their_parameters() {
        let h = Hasher::new(&quick()).unwrap();
        let phc = h.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(
            h.verify("correct horse".into(), Some(phc.clone().into()))
                .await
        );
        assert!(
            !h.verify("wrong horse".into(), Some(phc.clone().into()))
                .await
        );
        assert!(!h.verify("correct horse".into(), None).await);
        // A hash made with other parameters still verifies.
        let other = Hasher::new(&AuthConfig {
            argon2_memory_kib: 512,
            ..quick()
        })
        .unwrap();
        assert!(other.verify("correct horse".into(), Some(phc.into())).await);
    }
}
