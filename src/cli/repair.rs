//! `flowhub repair`: cut the damage out of a data directory's log so the hub starts again.
//!
//! It takes the data directory's lock (a running hub is never repaired under its feet), reads
//! the data directory as a start does (newest snapshot, then the log after it), keeps every
//! record before the first damage, and moves the rest aside into `<data_dir>/log/damaged-<pid>/`
//! (nothing is deleted). It prints what it kept and every piece it dropped. A torn tail (a
//! write that was never acknowledged) is cut as well. When records were dropped, versions still
//! go on past theirs (see `continue_numbering`).
//!
//! Exit status: 0 when the log is intact or was repaired, 1 when it could not be (a hub holds
//! the lock, an I/O error), 2 when the configuration is wrong.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::log::file::sync_dir;
use crate::log::recovery::{recover, segments, Recovered};
use crate::log::snapshot;
use crate::log::LogRecord;

use super::DataDirArgs;

/// Arguments of `flowhub repair`.
#[derive(Debug, Clone, clap::Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
}

fn kept(r: &Recovered, base_seq: u64) -> String {
    let records = match (r.records.first(), r.records.last()) {
        (Some(a), Some(b)) => format!(
            "{} records (sequence numbers {} to {})",
            r.records.len(),
            a.seq,
            b.seq
        ),
        _ => "no records".to_string(),
    };
    let last = r.last_seq.max(base_seq);
    format!(
        "{records}{}; the next write gets sequence number {}",
        if base_seq > 0 {
            format!(" after the snapshot at sequence number {base_seq}")
        } else {
            String::new()
        },
        last + 1
    )
}

/// An object by endpoint, namespace and id.
type ObjectKey = (Arc<str>, Arc<str>, Arc<str>);

/// The repair dropped records whose versions clients may have seen. Sequence numbers have no
/// gaps in the log, so numbering cannot simply jump there: the kept state is written as a
/// snapshot at the highest dropped number, and the segments it covers are moved aside. The
/// next write then gets a version above every version the hub ever handed out.
fn continue_numbering(
    log_dir: &Path,
    snapshot_dir: &Path,
    base_entries: Vec<LogRecord>,
    r: &mut Recovered,
) -> Result<(), String> {
    let seq = r.dropped_max_seq;
    let mut state: HashMap<ObjectKey, LogRecord> = base_entries
        .into_iter()
        .map(|e| ((e.endpoint.clone(), e.namespace.clone(), e.id.clone()), e))
        .collect();
    for rec in r.records.iter().filter(|r| !r.published) {
        let key = (rec.endpoint.clone(), rec.namespace.clone(), rec.id.clone());
        if rec.state.is_some() {
            state.insert(key, rec.clone());
        } else {
            state.remove(&key);
        }
    }
    let mut entries: Vec<LogRecord> = state.into_values().collect();
    entries.sort_by_key(|e| (e.created_seq, e.seq));
    let (path, _) = snapshot::write(snapshot_dir, seq, &entries).map_err(|e| {
        format!(
            "cannot write a snapshot into {}: {e}",
            snapshot_dir.display()
        )
    })?;
    r.repaired.push(format!(
        "{}: the kept state ({} objects) as a snapshot at sequence number {seq}, the highest \
         dropped one, so that versions go on from {}",
        path.display(),
        entries.len(),
        seq + 1
    ));
    let aside = match &r.aside {
        Some(a) => a.clone(),
        None => log_dir.join(format!("damaged-{}", std::process::id())),
    };
    std::fs::create_dir_all(&aside).map_err(|e| format!("{}: {e}", aside.display()))?;
    for seg in segments(log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))? {
        let name = seg.file_name().unwrap_or_default().to_string_lossy();
        // The damaged segment as it was is there already: its cut version goes next to it.
        let mut to = aside.join(&*name);
        let mut n = 0;
        while to.exists() {
            n += 1;
            to = aside.join(format!("{name}.kept-{n}"));
        }
        std::fs::rename(&seg, &to).map_err(|e| format!("{}: {e}", seg.display()))?;
        r.repaired.push(format!(
            "{}: covered by that snapshot, moved aside to {}",
            seg.display(),
            to.display()
        ));
    }
    sync_dir(log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    r.segments.clear();
    r.tail = None;
    r.last_seq = seq;
    Ok(())
}

/// Runs the subcommand; returns the process exit status.
pub fn run(args: RepairArgs) -> i32 {
    let data_dir = match args.data.resolve() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("flowhub repair: {e}");
            return 2;
        }
    };
    if !data_dir.is_dir() {
        eprintln!(
            "flowhub repair: there is no data directory at {} (--data-dir, FLOWHUB_DATA_DIR)",
            data_dir.display()
        );
        return 1;
    }
    let _lock = match crate::server::lock_data_dir(&data_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("flowhub repair: {e}; stop the hub before repairing its log");
            return 1;
        }
    };
    let log_dir = data_dir.join("log");
    let snapshot_dir = data_dir.join("snapshot");
    // Read as a start reads: the newest whole snapshot, then the log after it.
    let (base_seq, base_entries) = match snapshot::load_newest(&snapshot_dir) {
        Ok(Some((_, seq, entries))) => (seq, entries),
        Ok(None) => (0, Vec::new()),
        Err(e) => {
            eprintln!("flowhub repair: {e}");
            return 1;
        }
    };
    let mut recovered = match recover(&log_dir, base_seq, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowhub repair: {e}");
            return 1;
        }
    };
    if recovered.dropped_max_seq > recovered.last_seq.max(base_seq) {
        if let Err(e) = continue_numbering(&log_dir, &snapshot_dir, base_entries, &mut recovered) {
            eprintln!("flowhub repair: {e}");
            return 1;
        }
    }
    let mut out = std::io::stdout().lock();
    let mut lines = Vec::new();
    if recovered.repaired.is_empty() {
        lines.push(format!(
            "nothing to repair: the log in {} is intact: {}",
            log_dir.display(),
            kept(&recovered, base_seq)
        ));
    } else {
        lines.push(format!("repaired the log in {}:", log_dir.display()));
        for line in &recovered.repaired {
            lines.push(format!("  {line}"));
        }
        lines.push(format!("kept {}", kept(&recovered, base_seq)));
        // What the hub does at its next start, done now: the repair must leave a data
        // directory that opens.
        match crate::log::backup::verify(&data_dir) {
            Ok((objects, _)) => lines.push(format!("the hub can start now ({objects} objects)")),
            Err(e) => {
                let _ = writeln!(out, "{}", lines.join("\n"));
                eprintln!(
                    "flowhub repair: the repaired data directory still does not read back: {e}"
                );
                return 1;
            }
        }
    }
    // A closed standard output is not worth a panic; the exit status says how it went.
    let _ = writeln!(out, "{}", lines.join("\n"));
    0
}
