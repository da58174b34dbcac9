//! Recovery from what crashes and failing disks leave in the log: a cut at every byte of the
//! last records leaves a prefix of the acknowledged writes and the hub starts; zeros after the
//! last record are a torn tail; a flipped bit anywhere else stops the start with the file and
//! offset, until `flowhub repair` keeps the valid prefix; versions keep growing after a repair;
//! `flowhub log dump` lists the records and reports damage without changing a byte.
//!
//! The log is written by a real hub; the damaged data directories are copies taken while it
//! runs (after every write was acknowledged), as a `kill -9` would leave them. A clean stop
//! would snapshot the state and remove the log.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Config, TestHub};
use flowhub::log::format::{decode, Decoded, MAGIC};
use flowhub::log::recovery::{recover, segments};
use serde_json::{json, Value};

type Key = (String, String, String);

/// One acknowledged write: its sequence number, the object, and its state after (None:
/// deleted).
#[derive(Debug, Clone)]
struct Ack {
    seq: u64,
    op: &'static str,
    key: Key,
    state: Option<Value>,
}

/// A data directory written by a real hub, copied while it ran (a crash image), and the
/// writes it acknowledged, in order.
struct History {
    _tmp: tempfile::TempDir,
    image: PathBuf,
    acks: Vec<Ack>,
}

