//! The writer's outage: refused records keep their seqs, a retry waits for its second (or is
//! forced), a torn line is cut, the `gap` names exactly the missing seqs and chains to the last
//! line written; the verifier accepts that gap and refuses every lie about one.
use std::path::{Path, PathBuf};

use serde_json::json;

use super::super::output::{WRITE_FAULT, WriteFault};
use crate::forensic::record::{self, GENESIS_DIGEST, LineHead, kinds};
use crate::forensic::{
    ChainCheck, Defect, FsyncPolicy, Gap, LogOptions, LogReader, LogWriter, WriterError, verify,
};

struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("guard-outage-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        WRITE_FAULT.set(WriteFault::None);
    }
}

fn options(fsync: FsyncPolicy) -> LogOptions {
    LogOptions {
        fsync,
        boot_id: Some("outage-test".to_owned()),
        ..LogOptions::default()
    }
}

fn records(dir: &Path) -> Vec<record::Record> {
    LogReader::open(dir)
        .unwrap()
        .map(|entry| entry.unwrap().record)
        .collect()
}

/// A write torn mid-line: the records buffered and the ones refused after it keep their seqs;
/// before a second has passed nothing is retried; a forced retry cuts the torn bytes and
/// writes a gap naming exactly the missing seqs and their kinds, chained to the last complete
/// line; the log verifies and says so.
#[test]
fn a_torn_write_then_space_again_gives_an_exact_gap() {
    let scratch = Scratch::new("torn");
    let mut writer =
        LogWriter::create(&scratch.0, options(FsyncPolicy::Never), &json!({})).unwrap();
    for i in 0..3 {
        writer
            .append("fork", Some("c1"), &json!({ "i": i }))
            .unwrap();
    }
    writer.flush().unwrap();
    let last_good = writer.head();
    assert_eq!(last_good.next_seq, 4);
    // Two records buffered, then the flush tears the first of them after 10 bytes.
    writer.append("fork", Some("c1"), &json!({"i": 3})).unwrap();
    writer
        .append("oom_victim", Some("c1"), &json!({"pid": 9}))
        .unwrap();
    WRITE_FAULT.set(WriteFault::ShortThenFail(10));
    let error = writer.flush().unwrap_err();
    assert!(
        matches!(
            &error,
            WriterError::Write { unwritten: Some(u), .. } if (u.first_seq, u.last_seq) == (4, 5)
        ),
        "{error}"
    );
    assert!(writer.is_failed());
    let file = scratch.0.join("guard-000000.jsonl");
    let torn_len = std::fs::metadata(&file).unwrap().len();
    // Refused during the outage: counted, seqs 6 and 7 spent. The fault is gone but the retry
    // waits for its second.
    WRITE_FAULT.set(WriteFault::None);
    for kind in ["reclaim", "fork"] {
        let refused = writer.append(kind, Some("c1"), &json!({})).unwrap_err();
        assert!(
            matches!(refused, WriterError::Outage { first_seq: 4, .. }),
            "{refused}"
        );
    }
    assert!(writer.is_failed(), "retried before RETRY_EVERY");
    let incomplete = writer.incomplete().unwrap().clone();
    assert_eq!(
        (
            incomplete.first_missing_seq,
            incomplete.last_missing_seq,
            incomplete.resumed
        ),
        (4, None, false)
    );
    assert!(
        incomplete.reason.contains("No space left on device"),
        "{incomplete}"
    );
    assert_eq!(writer.stats().records_not_written, 4);
    assert_eq!(writer.stats().write_errors, 1);

    writer.retry().unwrap();
    assert!(!writer.is_failed());
    assert!(std::fs::metadata(&file).unwrap().len() >= torn_len);
    let seq = writer
        .append("fork", Some("c1"), &json!({"after": true}))
        .unwrap();
    assert_eq!(seq, 9, "the gap took seq 8");
    let shown = writer.incomplete().unwrap().to_string();
    assert!(
        shown.starts_with("log incomplete from seq 4: cannot write to")
            && shown.ends_with(
                "4 record(s) not written, 1 gap record(s) (the last ends at seq 7); writing again"
            ),
        "{shown}"
    );
    writer.close().unwrap();

    let report = verify(&scratch.0).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.gaps, report.missing_records), (1, 4));
    let all = records(&scratch.0);
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 8, 9, 10]);
    let gap_record = &all[4];
    assert_eq!(gap_record.kind, "gap");
    assert_eq!(
        gap_record.prev, last_good.prev,
        "chained to the last complete line"
    );
    let gap: Gap = serde_json::from_value(gap_record.payload.clone()).unwrap();
    assert_eq!((gap.first_seq, gap.last_seq, gap.count()), (4, 7, 4));
    assert_eq!(
        gap.kinds,
        [("fork", 2), ("oom_victim", 1), ("reclaim", 1)]
            .map(|(k, n)| (k.to_owned(), n))
            .into()
    );
    assert!(
        gap.error.contains("No space left on device"),
        "{}",
        gap.error
    );
    assert_eq!(gap.retries, 0);
}

