//! The byte budget: the directory never exceeds it, the head and the latest file stay, what
//! was removed is recorded and verifies, and a `dropped` record that lies is refused.
use std::path::{Path, PathBuf};

use serde_json::json;

use super::super::*;
use crate::forensic::record::{Dropped, kinds};
use crate::forensic::{Defect, verify};

struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("guard-budget-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BUDGET: u64 = 64 << 10;

fn options(budget: ByteBudget) -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("test-boot".to_owned()),
        budget,
        ..LogOptions::default()
    }
}

/// Bytes of the log's files.
fn dir_bytes(dir: &Path) -> u64 {
    layout::list_files(dir)
        .unwrap()
        .iter()
        .map(|file| std::fs::metadata(&file.path).unwrap().len())
        .sum()
}

fn kinds_in(dir: &Path) -> Vec<String> {
    crate::forensic::LogReader::open(dir)
        .unwrap()
        .map(|entry| entry.unwrap().record.kind)
        .collect()
}

/// A storm of `events` ~150-byte events, the directory checked against the budget as it goes.
fn storm(writer: &mut LogWriter, events: u64) {
    for i in 0..events {
        let payload = json!({"pid": i, "comm": "alloc", "nr_reclaimed": 32, "duration_ns": 12345});
        writer.append("reclaim", Some("tenant"), &payload).unwrap();
        if i % 64 == 0 {
            writer.flush().unwrap();
            let bytes = dir_bytes(writer.dir());
            assert!(
                bytes <= BUDGET,
                "{bytes} bytes after event {i}: past {BUDGET}"
            );
        }
    }
}

#[test]
fn a_storm_stays_within_the_budget_and_verifies() {
    let scratch = Scratch::new("storm");
    let start = json!({"limits": "the head"});
    let mut writer =
        LogWriter::create(&scratch.0, options(ByteBudget::Bytes(BUDGET)), &start).unwrap();
    assert_eq!(writer.rotate_limit(), Some(BUDGET / FILES_PER_BUDGET));
    writer
        .append(
            "limits_applied",
            Some("tenant"),
            &json!({"memory_max": 16 << 20}),
        )
        .unwrap();
    storm(&mut writer, 20_000);
    for container in ["tenant", "other"] {
        writer
            .append("report", Some(container), &json!({"verdict": "enforced"}))
            .unwrap();
    }
    let (dropped, refused) = writer.budget_counts();
    assert!(dropped > 15_000, "{dropped} records dropped");
    assert_eq!(refused, 0, "rotation freed room: no event refused");
    writer.close().unwrap();
    assert!(dir_bytes(&scratch.0) <= BUDGET);

    let files = layout::list_files(&scratch.0).unwrap();
    assert_eq!(files[0].index, 0, "the head is kept");
    assert!(
        files.len() <= FILES_PER_BUDGET as usize,
        "{} files",
        files.len()
    );
    let kinds = kinds_in(&scratch.0);
    assert_eq!(&kinds[..2], ["start", "limits_applied"]);
    assert!(kinds.contains(&"dropped".to_owned()));
    let end: Vec<_> = kinds.iter().rev().take(4).rev().cloned().collect();
    assert_eq!(end, ["report", "report", "log_budget", "stop"]);

    let report = verify(&scratch.0).unwrap();
    assert!(report.is_clean(), "{:?}", report.problem);
    let span = report.dropped.expect("the gap is reported");
    assert_eq!(span.first_file, "guard-000001.jsonl");
    assert_eq!(span.last_seq - span.first_seq + 1, dropped);
}

#[test]
fn a_reopened_log_goes_on_dropping_and_verifies() {
    let scratch = Scratch::new("reopen");
    for session in 0..3 {
        let mut writer = LogWriter::create(
            &scratch.0,
            options(ByteBudget::Bytes(BUDGET)),
            &json!(session),
        )
        .unwrap();
        storm(&mut writer, 3_000);
        writer.close().unwrap();
        let report = verify(&scratch.0).unwrap();
        assert!(report.is_clean(), "session {session}: {:?}", report.problem);
        assert_eq!(report.dropped.unwrap().first_file, "guard-000001.jsonl");
    }
    assert!(dir_bytes(&scratch.0) <= BUDGET);
}

