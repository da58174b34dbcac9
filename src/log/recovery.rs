//! Reading the log back at start: every intact record in order, a torn tail cut off with a
//! warning, damage anywhere else refused with the file and offset, or cut away on request
//! (`flowhub repair`). [`inspect`] reads the same way without changing anything, for
//! `flowhub log dump`.
//!
//! A segment's records may be followed by zeros: the rest of a preallocated segment (see
//! [`super::file`]), or what a filesystem that extended the file but never wrote the data
//! leaves. Zeros to the end of a segment are free space, in any segment: reading stops there.
//!
//! A torn tail is what a crash in the middle of the last append leaves: a last record that
//! is incomplete or fails its checksum (possibly followed by zeros), with nothing intact after
//! it. A bad record followed by intact ones is damage, never a torn tail, and so is any bad
//! record in an earlier segment.
//!
//! Sequence numbers have no gaps (a refused batch gives its numbers back): a record whose
//! number is not the previous one plus one is damage (records out of order, or missing).
//!
//! A repair keeps a copy of the damaged segment and moves every later one aside, into
//! `damaged-<pid>/` next to the segments; nothing is deleted. It reports the highest sequence
//! number the dropped part holds, so that `flowhub repair` can make versions go on past it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::file::sync_dir;
use bytes::Bytes;

use super::format::{decode, decode_shared_named, Decoded, Names, HEADER_LEN, MAGIC};
use super::LogRecord;

/// Damage that stops the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the log is damaged in {} at byte {}: {}. The hub does not start on a damaged log: \
             restore a backup, or run `flowhub repair` to keep every record before this point \
             (the rest is moved aside, not deleted)",
            self.file.display(),
            self.offset,
            self.reason
        )
    }
}

/// The end of the last segment that recovery cut off (or, with `repair`, has cut off): a
/// write that was never acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Where the intact records end.
    pub offset: u64,
    /// Bytes after `offset`.
    pub bytes: u64,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} bytes from byte {} are {}, cut off (a write that was never acknowledged)",
            self.file.display(),
            self.bytes,
            self.offset,
            if self.offset < MAGIC.len() as u64 {
                "a segment torn while being created"
            } else {
                "a torn record"
            }
        )
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Intact records after `after_seq`, in commit order.
    pub records: Vec<LogRecord>,
    /// The highest sequence number in the log (or `after_seq` if none is higher).
    pub last_seq: u64,
    /// The last segment and the length of its intact prefix: appending continues there.
    pub tail: Option<(PathBuf, u64)>,
    /// Every segment file, in order.
    pub segments: Vec<PathBuf>,
    /// The torn tail that was found (and is cut when the log is opened for appending).
    pub torn: Option<TornTail>,
    /// What a repair cut away, one line each, for the report.
    pub repaired: Vec<String>,
    /// Where a repair put what it moved aside.
    pub aside: Option<PathBuf>,
    /// The highest sequence number a repair dropped (of an intact record after the damage,
    /// or a later segment's name); 0 when it dropped none it could read.
    pub dropped_max_seq: u64,
}

/// The sequence number a segment file is named after.
pub fn segment_seq(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The segment files of `dir` (`<20 digits>.seg`), in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = super::files_ending(dir, ".seg")?;
    out.retain(|p| segment_seq(p).is_some());
    Ok(out)
}

/// The offset of the first intact record that starts at or after `from` in `buf`.
pub fn next_intact(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(HEADER_LEN)).find(|&i| {
        let rest = &buf[i..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        HEADER_LEN.saturating_add(len) <= rest.len() && matches!(decode(rest), Decoded::Record(..))
    })
}

/// Whether an intact record starts anywhere in `buf` after its first byte. Zeros never hold
/// one; a tail of more than `MAX_SCAN` other bytes after a bad record is taken as damage.
fn intact_record_after(buf: &[u8]) -> bool {
    const MAX_SCAN: usize = 64 << 20;
    if buf.iter().all(|&b| b == 0) {
        return false;
    }
    if buf.len() > MAX_SCAN {
        return true;
    }
    next_intact(buf, 1).is_some()
}

/// How a segment file begins.
enum Head {
    Magic,
    /// The last segment, shorter than the magic and a prefix of it: cut while being created,
    /// before anything was written to it.
    TornAtCreation,
    WrongMagic,
}

