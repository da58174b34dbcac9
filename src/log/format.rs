//! The on-disk framing of log records.
//!
//! A segment file starts with the 8-byte magic `FLOWLOG1`, then holds records back to back:
//!
//! ```text
//! len     u32 LE   length of the payload
//! crc     u32 LE   CRC32C of seq (8 bytes LE) followed by the payload
//! seq     u64 LE   the commit sequence number
//! payload len bytes:
//!   created_seq u64 LE, endpoint (u16 LE length + UTF-8), namespace (u16 + UTF-8),
//!   id (u16 + UTF-8), kind u8 (0 tombstone, 1 state, 2 published without data,
//!   3 published with data), [state: u32 LE length + JSON]
//! ```
//!
//! The CRC covers the sequence number and the payload, so a torn, flipped or misplaced record
//! is always detected; the length is checked against a ceiling before anything is allocated.

use std::sync::Arc;

use bytes::Bytes;

use super::LogRecord;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"FLOWLOG1";
/// Bytes before a record's payload.
pub const HEADER_LEN: usize = 16;
/// The largest payload a record may declare; a larger length is damage, not data.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Whether `rec` fits the framing: names under 64 KiB and a payload within [`MAX_PAYLOAD`].
/// A record that does not fit must never be written: recovery would refuse it as damage.
pub fn check(rec: &LogRecord) -> Result<(), String> {
    for (what, s) in [
        ("endpoint", &rec.endpoint),
        ("namespace", &rec.namespace),
        ("id", &rec.id),
    ] {
        if s.len() > usize::from(u16::MAX) {
            return Err(format!("the {what} of record {} is over 64 KiB", rec.seq));
        }
    }
    let payload = 8
        + 6
        + rec.endpoint.len()
        + rec.namespace.len()
        + rec.id.len()
        + 1
        + rec.state.as_ref().map_or(0, |s| 4 + s.len());
    if payload > MAX_PAYLOAD {
        return Err(format!(
            "record {} is {payload} bytes, over the log's limit of {MAX_PAYLOAD}",
            rec.seq
        ));
    }
    Ok(())
}

/// Appends one framed record to `out`. Call [`check`] first: a name over 64 KiB is cut.
pub fn encode(rec: &LogRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]); // len and crc, filled in below
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&rec.created_seq.to_le_bytes());
    for s in [&rec.endpoint, &rec.namespace, &rec.id] {
        // Names are limited to far less than 64 KiB by the protocol's validation.
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
    let kind = u8::from(rec.published) * 2;
    match &rec.state {
        None => out.push(kind),
        Some(state) => {
            out.push(kind + 1);
            out.extend_from_slice(&(state.len() as u32).to_le_bytes());
            out.extend_from_slice(state);
        }
    }
    let payload_len = (out.len() - start - HEADER_LEN) as u32;
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What lies at an offset of a segment.
#[derive(Debug)]
pub enum Decoded {
    /// A whole, intact record and the bytes it took.
    Record(LogRecord, usize),
    /// The bytes end before the record does: a torn write at the tail.
    Truncated,
    /// The bytes are there but wrong.
    Corrupt(String),
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    decode_with(
        buf,
        &|state| Bytes::copy_from_slice(state),
        &mut Names::default(),
    )
}

/// Decodes the record at the start of `buf`; its state is a slice of `buf`, not a copy (a
/// snapshot is read into one buffer that its records then share).
pub fn decode_shared(buf: &Bytes) -> Decoded {
    decode_shared_named(buf, &mut Names::default())
}

/// [`decode_shared`] for one record of a run: its endpoint and namespace are the previous
/// record's (shared, not allocated again) when they are the same.
pub fn decode_shared_named(buf: &Bytes, names: &mut Names) -> Decoded {
    decode_with(buf, &|state| buf.slice_ref(state), names)
}

/// The endpoint and namespace of the last record decoded (or built), handed to the next
/// record when its names are the same: records come in long runs of one collection.
#[derive(Default)]
pub struct Names {
    endpoint: Option<Arc<str>>,
    namespace: Option<Arc<str>>,
}

impl Names {
    pub fn endpoint(&mut self, name: &str) -> Arc<str> {
        Names::share(&mut self.endpoint, name)
    }

    pub fn namespace(&mut self, name: &str) -> Arc<str> {
        Names::share(&mut self.namespace, name)
    }

    fn share(last: &mut Option<Arc<str>>, name: &str) -> Arc<str> {
        match last {
            Some(l) if **l == *name => l.clone(),
            _ => last.insert(Arc::from(name)).clone(),
        }
    }
}

fn decode_with(buf: &[u8], share: &dyn Fn(&[u8]) -> Bytes, names: &mut Names) -> Decoded {
    if buf.len() < HEADER_LEN {
        return Decoded::Truncated;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!("record length {len} is over the ceiling"));
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Decoded::Truncated;
    }
    if crc32c::crc32c(&buf[8..total]) != crc {
        return Decoded::Corrupt("checksum mismatch".into());
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&buf[8..16]);
    let seq = u64::from_le_bytes(seq_bytes);
    match parse_payload(seq, &buf[HEADER_LEN..total], share, names) {
        Some(rec) => Decoded::Record(rec, total),
        None => Decoded::Corrupt("payload does not parse".into()),
    }
}

