//! The write-ahead log behind a small interface.
//!
//! The sequencer hands the log every batch of committed writes, in commit order, before any
//! of them is applied or acknowledged; when `append` returns an error nothing of the batch is
//! applied and every caller gets `UNAVAILABLE`. A log knows sequence numbers, names and bytes,
//! never endpoints' meaning or methods.
//!
//! Implementations: [`file::FileLog`] (the embedded default: segment files in the data
//! directory, group commit, fsync policies; [`recovery`] reads it back) and [`MemoryOnly`]
//! (state in memory only, for tests and benchmarks). A replicated log plugs in here later.
//! [`tail`] reads committed records back after a position while the hub runs (resume).

pub mod backup;
pub mod file;
pub mod format;
pub mod recovery;
pub mod snapshot;
pub mod tail;

use std::io;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use bytes::Bytes;

/// The files of `dir` whose names end in `suffix`, sorted by name; none when `dir` does not
/// exist.
pub fn files_ending(dir: &Path, suffix: &str) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(suffix))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

/// One committed write as the log stores it: the full new state, or a tombstone.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Position in the hub's single commit order; strictly increasing.
    pub seq: u64,
    /// The sequence number of the object's CREATE: its place in the endpoint's natural order.
    pub created_seq: u64,
    /// Shared: a decoder gives consecutive records of one collection the same names
    /// ([`format::Names`]), so a start does not allocate (and compare) them per record.
    pub endpoint: Arc<str>,
    pub namespace: Arc<str>,
    pub id: Arc<str>,
    /// The object's whole new state as JSON; `None` for a delete.
    pub state: Option<Bytes>,
    /// A change a provider published for an object it keeps itself: it holds a position in
    /// the commit order (so sequence numbers stay gapless) but never touches the record
    /// store; a start skips it. `state` is then the published data, if any.
    pub published: bool,
}

/// A destination for committed writes.
pub trait Log: Send + 'static {
    /// Makes the batch durable (as the log's policy defines it) or fails as a whole.
    fn append(&mut self, batch: &[LogRecord]) -> std::io::Result<()>;
    /// Whether the log keeps the records at all: a memory-only hub skips building them.
    fn keeps_records(&self) -> bool;
    /// Whether the log has grown enough since the last snapshot to want a new one; when
    /// `closing` (a clean stop), whether anything was appended since.
    fn wants_snapshot(&self, _closing: bool) -> bool {
        false
    }
    /// Takes the whole state as of sequence number `seq` (one entry per live object, in any
    /// order) as a snapshot, after which the log before it may go. With `wait` the snapshot is
    /// written before this returns (a clean stop); otherwise in the background while writes
    /// go on.
    fn snapshot(&mut self, _seq: u64, _entries: Vec<LogRecord>, _wait: bool) {}
}

/// No persistence: state lives in memory only and is gone after a restart.
#[derive(Debug, Default)]
pub struct MemoryOnly;

impl Log for MemoryOnly {
    fn append(&mut self, _batch: &[LogRecord]) -> std::io::Result<()> {
        Ok(())
    }
    fn keeps_records(&self) -> bool {
        false
    }
}
