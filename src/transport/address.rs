//! Connections per client address (`max_connections_per_address`).
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
