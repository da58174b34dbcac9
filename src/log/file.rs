//! The embedded file log: append-only segment files in `<data_dir>/log/`, group commit, and
//! the durability policies.
//!
//! One writer (the sequencer) appends a whole batch with one `write` and, under the `always`
//! policy, one `fdatasync`, before any write of the batch is applied or acknowledged. A segment
//! is named after the first sequence number it holds (`00000000000000000001.seg`) and a new
//! one is started when the current one passes `segment_bytes`.
//!
//! Preallocation (under `always`, unless turned off): a segment is made ahead of time by a
//! background thread, as the magic followed by `segment_bytes` of zeros, written and fsynced
//! (`spare.prealloc`, renamed into place when a segment starts). Appends then overwrite
//! blocks that already exist, so an `fdatasync` writes the data alone, not also the
//! filesystem's journal for a grown file; and a full disk does not stop writes until the
//! segment is used up. Readers take zeros after the last record as free space. A segment that
//! is not preallocated (the first of a fresh log, before the spare is ready, or one cut back
//! after a failed write) is closed early as soon as a spare is ready.
//!
//! Failure: when a write or an fsync fails, the batch is refused and the segment is cut back
//! to its last good length, so that a refused write can never come back at the next start.
//! Until that cut succeeds (and it is retried on every later append) the log refuses every
//! batch: the hub answers `UNAVAILABLE` and recovers by itself once the disk does.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::format::{check, encode, MAGIC};
use super::{Log, LogRecord};

/// When the log calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every batch is fsynced before it is acknowledged (the default).
    Always,
    /// Batches are acknowledged once written; fsync runs at least every this many ms, so a
    /// crash of the machine (not of the hub alone) may lose that much.
    Interval(u64),
    /// Never fsync: only for tests and benchmarks.
    Never,
}

/// The segment being appended to.
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes known to be whole records (plus the magic).
    good_len: u64,
    /// Zeros follow `good_len` (the segment was preallocated).
    preallocated: bool,
}

/// The spare segment, and the name it is written under until it is whole.
const SPARE: &str = "spare.prealloc";
const SPARE_TMP: &str = "spare.prealloc.tmp";

/// The file log.
pub struct FileLog {
    dir: PathBuf,
    durability: Durability,
    segment_bytes: u64,
    current: Option<Segment>,
    /// Set after a failed append until the segment has been cut back to `good_len`.
    broken: bool,
    buf: Vec<u8>,
    last_sync: Instant,
    /// Shared with the interval syncer thread: the file it should fsync.
    syncer_target: Option<Arc<Mutex<Option<Arc<File>>>>>,
    /// Whether segments are preallocated.
    preallocate: bool,
    /// A whole spare segment is in the directory.
    spare_ready: bool,
    /// The thread writing the spare.
    spare_job: Option<std::thread::JoinHandle<io::Result<()>>>,
}

