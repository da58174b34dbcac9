//! Open connections by kind, for `flowhub_connections_open{kind}`.
//!
//! A connection's kind is what it has done so far: it is a caller when it opens, a
//! subscriber once it has subscribed, a provider once it has provided an endpoint (provider
//! wins over subscriber). A kind never goes back: a provider that unprovides stays counted
//! as a provider until it closes. An HTTP connection is a caller; once upgraded to a
//! WebSocket, its session counts it.

use std::sync::atomic::{AtomicU8, Ordering};

use super::series;

/// What a connection has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Caller = 0,
    Subscriber = 1,
    Provider = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Caller, Kind::Subscriber, Kind::Provider];

    pub fn as_str(self) -> &'static str {
        super::series::CONNECTION_KINDS[self as usize]
    }

    fn from_u8(v: u8) -> Kind {
        match v {
            2 => Kind::Provider,
            1 => Kind::Subscriber,
            _ => Kind::Caller,
        }
    }
}

/// One open connection in the gauge: counted as a caller when made, moved to another kind
/// by [`Open::became`], taken out of the gauge when dropped.
#[derive(Debug)]
pub struct Open {
    kind: AtomicU8,
}

impl Open {
    /// Counts a new connection as a caller.
    pub fn caller() -> Open {
        series().connections_open[Kind::Caller as usize].increment(1.0);
        Open {
            kind: AtomicU8::new(Kind::Caller as u8),
        }
    }

    /// Moves the connection to `kind` if that ranks above what it is (caller < subscriber <
    /// provider). Cheap when nothing changes: one atomic load.
    pub fn became(&self, kind: Kind) {
        let mut now = self.kind.load(Ordering::Relaxed);
        while (now as usize) < kind as usize {
            match self.kind.compare_exchange_weak(
                now,
                kind as u8,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let open = &series().connections_open;
                    open[now as usize].decrement(1.0);
                    open[kind as usize].increment(1.0);
                    return;
                }
                Err(v) => now = v,
            }
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::from_u8(self.kind.load(Ordering::Relaxed))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        series().connections_open[self.kind() as usize].decrement(1.0);
    }
}
