//! The forensic log's readers on arbitrary directory contents: `LogReader`, `Follower`,
//! `stats`, `verify`, `repair`, and a `LogWriter` resuming the log.
//!
//! Input: one flags byte, then up to three files separated by 0xFF bytes (a byte UTF-8 never
//! contains, so it stays out of the way of the JSON), written as `guard-000000.jsonl`, ….
//! Flag bit 0 reseals every line first (rewrites `prev`, a checkpoint's `head` and `hash` to
//! what the chain requires), so mutations get past the hashes to the structural rules.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use guard::forensic::record::{self, Digest, GENESIS_DIGEST, HASH_MARKER, HASH_SUFFIX_LEN};
use guard::forensic::time::{format_rfc3339_nanos, parse_rfc3339};
use guard::forensic::{
    Entry, Filter, Follower, FsyncPolicy, LogOptions, LogReader, LogWriter, ReaderError,
    RepairOutcome, VerifyReport, layout, repair, serde_json, stats, verify,
};

/// The resuming writer's boot id; records of another boot are not held to its clock.
const BOOT_ID: &str = "fuzz-harness-boot";
const FILE_SEPARATOR: u8 = 0xFF;
const RESEAL: u8 = 1;

pub fn run(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let mut files: Vec<Vec<u8>> = body
        .splitn(3, |&b| b == FILE_SEPARATOR)
        .map(<[u8]>::to_vec)
        .collect();
    if flags & RESEAL != 0 {
        reseal(&mut files);
    }
    SCRATCH.with(|scratch| {
        let dir = scratch.fresh();
        for (index, bytes) in files.iter().enumerate() {
            std::fs::write(dir.join(layout::file_name(index as u64)), bytes).unwrap();
        }
        check(&dir, &files);
    });
}

fn check(dir: &Path, files: &[Vec<u8>]) {
    let report = verify(dir).expect("verify failed on a readable directory");
    // Verification stops at the first problem, so it may not reach every file.
    if report.problem.is_none() {
        assert_eq!(report.files, files.len() as u64, "{report:?}");
    }
    assert!(report.files <= files.len() as u64, "{report:?}");
    let newlines: usize = files
        .iter()
        .map(|f| f.iter().filter(|&&b| b == b'\n').count())
        .sum();
    assert!(report.records <= newlines as u64, "{report:?}");

    let entries = read_all(dir, &report);
    follow_all(dir);
    let counted = stats(dir).expect("stats failed on a readable directory");
    assert_eq!(counted.records, entries as u64);

    let before = repair_and_check(dir, files, report);
    resume_and_check(dir, &before);
}

/// Reads every record; when `verify` found no problem, the reader must agree with it.
fn read_all(dir: &Path, report: &VerifyReport) -> usize {
    let mut ok = Vec::new();
    let mut torn = 0;
    let mut bad = 0;
    for item in LogReader::open(dir).expect("cannot list the scratch directory") {
        match item {
            Ok(entry) => ok.push(entry),
            Err(ReaderError::TornTail { .. }) => torn += 1,
            Err(error) if error.is_line_error() => bad += 1,
            Err(error) => panic!("reader I/O error: {error}"),
        }
    }
    for entry in &ok {
        let record = &entry.record;
        let filter = Filter {
            container: record.container.clone(),
            kind: Some(record.kind.clone()),
            since_ns: Some(i64::MIN),
        };
        assert!(filter.matches(record));
        if let Ok(ns) = parse_rfc3339(&record.wall) {
            let text = format_rfc3339_nanos(ns);
            assert_eq!(
                parse_rfc3339(&text).ok(),
                Some(ns),
                "{:?} -> {text}",
                record.wall
            );
        }
    }
    if report.problem.is_none() {
        clean_log_shape(&ok, report);
        assert_eq!(
            bad, 0,
            "verify passed lines the reader cannot read: {report:?}"
        );
        assert_eq!(ok.len() as u64, report.records, "{report:?}");
        assert_eq!(torn, usize::from(report.torn_tail.is_some()), "{report:?}");
        if let Some(last) = ok.last() {
            assert_eq!(Some(last.record.seq), report.last_seq);
            assert_eq!(
                report.head.as_deref(),
                Some(record::to_hex(&record::sha256(&last.raw)).as_str())
            );
        }
    }
    ok.len()
}

/// What LOG-FORMAT.md promises of a log without defects: it begins with `start`, every file
/// after the first begins with `rotate`, and only the newest file may be empty.
fn clean_log_shape(entries: &[Entry], report: &VerifyReport) {
    let Some(first) = entries.first() else {
        return;
    };
    assert_eq!(first.record.kind, "start", "{report:?}");
    assert_eq!(first.record.seq, 0, "{report:?}");
    let mut files: Vec<&Path> = Vec::new();
    for entry in entries {
        if files.last() != Some(&&*entry.file) {
            files.push(&entry.file);
            let expected = if files.len() == 1 { "start" } else { "rotate" };
            assert_eq!(entry.line, 1, "{report:?}");
            assert_eq!(entry.record.kind, expected, "{report:?}");
        }
    }
    // The files with records are 0, 1, … without a gap; at most the newest has none.
    let index = |path: &Path| layout::parse_file_name(path.file_name()?.to_str()?);
    let indexes: Vec<Option<u64>> = files.iter().map(|path| index(path)).collect();
    let expected: Vec<Option<u64>> = (0..files.len() as u64).map(Some).collect();
    assert_eq!(indexes, expected, "an inner file is empty: {report:?}");
    assert!(
        files.len() as u64 + 1 >= report.files,
        "an inner file is empty: {report:?}"
    );
}

