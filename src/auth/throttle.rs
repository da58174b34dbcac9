//! Login throttling: failed password checks counted per user name and per client address.
//!
//! Each key counts failures in a fixed window that starts with its first failure. Once a key
//! has `limit` failures in its window, every further attempt on it is refused with
//! `RATE_LIMITED` until the window ends — before any password is hashed, so a flood costs
//! the hub almost nothing. A success clears the user's count (not the address's: one good
//! password does not excuse a guessing run from the same place).
//!
//! The table is bounded: past [`MAX_KEYS`] entries, ended windows are swept out, and if it is
//! still full the attempt is refused as if throttled (fail closed under a flood of names).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::protocol::{ErrorCode, FlowError};

/// Most keys (user names and addresses) tracked at once.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    since: Instant,
}

/// Failure counts per user and per address.
pub struct Throttle {
    counts: DashMap<Key, Count>,
    limit: u32,
    window: Duration,
}

impl Throttle {
    pub fn new(limit: u32, window: Duration) -> Throttle {
        Throttle {
            counts: DashMap::new(),
            limit,
            window,
        }
    }

    /// The window length, for `Retry-After`.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn keys(user: &str, addr: Option<IpAddr>) -> impl Iterator<Item = Key> {
        std::iter::once(Key::User(user.to_string())).chain(addr.map(Key::Addr))
    }

    /// `Err(RATE_LIMITED)` when the user or the address has used up its failures.
    pub fn check(&self, user: &str, addr: Option<IpAddr>) -> Result<(), FlowError> {
        let now = Instant::now();
        for key in Self::keys(user, addr) {
            let Some(c) = self.counts.get(&key).map(|c| *c) else {
                continue;
            };
            let ends = c.since + self.window;
            if c.failures >= self.limit && now < ends {
                let secs = (ends - now).as_secs().max(1);
                let who = match key {
                    Key::User(_) => "this user",
                    Key::Addr(_) => "this address",
                };
                return Err(FlowError::new(
                    ErrorCode::RateLimited,
                    format!("too many failed logins for {who}; try again in {secs} s"),
                ));
            }
        }
        Ok(())
    }

    /// Counts a failed attempt against the user and the address.
    pub fn failed(&self, user: &str, addr: Option<IpAddr>) {
        let now = Instant::now();
        if self.counts.len() >= MAX_KEYS {
            self.counts.retain(|_, c| now < c.since + self.window);
        }
        for key in Self::keys(user, addr) {
            if self.counts.len() >= MAX_KEYS && !self.counts.contains_key(&key) {
                continue;
            }
            let mut c = self.counts.entry(key).or_insert(Count {
                failures: 0,
                since: now,
            });
            if now >= c.since + self.window {
                *c = Count {
                    failures: 0,
                    since: now,
                };
            }
            c.failures = c.failures.saturating_add(1);
        }
    }

    /// A successful login clears the user's count.
    pub fn succeeded(&self, user: &str) {
        self.counts.remove(&Key::User(user.to_string()));
    }

    /// Whether the table is full: new names are refused rather than tracked without bound.
    pub fn full(&self) -> bool {
        self.counts.len() >= MAX_KEYS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_user_and_per_address() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check("alice", Some(a)).is_ok());
            t.failed("alice", Some(a));
        }
        let e = t.check("alice", Some(b)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        // The address is throttled for other names too.
        assert!(t.check("bob", Some(a)).is_err());
        assert!(t.check("bob", Some(b)).is_ok());
        t.succeeded("alice");
        assert!(t.check("alice", Some(b)).is_ok());
    }

    #[test]
    fn windows_end() {
        let t = Throttle::new(1, Duration::from_millis(20));
        t.failed("x", None);
        assert!(t.check("x", None).is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(t.check("x", None).is_ok());
    }
}