/// Without a forced retry: the next record after a second writes the gap, then itself.
#[test]
fn the_first_record_after_a_second_resumes_the_log() {
    let scratch = Scratch::new("backoff");
    let mut writer =
        LogWriter::create(&scratch.0, options(FsyncPolicy::Always), &json!({})).unwrap();
    WRITE_FAULT.set(WriteFault::Fail);
    assert!(writer.append("fork", None, &json!({})).is_err());
    WRITE_FAULT.set(WriteFault::None);
    assert!(writer.append("fork", None, &json!({})).is_err());
    std::thread::sleep(super::RETRY_EVERY + std::time::Duration::from_millis(50));
    assert_eq!(writer.append("fork", None, &json!({})).unwrap(), 4);
    let incomplete = writer.incomplete().unwrap();
    assert_eq!(
        (
            incomplete.first_missing_seq,
            incomplete.last_missing_seq,
            incomplete.missing_records,
            incomplete.resumed,
            incomplete.gaps
        ),
        (1, Some(2), 2, true, 1)
    );
    writer.close().unwrap();
    let report = verify(&scratch.0).unwrap();
    assert!(
        report.is_clean() && report.ended_abruptly().is_none(),
        "{report:?}"
    );
    let seqs: Vec<u64> = records(&scratch.0).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [0, 3, 4, 5]);
}

/// A retry that fails again keeps the outage (counted once as a write error), and a close
/// that still cannot write says so; the file holds no partial line.
#[test]
fn a_failing_retry_keeps_the_outage() {
    let scratch = Scratch::new("still");
    let mut writer =
        LogWriter::create(&scratch.0, options(FsyncPolicy::Always), &json!({})).unwrap();
    WRITE_FAULT.set(WriteFault::Fail);
    assert!(writer.append("fork", None, &json!({})).is_err());
    assert!(writer.retry().is_err());
    assert!(writer.retry().is_err());
    assert_eq!(writer.stats().write_errors, 1);
    assert!(writer.is_failed());
    assert!(writer.close().is_err());
    WRITE_FAULT.set(WriteFault::None);
    let report = verify(&scratch.0).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.last_seq, Some(0));
}

/// The outage began right after a rotation, before the new file's `rotate` record reached
/// it: the empty file goes, and the gap follows the previous file's last line.
#[test]
fn an_outage_in_a_fresh_file_resumes_in_the_previous_one() {
    let scratch = Scratch::new("rotate");
    let mut writer = LogWriter::create(
        &scratch.0,
        LogOptions {
            rotate_bytes: Some(crate::forensic::layout::ROTATE_MIN_FILE_BYTES),
            ..options(FsyncPolicy::Never)
        },
        &json!({}),
    )
    .unwrap();
    let pad = "x".repeat(500);
    let mut i = 0;
    while writer.head().file.ends_with("guard-000000.jsonl") {
        writer
            .append("fork", None, &json!({ "i": i, "pad": pad }))
            .unwrap();
        i += 1;
        assert!(i < 100_000, "never rotated");
    }
    WRITE_FAULT.set(WriteFault::Fail);
    assert!(writer.flush().is_err());
    WRITE_FAULT.set(WriteFault::None);
    writer.retry().unwrap();
    assert!(!scratch.0.join("guard-000001.jsonl").exists());
    writer.close().unwrap();
    let report = verify(&scratch.0).unwrap();
    assert!(report.is_clean(), "{report:?}");
    // The previous file was at its bound: the `stop` rotated again, into a new file 1.
    assert_eq!(
        (report.files, report.gaps, report.missing_records),
        (2, 1, 2)
    );
    let first = std::fs::read_to_string(scratch.0.join("guard-000000.jsonl")).unwrap();
    let last: record::Record = serde_json::from_str(first.lines().last().unwrap()).unwrap();
    assert_eq!(last.kind, kinds::GAP);
}

