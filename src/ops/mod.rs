//! Operations: what an operator watches — `GET /metrics` (the Prometheus text format),
//! `GET /health` (the process serves) and `GET /ready` (the log is recovered and writes are
//! being accepted). `transport::ops` answers those paths; this module owns the series.
//!
//! Metrics go through the `metrics` facade, so any module records with `metrics::counter!`
//! and the like; the recorder is `metrics-exporter-prometheus`, installed process-wide once
//! ([`install`]) with no listener of its own: the hub renders it on request. One process
//! holds one recorder, so hubs started in the same process (tests) share their series.
//!
//! Hot paths never look a series up by name: the hub's own series are handles made once
//! ([`series`]: an atomic add per increment), and calls find their endpoint's handles in
//! [`calls`] (one map read). Gauges that are sums over the hub's state (subscriptions,
//! queued bytes, stored objects) are computed when `/metrics` is rendered, not kept up to
//! date on every change. Histograms in seconds render as Prometheus histograms with
//! [`LATENCY_BUCKETS`].
//!
//! Never: a lock or an allocation per call beyond the recorder's own, or a label whose
//! values a client chooses without bound (endpoints are capped, see [`calls`]).

pub mod calls;
pub mod connections;
pub mod series;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use series::series;

/// Bucket bounds (seconds) of every `_seconds` histogram: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets between scrapes, so that they
/// do not pile up in memory when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder, once; later calls
/// return the same handle. `None` when the process had a recorder of its own already (an
/// embedding program): `/metrics` is then empty and the series go to that recorder.
pub fn install() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot configure the metrics recorder");
                    return None;
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "a metrics recorder is installed already; GET /metrics stays empty");
                return None;
            }
            series::describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("flowhub-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are folded at each scrape only");
            }
            Some(handle)
        })
        .as_ref()
}

/// The hub-wide sums that are read when `/metrics` is rendered rather than kept up to date.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub subscriptions: usize,
    pub outbound_queue_bytes: usize,
    pub store_objects: usize,
}

/// The Prometheus text of every series, with the gauges of `totals` set first.
pub fn render(totals: Totals) -> String {
    let s = series();
    s.subscriptions_open.set(totals.subscriptions as f64);
    s.outbound_queue_bytes
        .set(totals.outbound_queue_bytes as f64);
    s.store_objects.set(totals.store_objects as f64);
    install().map(PrometheusHandle::render).unwrap_or_default()
}