#[test]
fn a_single_file_stops_events_but_not_reports() {
    let scratch = Scratch::new("single");
    let options = LogOptions {
        rotate_bytes: None,
        ..options(ByteBudget::Bytes(BUDGET))
    };
    let mut writer = LogWriter::create(&scratch.0, options, &json!({})).unwrap();
    let mut refused = 0;
    for i in 0..2_000 {
        match writer.append(
            "reclaim",
            Some("tenant"),
            &json!({"pid": i, "comm": "alloc"}),
        ) {
            Ok(_) => {}
            Err(WriterError::OverBudget { kind, budget }) => {
                assert_eq!((kind.as_str(), budget), ("reclaim", BUDGET));
                refused += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(refused > 1_000, "{refused}");
    assert_eq!(writer.stats().records_over_budget, refused);
    assert!(!writer.is_failed(), "the writer goes on");
    writer
        .append("report", Some("tenant"), &json!({"verdict": "enforced"}))
        .unwrap();
    writer.close().unwrap();
    assert!(dir_bytes(&scratch.0) <= BUDGET);
    let kinds = kinds_in(&scratch.0);
    assert_eq!(kinds.iter().filter(|k| *k == "budget_exhausted").count(), 1);
    assert_eq!(&kinds[kinds.len() - 3..], ["report", "log_budget", "stop"]);
    assert!(verify(&scratch.0).unwrap().is_clean());

    // Even the reserve has an end: a report that cannot fit is refused, never written past it.
    let options = LogOptions {
        rotate_bytes: None,
        ..self::options(ByteBudget::Bytes(BUDGET))
    };
    let mut writer = LogWriter::create(&scratch.0, options, &json!({})).unwrap();
    let big = "x".repeat(BUDGET as usize / 8);
    let results: Vec<_> = (0..8)
        .map(|_| writer.append("report", Some("tenant"), &json!({"text": big})))
        .collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(WriterError::OverBudget { .. })))
    );
    writer.close().unwrap();
    assert!(dir_bytes(&scratch.0) <= BUDGET);
}

/// A log of three files, unbudgeted: the head, a middle file, the current one.
fn three_files(dir: &Path) -> LogWriter {
    let options = LogOptions {
        rotate_bytes: Some(2048),
        ..options(ByteBudget::Unbounded)
    };
    let mut writer = LogWriter::create(dir, options, &json!({})).unwrap();
    while writer.file.index < 2 {
        writer
            .append("fork", Some("c"), &json!({"child_pid": 1}))
            .unwrap();
    }
    writer.flush().unwrap();
    writer
}

fn claim_of(dir: &Path, last: u64) -> Dropped {
    let (first_seq, _) = budget_first_line(&dir.join(layout::file_name(1)));
    let (next, head) = budget_first_line(&dir.join(layout::file_name(last + 1)));
    Dropped {
        first_file: layout::file_name(1),
        last_file: layout::file_name(last),
        first_seq,
        last_seq: next - 1,
        head,
        records: next - first_seq,
        bytes: 0,
        files_now: last,
        acked: false,
        budget_bytes: BUDGET,
    }
}

fn budget_first_line(path: &Path) -> (u64, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    (
        record["seq"].as_u64().unwrap(),
        record["prev"].as_str().unwrap().to_owned(),
    )
}

fn defect(dir: &Path) -> Option<Defect> {
    verify(dir).unwrap().problem.map(|problem| problem.defect)
}

#[test]
fn a_dropped_record_is_accepted_only_as_it_matches() {
    // The truth, before the files are removed (a crash between the two) and after.
    let scratch = Scratch::new("truth");
    let mut writer = three_files(&scratch.0);
    let claim = claim_of(&scratch.0, 1);
    writer
        .write_record(kinds::DROPPED, None, &claim, false)
        .unwrap();
    writer.close().unwrap();
    assert_eq!(
        defect(&scratch.0),
        None,
        "files still present bear the claim out"
    );
    std::fs::remove_file(scratch.0.join(layout::file_name(1))).unwrap();
    assert_eq!(defect(&scratch.0), None);

    // Lies: one record too many, another file's end, a head that is not the removed line's.
    let lies: [fn(&mut Dropped); 3] = [
        |claim| {
            claim.last_seq += 1;
            claim.records += 1;
        },
        |claim| claim.first_seq += 1,
        |claim| claim.head = "0".repeat(64),
    ];
    for (i, lie) in lies.iter().enumerate() {
        let scratch = Scratch::new(&format!("lie{i}"));
        let mut writer = three_files(&scratch.0);
        let mut claim = claim_of(&scratch.0, 1);
        lie(&mut claim);
        writer
            .write_record(kinds::DROPPED, None, &claim, false)
            .unwrap();
        writer.close().unwrap();
        std::fs::remove_file(scratch.0.join(layout::file_name(1))).unwrap();
        assert!(
            matches!(defect(&scratch.0), Some(Defect::DroppedMismatch { .. })),
            "lie {i}: {:?}",
            defect(&scratch.0)
        );
    }
}

