//! The hub's own series: names, descriptions, and handles made once.
//!
//! Every name starts with `flowhub_`; counters end in `_total`, durations are seconds
//! (`_seconds`, histograms). `docs/OPERATIONS.md` lists them for operators.

use std::sync::LazyLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

pub const CONNECTIONS_OPEN: &str = "flowhub_connections_open";
pub const CONNECTIONS_ACCEPTED: &str = "flowhub_connections_accepted_total";
pub const CALLS: &str = "flowhub_calls_total";
pub const CALL_DURATION: &str = "flowhub_call_duration_seconds";
pub const ROUTED_CALLS: &str = "flowhub_routed_calls_total";
pub const PROVIDER_TIMEOUTS: &str = "flowhub_provider_timeouts_total";
pub const PROVIDER_REJECTS: &str = "flowhub_provider_rejects_total";
pub const SUBSCRIPTIONS_OPEN: &str = "flowhub_subscriptions_open";
pub const EVENTS_DELIVERED: &str = "flowhub_events_delivered_total";
pub const OUTBOUND_QUEUE_BYTES: &str = "flowhub_outbound_queue_bytes";
pub const SLOW_CONSUMER_DISCONNECTS: &str = "flowhub_slow_consumer_disconnects_total";
pub const LOG_APPENDS: &str = "flowhub_log_appends_total";
pub const LOG_RECORDS: &str = "flowhub_log_records_total";
pub const LOG_APPEND_FAILURES: &str = "flowhub_log_append_failures_total";
pub const LOG_FSYNC_DURATION: &str = "flowhub_log_fsync_duration_seconds";
pub const SNAPSHOT_DURATION: &str = "flowhub_snapshot_duration_seconds";
pub const STORE_OBJECTS: &str = "flowhub_store_objects";

/// Handles to the series without per-call labels. Cloning a handle is an `Arc` clone; using
/// one is an atomic operation (histograms: a push onto a lock-free bucket).
pub struct Series {
    /// Open connections by kind, see [`super::connections`]; index: `Kind as usize`.
    pub connections_open: [Gauge; 3],
    pub connections_accepted: Counter,
    /// Calls handed to a provider (once per call, however many providers it tries).
    pub routed_calls: Counter,
    pub provider_timeouts: Counter,
    pub provider_rejects: Counter,
    pub subscriptions_open: Gauge,
    pub events_delivered: Counter,
    pub outbound_queue_bytes: Gauge,
    pub slow_consumer_disconnects: Counter,
    /// Batches appended to the log (one per group commit).
    pub log_appends: Counter,
    pub log_records: Counter,
    pub log_append_failures: Counter,
    pub log_fsync_duration: Histogram,
    pub snapshot_duration: Histogram,
    pub store_objects: Gauge,
}

/// The `kind` label of open connections, by `connections::Kind as usize`.
pub const CONNECTION_KINDS: [&str; 3] = ["caller", "subscriber", "provider"];

static SERIES: LazyLock<Series> = LazyLock::new(|| {
    // Handles made before the recorder is installed would record nowhere, for good.
    super::install();
    Series {
        connections_open: CONNECTION_KINDS.map(|k| gauge!(CONNECTIONS_OPEN, "kind" => k)),
        connections_accepted: counter!(CONNECTIONS_ACCEPTED),
        routed_calls: counter!(ROUTED_CALLS),
        provider_timeouts: counter!(PROVIDER_TIMEOUTS),
        provider_rejects: counter!(PROVIDER_REJECTS),
        subscriptions_open: gauge!(SUBSCRIPTIONS_OPEN),
        events_delivered: counter!(EVENTS_DELIVERED),
        outbound_queue_bytes: gauge!(OUTBOUND_QUEUE_BYTES),
        slow_consumer_disconnects: counter!(SLOW_CONSUMER_DISCONNECTS),
        log_appends: counter!(LOG_APPENDS),
        log_records: counter!(LOG_RECORDS),
        log_append_failures: counter!(LOG_APPEND_FAILURES),
        log_fsync_duration: histogram!(LOG_FSYNC_DURATION),
        snapshot_duration: histogram!(SNAPSHOT_DURATION),
        store_objects: gauge!(STORE_OBJECTS),
    }
});

/// The hub's series (installing the recorder first, if nothing did yet).
pub fn series() -> &'static Series {
    &SERIES
}

/// Gives every series its `# HELP` line.
pub(super) fn describe() {
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Open connections by kind: provider (has provided an endpoint), subscriber (has subscribed), else caller (HTTP connections included)"
    );
    describe_counter!(CONNECTIONS_ACCEPTED, "TCP connections accepted");
    describe_counter!(
        CALLS,
        "Calls answered, by endpoint (the first 1000 names, then \"other\"), method and outcome (ok or the error code)"
    );
    describe_histogram!(
        CALL_DURATION,
        Unit::Seconds,
        "Time from a call's arrival at the dispatcher to its outcome, by endpoint and method"
    );
    describe_counter!(ROUTED_CALLS, "Calls routed to a provider");
    describe_counter!(
        PROVIDER_TIMEOUTS,
        "Routed calls that got no answer within their deadline (PROVIDER_TIMEOUT)"
    );
    describe_counter!(
        PROVIDER_REJECTS,
        "Rejects from providers (each sends the call on to the next provider)"
    );
    describe_gauge!(SUBSCRIPTIONS_OPEN, "Subscriptions registered");
    describe_counter!(
        EVENTS_DELIVERED,
        "Change events queued for subscribers by the fan-out"
    );
    describe_gauge!(
        OUTBOUND_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes of change events queued for subscribers' sockets and not yet written"
    );
    describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "Connections closed with 3008 because their queued events passed max_outbound_bytes"
    );
    describe_counter!(LOG_APPENDS, "Batches appended to the write-ahead log");
    describe_counter!(LOG_RECORDS, "Records appended to the write-ahead log");
    describe_counter!(
        LOG_APPEND_FAILURES,
        "Batches the log refused (a write or fsync failed): their writes got UNAVAILABLE"
    );
    describe_histogram!(
        LOG_FSYNC_DURATION,
        Unit::Seconds,
        "Duration of the log's fsync (fdatasync) calls"
    );
    describe_histogram!(
        SNAPSHOT_DURATION,
        Unit::Seconds,
        "Time to write a snapshot and remove the log it covers"
    );
    describe_gauge!(STORE_OBJECTS, "Objects in the record store");
}
