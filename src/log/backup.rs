//! A consistent copy of a data directory, taken while the hub runs.
//!
//! The newest snapshot is copied first, then every log segment. Segments are append-only, so
//! a copy of one is a prefix of it: at worst the copy of the segment being written ends in a
//! torn record, which recovery cuts off like after a crash. If the hub removes segments
//! (after a newer snapshot) while they are being copied, the copy is started again. The copy
//! is then read back exactly as a start would read it, so a backup that reports success opens.
//! To restore, start a hub with its data directory pointed at the copy (or copy it back).

use std::fs;
use std::io;
use std::path::Path;

use super::file::sync_dir;
use super::recovery::{recover, segments};
use super::snapshot;

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Live objects in the copy.
    pub objects: usize,
    /// The last commit sequence number in the copy.
    pub last_seq: u64,
    /// Bytes copied.
    pub bytes: u64,
}

fn copy_into(from: &Path, dir: &Path) -> io::Result<u64> {
    fs::create_dir_all(dir)?;
    let to = dir.join(from.file_name().unwrap_or_default());
    let n = fs::copy(from, &to)?;
    fs::File::open(&to)?.sync_all()?;
    Ok(n)
}

fn attempt(data_dir: &Path, dest: &Path) -> io::Result<u64> {
    let mut bytes = 0;
    if let Some(newest) = snapshot::list(&data_dir.join("snapshot"))?.first() {
        bytes += copy_into(newest, &dest.join("snapshot"))?;
    }
    fs::create_dir_all(dest.join("log"))?;
    for seg in segments(&data_dir.join("log"))? {
        bytes += copy_into(&seg, &dest.join("log"))?;
    }
    for d in [dest.join("snapshot"), dest.join("log"), dest.to_path_buf()] {
        if d.exists() {
            sync_dir(&d)?;
        }
    }
    Ok(bytes)
}

/// Reads a data directory back as a start would, without changing it.
pub fn verify(dir: &Path) -> Result<(usize, u64), String> {
    let (base, mut objects) = match snapshot::load_newest(&dir.join("snapshot"))? {
        Some((_, seq, entries)) => {
            let live: std::collections::HashSet<_> = entries
                .into_iter()
                .map(|e| (e.endpoint, e.namespace, e.id))
                .collect();
            (seq, live)
        }
        None => (0, Default::default()),
    };
    // Read-only: a torn tail is reported by `recover` but the copy is not cut here.
    let log = recover(&dir.join("log"), base, false).map_err(|e| e.to_string())?;
    if let Some(first) = log.records.first() {
        if first.seq != base + 1 {
            return Err(format!(
                "the copied log continues at {} after {base}",
                first.seq
            ));
        }
    }
    for r in &log.records {
        let key = (r.endpoint.clone(), r.namespace.clone(), r.id.clone());
        if r.state.is_some() {
            objects.insert(key);
        } else {
            objects.remove(&key);
        }
    }
    Ok((objects.len(), log.last_seq.max(base)))
}

/// Copies `data_dir` into `dest` (which must not exist, or be empty) and checks the copy.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<Backup, String> {
    if dest.exists()
        && fs::read_dir(dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!(
            "{} is not empty: a backup goes into a new directory",
            dest.display()
        ));
    }
    if !data_dir.join("log").exists() {
        return Err(format!("{} holds no hub log", data_dir.display()));
    }
    let mut last_err = String::new();
    for _ in 0..5 {
        let _ = fs::remove_dir_all(dest);
        match attempt(data_dir, dest) {
            Ok(bytes) => match verify(dest) {
                Ok((objects, last_seq)) => {
                    return Ok(Backup {
                        objects,
                        last_seq,
                        bytes,
                    })
                }
                Err(e) => last_err = e,
            },
            Err(e) => last_err = e.to_string(),
        }
    }
    let _ = fs::remove_dir_all(dest);
    Err(format!(
        "no consistent copy after 5 tries (the hub kept compacting?): {last_err}"
    ))
}
