//! `flowhub log dump`: the log inspector, for support.
//!
//! Prints one line per record of a data directory's log, then a summary (segments, records,
//! bytes, first and last sequence number, and any damage with its file and offset). It only
//! reads: it takes no lock, so it works on the log of a running hub, and it never changes a
//! damaged log, it reports the damage and reads on at the next intact record.
//!
//! Exit status: 0 when the log could be read (damaged or not), 1 when it could not, 2 when
//! the arguments or the configuration are wrong.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::log::recovery::{inspect, Finding, Inspection};
use crate::log::LogRecord;

use super::DataDirArgs;

/// Arguments of `flowhub log`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    #[command(subcommand)]
    pub command: LogCommand,
}

/// Subcommands of `flowhub log`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LogCommand {
    /// Print the records of the log and a summary; reports damage without changing anything.
    Dump(DumpArgs),
}

/// Arguments of `flowhub log dump`.
#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Show records from this sequence number on.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Show at most this many records (the summary still covers the whole log).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Show only the records of this endpoint, e.g. `address/address`.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// One JSON object per line, with each record's state; the summary is the last line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `flowhub log ...`; returns the process exit status.
pub fn run(args: LogArgs) -> i32 {
    match args.command {
        LogCommand::Dump(d) => dump(d),
    }
}

fn op(rec: &LogRecord) -> &'static str {
    match rec.state {
        _ if rec.published => "PUBLISH",
        None => "DELETE",
        Some(_) if rec.seq == rec.created_seq => "CREATE",
        Some(_) => "UPDATE",
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

fn record_text(file: &Path, offset: u64, rec: &LogRecord) -> String {
    let state = match &rec.state {
        Some(s) => format!(" state_bytes={}", s.len()),
        None => String::new(),
    };
    format!(
        "seq={} op={} endpoint={} namespace={:?} id={:?} created_seq={}{state} at={}:{offset}",
        rec.seq,
        op(rec),
        rec.endpoint,
        rec.namespace,
        rec.id,
        rec.created_seq,
        file_name(file),
    )
}

fn record_json(file: &Path, offset: u64, rec: &LogRecord) -> Value {
    let state = rec.state.as_ref().map(|s| {
        serde_json::from_slice::<Value>(s)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(s).into_owned()))
    });
    json!({
        "seq": rec.seq,
        "created_seq": rec.created_seq,
        "op": op(rec),
        "endpoint": rec.endpoint,
        "namespace": rec.namespace,
        "id": rec.id,
        "state_bytes": rec.state.as_ref().map(|s| s.len()),
        "state": state,
        "file": file_name(file),
        "offset": offset,
    })
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "file": f.file.display().to_string(),
        "offset": f.offset,
        "bytes": f.bytes,
        "reason": f.reason,
    })
}

/// The newest snapshot file of the data directory and its sequence number, by name only
/// (reading a directory changes nothing).
fn newest_snapshot(data_dir: &Path) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(data_dir.join("snapshot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let seq = name.strip_suffix(".snap")?;
            let seq = (seq.len() == 20).then(|| seq.parse::<u64>().ok())??;
            Some((p, seq))
        })
        .max_by_key(|(_, seq)| *seq)
}

