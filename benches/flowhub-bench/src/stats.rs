//! Measurement windows, latency histograms and the figures a run reports.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A latency histogram in nanoseconds, 1 ns to 100 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant bounds that are valid
    Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap()
}

/// One measurement: load runs from `begin`, is counted from `start` (after the warm-up) and
/// stops at `end`. An operation counts when it completes inside `[start, end]`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: Duration, length: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + length,
        }
    }

    pub fn secs(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }

    /// Whether the load should go on.
    pub fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Waits out the window, reading `cpu` (seconds) at its start and at its end, then
    /// gathers the clients' histograms into one sample.
    pub async fn collect(
        &self,
        tasks: Vec<tokio::task::JoinHandle<crate::Res<Histogram<u64>>>>,
        cpu: impl Fn() -> f64,
    ) -> crate::Res<Sample> {
        tokio::time::sleep_until(self.start.into()).await;
        let cpu0 = cpu();
        tokio::time::sleep_until(self.end.into()).await;
        let cpu1 = cpu();
        let mut parts = Vec::with_capacity(tasks.len());
        for t in tasks {
            parts.push(t.await??);
        }
        Ok(Sample::new(merge(parts), self.secs(), Some(cpu1 - cpu0)))
    }

    /// Records an operation that began at `began` and completed now, if it counts.
    pub fn record(&self, h: &mut Histogram<u64>, began: Instant) -> Instant {
        let done = Instant::now();
        if done >= self.start && done <= self.end {
            let _ = h.record((done - began).as_nanos().max(1) as u64);
        }
        done
    }
}

/// What one measurement window recorded: latencies, its length, and the CPU seconds the
/// measured process (or thread) spent in it.
pub struct Sample {
    pub hist: Histogram<u64>,
    pub secs: f64,
    pub cpu: Option<f64>,
}

impl Sample {
    pub fn new(hist: Histogram<u64>, secs: f64, cpu: Option<f64>) -> Sample {
        Sample { hist, secs, cpu }
    }
}

/// The samples of one system over the rounds of a scenario, added up.
pub struct Acc {
    hist: Histogram<u64>,
    secs: f64,
    cpu: Option<f64>,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            hist: histogram(),
            secs: 0.0,
            cpu: Some(0.0),
        }
    }
}

impl Acc {
    pub fn add(&mut self, s: Sample) {
        let _ = self.hist.add(&s.hist);
        self.secs += s.secs;
        self.cpu = self.cpu.zip(s.cpu).map(|(a, b)| a + b);
    }

    pub fn figures(&self) -> Figures {
        Figures::new(&self.hist, self.secs, self.cpu)
    }
}

/// What a system did in a scenario (all rounds).
#[derive(Debug, Clone)]
pub struct Figures {
    pub ops: u64,
    pub secs: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// CPU seconds the measured process (or thread) spent in the window, per operation, in µs.
    pub cpu_us_per_op: Option<f64>,
    /// Latency at the quantiles of [`QUANTILES`] (percent, µs), for the plots.
    pub percentiles: Vec<(f64, f64)>,
}

/// The quantiles a latency plot shows.
pub const QUANTILES: [f64; 6] = [0.5, 0.75, 0.9, 0.99, 0.999, 0.9999];

impl Figures {
    pub fn new(h: &Histogram<u64>, secs: f64, cpu_secs: Option<f64>) -> Figures {
        let ops = h.len();
        Figures {
            ops,
            secs,
            p50_us: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
            max_us: h.max() as f64 / 1000.0,
            cpu_us_per_op: cpu_secs
                .filter(|c| c.is_finite() && ops > 0)
                .map(|c| c * 1e6 / ops as f64),
            percentiles: QUANTILES
                .iter()
                .map(|q| (q * 100.0, h.value_at_quantile(*q) as f64 / 1000.0))
                .collect(),
        }
    }

    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "ops": self.ops,
            "seconds": round(self.secs, 3),
            "per_sec": round(self.per_sec(), 1),
            "p50_us": round(self.p50_us, 1),
            "p99_us": round(self.p99_us, 1),
            "max_us": round(self.max_us, 1),
            "cpu_us_per_op": self.cpu_us_per_op.map(|c| round(c, 2)),
            "percentiles_us": self.percentiles.iter().map(|(q, v)| json!([q, round(*v, 1)])).collect::<Vec<_>>(),
        })
    }
}

pub fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// `a / b` to four decimals, or `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(round(a / b, 4)),
        _ => None,
    }
}

/// Merges per-task histograms.
pub fn merge(parts: impl IntoIterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut all = histogram();
    for h in parts {
        let _ = all.add(&h);
    }
    all
}
