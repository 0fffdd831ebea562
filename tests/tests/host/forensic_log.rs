//! Forensic log acceptance tests: the independent Python verifier (and every single-byte flip),
//! SIGKILL crash consistency, tamper detection with line numbers, writer resume and the CLI.
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guard::forensic::serde_json::json;
use guard::forensic::{
    self, Defect, FileError, FsyncPolicy, LogOptions, LogWriter, RepairOutcome, StartInfo,
    VerifyReport, WriterError,
};

/// A scratch directory removed on drop (the stream tests use it too).
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("guard-forensic-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: enough randomness for test schedules, no dependency. Seed from
/// FORENSIC_SEED to replay a failure.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("FORENSIC_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("FORENSIC_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn options(rotate_bytes: Option<u64>) -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        rotate_bytes,
        checkpoint_every: 5,
        boot_id: Some("3f1c7c55-7d0a-4a43-9a4e-2f0c1b9e8d77".to_owned()),
        repair_torn_tail: false,
        test_split_writes: None,
        ..LogOptions::default()
    }
}

fn start_info() -> StartInfo {
    StartInfo::new(1, json!({"memory_max": 67108864, "pids_max": 64}))
}

/// Writes `events` fork events over three containers and closes the log.
fn write_log(dir: &Path, events: u64, rotate_bytes: Option<u64>) {
    let mut writer = LogWriter::create(dir, options(rotate_bytes), &start_info()).unwrap();
    for i in 0..events {
        let container = format!("c{}", i % 3);
        writer
            .append(
                "fork",
                Some(&container),
                &json!({"pid": 1000 + i, "comm": "sh"}),
            )
            .unwrap();
    }
    writer
        .append_lost(
            None,
            &forensic::Lost {
                source: "bpf_ringbuf".into(),
                event_kind: Some("fork".into()),
                cpu: Some(1),
                count: 3,
            },
        )
        .unwrap();
    writer.close().unwrap();
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = forensic::layout::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    files.sort();
    files
}

fn python_verifier() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("verify_log.py")
}

