//! Plain-text tables and the description of the machine a run was made on.

use serde_json::{json, Value};

/// A table printed with aligned columns: the first `left` columns left-aligned, the rest
/// right-aligned.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
    left: usize,
}

impl Table {
    pub fn new(head: &[&str], left: usize) -> Table {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            left,
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A row that is one line of text under the columns (ratios, notes).
    pub fn note(&mut self, text: String) {
        self.rows.push(vec![text]);
    }

    pub fn print(&self) {
        let n = self.head.len();
        let mut width = vec![0usize; n];
        for r in std::iter::once(&self.head).chain(self.rows.iter().filter(|r| r.len() > 1)) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let mut s = String::from(" ");
            for (i, c) in r.iter().enumerate().take(n) {
                let pad = width[i].saturating_sub(c.chars().count());
                s.push(' ');
                if i < self.left {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
                s.push(' ');
            }
            s.trim_end().to_string()
        };
        println!("{}", line(&self.head));
        let total: usize = width.iter().map(|w| w + 2).sum::<usize>() + 1;
        println!("  {}", "-".repeat(total.saturating_sub(2)));
        for r in &self.rows {
            if r.len() == 1 {
                println!("   {}", r[0]);
            } else {
                println!("{}", line(r));
            }
        }
    }
}

/// A number with a sensible count of digits for its size; `-` when missing.
pub fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if !v.is_finite() => "-".into(),
        Some(v) if v.abs() >= 1000.0 => thousands(v.round() as i64),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A ratio as `1.23x`; `-` when missing.
pub fn times(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}x"),
        _ => "-".into(),
    }
}

/// What the run ran on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let tmp = std::env::temp_dir();
    json!({
        "cpu": model,
        "cores": cores,
        "memory_gib": (mem_kib as f64 / 1048576.0).round(),
        "kernel": kernel,
        "temp_dir": tmp.display().to_string(),
        "temp_fs": fs_type(&tmp),
    })
}

pub fn machine_line(m: &Value) -> String {
    format!(
        "{} cores ({}), {} GiB, Linux {}, temp dir {} on {}",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["temp_dir"].as_str().unwrap_or("?"),
        m["temp_fs"].as_str().unwrap_or("?"),
    )
}

/// The file system type of the mount holding `path` (longest mount-point prefix).
fn fs_type(path: &std::path::Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, at, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at)
                .then(|| (at.len(), format!("{ty} ({dev})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, t)| t)
        .unwrap_or_else(|| "?".into())
}

/// The share of the whole machine's CPU (0 to 1) that was busy over half a second while this
/// bench's own processes were idle: what other processes on the machine were using.
pub fn background_cpu() -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user)
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((total, idle))
    }
    let a = sample();
    std::thread::sleep(std::time::Duration::from_millis(500));
    match (a, sample()) {
        (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
            1.0 - (i1.saturating_sub(i0)) as f64 / (t1 - t0) as f64
        }
        _ => 0.0,
    }
}
