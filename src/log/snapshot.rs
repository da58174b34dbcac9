//! Snapshots: the whole state at one sequence number, so that the log before it can go.
//!
//! A snapshot file `<data_dir>/snapshot/<seq, 20 digits>.snap` holds:
//!
//! ```text
//! "FLOWSNP1"  magic
//! seq u64 LE  the last commit sequence number the snapshot includes
//! entries     one log record (see `format`) per live object: its state, version as seq
//! "FLOWEND1"  end magic
//! count u64 LE, crc u32 LE   the number of entries and the CRC32C of every byte before `crc`
//! ```
//!
//! It is written to `<name>.tmp`, fsynced, renamed, and the directory fsynced, so a snapshot
//! file is either whole or absent; the trailer's checksum catches anything else. Only then are
//! the log segments it covers removed, except the newest of them up to `resume_log_bytes`
//! ([`SnapshottingLog::keep_for_resume`]): subscribers resume from those (SPEC 12.5), and a
//! start passes over them (recovery skips a segment the snapshot holds whole).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::file::{sync_dir, FileLog};
use super::format::{decode_shared_named, encode, Decoded, Names};
use super::recovery::segments;
use super::{files_ending, Log, LogRecord};

/// The file log with snapshots: it asks for one when the log written since the last snapshot
/// is at least as large as that snapshot (and at least `min_bytes`), writes it on a thread of
/// its own while writes go on, then removes the segments it covers.
pub struct SnapshottingLog {
    log: FileLog,
    dir: PathBuf,
    min_bytes: u64,
    /// Bytes appended since the last snapshot's cut.
    since: u64,
    /// Size of the last snapshot written (shared with the writer thread).
    last_size: Arc<AtomicU64>,
    /// Whether a snapshot is being written; one at a time.
    busy: Arc<AtomicBool>,
    /// Bytes of the newest covered segments a compaction keeps for resuming subscribers.
    keep_bytes: u64,
}

impl SnapshottingLog {
    /// `last_size`: the size of the snapshot the hub started from (0 without one).
    pub fn new(log: FileLog, dir: PathBuf, min_bytes: u64, last_size: u64) -> SnapshottingLog {
        SnapshottingLog {
            log,
            dir,
            min_bytes,
            since: 0,
            last_size: Arc::new(AtomicU64::new(last_size)),
            busy: Arc::new(AtomicBool::new(false)),
            keep_bytes: 0,
        }
    }

    /// Keeps the newest segments a snapshot covers, up to `bytes` in all, instead of removing
    /// them: a subscriber resuming from a position in them is served from the log.
    pub fn keep_for_resume(mut self, bytes: u64) -> SnapshottingLog {
        self.keep_bytes = bytes;
        self
    }
}

/// The covered segments a compaction removes: all but the newest ones whose sizes add up
/// to at most `keep_bytes`.
fn to_remove(covered: &[PathBuf], keep_bytes: u64) -> Vec<PathBuf> {
    let mut kept = 0u64;
    let mut keeping = true;
    let mut out = Vec::new();
    for seg in covered.iter().rev() {
        let size = fs::metadata(seg).map_or(0, |m| m.len());
        keeping = keeping && kept + size <= keep_bytes;
        if keeping {
            kept += size;
        } else {
            out.push(seg.clone());
        }
    }
    out.reverse();
    out
}

impl Log for SnapshottingLog {
    fn append(&mut self, batch: &[LogRecord]) -> io::Result<()> {
        self.log.append(batch)?;
        self.since += batch
            .iter()
            .map(|r| {
                32 + r.endpoint.len()
                    + r.namespace.len()
                    + r.id.len()
                    + r.state.as_ref().map_or(0, |s| s.len())
            })
            .sum::<usize>() as u64;
        Ok(())
    }

    fn keeps_records(&self) -> bool {
        true
    }

    fn wants_snapshot(&self, closing: bool) -> bool {
        if closing {
            return self.since > 0;
        }
        !self.busy.load(Ordering::Acquire)
            && self.since >= self.min_bytes.max(self.last_size.load(Ordering::Relaxed))
    }