fn head(buf: &[u8], last: bool) -> Head {
    if buf.len() >= MAGIC.len() && &buf[..MAGIC.len()] == MAGIC {
        Head::Magic
    } else if last && buf.len() < MAGIC.len() && MAGIC.starts_with(buf) {
        Head::TornAtCreation
    } else {
        Head::WrongMagic
    }
}

/// What lies at `at` of a segment, judged in context.
enum At {
    Record(LogRecord, usize),
    /// Zeros from here to the end of the segment: free space, no record.
    Free,
    /// From here to the end: a torn write at the tail of the last segment.
    Torn,
    /// Bad bytes that are not a torn tail.
    Bad(String),
}

fn read_at(buf: &Bytes, at: usize, last: bool, names: &mut Names) -> At {
    // Records share the segment's buffer rather than copying their state out of it, and a run
    // of one collection's records shares its names.
    match decode_shared_named(&buf.slice(at..), names) {
        Decoded::Record(rec, used) => At::Record(rec, used),
        _ if buf[at..].iter().all(|&b| b == 0) => At::Free,
        _ if last && !intact_record_after(&buf[at..]) => At::Torn,
        Decoded::Truncated if last => {
            At::Bad("a record is cut short and intact records follow it".into())
        }
        Decoded::Truncated => At::Bad(
            "a record is cut short, in a segment that is not the last (its writes were complete \
             before the next segment was started)"
                .into(),
        ),
        Decoded::Corrupt(why) if last => At::Bad(format!("{why}, and intact records follow")),
        Decoded::Corrupt(why) => At::Bad(why),
    }
}

/// Why `seq` cannot follow `prev` (0: nothing before it).
fn out_of_sequence(prev: u64, seq: u64) -> Option<String> {
    if prev == 0 || seq == prev + 1 {
        return None;
    }
    let why = if seq <= prev {
        "out of order"
    } else {
        "records are missing"
    };
    Some(format!("sequence {seq} after {prev}: {why}"))
}

/// The highest sequence number of any intact record in `buf` at or after `from`.
fn max_seq_from(buf: &[u8], from: usize) -> u64 {
    let mut max = 0;
    let mut at = from;
    while at < buf.len() {
        match decode(&buf[at..]) {
            Decoded::Record(rec, used) => {
                max = max.max(rec.seq);
                at += used;
            }
            _ => match next_intact(buf, at + 1) {
                Some(next) => at = next,
                None => break,
            },
        }
    }
    max
}

fn io_at(path: &Path, e: io::Error) -> RecoveryError {
    RecoveryError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Cuts `path` back to `len` bytes (rewriting the magic when `len` does not reach past it)
/// and fsyncs it. Returns the new length.
fn cut(path: &Path, len: u64) -> Result<u64, RecoveryError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_at(path, e))?;
    let len = if len < MAGIC.len() as u64 {
        file.set_len(0).map_err(|e| io_at(path, e))?;
        file.write_all(MAGIC).map_err(|e| io_at(path, e))?;
        MAGIC.len() as u64
    } else {
        file.set_len(len).map_err(|e| io_at(path, e))?;
        len
    };
    file.sync_all().map_err(|e| io_at(path, e))?;
    Ok(len)
}

/// A fresh directory next to the segments for what a repair moves aside:
/// `damaged-<pid>` (or `damaged-<pid>-<n>` if that exists already).
fn aside_dir(dir: &Path) -> Result<PathBuf, RecoveryError> {
    let base = format!("damaged-{}", std::process::id());
    for n in 0u32..10_000 {
        let path = if n == 0 {
            dir.join(&base)
        } else {
            dir.join(format!("{base}-{n}"))
        };
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_at(&path, e)),
        }
    }
    Err(RecoveryError::Io(io::Error::other(format!(
        "no free name for a damaged-* directory in {}",
        dir.display()
    ))))
}

