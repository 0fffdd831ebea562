//! The log's byte budget on the host: a storm in a small budget stays within it, the head and
//! the latest file stay, the removed span is recorded, and both verifiers (guard's and the
//! independent Python one) accept it only as recorded: one more file removed, or a `dropped`
//! record that lies, is refused by both.
use std::path::{Path, PathBuf};
use std::process::Command;

use guard::forensic::serde_json::{self, Value, json};
use guard::forensic::{self, ByteBudget, Defect, FsyncPolicy, LogOptions, LogWriter};
use sha2::{Digest as _, Sha256};

use crate::forensic_log::TempDir;

const BUDGET: u64 = 256 << 10;

fn dir_bytes(dir: &Path) -> u64 {
    forensic::layout::list_files(dir)
        .unwrap()
        .iter()
        .map(|file| std::fs::metadata(&file.path).unwrap().len())
        .sum()
}

/// A log written under a storm of `events` events in a 256 KiB budget.
fn stormed(tag: &str, events: u64) -> TempDir {
    let dir = TempDir::new(tag);
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("host-budget".into()),
        budget: ByteBudget::Bytes(BUDGET),
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(&dir.0, options, &json!({"limits": {}})).unwrap();
    writer
        .append(
            "limits_applied",
            Some("t"),
            &json!({"memory_max": 16 << 20}),
        )
        .unwrap();
    for i in 0..events {
        let payload = json!({"tid": i, "duration_ns": 4000 + i % 97, "nr_reclaimed": 31});
        writer.append("reclaim", Some("t"), &payload).unwrap();
        if i % 256 == 0 {
            writer.flush().unwrap();
            assert!(dir_bytes(&dir.0) <= BUDGET, "past the budget at event {i}");
        }
    }
    writer
        .append("report", Some("t"), &json!({"verdict": "enforced"}))
        .unwrap();
    writer.close().unwrap();
    dir
}