/// The name of the segment that starts at `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// Fsyncs a directory, so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileLog {
    /// Opens the log in `dir` for appending. `tail` is the last segment and the length of its
    /// valid prefix, as recovery found it; `None` starts a fresh segment at the next append.
    pub fn open(
        dir: &Path,
        durability: Durability,
        segment_bytes: u64,
        tail: Option<(PathBuf, u64)>,
    ) -> io::Result<FileLog> {
        std::fs::create_dir_all(dir)?;
        let current = match tail {
            Some((path, good_len)) if good_len < MAGIC.len() as u64 => {
                // Torn while being created: nothing was ever written to it. Appending into it
                // would put records after no magic (a segment that reads as damage), so it
                // goes, and the next append starts it over. Removing takes no disk space: a
                // hub on a full disk still starts.
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        if let Err(e) = sync_dir(dir) {
                            tracing::warn!(error = %e, "cannot fsync the log directory");
                        }
                    }
                    // The next segment has this very name and is created truncated anyway.
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove a segment torn at creation")
                    }
                }
                None
            }
            Some((path, good_len)) => {
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                // Zeros after the records (a preallocated segment) stay; anything else there
                // (a torn tail, whose warning recovery gave) is cut off.
                let preallocated = zeros_after(&file, good_len)?;
                if !preallocated {
                    file.set_len(good_len)?;
                    file.sync_all()?;
                }
                Some(Segment {
                    file: Arc::new(file),
                    path,
                    good_len,
                    preallocated,
                })
            }
            None => None,
        };
        let mut log = FileLog {
            dir: dir.to_path_buf(),
            durability,
            segment_bytes,
            current,
            broken: false,
            buf: Vec::with_capacity(1 << 20),
            last_sync: Instant::now(),
            syncer_target: None,
            preallocate: false,
            spare_ready: false,
            spare_job: None,
        };
        if let Durability::Interval(ms) = durability {
            log.start_syncer(Duration::from_millis(ms.max(1)));
        }
        Ok(log)
    }

    /// Preallocates segments (see the module's comment): a spare is made at once, in the
    /// background, unless a whole one is already in the directory.
    pub fn with_preallocation(mut self, on: bool) -> FileLog {
        self.preallocate = on;
        let _ = std::fs::remove_file(self.dir.join(SPARE_TMP));
        let spare = self.dir.join(SPARE);
        if on {
            self.spare_ready = is_spare(&spare);
            if !self.spare_ready {
                let _ = std::fs::remove_file(&spare);
            }
            self.prepare_spare();
        } else {
            let _ = std::fs::remove_file(&spare);
        }
        self
    }

    /// Starts writing a spare segment in the background, unless one is ready or on its way.
    fn prepare_spare(&mut self) {
        if !self.preallocate || self.spare_ready || self.spare_job.is_some() {
            return;
        }
        let (dir, size) = (self.dir.clone(), self.segment_bytes);
        match std::thread::Builder::new()
            .name("flowhub-log-spare".into())
            .spawn(move || make_spare(&dir, size))
        {
            Ok(job) => self.spare_job = Some(job),
            Err(e) => tracing::warn!(error = %e, "cannot start preallocating a log segment"),
        }
    }

    /// Whether a spare segment is ready to be used; collects the thread that wrote it.
    fn spare_is_ready(&mut self) -> bool {
        if self
            .spare_job
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            match self.spare_job.take().map(std::thread::JoinHandle::join) {
                Some(Ok(Ok(()))) => self.spare_ready = true,
                // Tried again when the next segment starts; meanwhile segments grow as written.
                Some(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "cannot preallocate a log segment; appending to a growing file instead")
                }
                _ => tracing::warn!("the thread preallocating a log segment failed"),
            }
        }
        self.spare_ready
    }

    /// Under `interval`, a thread fsyncs the current segment every period, so the loss window
    /// is bounded even when no more writes come.
    fn start_syncer(&mut self, period: Duration) {
        let target: Arc<Mutex<Option<Arc<File>>>> =
            Arc::new(Mutex::new(self.current.as_ref().map(|s| s.file.clone())));
        let weak = Arc::downgrade(&target);
        self.syncer_target = Some(target);
        let spawned = std::thread::Builder::new()
            .name("flowhub-log-sync".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                let Some(target) = weak.upgrade() else { return };
                let file = target.lock().clone();
                if let Some(f) = file {
                    if let Err(e) = f.sync_data() {
                        tracing::error!(error = %e, "periodic fsync of the log failed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log's fsync thread; fsync follows writes instead");
        }
    }

    fn start_segment(&mut self, first_seq: u64) -> io::Result<()> {
        // The old segment stays current until it is synced: under `interval` or `never` its
        // tail may not be on disk yet, and a segment left behind unsynced could leave a gap.
        if let Some(old) = &self.current {
            old.file.sync_all()?;
        }
        self.current = None;
        let path = self.dir.join(segment_name(first_seq));
        let preallocated = self.preallocate && self.spare_is_ready();
        let file = if preallocated {
            // Whole and fsynced before it got its name: the magic, then zeros.
            self.spare_ready = false;
            std::fs::rename(self.dir.join(SPARE), &path)?;
            sync_dir(&self.dir)?;
            OpenOptions::new().read(true).write(true).open(&path)?
        } else {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            sync_dir(&self.dir)?;
            file
        };
        self.prepare_spare();
        let file = Arc::new(file);
        if let Some(t) = &self.syncer_target {
            *t.lock() = Some(file.clone());
        }
        self.current = Some(Segment {
            file,
            path,
            good_len: MAGIC.len() as u64,
            preallocated,
        });
        Ok(())
    }

    /// Cuts the segment back to its last good length after a failed append.
    fn heal(&mut self) -> io::Result<()> {
        if let Some(seg) = &mut self.current {
            seg.file.set_len(seg.good_len)?;
            seg.file.sync_all()?;
            seg.preallocated = false;
        }
        self.broken = false;
        tracing::info!("the log is writable again");
        Ok(())
    }

    fn try_append(&mut self, batch: &[LogRecord]) -> io::Result<()> {
        // A record the framing cannot hold would read back as damage: refuse it unwritten.
        for rec in batch {
            check(rec).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        let growing = self.current.as_ref().is_some_and(|s| !s.preallocated);
        let needs_new = match &self.current {
            None => true,
            Some(seg) => seg.good_len >= self.segment_bytes,
        } || (growing && self.preallocate && self.spare_is_ready());
        if needs_new {
            self.start_segment(batch[0].seq)?;
        }
        self.buf.clear();
        for rec in batch {
            encode(rec, &mut self.buf);
        }
        let seg = self
            .current
            .as_mut()
            .ok_or_else(|| io::Error::other("no segment"))?;
        // Positioned write at the good length: a previous failed write never shifts records.
        write_all_at(&seg.file, &self.buf, seg.good_len)?;
        let sync = match self.durability {
            Durability::Always => true,
            Durability::Interval(ms) => self.last_sync.elapsed() >= Duration::from_millis(ms),
            Durability::Never => false,
        };
        if sync {
            let started = Instant::now();
            seg.file.sync_data()?;
            self.last_sync = Instant::now();
            crate::ops::series()
                .log_fsync_duration
                .record((self.last_sync - started).as_secs_f64());
        }
        seg.good_len += self.buf.len() as u64;
        Ok(())
    }

    /// Closes the current segment: the next append starts a new one, named after its first
    /// sequence number. A snapshot cuts here, so the segments before it can be removed whole.
    pub fn rotate(&mut self) -> io::Result<()> {
        if let Some(old) = &self.current {
            old.file.sync_all()?;
        }
        self.current = None;
        Ok(())
    }

    /// The directory of the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being written and its length (for backups and inspection).
    pub fn current_segment(&self) -> Option<(&Path, u64)> {
        self.current
            .as_ref()
            .map(|s| (s.path.as_path(), s.good_len))
    }
}

/// Writes a spare segment: the magic and zeros up to `size` bytes, fsynced, then renamed to
/// its name (so a spare under that name is always whole) and the directory fsynced.
fn make_spare(dir: &Path, size: u64) -> io::Result<()> {
    let tmp = dir.join(SPARE_TMP);
    let made = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(MAGIC)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size.saturating_sub(MAGIC.len() as u64);
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(SPARE))?;
        sync_dir(dir)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(dir.join(SPARE));
    }
    made
}