/// Segments that grow as written: the cuts and flips below are made at byte offsets of the
/// records, and every byte of a segment is a record's. (Preallocated segments, whose records
/// are followed by zeros, are covered by the zeros test here and by `log::file`'s tests.)
fn config_in(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        segment_bytes: 4096,
        preallocate: false,
        ..Config::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every file under `dir` and its bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(contents(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// Writes `n` CREATEs, UPDATEs and DELETEs on two endpoints and two namespaces, one at a time
/// on one connection (so sequence numbers are 1, 2, 3, ...), and copies the data directory
/// while the hub still runs.
async fn history(n: usize) -> History {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let hub = TestHub::start_with(config_in(&live)).await;
    let mut ws = hub.ws().await;
    let mut acks: Vec<Ack> = Vec::new();
    let mut live_ids: Vec<Key> = Vec::new();
    for i in 0..n {
        let seq = i as u64 + 1;
        let endpoint = if i % 3 == 0 {
            "inventory/device"
        } else {
            "address/address"
        };
        let namespace = if i % 2 == 0 { "t1" } else { "" };
        let reply = if i % 7 == 5 && !live_ids.is_empty() {
            let key = live_ids.remove(i % live_ids.len());
            let r = ws
                .call(
                    json!({"endpoint": key.0, "method": "DELETE", "namespace": key.1,
                    "objectid": key.2}),
                )
                .await;
            acks.push(Ack {
                seq,
                op: "DELETE",
                key,
                state: None,
            });
            r
        } else if i % 4 == 3 && !live_ids.is_empty() {
            let key = live_ids[i % live_ids.len()].clone();
            let r = ws
                .call(
                    json!({"endpoint": key.0, "method": "UPDATE", "namespace": key.1,
                    "objectid": key.2, "data": {"n": i, "note": format!("update {i}")}}),
                )
                .await;
            acks.push(Ack {
                seq,
                op: "UPDATE",
                key,
                state: Some(r["data"].clone()),
            });
            r
        } else {
            let id = format!("obj-{i}");
            let r = ws
                .call(json!({"endpoint": endpoint, "method": "CREATE", "namespace": namespace,
                    "data": {"id": id, "n": i, "city": "Envik", "street": "Larss Gata, by the old mill"}}))
                .await;
            let key = (endpoint.to_string(), namespace.to_string(), id);
            live_ids.push(key.clone());
            acks.push(Ack {
                seq,
                op: "CREATE",
                key,
                state: Some(r["data"].clone()),
            });
            r
        };
        assert_eq!(reply["success"], true, "{reply}");
        if let Some(state) = &acks[i].state {
            assert_eq!(
                state["version"], seq,
                "one writer: sequence numbers 1, 2, 3, ..."
            );
        }
    }
    // Every write above was acknowledged, so it is on disk: this copy is what a crash leaves.
    let image = tmp.path().join("image");
    copy_dir(&live, &image);
    hub.stop().await;
    let got = recover(&image.join("log"), 0, false).unwrap();
    let logged: Vec<(u64, Key)> = got
        .records
        .iter()
        .map(|r| {
            (
                r.seq,
                (
                    r.endpoint.to_string(),
                    r.namespace.to_string(),
                    r.id.to_string(),
                ),
            )
        })
        .collect();
    let expected: Vec<(u64, Key)> = acks.iter().map(|a| (a.seq, a.key.clone())).collect();
    assert_eq!(
        logged, expected,
        "the log holds the acknowledged writes in order"
    );
    assert!(
        segments(&image.join("log")).unwrap().len() >= 3,
        "several segments"
    );
    History {
        _tmp: tmp,
        image,
        acks,
    }
}

/// The records of a segment file: (offset, length, seq). Zeros after the last record are the
/// segment's preallocated free space.
fn records_of(path: &Path) -> Vec<(usize, usize, u64)> {
    let buf = std::fs::read(path).unwrap();
    assert_eq!(&buf[..MAGIC.len()], MAGIC);
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while at < buf.len() && buf[at..].iter().any(|&b| b != 0) {
        match decode(&buf[at..]) {
            Decoded::Record(rec, used) => {
                out.push((at, used, rec.seq));
                at += used;
            }
            other => panic!("{} at {at}: {other:?}", path.display()),
        }
    }
    out
}

/// The state after the first `k` acknowledged writes.
fn state_after(acks: &[Ack], k: usize) -> HashMap<Key, Value> {
    let mut state = HashMap::new();
    for a in &acks[..k] {
        match &a.state {
            Some(s) => {
                state.insert(a.key.clone(), s.clone());
            }
            None => {
                state.remove(&a.key);
            }
        }
    }
    state
}

/// Opens `data_dir` as the hub does and checks that it holds exactly the first `k`
/// acknowledged writes; returns the next version it hands out.
async fn assert_opens_with_prefix(data_dir: &Path, acks: &[Ack], k: usize, what: &str) {
    let opened = flowhub::server::open(&config_in(data_dir))
        .unwrap_or_else(|e| panic!("{what}: the hub does not open: {e}"));
    let store = opened.store;
    let expected = state_after(acks, k);
    for a in acks {
        let got = store
            .open(&a.key.0, &a.key.1, &a.key.2)
            .map(|r| Value::Object(r.fields()));
        assert_eq!(
            got.as_ref(),
            expected.get(&a.key),
            "{what}: {:?} after the first {k} writes",
            a.key
        );
    }
    store.close().await;
}

/// Runs the `flowhub` binary off the test's runtime, killing it after 30 s.
async fn flowhub(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowhub"));
    cmd.args(args)
        .env_clear()
        .env("FLOWHUB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("flowhub {}", args.join(" "));
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what} did not finish within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().expect("an exit status"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn every_cut_in_the_last_records_leaves_a_prefix_and_the_hub_starts() {
    let h = history(60).await;
    let segs = segments(&h.image.join("log")).unwrap();
    let last = segs.last().unwrap();
    let recs = records_of(last);
    assert!(recs.len() >= 3, "the last segment holds several records");
    let tail = &recs[recs.len() - 3..];
    let from = tail[0].0;
    let end = std::fs::metadata(last).unwrap().len() as usize;
    let first_seq_cut = tail[0].2 as usize; // seq of the first record that a cut can reach
    let work = tempfile::tempdir().unwrap();
    for cut in from..=end {
        let dir = work.path().join(format!("cut-{cut}"));
        copy_dir(&h.image, &dir);
        let seg = dir.join("log").join(last.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        // Whole records before the cut survive; the record the cut falls in is gone.
        let whole = tail.iter().filter(|(at, len, _)| at + len <= cut).count();
        let k = first_seq_cut - 1 + whole;
        let boundary = tail
            .iter()
            .filter(|(at, len, _)| at + len <= cut)
            .map(|(at, len, _)| at + len)
            .max()
            .unwrap_or(from);
        let got =
            recover(&dir.join("log"), 0, false).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let seqs: Vec<u64> = got.records.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (1..=k as u64).collect::<Vec<_>>(),
            "cut at {cut}: a prefix"
        );
        match &got.torn {
            None => assert_eq!(cut, boundary, "cut at {cut}: no torn tail reported"),
            Some(t) => {
                assert_eq!(
                    (t.offset, t.bytes),
                    (boundary as u64, (cut - boundary) as u64),
                    "cut at {cut}: the torn tail names the bytes dropped"
                );
                assert_eq!(t.file, seg);
            }
        }
        assert_opens_with_prefix(&dir, &h.acks, k, &format!("cut at {cut}")).await;
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            boundary as u64,
            "cut at {cut}: the torn tail is cut off the file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test]
async fn zeros_after_the_last_record_are_free_space_and_a_cut_record_before_them_is_torn() {
    let h = history(60).await;
    let segs = segments(&h.image.join("log")).unwrap();
    let last = segs.last().unwrap();
    let recs = records_of(last);
    let (at, len, _) = *recs.last().unwrap();
    let work = tempfile::tempdir().unwrap();
    // Zeros after the last record: the free rest of a preallocated segment (or a file a
    // filesystem extended but never wrote). A last record cut short and followed by zeros:
    // what a crash may leave in a preallocated segment.
    for (name, keep, zeros) in [
        ("after-whole", at + len, 4096),
        ("after-cut", at + len / 2, 8192),
        ("few", at + len, 3),
    ] {
        let dir = work.path().join(name);
        copy_dir(&h.image, &dir);
        let seg = dir.join("log").join(last.file_name().unwrap());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.truncate(keep);
        bytes.resize(keep + zeros, 0);
        std::fs::write(&seg, &bytes).unwrap();
        let got = recover(&dir.join("log"), 0, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        let whole = keep == at + len;
        let k = if whole {
            h.acks.len()
        } else {
            h.acks.len() - 1
        };
        assert_eq!(got.records.len(), k, "{name}");
        match &got.torn {
            None => assert!(whole, "{name}: the cut record is a torn tail"),
            Some(torn) => {
                assert!(!whole, "{name}: zeros alone are no torn tail: {torn}");
                assert_eq!(torn.offset, at as u64, "{name}");
            }
        }
        assert_eq!(
            got.tail.as_ref().map(|t| t.1),
            Some(if whole { at + len } else { at } as u64)
        );
        assert_opens_with_prefix(&dir, &h.acks, k, name).await;
    }
}

/// A copy of the image with one bit flipped: in segment `seg` (index), record `rec` (index),
/// `byte` bytes into the record. Returns the directory, the damaged file and the record's
/// offset and sequence number.
fn flipped(h: &History, work: &Path, name: &str, seg: usize, rec: usize, byte: usize) -> Flip {
    let dir = work.join(name);
    copy_dir(&h.image, &dir);
    let segs = segments(&dir.join("log")).unwrap();
    let file = segs[seg].clone();
    let (at, len, seq) = records_of(&file)[rec];
    assert!(byte < len);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at + byte] ^= 1 << (byte % 8);
    std::fs::write(&file, &bytes).unwrap();
    Flip {
        dir,
        file,
        offset: at as u64,
        seq,
    }
}

struct Flip {
    dir: PathBuf,
    file: PathBuf,
    offset: u64,
    seq: u64,
}

#[tokio::test]
async fn bit_flips_stop_the_start_and_repair_keeps_the_records_before_them() {
    let h = history(70).await;
    let work = tempfile::tempdir().unwrap();
    let segs = segments(&h.image.join("log")).unwrap();
    let n_last = records_of(segs.last().unwrap()).len();
    let n_first = records_of(&segs[0]).len();
    let last = segs.len() - 1;
    // (name, segment, record, byte into the record): the length, checksum, sequence number
    // and payload of a record in the middle of the last segment, of one in the middle of the
    // first segment, and of the last record of an earlier segment.
    let cases = [
        ("last-len", last, n_last / 2, 1),
        ("last-crc", last, n_last / 2, 5),
        ("last-seq", last, n_last - 2, 8),
        ("last-payload", last, 1, 40),
        ("first-len-high", 0, n_first / 2, 3),
        ("first-payload", 0, n_first / 2, 45),
        ("first-end", 0, n_first - 1, 30),
        ("middle-first-record", 1, 0, 20),
    ];
    for (i, (name, seg, rec, byte)) in cases.into_iter().enumerate() {
        let f = flipped(&h, work.path(), name, seg, rec, byte);
        let before = contents(&f.dir);

        // The start is refused with the file and the offset.
        let err = flowhub::server::open(&config_in(&f.dir))
            .err()
            .unwrap_or_else(|| panic!("{name}: a damaged log opens"));
        let place = format!("{} at byte {}", f.file.display(), f.offset);
        assert!(err.contains(&place), "{name}: {err:?} names {place}");
        assert!(err.contains("flowhub repair"), "{name}: {err}");
        assert_eq!(
            contents(&f.dir),
            before,
            "{name}: a refused start changes nothing"
        );

        let dir = f.dir.to_str().unwrap();
        if i % 4 == 0 {
            // `flowhub serve` exits with the same message.
            let (code, _, stderr) =
                flowhub(&["serve", "--data-dir", dir, "--listen", "127.0.0.1:0"]).await;
            assert_eq!(code, 1, "{name}: {stderr}");
            assert!(stderr.contains(&place), "{name}: {stderr}");
        }

        // The dump reports the same damage, reads on, and changes nothing.
        let (code, stdout, stderr) = flowhub(&["log", "dump", "--data-dir", dir, "--json"]).await;
        assert_eq!(code, 0, "{name}: {stderr}");
        let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let summary = &summary["summary"];
        assert_eq!(summary["damaged"], true, "{name}: {summary}");
        assert_eq!(
            summary["damage"][0]["file"],
            f.file.display().to_string(),
            "{name}"
        );
        assert_eq!(summary["damage"][0]["offset"], f.offset, "{name}");
        assert_eq!(
            summary["records"],
            h.acks.len() - 1,
            "{name}: every other record is listed"
        );
        assert_eq!(contents(&f.dir), before, "{name}: the dump changes nothing");

        // The repair keeps every record before the damaged one and says what it dropped.
        let (code, stdout, stderr) = flowhub(&["repair", "--data-dir", dir]).await;
        assert_eq!(code, 0, "{name}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("{}: dropped", f.file.display()))
                && stdout.contains(&format!("from byte {}", f.offset)),
            "{name}: {stdout}"
        );
        if seg < last {
            assert!(stdout.contains("moved aside"), "{name}: {stdout}");
        }
        assert!(stdout.contains("the hub can start now"), "{name}: {stdout}");
        let k = f.seq as usize - 1;
        assert_opens_with_prefix(&f.dir, &h.acks, k, name).await;
        // Nothing is deleted: the damaged segment as it was and every later one are aside.
        let aside: Vec<Vec<u8>> = contents(&f.dir.join("log"))
            .into_iter()
            .filter(|(p, _)| p.parent().unwrap().file_name().unwrap() != "log")
            .map(|(_, bytes)| bytes)
            .collect();
        for (path, bytes) in &before {
            if path.parent() == f.file.parent() && *path >= f.file {
                assert!(
                    aside.contains(bytes),
                    "{name}: {} as it was is kept aside",
                    path.display()
                );
            }
        }

        let (code, stdout, _) = flowhub(&["repair", "--data-dir", dir]).await;
        assert_eq!(code, 0);
        assert!(stdout.contains("nothing to repair"), "{name}: {stdout}");
        std::fs::remove_dir_all(&f.dir).unwrap();
    }
}

#[tokio::test]
async fn versions_keep_growing_after_a_repair_and_a_restart() {
    let h = history(60).await;
    let work = tempfile::tempdir().unwrap();
    let f = flipped(&h, work.path(), "early", 0, 3, 30);
    let highest = h.acks.last().unwrap().seq;
    let (code, stdout, stderr) = flowhub(&["repair", "--data-dir", f.dir.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");

    let kept = &h.acks[..f.seq as usize - 1];
    let survivor = state_after(kept, kept.len())
        .into_keys()
        .next()
        .expect("an object before the damage");
    let dropped = &h
        .acks
        .iter()
        .rfind(|a| a.op == "CREATE")
        .filter(|a| a.seq > f.seq)
        .expect("an object created after the damage")
        .key;
    let update = |key: &Key, n: u64| {
        json!({"endpoint": key.0, "method": "UPDATE", "namespace": key.1, "objectid": key.2,
            "data": {"n": n}})
    };

    let hub = TestHub::start_with(config_in(&f.dir)).await;
    let mut ws = hub.ws().await;
    let r = ws.call(update(&survivor, 1)).await;
    assert_eq!(r["success"], true, "{r}");
    let v1 = r["data"]["version"].as_u64().unwrap();
    assert!(
        v1 > highest,
        "version {v1} after the repair is above every version handed out before ({highest})"
    );
    let gone = ws
        .call(
            json!({"endpoint": dropped.0, "method": "OPEN", "namespace": dropped.1,
            "objectid": dropped.2}),
        )
        .await;
    assert_eq!(gone["errorcode"], "DO_NOT_EXIST", "{gone}");
    hub.stop().await;

    let hub = TestHub::start_with(config_in(&f.dir)).await;
    let mut ws = hub.ws().await;
    let r = ws
        .call(
            json!({"endpoint": survivor.0, "method": "OPEN", "namespace": survivor.1,
            "objectid": survivor.2}),
        )
        .await;
    assert_eq!(r["data"]["version"], v1, "{r}");
    let r = ws.call(update(&survivor, 2)).await;
    let v2 = r["data"]["version"].as_u64().unwrap();
    assert!(v2 > v1, "{v2} after {v1}");
    hub.stop().await;
}

#[tokio::test]
async fn log_dump_lists_the_records_also_while_the_hub_runs() {
    let h = history(60).await;
    let image = h.image.to_str().unwrap();
    let before = contents(&h.image);

    let (code, stdout, stderr) = flowhub(&["log", "dump", "--data-dir", image]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("seq=")).collect();
    assert_eq!(lines.len(), h.acks.len(), "{stdout}");
    for (line, ack) in lines.iter().zip(&h.acks) {
        let start = format!(
            "seq={} op={} endpoint={} namespace={:?} id={:?} ",
            ack.seq, ack.op, ack.key.0, ack.key.1, ack.key.2
        );
        assert!(line.starts_with(&start), "{line:?} starts with {start:?}");
    }
    let summary = stdout.lines().find(|l| l.starts_with("summary:")).unwrap();
    assert!(
        summary.contains(&format!("{} records", h.acks.len()))
            && summary.contains(&format!("sequence numbers 1 to {}", h.acks.len())),
        "{summary}"
    );
    assert!(!stdout.contains("damage"), "{stdout}");

    // JSON, filtered: from a sequence number, one endpoint, at most 3.
    let (code, stdout, _) = flowhub(&[
        "log",
        "dump",
        "--data-dir",
        image,
        "--json",
        "--from",
        "10",
        "--endpoint",
        "address/address",
        "--limit",
        "3",
    ])
    .await;
    assert_eq!(code, 0);
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "three records and the summary: {stdout}");
    let expected: Vec<&Ack> = h
        .acks
        .iter()
        .filter(|a| a.seq >= 10 && a.key.0 == "address/address")
        .take(3)
        .collect();
    for (row, ack) in rows.iter().zip(expected) {
        assert_eq!(row["seq"], ack.seq);
        assert_eq!(row["endpoint"], ack.key.0);
        assert_eq!(row["namespace"], ack.key.1);
        assert_eq!(row["id"], ack.key.2);
        assert_eq!(row["state"], ack.state.clone().unwrap_or(Value::Null));
    }
    let summary = &rows[3]["summary"];
    assert_eq!(summary["records"], h.acks.len());
    assert_eq!(summary["shown"], 3);
    assert_eq!(summary["first_seq"], 1);
    assert_eq!(summary["damaged"], false);
    assert_eq!(contents(&h.image), before, "the dump changes nothing");

    // On the data directory of a running hub (whose lock it does not take).
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with(config_in(dir.path())).await;
    let mut ws = hub.ws().await;
    for i in 0..5 {
        let r = ws
            .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {"id": format!("x{i}")}}))
            .await;
        assert_eq!(r["success"], true);
    }
    let (code, stdout, stderr) =
        flowhub(&["log", "dump", "--data-dir", dir.path().to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(r#"seq=5 op=CREATE endpoint=a/b namespace="" id="x4""#),
        "{stdout}"
    );
    // The repair does take the lock, and refuses.
    let (code, _, stderr) = flowhub(&["repair", "--data-dir", dir.path().to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("in use by another hub"), "{stderr}");
    hub.stop().await;
}

#[tokio::test]
async fn a_segment_torn_while_being_created_is_started_over() {
    let h = history(60).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("live");
    copy_dir(&h.image, &dir);
    let next = h.acks.len() as u64 + 1;
    let torn = dir.join("log").join(flowhub::log::file::segment_name(next));
    std::fs::write(&torn, &MAGIC[..3]).unwrap();
    assert_opens_with_prefix(&dir, &h.acks, h.acks.len(), "torn at creation").await;

    // Writes go into it, and a crash image taken now opens with them.
    let hub = TestHub::start_with(config_in(&dir)).await;
    let mut ws = hub.ws().await;
    let r = ws
        .call(json!({"endpoint": "a/b", "method": "CREATE", "data": {"id": "after"}}))
        .await;
    assert_eq!(r["data"]["version"], next, "{r}");
    let image = work.path().join("image");
    copy_dir(&dir, &image);
    hub.stop().await;
    let got = recover(&image.join("log"), 0, false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.records.last().unwrap().seq, next);
    assert!(got.torn.is_none());
}