/// Lines as the writer encodes them, with any seq and payload: the verifier's view.
struct Chain {
    prev: record::Digest,
    lines: Vec<Vec<u8>>,
}

impl Chain {
    fn new() -> Self {
        Self {
            prev: GENESIS_DIGEST,
            lines: Vec::new(),
        }
    }

    fn push(&mut self, seq: u64, kind: &str, payload: &serde_json::Value) {
        let mut line = Vec::new();
        let head = LineHead {
            seq,
            boot_id_json: b"\"b\"",
            wall: b"2026-12-07T13:00:00.000000000Z",
            mono_ns: seq,
            kind,
            container: None,
            prev: &self.prev,
        };
        self.prev = record::encode_line(&mut line, &head, payload).unwrap();
        line.pop();
        self.lines.push(line);
    }

    /// The first defect ChainCheck finds, if any.
    fn check(&self) -> Option<Defect> {
        let mut chain = ChainCheck::new();
        self.lines
            .iter()
            .enumerate()
            .find_map(|(i, line)| chain.check(line, i as u64 + 1, "guard-000000.jsonl").err())
    }
}

fn gap(first: u64, last: u64, kinds: &[(&str, u64)]) -> serde_json::Value {
    json!({
        "first_seq": first, "last_seq": last,
        "kinds": kinds.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "error": "No space left on device (os error 28)",
        "since_wall": "2026-12-07T13:00:00.000000000Z", "since_mono_ns": 1, "retries": 0,
    })
}

/// start 0, fork 1, then `tail`: what the verifier says.
fn after_two(tail: &[(u64, &str, serde_json::Value)]) -> Option<Defect> {
    let mut chain = Chain::new();
    chain.push(0, kinds::START, &json!({}));
    chain.push(1, "fork", &json!({}));
    for (seq, kind, payload) in tail {
        chain.push(*seq, kind, payload);
    }
    chain.check()
}

#[test]
fn the_verifier_accepts_an_honest_gap_and_refuses_every_lie() {
    // Honest: seqs 2..=4 missing, named exactly, kinds adding up.
    assert_eq!(
        after_two(&[
            (5, kinds::GAP, gap(2, 4, &[("fork", 2), ("reclaim", 1)])),
            (6, "fork", json!({})),
        ]),
        None
    );
    // A jump without a gap.
    assert_eq!(
        after_two(&[(5, "fork", json!({}))]),
        Some(Defect::SeqMismatch {
            found: 5,
            expected: 2
        })
    );
    let lies = [
        (5, gap(3, 4, &[("fork", 2)])), // starts too late
        (5, gap(2, 3, &[("fork", 2)])), // ends too early
        (5, gap(1, 4, &[("fork", 4)])), // claims a seq that is there
        (5, gap(2, 4, &[("fork", 2)])), // kinds add up to less
        (2, gap(2, 1, &[])),            // a gap with nothing missing
        (2, gap(2, 4, &[("fork", 3)])), // a gap where no seq jumped
    ];
    for (seq, payload) in lies {
        let defect = after_two(&[(seq, kinds::GAP, payload.clone())]);
        assert!(
            matches!(defect, Some(Defect::GapMismatch { .. })),
            "{payload}: {defect:?}"
        );
    }
    // A gap payload that is not one.
    assert!(matches!(
        after_two(&[(5, kinds::GAP, json!({"first_seq": 2}))]),
        Some(Defect::Schema { .. })
    ));
    // The writer refuses to append a gap itself.
    let scratch = Scratch::new("reserved");
    let mut writer =
        LogWriter::create(&scratch.0, options(FsyncPolicy::Never), &json!({})).unwrap();
    assert!(matches!(
        writer.append(kinds::GAP, None, &json!({})),
        Err(WriterError::ReservedKind { .. })
    ));
}
