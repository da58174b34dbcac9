//! Reading the log back at start: every intact record in order, a torn tail cut off with a
//! warning, damage anywhere else refused with the file and offset, or cut away on request
//! (`flowhub repair`).
//!
//! A torn tail is what a crash in the middle of the last append leaves: a last record that
//! is incomplete or fails its checksum, with nothing intact after it. A bad record followed by
//! intact ones is damage, never a torn tail, and so is any bad record in an earlier segment.

use std::fmt;
use std::path::{Path, PathBuf};

use super::file::sync_dir;
use super::format::{decode, Decoded, HEADER_LEN, MAGIC, MAX_PAYLOAD};
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
             (later ones are moved aside, not deleted)",
            self.file.display(),
            self.offset,
            self.reason
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
    /// What a repair cut away, for the report.
    pub repaired: Vec<String>,
}

/// The segment files of `dir`, in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

/// Whether an intact record starts anywhere in `buf` (bounded: a tail of more than
/// `MAX_SCAN` bytes after a bad record is taken as damage).
fn intact_record_after(buf: &[u8]) -> bool {
    const MAX_SCAN: usize = 64 << 20;
    if buf.len() > MAX_SCAN {
        return true;
    }
    (1..buf.len().saturating_sub(HEADER_LEN)).any(|i| {
        let rest = &buf[i..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        len <= MAX_PAYLOAD
            && HEADER_LEN + len <= rest.len()
            && matches!(decode(rest), Decoded::Record(..))
    })
}

/// Reads every segment of `dir`. With `repair`, damage is cut away (reported in
/// `repaired`) instead of refused.
pub fn recover(dir: &Path, after_seq: u64, repair: bool) -> Result<Recovered, RecoveryError> {
    let files = segments(dir).map_err(RecoveryError::Io)?;
    let mut out = Recovered {
        last_seq: after_seq,
        ..Recovered::default()
    };
    let mut prev_seq = 0u64;
    for (n, path) in files.iter().enumerate() {
        let last = n + 1 == files.len();
        let buf = std::fs::read(path).map_err(RecoveryError::Io)?;
        let mut damage: Option<(u64, String)> = None;
        let mut at = MAGIC.len();
        if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
            if last && MAGIC.starts_with(&buf[..buf.len().min(MAGIC.len())]) {
                // Cut while being created: nothing was ever acknowledged in it.
                tracing::warn!(file = %path.display(), bytes = buf.len(), "removing a segment torn at creation");
                out.tail = Some((path.clone(), 0));
                out.segments.push(path.clone());
                break;
            }
            damage = Some((0, "not a log segment (wrong magic)".into()));
        }
        while damage.is_none() && at < buf.len() {
            match decode(&buf[at..]) {
                Decoded::Record(rec, used) => {
                    // Sequence numbers have no gaps: a refused batch gives its numbers back.
                    if prev_seq != 0 && rec.seq != prev_seq + 1 {
                        let why = if rec.seq <= prev_seq {
                            "out of order"
                        } else {
                            "records are missing"
                        };
                        damage = Some((
                            at as u64,
                            format!("sequence {} after {prev_seq}: {why}", rec.seq),
                        ));
                        break;
                    }
                    prev_seq = rec.seq;
                    out.last_seq = out.last_seq.max(rec.seq);
                    if rec.seq > after_seq {
                        out.records.push(rec);
                    }
                    at += used;
                }
                Decoded::Truncated | Decoded::Corrupt(_)
                    if last && !intact_record_after(&buf[at..]) =>
                {
                    tracing::warn!(
                        file = %path.display(),
                        offset = at,
                        bytes = buf.len() - at,
                        "cutting a torn record off the end of the log (a write that was never acknowledged)"
                    );
                    break;
                }
                Decoded::Truncated => {
                    damage = Some((
                        at as u64,
                        "a record is cut short and intact records follow".into(),
                    ))
                }
                Decoded::Corrupt(why) => damage = Some((at as u64, why)),
            }
        }
        out.segments.push(path.clone());
        match damage {
            None => {
                if last {
                    out.tail = Some((path.clone(), at as u64));
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
                out.repaired.push(format!(
                    "{}: dropped {} bytes from byte {offset} ({reason})",
                    path.display(),
                    buf.len() as u64 - offset
                ));
                let keep = offset.max(MAGIC.len() as u64);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(RecoveryError::Io)?;
                file.set_len(keep).map_err(RecoveryError::Io)?;
                file.sync_all().map_err(RecoveryError::Io)?;
                let later = &files[n + 1..];
                if !later.is_empty() {
                    let aside = dir.join(format!("damaged-{}", std::process::id()));
                    std::fs::create_dir_all(&aside).map_err(RecoveryError::Io)?;
                    for f in later {
                        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                        let name = f.file_name().unwrap_or_default();
                        std::fs::rename(f, aside.join(name)).map_err(RecoveryError::Io)?;
                        out.repaired.push(format!(
                            "{}: moved aside to {} ({len} bytes)",
                            f.display(),
                            aside.display()
                        ));
                    }
                    sync_dir(dir).map_err(RecoveryError::Io)?;
                }
                out.tail = Some((path.clone(), keep));
                break;
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