/// Repairs damage at `offset` of segment `n`: keeps a copy of that segment and moves every
/// later one aside, cuts the segment at the damage, and notes the highest sequence number
/// the dropped part holds.
fn repair_at(
    dir: &Path,
    files: &[PathBuf],
    n: usize,
    buf: &[u8],
    offset: u64,
    reason: &str,
    out: &mut Recovered,
) -> Result<(), RecoveryError> {
    let path = &files[n];
    let aside = aside_dir(dir)?;
    let name = path.file_name().unwrap_or_default();
    let copy = aside.join(name);
    std::fs::write(&copy, buf).map_err(|e| io_at(&copy, e))?;
    File::open(&copy)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_at(&copy, e))?;
    let keep = cut(path, offset)?;
    out.repaired.push(format!(
        "{}: dropped {} bytes from byte {offset} ({reason}); the whole segment as it was is \
         kept in {}",
        path.display(),
        buf.len() as u64 - offset.min(buf.len() as u64),
        copy.display()
    ));
    // The batch a segment was started for got the number in its name, written or not: a
    // segment damaged at its first record dropped at least that one.
    let mut dropped_max =
        max_seq_from(buf, (offset as usize).saturating_add(1)).max(segment_seq(path).unwrap_or(0));
    for f in &files[n + 1..] {
        let bytes = std::fs::read(f).map_err(|e| io_at(f, e))?;
        dropped_max = dropped_max
            .max(segment_seq(f).unwrap_or(0))
            .max(max_seq_from(&bytes, 0));
        let to = aside.join(f.file_name().unwrap_or_default());
        std::fs::rename(f, &to).map_err(|e| io_at(f, e))?;
        out.repaired.push(format!(
            "{}: moved aside to {} ({} bytes)",
            f.display(),
            to.display(),
            bytes.len()
        ));
    }
    File::open(&aside)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_at(&aside, e))?;
    out.tail = Some((path.clone(), keep));
    out.aside = Some(aside);
    out.dropped_max_seq = dropped_max;
    sync_dir(dir).map_err(|e| io_at(dir, e))?;
    Ok(())
}

/// Reads every segment of `dir`. With `repair`, damage is cut away (reported in
/// `repaired`) instead of refused, and a torn tail is cut off right away.
pub fn recover(dir: &Path, after_seq: u64, repair: bool) -> Result<Recovered, RecoveryError> {
    let files = segments(dir).map_err(|e| io_at(dir, e))?;
    let mut out = Recovered {
        last_seq: after_seq,
        ..Recovered::default()
    };
    let mut prev_seq = 0u64;
    for (n, path) in files.iter().enumerate() {
        let last = n + 1 == files.len();
        out.segments.push(path.clone());
        // The next segment starts right after this one ends: when that is within `after_seq`
        // (a snapshot holds it all), this one is a leftover of a compaction cut short, and
        // is not read at all. Damage there cannot hurt.
        let next_first = files.get(n + 1).and_then(|f| segment_seq(f));
        if after_seq > 0 && next_first.is_some_and(|first| first.saturating_sub(1) <= after_seq) {
            prev_seq = 0;
            continue;
        }
        let buf = Bytes::from(std::fs::read(path).map_err(|e| io_at(path, e))?);
        let mut damage: Option<(u64, String)> = None;
        let mut at = MAGIC.len();
        match head(&buf, last) {
            Head::Magic => {}
            Head::TornAtCreation => {
                // Nothing was ever written to it; appending starts it over.
                at = 0;
                out.torn = Some(TornTail {
                    file: path.clone(),
                    offset: 0,
                    bytes: buf.len() as u64,
                });
            }
            Head::WrongMagic => {
                damage = Some((
                    0,
                    "not a log segment (it does not start with FLOWLOG1)".into(),
                ))
            }
        }
        let mut names = Names::default();
        while damage.is_none() && out.torn.is_none() && at < buf.len() {
            match read_at(&buf, at, last, &mut names) {
                At::Record(rec, used) => {
                    if let Some(why) = out_of_sequence(prev_seq, rec.seq) {
                        damage = Some((at as u64, why));
                        break;
                    }
                    prev_seq = rec.seq;
                    out.last_seq = out.last_seq.max(rec.seq);
                    if rec.seq > after_seq {
                        out.records.push(rec);
                    }
                    at += used;
                }
                At::Free => break,
                At::Torn => {
                    out.torn = Some(TornTail {
                        file: path.clone(),
                        offset: at as u64,
                        bytes: (buf.len() - at) as u64,
                    });
                }
                At::Bad(why) => damage = Some((at as u64, why)),
            }
        }
        match damage {
            None => {
                if let Some(torn) = &out.torn {
                    tracing::warn!(
                        file = %torn.file.display(),
                        offset = torn.offset,
                        bytes = torn.bytes,
                        "cutting a torn tail off the end of the log (a write that was never acknowledged)"
                    );
                }
                if last {
                    out.tail = Some((path.clone(), at as u64));
                    match (repair, &out.torn) {
                        (true, Some(torn)) if torn.offset < MAGIC.len() as u64 => {
                            // Nothing was ever written to it: it goes, and the next append
                            // starts it over.
                            std::fs::remove_file(path).map_err(|e| io_at(path, e))?;
                            sync_dir(dir).map_err(|e| io_at(dir, e))?;
                            out.segments.pop();
                            out.tail = None;
                            out.repaired.push(format!("{torn}: removed"));
                        }
                        (true, Some(torn)) => {
                            cut(path, at as u64)?;
                            out.repaired.push(torn.to_string());
                        }
                        _ => {}
                    }
                }
            }
            Some((offset, reason)) if !repair => {
                return Err(RecoveryError::Damaged(Damage {
                    file: path.clone(),
                    offset,
                    reason,
                }));
            }
            Some((offset, reason)) => {
                repair_at(dir, &files, n, &buf, offset, &reason, &mut out)?;
                break;
            }
        }
    }
    Ok(out)
}

