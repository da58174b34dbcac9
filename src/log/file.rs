//! The embedded file log: append-only segment files in `<data_dir>/log/`, group commit, and
//! the durability policies.
//!
//! One writer (the sequencer) appends a whole batch with one `write` and, under the `always`
//! policy, one `fdatasync`, before any write of the batch is applied or acknowledged. A segment
//! is named after the first sequence number it holds (`00000000000000000001.seg`) and a new
//! one is started when the current one passes `segment_bytes`.
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
}

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
                file.set_len(good_len)?;
                file.sync_all()?;
                Some(Segment {
                    file: Arc::new(file),
                    path,
                    good_len,
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
        };
        if let Durability::Interval(ms) = durability {
            log.start_syncer(Duration::from_millis(ms.max(1)));
        }
        Ok(log)
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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        if let Some(t) = &self.syncer_target {
            *t.lock() = Some(file.clone());
        }
        self.current = Some(Segment {
            file,
            path,
            good_len: MAGIC.len() as u64,
        });
        Ok(())
    }

    /// Cuts the segment back to its last good length after a failed append.
    fn heal(&mut self) -> io::Result<()> {
        if let Some(seg) = &self.current {
            seg.file.set_len(seg.good_len)?;
            seg.file.sync_all()?;
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
        let needs_new = match &self.current {
            None => true,
            Some(seg) => seg.good_len >= self.segment_bytes,
        };
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
    }
}