fn parse_payload(
    seq: u64,
    p: &[u8],
    share: &dyn Fn(&[u8]) -> Bytes,
    names: &mut Names,
) -> Option<LogRecord> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = p.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let created_seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let mut name = || -> Option<&str> {
        let len = u16::from_le_bytes(take(2)?.try_into().ok()?);
        std::str::from_utf8(take(usize::from(len))?).ok()
    };
    let endpoint = names.endpoint(name()?);
    let namespace = names.namespace(name()?);
    let id: Arc<str> = Arc::from(name()?);
    let kind = take(1)?[0];
    let state = match kind {
        0 | 2 => None,
        1 | 3 => {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            Some(share(take(len)?))
        }
        _ => return None,
    };
    let published = kind >= 2;
    if at != p.len() {
        return None;
    }
    Some(LogRecord {
        seq,
        created_seq,
        endpoint,
        namespace,
        id,
        state,
        published,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, state: Option<&str>) -> LogRecord {
        LogRecord {
            seq,
            created_seq: 3,
            endpoint: "address/address".into(),
            namespace: "tenant-ä".into(),
            id: "b93aefc2".into(),
            state: state.map(|s| Bytes::copy_from_slice(s.as_bytes())),
            published: false,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode(&rec(7, Some(r#"{"id":"b93aefc2","n":1}"#)), &mut buf);
        encode(&rec(8, None), &mut buf);
        let Decoded::Record(a, n) = decode(&buf) else {
            panic!("first record")
        };
        assert_eq!((a.seq, a.created_seq, &*a.namespace), (7, 3, "tenant-ä"));
        assert_eq!(a.state.as_deref(), Some(&br#"{"id":"b93aefc2","n":1}"#[..]));
        let Decoded::Record(b, m) = decode(&buf[n..]) else {
            panic!("second record")
        };
        assert_eq!((b.seq, b.state), (8, None));
        assert_eq!(n + m, buf.len());
        let mut p = rec(9, Some("{}"));
        p.published = true;
        let mut buf = Vec::new();
        encode(&p, &mut buf);
        let Decoded::Record(c, _) = decode(&buf) else {
            panic!("published record")
        };
        assert!(c.published && c.state.is_some());
    }

    #[test]
    fn records_that_do_not_fit_are_refused() {
        assert!(check(&rec(1, Some("{}"))).is_ok());
        let mut long_id = rec(1, None);
        long_id.id = "x".repeat(70_000).into();
        assert!(check(&long_id).is_err());
        let mut big = rec(1, None);
        // Zeroed pages are not touched: this costs no real memory.
        big.state = Some(Bytes::from(vec![0u8; MAX_PAYLOAD]));
        assert!(check(&big).is_err());
    }

    #[test]
    fn every_cut_is_truncated_and_every_flip_is_caught() {
        let mut buf = Vec::new();
        encode(&rec(7, Some(r#"{"id":"b93aefc2","n":1}"#)), &mut buf);
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Decoded::Truncated),
                "cut at {cut}"
            );
        }
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&bad), Decoded::Record(..)),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }
}