/// One problem [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    pub offset: u64,
    /// Bad bytes from `offset` to the next intact record (or the end of the file).
    pub bytes: u64,
    pub reason: String,
    /// A torn tail of the last segment (which the hub cuts at start), not damage.
    pub torn_tail: bool,
}

/// What [`inspect`] found in a whole log.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Segment files read, with their sizes.
    pub segments: Vec<(PathBuf, u64)>,
    /// Intact records.
    pub records: u64,
    /// Bytes of every segment read.
    pub bytes: u64,
    /// Of those, zeros after the last record of a segment (preallocated, not yet written).
    pub free: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Damage and torn tails, in log order.
    pub findings: Vec<Finding>,
    /// Segments that disappeared while being read (removed by a snapshot's compaction).
    pub vanished: Vec<PathBuf>,
}

/// Reads every segment of `dir` without changing anything and without the lock (a running
/// hub may be appending), calling `visit` with each intact record, its file and offset. Damage
/// does not stop it: it is reported and reading goes on at the next intact record. When
/// `visit` returns `false` reading stops there (the summary then covers what was read).
pub fn inspect(
    dir: &Path,
    mut visit: impl FnMut(&Path, u64, &LogRecord) -> bool,
) -> io::Result<Inspection> {
    let files = segments(dir)?;
    let mut out = Inspection::default();
    let mut prev_seq = 0u64;
    for (n, path) in files.iter().enumerate() {
        let last = n + 1 == files.len();
        let buf = match std::fs::read(path) {
            Ok(b) => Bytes::from(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                out.vanished.push(path.clone());
                continue;
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        out.segments.push((path.clone(), buf.len() as u64));
        out.bytes += buf.len() as u64;
        let finding = |offset: usize, end: usize, reason: String, torn_tail: bool| Finding {
            file: path.clone(),
            offset: offset as u64,
            bytes: (end - offset) as u64,
            reason,
            torn_tail,
        };
        let mut at = MAGIC.len();
        match head(&buf, last) {
            Head::Magic => {}
            Head::TornAtCreation => {
                out.findings.push(finding(
                    0,
                    buf.len(),
                    "a segment torn while being created".into(),
                    true,
                ));
                continue;
            }
            Head::WrongMagic => {
                let end = buf.len().min(MAGIC.len());
                out.findings.push(finding(
                    0,
                    end,
                    "not a log segment (it does not start with FLOWLOG1)".into(),
                    false,
                ));
            }
        }
        let mut names = Names::default();
        while at < buf.len() {
            match read_at(&buf, at, last, &mut names) {
                At::Record(rec, used) => {
                    if let Some(why) = out_of_sequence(prev_seq, rec.seq) {
                        out.findings.push(finding(at, at + used, why, false));
                    }
                    prev_seq = rec.seq;
                    out.records += 1;
                    out.first_seq.get_or_insert(rec.seq);
                    out.last_seq = Some(out.last_seq.unwrap_or(0).max(rec.seq));
                    if !visit(path, at as u64, &rec) {
                        return Ok(out);
                    }
                    at += used;
                }
                At::Free => {
                    out.free += (buf.len() - at) as u64;
                    break;
                }
                At::Torn => {
                    let reason =
                        "an incomplete record at the end (a write in progress, or torn by a crash)";
                    out.findings
                        .push(finding(at, buf.len(), reason.into(), true));
                    break;
                }
                At::Bad(why) => {
                    let next = next_intact(&buf, at + 1);
                    out.findings
                        .push(finding(at, next.unwrap_or(buf.len()), why, false));
                    // The bad bytes may well have held the numbers up to the next record.
                    prev_seq = 0;
                    match next {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Why recovery failed.
#[derive(Debug)]
pub enum RecoveryError {
    Damaged(Damage),
    Io(std::io::Error),
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::Damaged(d) => d.fmt(f),
            RecoveryError::Io(e) => write!(f, "cannot read the log: {e}"),
        }
    }
}

impl std::error::Error for RecoveryError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::log::file::{Durability, FileLog};
    use crate::log::Log;
    use bytes::Bytes;

    /// A log of `n` records (sequence numbers 1..=n) in segments of about 4 KiB.
    fn write_log(dir: &Path, n: u64) -> Vec<PathBuf> {
        let mut log = FileLog::open(dir, Durability::Never, 4096, None).unwrap();
        for seq in 1..=n {
            let state = format!(r#"{{"id":"o{seq}","pad":"{}"}}"#, "x".repeat(100));
            log.append(&[LogRecord {
                seq,
                created_seq: seq,
                endpoint: "a/b".into(),
                namespace: "".into(),
                id: format!("o{seq}").into(),
                state: Some(Bytes::from(state)),
                published: false,
            }])
            .unwrap();
        }
        drop(log);
        let segs = segments(dir).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        segs
    }

    fn flip(path: &Path, at: usize) {
        let mut b = std::fs::read(path).unwrap();
        b[at] ^= 0x10;
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn damage_in_a_segment_a_snapshot_covers_is_passed_over() {
        let tmp = tempfile::tempdir().unwrap();
        let segs = write_log(tmp.path(), 100);
        flip(&segs[0], 30);
        let Err(RecoveryError::Damaged(d)) = recover(tmp.path(), 0, false) else {
            panic!("damage refused without a snapshot")
        };
        assert_eq!((d.file.as_path(), d.offset), (segs[0].as_path(), 8));
        let covered = segment_seq(&segs[1]).unwrap() - 1;
        let r = recover(tmp.path(), covered, false).unwrap();
        assert_eq!(r.records.first().unwrap().seq, covered + 1);
        assert_eq!(r.last_seq, 100);
        // One record short of covering it: read, and refused.
        assert!(recover(tmp.path(), covered - 1, false).is_err());
    }

    #[test]
    fn repairs_keep_what_they_drop_even_twice_in_one_process() {
        let tmp = tempfile::tempdir().unwrap();
        let segs = write_log(tmp.path(), 100);
        // Wrong magic in the middle segment.
        flip(&segs[1], 2);
        let before: Vec<Vec<u8>> = segs.iter().map(|s| std::fs::read(s).unwrap()).collect();
        let found = inspect(tmp.path(), |_, _, _| true).unwrap();
        assert_eq!(found.findings.len(), 1, "{:?}", found.findings);
        assert_eq!(
            (&found.findings[0].file, found.findings[0].offset),
            (&segs[1], 0)
        );
        assert_eq!(found.records, 100, "the dump reads past a bad magic");

        let r = recover(tmp.path(), 0, true).unwrap();
        let first_dropped = segment_seq(&segs[1]).unwrap();
        assert_eq!(r.last_seq, first_dropped - 1);
        assert_eq!(r.dropped_max_seq, 100);
        let aside = r.aside.clone().unwrap();
        assert_eq!(
            std::fs::read(aside.join(segs[1].file_name().unwrap())).unwrap(),
            before[1]
        );
        assert_eq!(
            std::fs::read(aside.join(segs[2].file_name().unwrap())).unwrap(),
            before[2]
        );
        // What is left reads back, and appending goes on after it.
        let again = recover(tmp.path(), 0, false).unwrap();
        assert_eq!(again.records.len() as u64, first_dropped - 1);
        assert_eq!(again.tail, Some((segs[1].clone(), MAGIC.len() as u64)));

        // A second repair in the same process does not overwrite the first one's files.
        flip(&segs[0], 40);
        let r2 = recover(tmp.path(), 0, true).unwrap();
        let aside2 = r2.aside.unwrap();
        assert_ne!(aside, aside2);
        assert_eq!(
            std::fs::read(aside.join(segs[1].file_name().unwrap())).unwrap(),
            before[1]
        );
        assert!(recover(tmp.path(), 0, false).unwrap().records.is_empty());
    }
}