    fn snapshot(&mut self, seq: u64, entries: Vec<LogRecord>, wait: bool) {
        while self.busy.load(Ordering::Acquire) {
            if !wait {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Cut the log here: every segment that exists now holds only records up to `seq`.
        if let Err(e) = self.log.rotate() {
            tracing::error!(error = %e, "cannot close the log segment for a snapshot; no snapshot taken");
            return;
        }
        let covered = match segments(self.log.dir()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the log segments; no snapshot taken");
                return;
            }
        };
        self.since = 0;
        self.busy.store(true, Ordering::Release);
        let (dir, log_dir) = (self.dir.clone(), self.log.dir().to_path_buf());
        let (busy, last_size) = (self.busy.clone(), self.last_size.clone());
        let keep_bytes = self.keep_bytes;
        let job = move || {
            let covered = to_remove(&covered, keep_bytes);
            let started = std::time::Instant::now();
            match write(&dir, seq, &entries) {
                Ok((path, size)) => {
                    last_size.store(size, Ordering::Relaxed);
                    let compacted = compact(&dir, &path, &log_dir, &covered);
                    crate::ops::series()
                        .snapshot_duration
                        .record(started.elapsed().as_secs_f64());
                    match compacted {
                        Ok(()) => tracing::info!(
                            seq,
                            objects = entries.len(),
                            bytes = size,
                            segments_removed = covered.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "snapshot written"
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "snapshot written, but the log it covers could not all be removed")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, seq, "writing a snapshot failed; the log is kept whole")
                }
            }
            busy.store(false, Ordering::Release);
        };
        if wait {
            job();
        } else if let Err(e) = std::thread::Builder::new()
            .name("flowhub-snapshot".into())
            .spawn(job)
        {
            tracing::error!(error = %e, "cannot start the snapshot thread");
            self.busy.store(false, Ordering::Release);
        }
    }
}

const MAGIC: &[u8; 8] = b"FLOWSNP1";
const END: &[u8; 8] = b"FLOWEND1";

/// The name of the snapshot at `seq`.
pub fn snapshot_name(seq: u64) -> String {
    format!("{seq:020}.snap")
}

/// Writes a snapshot of `entries` as of `seq` into `dir`; returns its path and size.
pub fn write(dir: &Path, seq: u64, entries: &[LogRecord]) -> io::Result<(PathBuf, u64)> {
    fs::create_dir_all(dir)?;
    let path = dir.join(snapshot_name(seq));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(seq)));
    let file = File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let mut crc = 0u32;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut size = 0u64;
    let mut emit = |out: &mut BufWriter<&File>, bytes: &[u8], crc: &mut u32| -> io::Result<()> {
        *crc = crc32c::crc32c_append(*crc, bytes);
        size += bytes.len() as u64;
        out.write_all(bytes)
    };
    emit(&mut out, MAGIC, &mut crc)?;
    emit(&mut out, &seq.to_le_bytes(), &mut crc)?;
    for chunk in entries.chunks(256) {
        buf.clear();
        for e in chunk {
            encode(e, &mut buf);
        }
        emit(&mut out, &buf, &mut crc)?;
    }
    emit(&mut out, END, &mut crc)?;
    emit(&mut out, &(entries.len() as u64).to_le_bytes(), &mut crc)?;
    out.write_all(&crc.to_le_bytes())?;
    out.flush()?;
    drop(out);
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((path, size + 4))
}

/// A snapshot file read and checked whole (magic, end marker, checksum), its entries not yet
/// decoded: a start decodes them on one thread while it builds the state on another.
pub struct Checked {
    pub path: PathBuf,
    /// The last commit sequence number the snapshot includes.
    pub seq: u64,
    /// Its size on disk.
    pub size: u64,
    count: u64,
    /// The bytes of the entries; records decoded from them share this buffer.
    entries: Bytes,
}

