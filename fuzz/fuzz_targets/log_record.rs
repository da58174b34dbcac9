//! The log's record framing and the readers of log files: one record decoded from raw bytes
//! (and re-encoded: the round trip is exact), a payload framed with a valid checksum (so the
//! payload parser is reached), whole segments read back by recovery (with and without
//! repair), by `flowhub log dump`'s inspection and by the resume reader, and a snapshot file.
#![no_main]

use std::path::PathBuf;

use arbitrary::Arbitrary;
use bytes::Bytes;
use flowhub::log::format::{self, Decoded, HEADER_LEN, MAGIC};
use flowhub::log::{recovery, snapshot, tail, LogRecord};
use libfuzzer_sys::fuzz_target;

/// A piece of a segment file.
#[derive(Arbitrary, Debug)]
enum Piece {
    /// Bytes as they are: damage, zeros, a torn record.
    Raw(Vec<u8>),
    /// A payload framed with its length and a valid checksum.
    Framed { seq: u64, payload: Vec<u8> },
    /// A well-formed record.
    Record {
        seq_step: u8,
        created: u64,
        endpoint: String,
        id: String,
        state: Option<Vec<u8>>,
        published: bool,
    },
    /// Cut the last piece short by this many bytes.
    Cut(u8),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Decode(Vec<u8>),
    Framed {
        seq: u64,
        payload: Vec<u8>,
    },
    Segments {
        files: Vec<(Option<u64>, bool, Vec<Piece>)>,
        after_seq: u8,
        repair: bool,
        from: u8,
        upto: u8,
    },
    Snapshot {
        seq: u64,
        count: u64,
        pieces: Vec<Piece>,
        fix_crc: bool,
    },
}

fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut covered = seq.to_le_bytes().to_vec();
    covered.extend_from_slice(payload);
    out.extend_from_slice(&crc(&covered).to_le_bytes());
    out.extend_from_slice(&covered);
    out
}

/// CRC32C (Castagnoli), bit by bit: the targets do not depend on the hub's crc crate.
fn crc(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn build(pieces: &[Piece], seq: &mut u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut last = 0;
    for p in pieces {
        let start = out.len();
        match p {
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Framed { seq, payload } => out.extend_from_slice(&frame(*seq, payload)),
            Piece::Record {
                seq_step,
                created,
                endpoint,
                id,
                state,
                published,
            } => {
                *seq = seq.wrapping_add(u64::from(*seq_step % 3));
                let rec = LogRecord {
                    seq: *seq,
                    created_seq: *created,
                    endpoint: endpoint.as_str().into(),
                    namespace: "".into(),
                    id: id.as_str().into(),
                    state: state.as_ref().map(|s| Bytes::copy_from_slice(s)),
                    published: *published,
                };
                if format::check(&rec).is_ok() {
                    format::encode(&rec, &mut out);
                }
            }
            Piece::Cut(n) => {
                let keep = out.len() - usize::from(*n).min(out.len() - last);
                out.truncate(keep);
            }
        }
        last = start.min(out.len());
    }
    out
}

fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("flowhub-fuzz-log-{}", std::process::id()))
}

fn round_trip(buf: &[u8]) {
    if let Decoded::Record(rec, used) = format::decode(buf) {
        assert!(used <= buf.len());
        assert!(
            format::check(&rec).is_ok(),
            "a decoded record fits the framing"
        );
        let mut again = Vec::new();
        format::encode(&rec, &mut again);
        assert_eq!(
            again,
            &buf[..used],
            "decode then encode gives the same bytes"
        );
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Decode(bytes) => {
            round_trip(&bytes);
            let _ = format::decode_shared(&Bytes::from(bytes.clone()));
            let _ = recovery::next_intact(&bytes, 0);
        }
        Input::Framed { seq, payload } => round_trip(&frame(seq, &payload)),
        Input::Segments {
            files,
            after_seq,
            repair,
            from,
            upto,
        } => {
            let dir = scratch();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch directory");
            let mut seq = 0u64;
            for (i, (name, magic, pieces)) in files.iter().take(4).enumerate() {
                let mut bytes = if *magic { MAGIC.to_vec() } else { Vec::new() };
                bytes.extend(build(pieces, &mut seq));
                let first = name.unwrap_or(i as u64 + 1) % 1000;
                let path = dir.join(format!("{first:020}.seg"));
                std::fs::write(path, bytes).expect("segment written");
            }
            let _ = recovery::inspect(&dir, |_, _, _| true);
            let _ = tail::read_range(&dir, u64::from(from), u64::from(upto), |_, _| true);
            let _ = recovery::recover(&dir, u64::from(after_seq), repair);
            let _ = std::fs::remove_dir_all(&dir);
        }
        Input::Snapshot {
            seq,
            count,
            pieces,
            fix_crc,
        } => {
            let dir = scratch();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch directory");
            let mut body = b"FLOWSNP1".to_vec();
            body.extend_from_slice(&seq.to_le_bytes());
            let mut s = 0;
            body.extend(build(&pieces, &mut s));
            body.extend_from_slice(b"FLOWEND1");
            body.extend_from_slice(&count.to_le_bytes());
            let sum = if fix_crc { crc(&body) } else { 0 };
            body.extend_from_slice(&sum.to_le_bytes());
            let path = dir.join(snapshot::snapshot_name(seq % 1000));
            std::fs::write(&path, body).expect("snapshot written");
            let _ = snapshot::read(&path);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
});