fn summary_lines(
    i: &Inspection,
    shown: u64,
    log_dir: &Path,
    snapshot: Option<&(PathBuf, u64)>,
) -> Vec<String> {
    let seqs = match (i.first_seq, i.last_seq) {
        (Some(a), Some(b)) => format!("sequence numbers {a} to {b}"),
        _ => "no sequence numbers".to_string(),
    };
    let mut lines = vec![format!(
        "summary: {} in {}: {} segments, {} records, {} bytes ({} preallocated, free), {seqs}; \
         {shown} shown",
        if i.findings.iter().any(|f| !f.torn_tail) {
            "DAMAGED log"
        } else {
            "log"
        },
        log_dir.display(),
        i.segments.len(),
        i.records,
        i.bytes,
        i.free,
    )];
    if let Some((path, seq)) = snapshot {
        lines.push(format!(
            "snapshot: {} holds the state up to sequence number {seq}; a start reads the log \
             after it",
            path.display()
        ));
    }
    for f in &i.findings {
        let what = if f.torn_tail { "torn tail" } else { "damage" };
        lines.push(format!(
            "{what}: {} at byte {}, {} bytes: {}",
            f.file.display(),
            f.offset,
            f.bytes,
            f.reason
        ));
    }
    if i.findings.iter().any(|f| !f.torn_tail) {
        lines.push(
            "the hub refuses to start on damage after its newest snapshot; `flowhub repair` \
             keeps every record before the first damage"
                .into(),
        );
    } else if i.findings.iter().any(|f| f.torn_tail) {
        lines.push(
            "the torn tail is a write that was never acknowledged (or one being written now); \
             the hub cuts it at start"
                .into(),
        );
    }
    for v in &i.vanished {
        lines.push(format!(
            "vanished while reading (removed after a snapshot): {}",
            v.display()
        ));
    }
    lines
}

fn summary_json(
    i: &Inspection,
    shown: u64,
    log_dir: &Path,
    snapshot: Option<&(PathBuf, u64)>,
) -> Value {
    json!({"summary": {
        "log": log_dir.display().to_string(),
        "snapshot": snapshot.map(|(p, seq)| json!({"file": p.display().to_string(), "seq": seq})),
        "segments": i.segments.len(),
        "records": i.records,
        "bytes": i.bytes,
        "free_bytes": i.free,
        "first_seq": i.first_seq,
        "last_seq": i.last_seq,
        "shown": shown,
        "damaged": i.findings.iter().any(|f| !f.torn_tail),
        "damage": i.findings.iter().filter(|f| !f.torn_tail).map(finding_json).collect::<Vec<_>>(),
        "torn_tail": i.findings.iter().find(|f| f.torn_tail).map(finding_json),
        "vanished": i.vanished.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    }})
}

fn dump(args: DumpArgs) -> i32 {
    let data_dir = match args.data.resolve() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("flowhub log dump: {e}");
            return 2;
        }
    };
    let log_dir = data_dir.join("log");
    if !log_dir.is_dir() {
        eprintln!(
            "flowhub log dump: there is no log at {} (--data-dir, FLOWHUB_DATA_DIR)",
            log_dir.display()
        );
        return 1;
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let mut shown = 0u64;
    let mut write_error: Option<io::Error> = None;
    let result = inspect(&log_dir, |file, offset, rec| {
        let wanted = rec.seq >= args.from
            && args.endpoint.as_deref().is_none_or(|e| e == &*rec.endpoint)
            && args.limit.is_none_or(|l| shown < l);
        if wanted {
            shown += 1;
            let line = if args.json {
                record_json(file, offset, rec).to_string()
            } else {
                record_text(file, offset, rec)
            };
            if let Err(e) = writeln!(out, "{line}") {
                write_error = Some(e);
                return false;
            }
        }
        true
    });
    let inspection = match result {
        Ok(i) => i,
        Err(e) => {
            let _ = out.flush();
            eprintln!("flowhub log dump: cannot read the log: {e}");
            return 1;
        }
    };
    if write_error.is_none() {
        let snapshot = newest_snapshot(&data_dir);
        let written = if args.json {
            let summary = summary_json(&inspection, shown, &log_dir, snapshot.as_ref());
            writeln!(out, "{summary}")
        } else {
            let lines = summary_lines(&inspection, shown, &log_dir, snapshot.as_ref());
            writeln!(out, "{}", lines.join("\n"))
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            write_error = Some(e);
        }
    }
    match write_error {
        // `| head` closing the pipe early is a normal way to end a dump.
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("flowhub log dump: cannot write: {e}");
            1
        }
        _ => 0,
    }
}