impl Checked {
    /// Reads `path` and checks it whole.
    pub fn open(path: &Path) -> Result<Checked, String> {
        let buf = Bytes::from(
            fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let bad = |why: &str| format!("snapshot {} is damaged: {why}", path.display());
        if buf.len() < 8 + 8 + 8 + 8 + 4 || &buf[..8] != MAGIC {
            return Err(bad("not a snapshot (wrong magic or too short)"));
        }
        let body_end = buf.len() - 4;
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(&buf[body_end..]);
        if crc32c::crc32c(&buf[..body_end]) != u32::from_le_bytes(crc_bytes) {
            return Err(bad("checksum mismatch"));
        }
        let trailer = body_end - 16;
        if &buf[trailer..trailer + 8] != END {
            return Err(bad("no end marker"));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&buf[trailer + 8..body_end]);
        let count = u64::from_le_bytes(n);
        n.copy_from_slice(&buf[8..16]);
        let seq = u64::from_le_bytes(n);
        Ok(Checked {
            path: path.to_path_buf(),
            seq,
            size: buf.len() as u64,
            count,
            entries: buf.slice(16..trailer),
        })
    }

    /// Decodes the entries and hands them to `sink` in chunks of up to `chunk`; stops early
    /// when `sink` returns false.
    pub fn decode(
        &self,
        chunk: usize,
        mut sink: impl FnMut(Vec<LogRecord>) -> bool,
    ) -> Result<(), String> {
        let bad = |why: &str| format!("snapshot {} is damaged: {why}", self.path.display());
        let mut at = 0;
        let mut seen = 0u64;
        let mut out = Vec::with_capacity(chunk);
        let mut names = Names::default();
        while at < self.entries.len() {
            match decode_shared_named(&self.entries.slice(at..), &mut names) {
                Decoded::Record(rec, used) => {
                    out.push(rec);
                    at += used;
                    seen += 1;
                }
                _ => return Err(bad(&format!("entry at byte {} does not decode", at + 16))),
            }
            if out.len() == chunk && !sink(std::mem::replace(&mut out, Vec::with_capacity(chunk))) {
                return Ok(());
            }
        }
        if seen != self.count {
            return Err(bad("entry count does not match"));
        }
        if !out.is_empty() {
            sink(out);
        }
        Ok(())
    }
}

/// Reads and checks one snapshot file: its sequence number and entries.
pub fn read(path: &Path) -> Result<(u64, Vec<LogRecord>), String> {
    let checked = Checked::open(path)?;
    let mut entries = Vec::with_capacity(capacity_for(checked.count, checked.entries.len()));
    checked.decode(4096, |chunk| {
        entries.extend(chunk);
        true
    })?;
    Ok((checked.seq, entries))
}

/// The smallest encoded entry: a record's header and a payload of empty names, no state.
const MIN_ENTRY: usize = super::format::HEADER_LEN + 8 + 6 + 1;

/// How many entries to make room for: the count the file declares, but never more than its
/// bytes can hold (a snapshot that declared 2^64 entries had 2 GiB reserved for them before
/// one was decoded).
fn capacity_for(count: u64, bytes: usize) -> usize {
    usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(bytes / MIN_ENTRY)
}

/// The newest snapshot of `dir` that is whole, checked but not decoded.
pub fn newest_checked(dir: &Path) -> Result<Option<Checked>, String> {
    let files =
        list(dir).map_err(|e| format!("cannot list snapshots in {}: {e}", dir.display()))?;
    for path in files {
        match Checked::open(&path) {
            Ok(c) => return Ok(Some(c)),
            Err(why) => tracing::error!("{why}; trying an older snapshot"),
        }
    }
    Ok(None)
}

/// The snapshot files of `dir`, newest first. Read only: a `.tmp` file may be a snapshot
/// being written right now by a running hub.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = files_ending(dir, ".snap")?;
    out.reverse();
    Ok(out)
}

/// Removes `.tmp` files, snapshots cut short by a crash. Only for the hub that holds the
/// data directory's lock, at start.
pub fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for p in files_ending(dir, ".snap.tmp")? {
        fs::remove_file(&p)?;
    }
    Ok(())
}