/// Runs the Python verifier on many log directories at once; returns its verdict line per dir.
fn python_verdicts(dirs: &[PathBuf]) -> Vec<String> {
    let mut verdicts = Vec::new();
    for batch in dirs.chunks(2000) {
        let output = Command::new("python3")
            .arg(python_verifier())
            .args(batch)
            .output()
            .expect("python3 runs");
        assert!(
            output.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        verdicts.extend(
            String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    assert_eq!(verdicts.len(), dirs.len());
    verdicts
}

fn verify_ok(dir: &Path) -> VerifyReport {
    let report = forensic::verify(dir).unwrap();
    assert!(report.is_clean(), "{report:?}");
    report
}

#[test]
fn python_verifier_is_short_and_accepts_a_log_written_by_guard() {
    let source = std::fs::read_to_string(python_verifier()).unwrap();
    assert!(
        source.lines().count() < 60,
        "verifier must stay under 60 lines"
    );
    assert!(!source.contains("import guard"));
    let log = TempDir::new("py-ok");
    write_log(log.path(), 40, Some(3000));
    assert!(log_files(log.path()).len() >= 3, "the log should rotate");
    let report = verify_ok(log.path());
    let verdicts = python_verdicts(&[log.path().to_owned()]);
    assert!(verdicts[0].ends_with(": OK"), "{verdicts:?}");
    assert!(report.records > 40);
}

#[test]
fn every_single_byte_flip_is_rejected_by_python_and_by_verify() {
    let log = TempDir::new("py-flip");
    write_log(log.path(), 6, Some(1500));
    let files = log_files(log.path());
    assert!(files.len() >= 2, "flip test should span a rotation");
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let flips = TempDir::new("py-flips");
    let mut dirs = Vec::new();
    for (file_no, bytes) in originals.iter().enumerate() {
        for position in 0..bytes.len() {
            for mask in [0x01u8, 0x80] {
                let dir = flips.path().join(format!("{file_no}-{position}-{mask}"));
                std::fs::create_dir(&dir).unwrap();
                for (other_no, other) in files.iter().enumerate() {
                    let target = dir.join(other.file_name().unwrap());
                    if other_no == file_no {
                        let mut flipped = bytes.clone();
                        flipped[position] ^= mask;
                        std::fs::write(&target, flipped).unwrap();
                    } else {
                        std::os::unix::fs::symlink(other, &target).unwrap();
                    }
                }
                dirs.push(dir);
            }
        }
    }
    eprintln!("{} flipped copies", dirs.len());
    for (dir, verdict) in dirs.iter().zip(python_verdicts(&dirs)) {
        assert!(
            verdict.contains(": BAD "),
            "python accepted {}: {verdict}",
            dir.display()
        );
        let report = forensic::verify(dir).unwrap();
        assert!(!report.is_clean(), "verify accepted {}", dir.display());
    }
}

/// Total size of the log files in `dir`.
fn log_bytes(dir: &Path) -> u64 {
    forensic::layout::list_files(dir)
        .map(|files| {
            files
                .iter()
                .filter_map(|f| std::fs::metadata(&f.path).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_at_random_moments_never_loses_a_complete_record() {
    let mut rng = Rng::from_env();
    let log = TempDir::new("crash");
    let dir = log.path().join("log");
    let mut durable: BTreeSet<u64> = BTreeSet::new();
    let (mut torn_tails, mut writer_repairs) = (0, 0);
    let started = Instant::now();
    let mut repair_by_writer = false;
    for iteration in 0..100 {
        // Every writer fsyncs each chunk, and the whole log is verified after every kill: the
        // test's cost grows with the bytes written per kill (the verification with their
        // square), and fsync latency on a busy machine is unbounded. So each writer lives for
        // a few records only (a start record, a repair, a handful of appends), and files are
        // small enough that rotations (and kills inside them) still happen every few kills.
        let target = log_bytes(&dir) + rng.below(3_000);
        let split = 16 + rng.below(112);
        let mut command = Command::new(env!("CARGO_BIN_EXE_guard-log-writer"));
        command
            .arg(&dir)
            .args([
                "--fsync",
                "always",
                "--rotate-bytes",
                "2500",
                "--checkpoint-every",
                "8",
            ])
            .args(["--test-split-writes", &split.to_string(), "--print-seq"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if repair_by_writer {
            command.arg("--repair");
        }
        let mut child = command.spawn().unwrap();
        // The test's own repair holds the directory's flock for a moment, and a child that
        // another test of this binary forks in that moment inherits the lock until its exec:
        // a writer started right after may find it still held. Retry that start, a few times.
        let mut lock_retries = 0;
        // Condition-based: kill once the log has grown past a random size. Only a writer that
        // makes no progress at all for a long time fails the test: a loaded machine may stall
        // any single fsync for seconds.
        let mut size = log_bytes(&dir);
        let mut stalled_since = Instant::now();
        while size < target {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                if stderr.contains("is locked by another process") && lock_retries < 50 {
                    lock_retries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    child = command.spawn().unwrap();
                    continue;
                }
                panic!("iteration {iteration}: writer exited early ({status}): {stderr}");
            }
            assert!(
                stalled_since.elapsed() < Duration::from_secs(30),
                "iteration {iteration}: the writer wrote nothing for 30 s (log at {size} bytes, \
                 waiting for {target})"
            );
            std::thread::sleep(Duration::from_micros(200));
            let now = log_bytes(&dir);
            if now != size {
                (size, stalled_since) = (now, Instant::now());
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let mut printed = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut printed)
            .unwrap();
        // The last stdout line may itself be torn; only newline-terminated seqs count.
        let complete = printed.rfind('\n').map_or("", |end| &printed[..end]);
        durable.extend(complete.lines().map(|l| l.parse::<u64>().unwrap()));

        if forensic::layout::list_files(&dir).map_or(true, |f| f.is_empty()) {
            assert!(
                durable.is_empty(),
                "iteration {iteration}: records printed but no log file"
            );
            continue;
        }
        let report = forensic::verify(&dir).unwrap();
        assert_eq!(report.problem, None, "iteration {iteration}");
        // None when the very first writer was killed inside its start record: the log then
        // holds no complete record (only a torn tail), and nothing can have been printed.
        let last_seq = report.last_seq;
        if let Some(&max) = durable.last() {
            // seq is gap-free and the chain verified, so every printed seq up to last_seq exists.
            assert!(
                last_seq.is_some_and(|last| max <= last),
                "iteration {iteration}: seq {max} printed but the log ends at {last_seq:?}"
            );
        }
        // No writer here ever closes: every session the verifier sees ended without a stop,
        // and it says so, at the last complete record.
        if let Some(last) = last_seq {
            let session = report.ended_abruptly();
            assert_eq!(
                session.map(|session| session.last_seq),
                Some(last),
                "iteration {iteration}: {report:?}"
            );
        }
        repair_by_writer = iteration % 4 == 3;
        if report.torn_tail.is_some() {
            torn_tails += 1;
            if repair_by_writer {
                writer_repairs += 1;
                continue;
            }
            match forensic::repair(&dir).unwrap() {
                RepairOutcome::Repaired { report, torn, .. } => {
                    assert!(report.is_clean(), "iteration {iteration}: {report:?}");
                    assert_eq!(
                        report.last_seq, last_seq,
                        "iteration {iteration}: repair must not remove complete records"
                    );
                    assert!(torn.bytes > 0);
                }
                other => panic!("iteration {iteration}: {other:?}"),
            }
        }
    }
    let report = forensic::verify(&dir).unwrap();
    if report.torn_tail.is_some() {
        forensic::repair(&dir).unwrap();
    }
    let report = verify_ok(&dir);
    assert!(*durable.last().unwrap() <= report.last_seq.unwrap());
    let verdicts = python_verdicts(std::slice::from_ref(&dir));
    assert!(verdicts[0].ends_with(": OK"), "{verdicts:?}");
    eprintln!(
        "100 kills in {:?}: {} durable seqs, {} torn tails ({} repaired by the writer), {} files",
        started.elapsed(),
        durable.len(),
        torn_tails,
        writer_repairs,
        report.files
    );
    assert!(
        torn_tails > 0,
        "no kill produced a torn tail: the crash test is not exercising torn writes"
    );
}

/// Line-level edits of a copied log.
fn tampered(
    log: &Path,
    tag: &str,
    file_no: usize,
    mut edit: impl FnMut(&mut Vec<Vec<u8>>),
) -> TempDir {
    let copy = TempDir::new(tag);
    for (n, file) in log_files(log).iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let target = copy.path().join(file.file_name().unwrap());
        if n != file_no {
            std::fs::write(target, bytes).unwrap();
            continue;
        }
        let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        lines.pop(); // after the final newline
        edit(&mut lines);
        let mut out = lines.join(&b'\n');
        out.push(b'\n');
        std::fs::write(target, out).unwrap();
    }
    copy
}

fn file_name(n: u64) -> String {
    forensic::layout::file_name(n)
}

/// Asserts both verifiers reject `dir` at `file`:`line`.
fn assert_detected(dir: &Path, file: &str, line: u64) -> Defect {
    let report = forensic::verify(dir).unwrap();
    let problem = report
        .problem
        .unwrap_or_else(|| panic!("not detected: {dir:?}"));
    assert_eq!(
        problem.path.file_name().unwrap().to_str().unwrap(),
        file,
        "{problem}"
    );
    assert_eq!(problem.line, line, "{problem}");
    let verdict = &python_verdicts(&[dir.to_owned()])[0];
    assert!(
        verdict.contains(&format!("{file}:{line}:")),
        "python: {verdict}"
    );
    eprintln!("detected: {problem}");
    problem.defect
}

#[test]
fn tampering_is_detected_with_the_line_number() {
    let log = TempDir::new("tamper-src");
    write_log(log.path(), 60, Some(4000));
    assert!(log_files(log.path()).len() >= 3);
    verify_ok(log.path());

    let deleted = tampered(log.path(), "deleted", 0, |lines| {
        lines.remove(4);
    });
    let defect = assert_detected(deleted.path(), &file_name(0), 5);
    assert!(
        matches!(
            defect,
            Defect::SeqMismatch {
                found: 5,
                expected: 4
            }
        ),
        "{defect:?}"
    );

    let swapped = tampered(log.path(), "swapped", 1, |lines| lines.swap(2, 3));
    let defect = assert_detected(swapped.path(), &file_name(1), 3);
    assert!(matches!(defect, Defect::SeqMismatch { .. }), "{defect:?}");

    let pid_line = |lines: &Vec<Vec<u8>>| {
        let needle = b"\"pid\":1005";
        lines
            .iter()
            .position(|l| l.windows(needle.len()).any(|w| w == needle))
            .unwrap()
    };
    let mut edited_index = 0;
    let edited = tampered(log.path(), "edited", 0, |lines| {
        edited_index = pid_line(lines);
        let text = String::from_utf8(lines[edited_index].clone()).unwrap();
        lines[edited_index] = text.replace("\"pid\":1005", "\"pid\":1006").into_bytes();
    });
    let edited_line = edited_index as u64 + 1;
    assert_eq!(
        assert_detected(edited.path(), &file_name(0), edited_line),
        Defect::SealMismatch
    );

    // A careful forger also recomputes the edited line's own hash: the next line's prev exposes it.
    let resealed = tampered(log.path(), "resealed", 0, |lines| {
        let index = pid_line(lines);
        let text = String::from_utf8(lines[index].clone()).unwrap();
        let body = text[..text.len() - 75].replace("\"pid\":1005", "\"pid\":1006");
        let seal = forensic::record::to_hex(&forensic::record::sha256(body.as_bytes()));
        lines[index] = format!("{body},\"hash\":\"{seal}\"}}").into_bytes();
    });
    let defect = assert_detected(resealed.path(), &file_name(0), edited_line + 1);
    assert!(matches!(defect, Defect::PrevMismatch { .. }), "{defect:?}");

    // Whole lines cut from the end of a rotated file: the next file's rotate record says so.
    let truncated = tampered(log.path(), "truncated", 0, |lines| {
        lines.truncate(lines.len() - 2)
    });
    let defect = assert_detected(truncated.path(), &file_name(1), 1);
    match defect {
        Defect::RotateMismatch { detail } => assert!(detail.contains("was truncated"), "{detail}"),
        other => panic!("{other:?}"),
    }

    // Cut mid-line: the rotated file is torn, which is never a benign torn tail.
    let cut = TempDir::new("cut");
    for file in log_files(log.path()) {
        std::fs::copy(&file, cut.path().join(file.file_name().unwrap())).unwrap();
    }
    let first = cut.path().join(file_name(0));
    let len = std::fs::metadata(&first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let report = forensic::verify(cut.path()).unwrap();
    let problem = report.problem.unwrap();
    assert!(
        matches!(problem.defect, Defect::TornInnerFile { .. }),
        "{problem}"
    );
    assert!(matches!(
        forensic::repair(cut.path()).unwrap(),
        RepairOutcome::Refused(_)
    ));
    assert_eq!(
        std::fs::metadata(&first).unwrap().len(),
        len - 10,
        "repair must not touch it"
    );

    // A rotated file emptied and nothing after it: only the newest file may be empty.
    let emptied = TempDir::new("emptied");
    std::fs::copy(
        log.path().join(file_name(0)),
        emptied.path().join(file_name(0)),
    )
    .unwrap();
    for n in [1, 2] {
        std::fs::write(emptied.path().join(file_name(n)), b"").unwrap();
    }
    let problem = forensic::verify(emptied.path()).unwrap().problem.unwrap();
    assert_eq!(problem.path, emptied.path().join(file_name(1)), "{problem}");
    assert_eq!(problem.defect, Defect::EmptyInnerFile, "{problem}");
    let verdicts = python_verdicts(&[emptied.path().to_owned()]);
    assert!(
        verdicts[0].ends_with("BAD guard-000001.jsonl: empty but not the newest file"),
        "{verdicts:?}"
    );

    // A whole rotated file removed.
    let missing = TempDir::new("missing");
    for file in log_files(log.path())
        .iter()
        .filter(|f| !f.ends_with(file_name(1)))
    {
        std::fs::copy(file, missing.path().join(file.file_name().unwrap())).unwrap();
    }
    // (Files after the head may be missing only as a `dropped` record names them.)
    let problem = forensic::verify(missing.path()).unwrap().problem.unwrap();
    assert!(
        matches!(&problem.defect, Defect::UnrecordedGap { detail } if detail.contains(&file_name(1))),
        "{problem}"
    );
}

#[test]
fn writer_resumes_the_chain_and_handles_torn_tails_explicitly() {
    let log = TempDir::new("resume");
    write_log(log.path(), 10, None);
    let first = verify_ok(log.path());

    // Simulate a crash mid-append.
    let path = log.path().join(file_name(0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"seq\":99,\"boot_id\":\"x\",\"wa");
    std::fs::write(&path, &bytes).unwrap();
    let report = forensic::verify(log.path()).unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.torn_tail.as_ref().map(|t| t.bytes), Some(27));

    match LogWriter::create(log.path(), options(None), &start_info()) {
        Err(WriterError::TornTail { bytes: 27, .. }) => {}
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
    let mut repairing = options(None);
    repairing.repair_torn_tail = true;
    let mut writer = LogWriter::create(log.path(), repairing, &start_info()).unwrap();
    let seq = writer
        .append("oom_kill", Some("c1"), &json!({"pid": 7}))
        .unwrap();
    assert_eq!(
        seq,
        first.last_seq.unwrap() + 3,
        "start and repair records come first"
    );
    writer.close().unwrap();
    verify_ok(log.path());
    let kinds: Vec<String> = forensic::LogReader::open(log.path())
        .unwrap()
        .map(|e| e.unwrap().record.kind)
        .collect();
    assert_eq!(
        kinds[kinds.len() - 4..],
        ["start", "repair", "oom_kill", "stop"]
    );
}

#[test]
fn writer_resumes_into_an_empty_file_left_by_a_crash_during_rotation() {
    let log = TempDir::new("empty-rotated");
    write_log(log.path(), 30, Some(3000));
    let files = log_files(log.path());
    let next = log.path().join(file_name(files.len() as u64));
    std::fs::write(&next, b"").unwrap();
    verify_ok(log.path());
    let mut writer = LogWriter::create(log.path(), options(Some(3000)), &start_info()).unwrap();
    writer.append("fork", Some("c0"), &json!({})).unwrap();
    writer.close().unwrap();
    verify_ok(log.path());
    let first_of_new = forensic::LogReader::open(log.path())
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file.ends_with(next.file_name().unwrap()))
        .unwrap();
    assert_eq!(first_of_new.record.kind, "rotate");
}

#[test]
fn writer_reports_errors_and_refuses_bad_input() {
    let log = TempDir::new("errors");
    let mut writer = LogWriter::create(log.path(), options(Some(2000)), &start_info()).unwrap();
    assert!(matches!(
        writer.append("rotate", None, &json!({})),
        Err(WriterError::ReservedKind { .. })
    ));
    assert!(writer.append("Bad Kind", None, &json!({})).is_err());
    assert!(matches!(
        writer.append("fork", Some(""), &json!({})),
        Err(WriterError::EmptyContainer)
    ));
    // Occupy the next file name so rotation fails: the error surfaces and the writer stops.
    std::fs::create_dir(log.path().join(file_name(1))).unwrap();
    let error = (0..100)
        .map(|i| writer.append("fork", None, &json!({"i": i, "pad": "x".repeat(100)})))
        .find_map(Result::err)
        .expect("rotation must fail");
    assert!(
        matches!(error, WriterError::File(FileError::Open { .. })),
        "{error}"
    );
    assert!(matches!(
        writer.append("fork", None, &json!({})),
        Err(WriterError::Outage { .. })
    ));
    // A second writer on the same directory is refused while the first holds it.
    assert!(LogWriter::create(log.path(), options(None), &start_info()).is_err());
    drop(writer);
    assert_eq!(
        "interval=250".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_millis(250))
    );
    assert!("sometimes".parse::<FsyncPolicy>().is_err());

    // A damaged last record whose seq no seq can follow: refused, not wrapped to 0 (fuzzing
    // found the overflow).
    let maxed = TempDir::new("seq-max");
    std::fs::write(
        maxed.path().join(file_name(0)),
        format!("{{\"seq\":{}}}\n", u64::MAX),
    )
    .unwrap();
    let error = LogWriter::create(maxed.path(), options(None), &start_info())
        .err()
        .expect("a log ending at seq u64::MAX cannot be continued");
    assert!(
        matches!(&error, WriterError::Corrupt { line: 1, reason, .. } if reason.contains("no seq can follow")),
        "{error}"
    );
}

/// The `guard` binary of this workspace, built on demand (it lives in another package).
pub(crate) fn guard_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let bin = profile_dir.join("guard");
    let fresh = |bin: &Path| {
        bin.metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= exe.metadata().unwrap().modified().unwrap())
    };
    if !fresh(&bin) {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args([
            "build",
            "-p",
            "guard",
            "--features",
            "cli",
            "--bin",
            "guard",
            "--target-dir",
        ]);
        cargo.arg(profile_dir.parent().unwrap());
        if profile_dir.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().unwrap().success(),
            "building the guard binary failed"
        );
    }
    bin
}

fn guard_log(dir: &Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(guard_bin())
        .args(["log", "--dir"])
        .arg(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn cli_show_stats_verify_repair_and_follow() {
    let log = TempDir::new("cli");
    write_log(log.path(), 30, Some(3000));

    let (code, out) = guard_log(log.path(), &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");

    let (code, out) = guard_log(log.path(), &["show", "--container", "c1", "--kind", "fork"]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 10, "{out}");
    assert!(
        rows.iter()
            .all(|r| r.contains(" fork ") && r.contains(" c1 ")),
        "{out}"
    );

    let (_, out) = guard_log(log.path(), &["show", "--json", "--kind", "lost"]);
    let lost: forensic::Record = guard::forensic::serde_json::from_str(out.trim()).unwrap();
    assert_eq!(lost.payload["count"], 3);
    let (_, out) = guard_log(
        log.path(),
        &["show", "--json", "--since", "2200-01-01T00:00:00Z"],
    );
    assert_eq!(out, "");
    let (_, out) = guard_log(log.path(), &["show", "--json", "--since", "1h"]);
    assert_eq!(
        out.lines().count() as u64,
        forensic::verify(log.path()).unwrap().records
    );

    let (code, out) = guard_log(log.path(), &["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("fork") && out.contains("fork=10") && out.contains("checkpoint"),
        "{out}"
    );

    // Torn tail: exit 3, then --repair says what it removed and the log verifies.
    let newest = log_files(log.path()).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let clean_len = bytes.len();
    bytes.extend_from_slice(b"{\"seq\":");
    std::fs::write(&newest, &bytes).unwrap();
    let (code, out) = guard_log(log.path(), &["verify"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("torn final line"), "{out}");
    let (code, out) = guard_log(log.path(), &["verify", "--repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removed torn line") && out.contains("(7 bytes)"),
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len() as usize,
        clean_len
    );

    // Tampering: exit 1 with file and line; --repair refuses.
    let edited = tampered(log.path(), "cli-edit", 0, |lines| lines[3][20] ^= 1);
    let (code, out) = guard_log(edited.path(), &["verify", "--repair"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{}:4:", file_name(0))) && out.contains("not repaired"),
        "{out}"
    );

    // follow prints the tail, then records as they are appended, across a rotation.
    let mut follow = Command::new(guard_bin())
        .args(["log", "--dir"])
        .arg(log.path())
        .args([
            "follow",
            "--json",
            "-n",
            "2",
            "--interval-ms",
            "20",
            "--kind",
            "oom_kill",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut next_i = move || {
        let line = lines.next().unwrap().unwrap();
        let record: forensic::Record = guard::forensic::serde_json::from_str(&line).unwrap();
        record.payload["i"].as_u64().unwrap()
    };
    let mut writer = LogWriter::create(log.path(), options(Some(3000)), &start_info()).unwrap();
    let mut append = |i: u64| {
        writer
            .append(
                "oom_kill",
                Some("c2"),
                &json!({"i": i, "pad": "y".repeat(60)}),
            )
            .unwrap();
        writer.flush().unwrap();
    };
    // Record 0 arrives either in the backlog or live: once it is out, follow is running.
    append(0);
    assert_eq!(next_i(), 0);
    for i in 1..40 {
        append(i);
    }
    writer.close().unwrap();
    let seen: Vec<u64> = (1..40).map(|_| next_i()).collect();
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert_eq!(seen, (1..40).collect::<Vec<_>>());
    verify_ok(log.path());
}