fn follow_all(dir: &Path) {
    let mut follower = Follower::newest_file(dir).expect("cannot list the scratch directory");
    follower
        .poll(&mut |item| {
            if let Err(error) = item {
                assert!(error.is_line_error(), "follower: {error}");
            }
        })
        .expect("follower I/O error");
}

/// `repair` removes a torn tail and nothing else; returns the report it leaves behind.
fn repair_and_check(dir: &Path, files: &[Vec<u8>], report: VerifyReport) -> VerifyReport {
    let outcome = repair(dir).expect("repair I/O error");
    let on_disk = |index: usize| std::fs::read(dir.join(layout::file_name(index as u64))).unwrap();
    let unchanged = || (0..files.len()).all(|i| on_disk(i) == files[i]);
    match outcome {
        RepairOutcome::Refused(again) => {
            assert!(report.problem.is_some());
            assert_eq!(again, report);
            assert!(unchanged(), "a refused repair changed the log");
            again
        }
        RepairOutcome::Clean(again) => {
            assert!(report.is_clean());
            assert_eq!(again, report);
            assert!(unchanged(), "repairing a clean log changed it");
            again
        }
        RepairOutcome::Repaired {
            torn,
            removed,
            report: after,
        } => {
            assert_eq!(report.torn_tail.as_ref(), Some(&torn));
            assert!(report.problem.is_none());
            assert!(after.is_clean(), "still not clean after repair: {after:?}");
            assert_eq!(after.records, report.records);
            let index = files.len() - 1;
            let original = &files[index];
            assert_eq!(torn.offset + torn.bytes, original.len() as u64);
            assert_eq!(&original[torn.offset as usize..], removed.as_slice());
            assert_eq!(on_disk(index), original[..torn.offset as usize]);
            after
        }
    }
}

/// A writer continues any log it can read; one that verified clean stays clean.
fn resume_and_check(dir: &Path, before: &VerifyReport) {
    // Asked before the writer adds records of its own.
    let must_stay_clean = before.is_clean() && !same_boot(dir);
    let options = LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some(BOOT_ID.to_owned()),
        repair_torn_tail: true,
        ..LogOptions::default()
    };
    let start = serde_json::json!({"harness": "forensic_log"});
    let written = LogWriter::create(dir, options, &start).and_then(|mut writer| {
        writer.append("fuzz", Some("c1"), &serde_json::json!({"n": 1}))?;
        writer.close()
    });
    if !must_stay_clean {
        return;
    }
    if let Err(error) = written {
        panic!("cannot continue a log that verifies clean: {error}");
    }
    let after = verify(dir).unwrap();
    assert!(
        after.is_clean(),
        "continuing a clean log broke it: {after:?}"
    );
    // start, the event and stop at least (a rotate first if the newest file was empty).
    assert!(
        after.records >= before.records + 3,
        "{before:?} -> {after:?}"
    );
}

/// Whether a record of the writer's own boot id precedes it (its monotonic clock is then
/// compared with the fuzzed one).
fn same_boot(dir: &Path) -> bool {
    LogReader::open(dir)
        .unwrap()
        .flatten()
        .any(|entry| entry.record.boot_id == BOOT_ID)
}

/// Rewrites each complete line's chain fields to the values verification expects.
fn reseal(files: &mut [Vec<u8>]) {
    let mut prev = GENESIS_DIGEST;
    for file in files {
        let mut out = Vec::with_capacity(file.len());
        let mut rest = &file[..];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let mut line = rest[..end].to_vec();
            rest = &rest[end + 1..];
            reseal_line(&mut line, &prev);
            prev = record::sha256(&line);
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        // A torn tail stays as it is.
        out.extend_from_slice(rest);
        *file = out;
    }
}

fn reseal_line(line: &mut [u8], prev: &Digest) {
    let prev = record::to_hex(prev);
    // The record's own `prev` is its last key but `hash`; a checkpoint's `head` is in the
    // payload, before it.
    let prev_at = rfind(line, b"\"prev\":\"");
    let head_at = find(line, b"\"head\":\"");
    for at in [prev_at, head_at].into_iter().flatten() {
        if let Some(hex) = line.get_mut(at..at + 64) {
            hex.copy_from_slice(prev.as_bytes());
        }
    }
    let Some(split) = line.len().checked_sub(HASH_SUFFIX_LEN) else {
        return;
    };
    if line[split..].starts_with(HASH_MARKER) {
        let seal = record::to_hex(&record::sha256(&line[..split]));
        let hex = split + HASH_MARKER.len();
        line[hex..hex + 64].copy_from_slice(seal.as_bytes());
    }
}

/// Where the text after the first `needle` starts.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + needle.len())
}

/// Where the text after the last `needle` starts.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|w| w == needle)
        .map(|at| at + needle.len())
}

thread_local! {
    static SCRATCH: Scratch = Scratch::new();
}

/// A directory per thread, reused for every input (removed when the thread ends). Under
/// `$GUARD_FUZZ_SCRATCH` when set, else in /dev/shm (no disk I/O), else the temp dir.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = match std::env::var_os("GUARD_FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let name = format!(
            "guard-fuzz-log-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            dir: base.join(name),
        }
    }

    /// The directory, emptied.
    fn fresh(&self) -> PathBuf {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot clear {}: {e}", self.dir.display()),
        }
        std::fs::create_dir_all(&self.dir).unwrap();
        self.dir.clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