/// The newest snapshot that reads back whole: its path, sequence number and entries. A newer
/// damaged one is reported and passed over; the log's continuity check then decides whether
/// what is left still reaches the present.
pub fn load_newest(dir: &Path) -> Result<Option<(PathBuf, u64, Vec<LogRecord>)>, String> {
    let files =
        list(dir).map_err(|e| format!("cannot list snapshots in {}: {e}", dir.display()))?;
    for path in files {
        match read(&path) {
            Ok((seq, entries)) => return Ok(Some((path, seq, entries))),
            Err(why) => tracing::error!("{why}; trying an older snapshot"),
        }
    }
    Ok(None)
}

/// Removes what snapshot `keep` makes unnecessary: older snapshot files, and the log segments
/// in `covered` (segments whose records all precede the snapshot's sequence number).
pub fn compact(
    snapshot_dir: &Path,
    keep: &Path,
    log_dir: &Path,
    covered: &[PathBuf],
) -> io::Result<()> {
    for old in list(snapshot_dir)? {
        if old != keep {
            fs::remove_file(&old)?;
        }
    }
    for seg in covered {
        match fs::remove_file(seg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(snapshot_dir)?;
    sync_dir(log_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_declared_count_reserves_no_more_than_the_bytes_hold() {
        // Found by the `log_record` fuzz target: a whole snapshot (valid checksum) whose
        // trailer declares a huge count made `read` reserve 2 GiB up front.
        assert_eq!(capacity_for(u64::MAX, 0), 0);
        assert_eq!(capacity_for(u64::MAX, 10 * MIN_ENTRY + 3), 10);
        assert_eq!(capacity_for(2, 1 << 20), 2);
        let mut one = Vec::new();
        encode(
            &LogRecord {
                seq: 1,
                created_seq: 1,
                endpoint: "".into(),
                namespace: "".into(),
                id: "".into(),
                state: None,
                published: false,
            },
            &mut one,
        );
        assert_eq!(one.len(), MIN_ENTRY);
        let dir = tempfile::tempdir().unwrap();
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(END);
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let path = dir.path().join(snapshot_name(7));
        fs::write(&path, body).unwrap();
        assert!(read(&path).unwrap_err().contains("count does not match"));
    }

    fn entry(i: u64) -> LogRecord {
        LogRecord {
            seq: i,
            created_seq: i,
            endpoint: "a/b".into(),
            namespace: "".into(),
            id: format!("o{i}").into(),
            state: Some(Bytes::from(format!("{{\"id\":\"o{i}\"}}"))),
            published: false,
        }
    }

    #[test]
    fn a_compaction_keeps_the_newest_covered_segments_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let segs: Vec<PathBuf> = (1..=4)
            .map(|i| {
                let p = dir.path().join(format!("{i:020}.seg"));
                fs::write(&p, vec![0u8; 100]).unwrap();
                p
            })
            .collect();
        assert_eq!(to_remove(&segs, 0), segs);
        assert_eq!(to_remove(&segs, 250), segs[..2].to_vec());
        assert!(to_remove(&segs, 400).is_empty());
    }

    #[test]
    fn a_snapshot_reads_back_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<LogRecord> = (1..=500).map(entry).collect();
        let (path, size) = write(dir.path(), 777, &entries).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        let (seq, back) = read(&path).unwrap();
        assert_eq!((seq, back.len()), (777, 500));
        assert_eq!(&*back[499].id, "o500");
        let good = fs::read(&path).unwrap();
        for at in [3, 20, good.len() / 2, good.len() - 10, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert!(read(&path).is_err(), "flip at {at}");
        }
        fs::write(&path, &good[..good.len() - 5]).unwrap();
        assert!(read(&path).is_err());
        fs::write(&path, &good).unwrap();
        // A snapshot being written is left alone by readers; only the hub's start removes it.
        fs::write(dir.path().join("00000000000000000888.snap.tmp"), b"partial").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![path.clone()]);
        assert!(dir.path().join("00000000000000000888.snap.tmp").exists());
        remove_leftovers(dir.path()).unwrap();
        assert!(!dir.path().join("00000000000000000888.snap.tmp").exists());
        fs::write(dir.path().join("00000000000000000999.snap"), b"junk").unwrap();
        let (p, seq, _) = load_newest(dir.path()).unwrap().unwrap();
        assert_eq!((p, seq), (path, 777));
    }
}