#[test]
fn a_gap_without_its_dropped_record_is_refused() {
    // No record at all.
    let scratch = Scratch::new("unrecorded");
    three_files(&scratch.0).close().unwrap();
    std::fs::remove_file(scratch.0.join(layout::file_name(1))).unwrap();
    assert!(matches!(
        defect(&scratch.0),
        Some(Defect::UnrecordedGap { .. })
    ));

    // A real budgeted log, then one more file removed than its records say.
    let scratch = Scratch::new("one-more");
    let mut writer =
        LogWriter::create(&scratch.0, options(ByteBudget::Bytes(BUDGET)), &json!({})).unwrap();
    storm(&mut writer, 5_000);
    writer.close().unwrap();
    let files = layout::list_files(&scratch.0).unwrap();
    assert!(files[1].index > 1 && files.len() > 3, "{files:?}");
    std::fs::remove_file(&files[1].path).unwrap();
    assert!(
        matches!(
            defect(&scratch.0),
            Some(Defect::UnrecordedGap { .. }) | Some(Defect::DroppedMismatch { .. })
        ),
        "{:?}",
        defect(&scratch.0)
    );

    // The head can never be removed.
    let scratch = Scratch::new("no-head");
    let mut writer =
        LogWriter::create(&scratch.0, options(ByteBudget::Bytes(BUDGET)), &json!({})).unwrap();
    storm(&mut writer, 5_000);
    writer.close().unwrap();
    std::fs::remove_file(scratch.0.join(layout::file_name(0))).unwrap();
    assert!(matches!(
        defect(&scratch.0),
        Some(Defect::MissingFile { .. })
    ));
}

#[test]
fn budgets_parse_and_default_by_backing() {
    assert_eq!(
        "64K".parse::<ByteBudget>().unwrap(),
        ByteBudget::Bytes(64 << 10)
    );
    assert_eq!("none".parse::<ByteBudget>().unwrap(), ByteBudget::Unbounded);
    assert_eq!(ByteBudget::Bytes(5 << 20).to_string(), "5242880");
    for bad in ["", "63K", "-1", "1T", "lots", "99999999999999999999"] {
        assert!(bad.parse::<ByteBudget>().is_err(), "{bad:?}");
    }
    // RAM: 1/32 of MemTotal within 1..=64 MiB, and never past a quarter of the free space.
    assert_eq!(default_budget(Backing::Ram, 128 << 20, None), 4 << 20);
    assert_eq!(default_budget(Backing::Ram, 16 << 20, None), 1 << 20);
    assert_eq!(default_budget(Backing::Ram, 64 << 30, None), 64 << 20);
    assert_eq!(
        default_budget(Backing::Ram, 128 << 20, Some(8 << 20)),
        2 << 20
    );
    // Disk: a quarter of the free space, at most 4 GiB; never below the minimum.
    assert_eq!(default_budget(Backing::Disk, 0, Some(1 << 30)), 256 << 20);
    assert_eq!(default_budget(Backing::Disk, 0, Some(100 << 30)), 4 << 30);
    assert_eq!(
        default_budget(Backing::Disk, 0, Some(1000)),
        MIN_BUDGET_BYTES
    );
}

#[test]
fn with_a_stream_only_what_the_host_holds_is_removed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let scratch = Scratch::new("acked");
    let acked = Arc::new(AtomicU64::new(0));
    let options = LogOptions {
        acked: Some(Arc::clone(&acked)),
        ..options(ByteBudget::Bytes(BUDGET))
    };
    let mut writer = LogWriter::create(&scratch.0, options, &json!({})).unwrap();
    let event = |writer: &mut LogWriter, i: u64| {
        writer.append(
            "reclaim",
            Some("t"),
            &json!({"pid": i, "comm": "alloc", "pad": "x".repeat(80)}),
        )
    };
    // The host holds nothing: nothing is removed, events stop at the budget.
    let refused = (0..3_000)
        .filter(|&i| event(&mut writer, i).is_err())
        .count();
    assert!(refused > 1_000, "{refused}");
    assert_eq!(
        writer.budget_counts().0,
        0,
        "nothing the host lacks is removed"
    );
    writer.flush().unwrap();
    assert!(dir_bytes(&scratch.0) <= BUDGET);
    // The host acknowledges everything: the next event makes room and goes in.
    acked.store(writer.head().next_seq, Ordering::Relaxed);
    event(&mut writer, 0).unwrap();
    let (dropped, _) = writer.budget_counts();
    assert!(dropped > 0);
    writer.close().unwrap();
    assert!(dir_bytes(&scratch.0) <= BUDGET);
    let records: Vec<_> = crate::forensic::LogReader::open(&scratch.0)
        .unwrap()
        .map(|entry| entry.unwrap().record)
        .collect();
    let drop = records.iter().find(|r| r.kind == "dropped").unwrap();
    assert_eq!(drop.payload["acked"], json!(true));
    let exhausted = records
        .iter()
        .position(|r| r.kind == "budget_exhausted")
        .unwrap();
    assert!(
        records[exhausted..].iter().any(|r| r.kind == "reclaim"),
        "events resumed"
    );
    assert!(verify(&scratch.0).unwrap().is_clean());
}
