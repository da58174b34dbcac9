//! `--plots DIR`: SVG plots drawn from the figures of the run (the same JSON `--json` writes),
//! one file per plot, for the scenarios that ran.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::svg::{self, Chart};
use crate::Res;

/// Writes every plot the results allow; returns the files written.
pub fn write(dir: &Path, results: &[Value]) -> Res<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, doc) in plots(results) {
        let path = dir.join(name);
        std::fs::write(&path, doc).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn scenario<'a>(results: &'a [Value], name: &str) -> Option<&'a Value> {
    results.iter().find(|v| v["scenario"] == name)
}

/// The plots as (file name, SVG text).
pub fn plots(results: &[Value]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(rpc) = scenario(results, "rpc") {
        let run = rpc["runs"].as_array().and_then(|r| {
            r.iter()
                .find(|r| r["providers"] == 1 && r["in_flight"] == 64)
        });
        if let Some(run) = run {
            let mut c =
                latency_chart("routed RPC, 1 provider, 64 calls in flight: latency percentiles");
            for (key, label) in [
                ("flowhub", "flowhub"),
                ("baseline", "bare WebSocket relay"),
                ("nats", "NATS request/reply"),
                ("deepstream", "deepstream 7"),
            ] {
                if let Some(p) = percentiles(&run[key]) {
                    c = c.series(label, p);
                }
            }
            out.push(("rpc-latency.svg", svg::document(&[&c], 800.0, 420.0)));
        }
    }
    if let Some(http) = scenario(results, "http") {
        let run = http["runs"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["connections"] == 64));
        if let Some(run) = run {
            let mut c = latency_chart("HTTP OPEN, 64 keep-alive connections: latency percentiles");
            for (key, label) in [("flowhub", "flowhub"), ("baseline", "bare hyper")] {
                if let Some(p) = percentiles(&run[key]) {
                    c = c.series(label, p);
                }
            }
            out.push(("http-latency.svg", svg::document(&[&c], 800.0, 420.0)));
        }
    }
    if let Some(sweep) = scenario(results, "fanout").and_then(|f| f["sweep"].as_array()) {
        let points = |key: &str| -> Vec<(f64, f64)> {
            sweep
                .iter()
                .filter_map(|p| {
                    let n = p["subscribers"].as_f64()?;
                    Some((n.log10(), p[key]["cpu_us_per_delivery"].as_f64()?))
                })
                .collect()
        };
        let mut c = Chart::new(
            "change fan-out: server CPU per delivery against subscribers",
            "subscribers of one endpoint (log scale)",
            "CPU µs per delivery",
        )
        .series("flowhub", points("flowhub"))
        .series("bare broadcaster", points("baseline"));
        c.x_ticks = sweep
            .iter()
            .filter_map(|p| p["subscribers"].as_f64())
            .map(|n| (n.log10(), format!("{n:.0}")))
            .collect();
        out.push(("fanout-cost.svg", svg::document(&[&c], 800.0, 420.0)));
    }
    if let Some(idle) = scenario(results, "idle") {
        let curve = |key: &str| -> Vec<(f64, f64)> {
            let before = idle[key]["rss_before_kib"].as_f64().unwrap_or(0.0);
            idle[key]["curve"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(|p| Some((p[0].as_f64()?, (p[1].as_f64()? - before) / 1024.0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let c = Chart::new(
            "idle WebSockets: server memory held",
            "open connections",
            "VmRSS growth MiB",
        )
        .series("flowhub", curve("flowhub"))
        .series("bare tokio-tungstenite", curve("baseline"));
        out.push(("idle-memory.svg", svg::document(&[&c], 800.0, 420.0)));
    }
    out
}

/// A latency chart on a "nines" axis: 50%, 90%, 99%, 99.9%, 99.99%.
fn latency_chart(title: &str) -> Chart {
    let mut c = Chart::new(title, "percentile", "latency µs (log scale)");
    c.y_log = true;
    c.x_ticks = [50.0, 90.0, 99.0, 99.9, 99.99]
        .iter()
        .map(|q| (nines(*q), format!("{q}%")))
        .collect();
    c
}

fn nines(percent: f64) -> f64 {
    -(1.0 - percent / 100.0).log10()
}

/// `percentiles_us` of a system's figures, on the nines axis.
fn percentiles(fig: &Value) -> Option<Vec<(f64, f64)>> {
    let p: Vec<(f64, f64)> = fig["percentiles_us"]
        .as_array()?
        .iter()
        .filter_map(|p| Some((nines(p[0].as_f64()?), p[1].as_f64()?)))
        .collect();
    (!p.is_empty()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plots_come_from_the_figures_of_the_scenarios_that_ran() {
        let fig = json!({"percentiles_us": [[50.0, 10.0], [99.0, 30.0], [99.99, 90.0]]});
        let results = vec![
            json!({"scenario": "rpc", "runs": [{"providers": 1, "in_flight": 64, "flowhub": fig, "baseline": fig, "nats": null}]}),
            json!({"scenario": "fanout", "sweep": [
                {"subscribers": 10, "flowhub": {"cpu_us_per_delivery": 3.0}, "baseline": {"cpu_us_per_delivery": 2.0}},
                {"subscribers": 1000, "flowhub": {"cpu_us_per_delivery": 1.0}, "baseline": {"cpu_us_per_delivery": 0.8}}]}),
        ];
        let p = plots(&results);
        let names: Vec<&str> = p.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec!["rpc-latency.svg", "fanout-cost.svg"]);
        assert_eq!(p[0].1.matches("<polyline").count(), 2);
        assert!(p[1].1.contains(">1000<"));
    }
}