/// Whether `path` is a spare segment left by an earlier run. A spare gets its name only once
/// it is whole and fsynced ([`make_spare`]), so its magic and its length are enough: its zeros
/// are not read again (that would read a whole segment at every start).
fn is_spare(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut magic = [0u8; MAGIC.len()];
    read_exact_at(&file, &mut magic, 0).is_ok()
        && &magic == MAGIC
        && file.metadata().is_ok_and(|m| m.len() > MAGIC.len() as u64)
}

/// Whether the file holds only zeros after `from` (and more than nothing).
fn zeros_after(file: &File, from: u64) -> io::Result<bool> {
    let len = file.metadata()?.len();
    if len <= from {
        return Ok(false);
    }
    let mut buf = vec![0u8; (len - from).min(1 << 20) as usize];
    let mut at = from;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        read_exact_at(file, &mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(buf)
}

impl Log for FileLog {
    fn append(&mut self, batch: &[LogRecord]) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.broken {
            self.heal()?;
        }
        match self.try_append(batch) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.broken = true;
                if let Err(cut) = self.heal() {
                    tracing::error!(error = %cut, "cannot cut the log back after a failed append; retrying at the next write");
                }
                Err(e)
            }
        }
    }

    fn keeps_records(&self) -> bool {
        true
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        if let Some(seg) = &self.current {
            let _ = seg.file.sync_all();
        }
        // A spare being written is finished, so that nothing writes in the directory after
        // the log is gone.
        if let Some(job) = self.spare_job.take() {
            let _ = job.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::recovery::{inspect, recover, segments};
    use crate::log::tail::{read_range, Ended};
    use bytes::Bytes;

    const SEG: u64 = 64 << 10;

    fn rec(seq: u64) -> LogRecord {
        LogRecord {
            seq,
            created_seq: 1,
            endpoint: "a/b".into(),
            namespace: "".into(),
            id: format!("o{}", seq % 7).into(),
            state: Some(Bytes::from(format!(
                "{{\"n\":{seq},\"pad\":\"{}\"}}",
                "p".repeat(200)
            ))),
            published: false,
        }
    }

    fn sizes(dir: &Path) -> Vec<u64> {
        segments(dir)
            .unwrap()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect()
    }

    #[test]
    fn preallocated_segments_are_zeros_after_the_records_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileLog::open(dir.path(), Durability::Always, SEG, None)
            .unwrap()
            .with_preallocation(true);
        // The first segment grows as written until the spare is ready, then the log moves on
        // to preallocated ones.
        let mut seq = 0;
        let started = Instant::now();
        while !(log.current.as_ref().is_some_and(|s| s.preallocated)
            && sizes(dir.path()).len() >= 3)
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no preallocated segment"
            );
            seq += 1;
            log.append(&[rec(seq)]).unwrap();
        }
        // Part of the way into the current (preallocated) segment.
        for _ in 0..10 {
            seq += 1;
            log.append(&[rec(seq)]).unwrap();
        }
        let (current, good_len) = log
            .current_segment()
            .map(|(p, n)| (p.to_path_buf(), n))
            .unwrap();
        assert_eq!(
            std::fs::metadata(&current).unwrap().len(),
            SEG,
            "preallocated"
        );
        assert!(good_len < SEG);

        let got = recover(dir.path(), 0, false).unwrap();
        assert!(got.torn.is_none(), "zeros are free space, not a torn tail");
        let seqs: Vec<u64> = got.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());
        assert_eq!(got.tail, Some((current.clone(), good_len)));
        let found = inspect(dir.path(), |_, _, _| true).unwrap();
        assert!(found.findings.is_empty(), "{:?}", found.findings);
        assert_eq!(found.records, seq);
        assert!(found.free >= SEG - good_len);
        let mut read = Vec::new();
        let ended = read_range(dir.path(), 0, seq, |r, in_range| {
            if in_range {
                read.push(r.seq);
            }
            true
        })
        .unwrap();
        assert_eq!((ended, read.len() as u64), (Ended::Done, seq));

        // Opened again where recovery ended: the zeros stay, appending goes on after the
        // last record.
        drop(log);
        let mut log = FileLog::open(dir.path(), Durability::Always, SEG, got.tail)
            .unwrap()
            .with_preallocation(true);
        assert_eq!(std::fs::metadata(&current).unwrap().len(), SEG);
        for _ in 0..5 {
            seq += 1;
            log.append(&[rec(seq)]).unwrap();
        }
        drop(log);
        let got = recover(dir.path(), 0, false).unwrap();
        assert!(got.torn.is_none());
        let seqs: Vec<u64> = got.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());
        // The spare for the next segment is whole, and nothing is left half written.
        assert!(is_spare(&dir.path().join(SPARE)));
        assert!(!dir.path().join(SPARE_TMP).exists());
    }

    #[test]
    fn a_failed_write_in_a_preallocated_segment_is_cut_back_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FileLog::open(dir.path(), Durability::Always, SEG, None)
            .unwrap()
            .with_preallocation(true);
        let started = Instant::now();
        let mut seq = 0;
        while !log.current.as_ref().is_some_and(|s| s.preallocated) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no preallocated segment"
            );
            seq += 1;
            log.append(&[rec(seq)]).unwrap();
        }
        // A write that failed half way: bytes of it after the last record, the log broken.
        let (path, good) = log
            .current_segment()
            .map(|(p, n)| (p.to_path_buf(), n))
            .unwrap();
        write_all_at(&log.current.as_ref().unwrap().file, &[0xa5; 300], good).unwrap();
        log.broken = true;
        // The next append cuts them off first (the zeros go with them: that segment grows as
        // written from there, or the log moves on to a new preallocated one).
        seq += 1;
        log.append(&[rec(seq)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() as u64 >= good);
        assert!(
            !bytes.windows(300).any(|w| w.iter().all(|&b| b == 0xa5)),
            "the failed write is gone"
        );
        let got = recover(dir.path(), 0, false).unwrap();
        let seqs: Vec<u64> = got.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());
        assert!(got.torn.is_none());
    }
}
