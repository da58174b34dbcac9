//! Connections per client address (`max_connections_per_address`), and HTTP requests per
//! client address and second (`http_requests_per_s_per_address`).
//!
//! Each accepted connection takes a place of its address for as long as it is open, its
//! WebSocket session included; the place is given back when the last holder drops its
//! [`Place`]. An address that holds its limit already gets no place: the listener answers
//! that connection with a refusal (HTTP 429, or close 1013 after a WebSocket upgrade) and
//! closes it.
//!
//! Addresses are grouped the way one client usually holds them: an IPv4 address alone
//! (IPv4-mapped IPv6 addresses count as their IPv4 address), an IPv6 address by its /64
//! prefix, since a single host usually holds a whole /64.
//!
//! The table is touched twice per connection (accept and close), never per frame; a
//! mutex over a map is enough, held only to add or subtract one.
//!
//! HTTP requests are metered per address by [`Rates`], a generic cell rate algorithm: each
//! address has a theoretical arrival time that every request pushes one interval (1 / rate)
//! further; a request that would push it more than one second's worth of requests ahead of
//! now is refused (429) until it is within. So an address may send `rate` requests at once,
//! then `rate` a second. One map lookup per request, no timer; addresses whose time has passed
//! are swept out every few seconds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// The number of open connections of every address that has one. Cloning is shallow.
#[derive(Clone, Default)]
pub struct Addresses {
    /// Per address group ([`group`]): its open connections. Entries at 0 are removed, so the
    /// map holds only addresses with a connection open.
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in the count of its address; dropping it gives the place back.
pub struct Place {
    addresses: Addresses,
    key: IpAddr,
}

impl Addresses {
    /// Takes a place for a connection from `ip`, unless its address holds `limit` already
    /// (`limit` 0: no limit).
    pub fn take(&self, ip: IpAddr, limit: usize) -> Option<Place> {
        let key = group(ip);
        let mut open = self.open.lock();
        let n = open.entry(key).or_insert(0);
        if limit != 0 && *n >= limit {
            return None;
        }
        *n += 1;
        drop(open);
        Some(Place {
            addresses: self.clone(),
            key,
        })
    }

    /// The connections `ip`'s address holds now.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&group(ip)).copied().unwrap_or(0)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.addresses.open.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// HTTP requests per address and second. Cloning is shallow.
#[derive(Clone)]
pub struct Rates {
    /// Microseconds between two requests of one address at the full rate; 0: no limit.
    interval_us: u64,
    /// How far ahead of now an address's arrival time may run: one second's worth.
    burst_us: u64,
    /// Per address group: the theoretical arrival time of its next request, in microseconds
    /// since `start`.
    next: Arc<dashmap::DashMap<IpAddr, u64>>,
    start: std::time::Instant,
}

impl Rates {
    /// `per_s` requests a second per address, as many at once; 0: no limit.
    pub fn new(per_s: u64) -> Rates {
        let interval_us = 1_000_000u64.checked_div(per_s).map_or(0, |us| us.max(1));
        Rates {
            interval_us,
            burst_us: interval_us.saturating_mul(per_s),
            next: Arc::default(),
            start: std::time::Instant::now(),
        }
    }

    /// Whether there is a limit at all.
    pub fn is_on(&self) -> bool {
        self.interval_us != 0
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Counts a request from `ip`: `Err(wait)` when the address is over its rate and must
    /// wait that long.
    pub fn admit(&self, ip: IpAddr) -> Result<(), std::time::Duration> {
        if !self.is_on() {
            return Ok(());
        }
        let now = self.now_us();
        let mut next = self.next.entry(group(ip)).or_insert(now);
        let pushed = (*next).max(now).saturating_add(self.interval_us);
        if pushed - now > self.burst_us {
            return Err(std::time::Duration::from_micros(
                pushed - now - self.burst_us,
            ));
        }
        *next = pushed;
        Ok(())
    }

    /// Forgets the addresses that could send a whole burst again (their time has passed).
    pub fn sweep(&self) {
        let now = self.now_us();
        self.next.retain(|_, next| *next > now);
    }
}

/// The key an address is counted under: IPv4 as it is, IPv6 by its /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_address_and_given_back() {
        let a: IpAddr = IpAddr::from([10, 0, 0, 1]);
        let b: IpAddr = IpAddr::from([10, 0, 0, 2]);
        let table = Addresses::default();
        let p1 = table.take(a, 2);
        let p2 = table.take(a, 2);
        assert!(p1.is_some() && p2.is_some());
        assert!(table.take(a, 2).is_none(), "a third place for one address");
        assert!(
            table.take(b, 2).is_some(),
            "another address is not affected"
        );
        drop(p1);
        assert_eq!(table.count(a), 1);
        assert!(table.take(a, 2).is_some());
        assert!(table.take(a, 0).is_some(), "0 is no limit");
    }

    #[test]
    fn requests_get_a_burst_of_one_seconds_worth_then_the_rate() {
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let rates = Rates::new(5);
        for i in 0..5 {
            assert!(rates.admit(a).is_ok(), "request {i} of the burst");
        }
        let wait = rates.admit(a).unwrap_err();
        assert!(wait <= std::time::Duration::from_millis(200), "{wait:?}");
        assert!(rates.admit(b).is_ok(), "another address has its own rate");
        std::thread::sleep(wait + std::time::Duration::from_millis(5));
        assert!(
            rates.admit(a).is_ok(),
            "one more once the interval has passed"
        );
        assert!(Rates::new(0).admit(a).is_ok());
        rates.sweep();
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let table = Addresses::default();
        let x: IpAddr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, 1]);
        let y: IpAddr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 2]);
        let other: IpAddr = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        let _p = table.take(x, 1);
        assert!(table.take(y, 1).is_none(), "same /64");
        assert!(table.take(other, 1).is_some(), "another /64");
        let v4: IpAddr = IpAddr::from([192, 0, 2, 1]);
        let mapped: IpAddr = IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201]);
        let _q = table.take(v4, 1);
        assert!(
            table.take(mapped, 1).is_none(),
            "IPv4-mapped is its IPv4 address"
        );
    }
}