fn python(dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("verify_log.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn rust_defect(dir: &Path) -> Option<Defect> {
    forensic::verify(dir)
        .unwrap()
        .problem
        .map(|problem| problem.defect)
}

#[test]
fn a_storm_in_a_small_budget_verifies_with_its_gap_recorded() {
    let dir = stormed("storm", 40_000);
    assert!(dir_bytes(&dir.0) <= BUDGET);
    let files = forensic::layout::list_files(&dir.0).unwrap();
    assert_eq!(files[0].index, 0, "the head stays");
    assert!(
        files[1].index > 1,
        "files after the head were removed: {files:?}"
    );
    let report = forensic::verify(&dir.0).unwrap();
    assert!(
        report.is_clean() && report.ended_abruptly().is_none(),
        "{report:?}"
    );
    let dropped = report.dropped.expect("the gap is reported");
    assert_eq!(dropped.first_file, "guard-000001.jsonl");
    assert!(python(&dir.0).ends_with(": OK\n"), "{}", python(&dir.0));
}

#[test]
fn one_more_file_removed_is_refused_by_both_verifiers() {
    let dir = stormed("one-more", 40_000);
    let files = forensic::layout::list_files(&dir.0).unwrap();
    assert!(files.len() > 3, "{files:?}");
    std::fs::remove_file(&files[1].path).unwrap();
    assert!(
        matches!(
            rust_defect(&dir.0),
            Some(Defect::UnrecordedGap { .. } | Defect::DroppedMismatch { .. })
        ),
        "{:?}",
        rust_defect(&dir.0)
    );
    assert!(python(&dir.0).contains(": BAD "), "{}", python(&dir.0));
}

/// Appends a sealed, chained line of `kind` with `payload` to the newest file, as a forger
/// with the whole log in hand could.
fn forge(dir: &Path, kind: &str, payload: &Value) {
    let newest: PathBuf = forensic::layout::list_files(dir)
        .unwrap()
        .pop()
        .unwrap()
        .path;
    let text = std::fs::read_to_string(&newest).unwrap();
    let last = text.lines().last().unwrap();
    let record: Value = serde_json::from_str(last).unwrap();
    let body = format!(
        r#"{{"seq":{},"boot_id":"host-budget","wall":{},"mono_ns":{},"kind":"{kind}","container":null,"payload":{payload},"prev":"{}""#,
        record["seq"].as_u64().unwrap() + 1,
        record["wall"],
        record["mono_ns"],
        hex(&Sha256::digest(last.as_bytes())),
    );
    let seal = hex(&Sha256::digest(body.as_bytes()));
    let line = format!("{body},\"hash\":\"{seal}\"}}\n");
    std::fs::write(&newest, text + &line).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last `dropped` record's payload.
fn last_dropped(dir: &Path) -> Value {
    forensic::LogReader::open(dir)
        .unwrap()
        .map(|entry| entry.unwrap().record)
        .filter(|record| record.kind == "dropped")
        .last()
        .map(|record| record.payload)
        .unwrap()
}

/// A lie told in a `dropped` record: what it says, and how.
type Lie = (&'static str, fn(&mut Value));

#[test]
fn a_lying_dropped_record_is_refused_by_both_verifiers() {
    // The truth, repeated, is accepted: it is what the files bear out.
    let dir = stormed("truth", 40_000);
    let truth = last_dropped(&dir.0);
    forge(&dir.0, "dropped", &truth);
    assert_eq!(rust_defect(&dir.0), None);
    assert!(python(&dir.0).ends_with(": OK\n"), "{}", python(&dir.0));

    let lies: [Lie; 3] = [
        ("one record fewer", |p| {
            p["last_seq"] = json!(p["last_seq"].as_u64().unwrap() - 1);
            p["records"] = json!(p["records"].as_u64().unwrap() - 1);
        }),
        ("a later start", |p| {
            p["first_seq"] = json!(p["first_seq"].as_u64().unwrap() + 1);
            p["records"] = json!(p["records"].as_u64().unwrap() - 1);
        }),
        ("another head", |p| p["head"] = json!("ab".repeat(32))),
    ];
    for (what, lie) in lies {
        let dir = stormed("lie", 40_000);
        let mut payload = last_dropped(&dir.0);
        lie(&mut payload);
        forge(&dir.0, "dropped", &payload);
        assert!(
            matches!(rust_defect(&dir.0), Some(Defect::DroppedMismatch { .. })),
            "{what}: {:?}",
            rust_defect(&dir.0)
        );
        assert!(
            python(&dir.0).contains(": BAD "),
            "{what}: {}",
            python(&dir.0)
        );
    }
}

/// Every line of `dir` checked as the collector's store checks a copy it receives: line by
/// line with the verifier's `ChainCheck`, each file announced as the next begins.
fn store_check(dir: &Path) -> Result<(), String> {
    let mut chain = forensic::ChainCheck::new();
    let mut finished: Option<(String, u64, u64)> = None;
    for file in forensic::layout::list_files(dir).unwrap() {
        if let Some((name, records, bytes)) = finished.take() {
            chain.end_file(name, records, bytes);
        }
        let text = std::fs::read_to_string(&file.path).unwrap();
        let (mut records, mut bytes) = (0, 0);
        for (i, line) in text.split_inclusive('\n').enumerate() {
            chain
                .check(
                    line.trim_end_matches('\n').as_bytes(),
                    i as u64 + 1,
                    &file.name(),
                )
                .map_err(|defect| format!("{}:{}: {defect}", file.name(), i + 1))?;
            records += 1;
            bytes += line.len() as u64;
        }
        finished = Some((file.name(), records, bytes));
    }
    Ok(())
}

/// A seq and `prev` of a file's first line.
fn first_line(path: &Path) -> (u64, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let record: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    (
        record["seq"].as_u64().unwrap(),
        record["prev"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn the_store_takes_a_dropped_record_only_as_its_copy_bears_it_out() {
    // With a stream only files the host holds are removed: its copy is whole, and a `dropped`
    // record names files it has. Three files, unbudgeted; then a record naming file 1.
    let dir = TempDir::new("store");
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("host-budget".into()),
        rotate_bytes: Some(2048),
        budget: ByteBudget::Unbounded,
        ..LogOptions::default()
    };
    let mut writer = LogWriter::create(&dir.0, options, &json!({})).unwrap();
    while forensic::layout::list_files(&dir.0).unwrap().len() < 3 {
        writer
            .append("fork", Some("t"), &json!({"child_pid": 7}))
            .unwrap();
        writer.flush().unwrap();
    }
    writer.close().unwrap();
    let (first_seq, _) = first_line(&dir.0.join("guard-000001.jsonl"));
    let (next, head) = first_line(&dir.0.join("guard-000002.jsonl"));
    let truth = json!({
        "first_file": "guard-000001.jsonl", "last_file": "guard-000001.jsonl",
        "first_seq": first_seq, "last_seq": next - 1, "head": head,
        "records": next - first_seq, "bytes": 0, "files_now": 1, "acked": true,
        "budget_bytes": BUDGET,
    });
    forge(&dir.0, "dropped", &truth);
    store_check(&dir.0).unwrap();

    let mut lie = truth.clone();
    lie["last_seq"] = json!(next);
    lie["records"] = json!(next - first_seq + 1);
    forge(&dir.0, "dropped", &lie);
    let refused = store_check(&dir.0).unwrap_err();
    assert!(refused.contains("dropped record disagrees"), "{refused}");
}
