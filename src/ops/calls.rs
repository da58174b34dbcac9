//! `flowhub_calls_total{endpoint, method, outcome}` and
//! `flowhub_call_duration_seconds{endpoint, method}`: every call that reaches the dispatcher,
//! over WebSocket or HTTP, counted once with its outcome (`ok` or the error code) and timed
//! from its arrival at the dispatcher to its outcome.
//!
//! Endpoint names are chosen by clients, so the label is bounded: the first
//! [`MAX_ENDPOINT_LABELS`] names get a label of their own and every later name counts as
//! [`OTHER`]. A name earns its label only through a call that got past authentication and
//! found (or created) the endpoint: a call to a name not labelled yet that fails with
//! `UNAUTHORIZED`, `FORBIDDEN`, `INVALID_REQUEST`, `DO_NOT_EXIST` or `RATE_LIMITED` counts
//! as `other`, so a client cannot use up the labels with names that do not exist. The
//! outcome label takes the catalogue's codes only (a provider's own code counts as
//! `PROVIDER_ERROR`), so it is bounded too.
//!
//! Each labelled endpoint's handles are made on first use and kept for the process's life
//! (at most [`MAX_ENDPOINT_LABELS`] + 1 of them, a few KiB each): a call costs one map read,
//! a counter increment and a histogram sample, and allocates nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use metrics::{counter, histogram, Counter, Histogram};

use super::series::{CALLS, CALL_DURATION};
use crate::protocol::{ErrorCode, Method};

/// Endpoint names with a label of their own; later names count as [`OTHER`].
pub const MAX_ENDPOINT_LABELS: usize = 1000;
/// The endpoint label of every call past the cap (and of calls that earn no label).
pub const OTHER: &str = "other";

const METHODS: usize = Method::ALL.len();
/// `ok`, then every error code in catalogue order.
const OUTCOMES: usize = 1 + ErrorCode::ALL.len();

/// One endpoint label's handles, made as the method/outcome pairs first occur.
struct EndpointSeries {
    label: String,
    calls: [[OnceLock<Counter>; OUTCOMES]; METHODS],
    duration: [OnceLock<Histogram>; METHODS],
}

impl EndpointSeries {
    /// Leaked on purpose: at most `MAX_ENDPOINT_LABELS + 1` exist, each lives as long as its
    /// series in the recorder, and a `&'static` is read without touching a reference count.
    fn leak(label: &str) -> &'static EndpointSeries {
        Box::leak(Box::new(EndpointSeries {
            label: label.to_string(),
            calls: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            duration: std::array::from_fn(|_| OnceLock::new()),
        }))
    }

    fn record(&self, method: Method, outcome: Result<(), ErrorCode>, secs: f64) {
        let m = method as usize;
        let o = match outcome {
            Ok(()) => 0,
            Err(code) => 1 + code as usize,
        };
        self.calls[m][o]
            .get_or_init(|| {
                let outcome = match outcome {
                    Ok(()) => "ok",
                    Err(code) => code.as_str(),
                };
                counter!(CALLS, "endpoint" => self.label.clone(), "method" => method.as_str(), "outcome" => outcome)
            })
            .increment(1);
        self.duration[m]
            .get_or_init(|| {
                histogram!(CALL_DURATION, "endpoint" => self.label.clone(), "method" => method.as_str())
            })
            .record(secs);
    }
}

struct Table {
    by_name: DashMap<Box<str>, &'static EndpointSeries, foldhash::fast::RandomState>,
    /// Names with a label of their own so far.
    labelled: AtomicUsize,
    /// At most this many.
    max: usize,
    other: &'static EndpointSeries,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    super::install();
    Table::new(MAX_ENDPOINT_LABELS)
});

/// Whether a call that failed so says nothing about its endpoint existing.
fn earns_no_label(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::InvalidRequest
            | ErrorCode::DoNotExist
            | ErrorCode::RateLimited
    )
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            by_name: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            labelled: AtomicUsize::new(0),
            max,
            other: EndpointSeries::leak(OTHER),
        }
    }

    fn series(&self, endpoint: &str, outcome: Result<(), ErrorCode>) -> &'static EndpointSeries {
        if let Some(s) = self.by_name.get(endpoint) {
            return *s;
        }
        if outcome.is_err_and(earns_no_label)
            || endpoint == OTHER
            || self.labelled.load(Ordering::Relaxed) >= self.max
        {
            return self.other;
        }
        *self.by_name.entry(endpoint.into()).or_insert_with(|| {
            // Counted under the entry's lock: two first calls to one name take one slot.
            if self.labelled.fetch_add(1, Ordering::Relaxed) >= self.max {
                self.labelled.fetch_sub(1, Ordering::Relaxed);
                return self.other;
            }
            EndpointSeries::leak(endpoint)
        })
    }
}

/// Counts one call and its duration since `started`.
pub fn record(endpoint: &str, method: Method, outcome: Result<(), ErrorCode>, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    TABLE
        .series(endpoint, outcome)
        .record(method, outcome, secs);
}

/// How many endpoint names have a label of their own.
pub fn labelled() -> usize {
    TABLE.labelled.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_and_names_that_earn_no_label_count_as_other() {
        let t = Table::new(3);
        let ok = Ok(());
        assert_eq!(t.series("a/x", ok).label, "a/x");
        // Failures that say nothing of the endpoint existing take no slot...
        assert_eq!(t.series("b/x", Err(ErrorCode::DoNotExist)).label, OTHER);
        assert_eq!(t.series("b/x", Err(ErrorCode::Unauthorized)).label, OTHER);
        // ...but a name that has its label keeps it whatever the outcome.
        assert_eq!(t.series("a/x", Err(ErrorCode::DoNotExist)).label, "a/x");
        assert_eq!(t.series("b/x", Err(ErrorCode::Conflict)).label, "b/x");
        assert_eq!(t.series("c/x", ok).label, "c/x");
        assert_eq!(t.series("d/x", ok).label, OTHER, "past the cap");
        assert_eq!(t.series("a/x", ok).label, "a/x");
        assert_eq!(t.labelled.load(Ordering::Relaxed), 3);
    }
}
