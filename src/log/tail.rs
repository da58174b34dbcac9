//! Reading committed records back after a position, from the segments still on disk, while
//! the hub runs: what a subscriber that resumes from further back than the in-memory window
//! (or from before a restart) missed.
//!
//! Safe beside the writer: the caller names the last position to read (`upto`), one it knows
//! is committed (the fan-out has seen it, so the sequencer appended it before applying it).
//! Every record up to there is whole in the file: a failed append is cut back before the
//! sequencer hands out its positions again, and nothing past `upto` is ever looked at, so a
//! batch being written (or a torn last record) is never read as data. The segments are read
//! record by record through a small buffer, never whole, and a segment that a snapshot's
//! compaction removes while it is being read stays readable through the open file.
//!
//! Never writes, cuts or repairs anything: damage here only means "not covered".

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use bytes::Bytes;

use super::format::{decode_shared, Decoded, HEADER_LEN, MAGIC, MAX_PAYLOAD};
use super::recovery::{segment_seq, segments};
use super::LogRecord;

/// How a read of `(from, upto]` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every record from `from + 1` to `upto` was handed over, in order, without a gap.
    Done,
    /// The segments on disk do not hold that whole range (a snapshot's compaction removed
    /// the start of it, or a record is missing or damaged): the caller must not pretend it
    /// does.
    NotCovered,
    /// The sink asked to stop.
    Stopped,
}

/// Reads the records of the log in `dir` with positions in `(from, upto]` and hands each to
/// `sink` with `true`, in commit order. The records of the first segment read that come
/// before `from + 1` are handed over first with `false` (context: the state objects had
/// before the range, for whoever needs it). `sink` returns `false` to stop.
pub fn read_range(
    dir: &Path,
    from: u64,
    upto: u64,
    mut sink: impl FnMut(LogRecord, bool) -> bool,
) -> io::Result<Ended> {
    if upto <= from {
        return Ok(Ended::Done);
    }
    let files = segments(dir)?;
    // The last segment that starts at or before `from + 1`: it holds `from + 1` if anything
    // does (segments are named after their first position).
    let Some(first) = files
        .iter()
        .rposition(|f| segment_seq(f).is_some_and(|s| s <= from + 1))
    else {
        return Ok(Ended::NotCovered);
    };
    let mut prev = from;
    for path in &files[first..] {
        let file = match File::open(path) {
            Ok(f) => f,
            // Compacted away since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ended::NotCovered),
            Err(e) => return Err(e),
        };
        // A record is never longer than what is left of its file: a damaged length is not
        // allocated for.
        let mut left = file.metadata()?.len();
        let mut r = BufReader::with_capacity(64 << 10, file);
        let mut magic = [0u8; MAGIC.len()];
        if read_full(&mut r, &mut magic)? < MAGIC.len() || &magic != MAGIC {
            // A segment torn at creation holds nothing; the next one (if any) must go on.
            continue;
        }
        left = left.saturating_sub(MAGIC.len() as u64);
        loop {
            let mut head = [0u8; HEADER_LEN];
            if read_full(&mut r, &mut head)? < HEADER_LEN {
                break; // the end of this segment (or a torn header past `upto`)
            }
            if head.iter().all(|&b| b == 0) {
                break; // the free (preallocated) rest of this segment
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len > MAX_PAYLOAD {
                return Ok(Ended::NotCovered);
            }
            left = left.saturating_sub(HEADER_LEN as u64);
            if len as u64 > left {
                break; // torn (being written past `upto`, or damaged): read no further
            }
            left -= len as u64;
            let mut buf = vec![0u8; HEADER_LEN + len];
            buf[..HEADER_LEN].copy_from_slice(&head);
            if read_full(&mut r, &mut buf[HEADER_LEN..])? < len {
                break;
            }
            // The record's state shares its own buffer: no second copy.
            let rec = match decode_shared(&Bytes::from(buf)) {
                Decoded::Record(rec, _) => rec,
                _ => return Ok(Ended::NotCovered),
            };
            if rec.seq <= from {
                if !sink(rec, false) {
                    return Ok(Ended::Stopped);
                }
                continue;
            }
            if rec.seq != prev + 1 {
                return Ok(Ended::NotCovered);
            }
            prev = rec.seq;
            if !sink(rec, true) {
                return Ok(Ended::Stopped);
            }
            if prev == upto {
                return Ok(Ended::Done);
            }
        }
    }
    Ok(Ended::NotCovered)
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::file::{Durability, FileLog};
    use crate::log::Log;

    fn rec(seq: u64) -> LogRecord {
        LogRecord {
            seq,
            created_seq: 1,
            endpoint: "a/b".into(),
            namespace: "".into(),
            id: "x".into(),
            state: Some(Bytes::from(format!("{{\"id\":\"x\",\"n\":{seq}}}"))),
            published: false,
        }
    }

    fn seqs(dir: &Path, from: u64, upto: u64) -> (Ended, Vec<(u64, bool)>) {
        let mut got = Vec::new();
        let read = read_range(dir, from, upto, |r, in_range| {
            got.push((r.seq, in_range));
            true
        })
        .expect("read");
        (read, got)
    }

    #[test]
    fn reads_a_range_across_segments_with_the_first_segments_context() {
        let dir = tempfile::tempdir().expect("dir");
        let mut log = FileLog::open(dir.path(), Durability::Never, 4096, None).expect("log");
        for s in 1..=200 {
            log.append(&[rec(s)]).expect("append");
        }
        assert!(
            segments(dir.path()).expect("list").len() > 1,
            "several segments"
        );
        let (read, got) = seqs(dir.path(), 40, 55);
        assert_eq!(read, Ended::Done);
        let in_range: Vec<u64> = got.iter().filter(|g| g.1).map(|g| g.0).collect();
        assert_eq!(in_range, (41..=55).collect::<Vec<_>>());
        assert!(got.iter().filter(|g| !g.1).all(|g| g.0 <= 40));
        // Past what is written: not covered (the caller never asks for that).
        assert_eq!(seqs(dir.path(), 190, 210).0, Ended::NotCovered);
        // A removed first segment: not covered any more.
        let first = segments(dir.path()).expect("list").remove(0);
        std::fs::remove_file(first).expect("remove");
        assert_eq!(seqs(dir.path(), 0, 10).0, Ended::NotCovered);
        assert_eq!(seqs(dir.path(), 198, 200).0, Ended::Done);
    }

    #[test]
    fn a_torn_tail_after_the_range_is_not_read() {
        let dir = tempfile::tempdir().expect("dir");
        let mut log = FileLog::open(dir.path(), Durability::Never, 1 << 20, None).expect("log");
        for s in 1..=5 {
            log.append(&[rec(s)]).expect("append");
        }
        drop(log);
        let seg = segments(dir.path()).expect("list").remove(0);
        let mut bytes = std::fs::read(&seg).expect("read");
        bytes.extend_from_slice(&[7u8; 11]);
        std::fs::write(&seg, bytes).expect("write");
        let (read, got) = seqs(dir.path(), 2, 5);
        assert_eq!(read, Ended::Done);
        assert_eq!(got.iter().filter(|g| g.1).count(), 3);
        assert_eq!(seqs(dir.path(), 2, 6).0, Ended::NotCovered);
    }
}
