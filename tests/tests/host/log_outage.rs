//! A forensic log whose filesystem fills mid-run never costs the report: `guard watch` with its
//! log on a small tmpfs of its own, a fork storm in the watched cgroup, a filler file that
//! takes the last byte, then (in the first test) the filler removed. The report still comes
//! out on stdout, flagged with the missing seqs; the exit status is 6; the log resumes with a
//! `gap` record naming exactly the range and verifies (`guard log verify` and the independent
//! `tests/verify_log.py`).
//!
//! `GUARD_BIN=/path/to/guard` runs the same tests against another build (e.g. main's, to see
//! them fail where a full log cost the report).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use guard_tests::host::{TestCgroup, root_or_skip, run_stress};
use serde_json::Value;

use crate::{STRESS, bad_input::Tmpfs, forensic_log::guard_bin};

fn bin() -> PathBuf {
    std::env::var_os("GUARD_BIN").map_or_else(guard_bin, PathBuf::from)
}

/// Waits up to `secs` for `condition`, polling.
fn wait_for(what: &str, secs: u64, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `guard watch` of one cgroup with its log in `log` and its reports as JSON, its stderr
/// gathered as it comes.
struct Watch {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(cgroup: &Path, log: &Path) -> Self {
        let mut child = Command::new(bin())
            // The writer's failed retries are debug lines: the test waits for one.
            .args(["--log-level", "warn,guard::forensic::writer=debug"])
            .args(["watch", "--json", "--max-events-per-sec", "0", "--cgroup"])
            .arg(format!("storm={}", cgroup.display()))
            .arg("--log")
            .arg(log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("guard runs");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let gathered = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = gathered.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Self {
            child,
            stderr,
            reader,
        }
    }

    fn said(&self, text: &str) -> bool {
        self.stderr.lock().unwrap().contains(text)
    }

    /// SIGINT, then everything it printed.
    fn interrupt(mut self) -> (Output, String) {
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.stderr = None;
        let output = self.child.wait_with_output().unwrap();
        self.reader.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (output, stderr)
    }
}

/// Forks in `cgroup` until dropped; counts the rounds done.
struct Storm {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Storm {
    fn start(cgroup: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (cgroup, stopping, done) = (cgroup.to_owned(), stop.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                run_stress(STRESS, Some(&cgroup), &["fork", "200"]);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    /// Waits for `n` more rounds.
    fn rounds(&self, n: u64) {
        let target = self.rounds.load(Ordering::Relaxed) + n;
        wait_for("the fork storm", 60, || {
            self.rounds.load(Ordering::Relaxed) >= target
        });
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
}

fn log_text(log: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(log)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// The log's `gap` records' payloads.
fn gaps(log: &Path) -> Vec<Value> {
    log_text(log)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["kind"] == "gap")
        .map(|record| record["payload"].clone())
        .collect()
}

fn verify(log: &Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["log", "--dir"])
        .arg(log)
        .arg("verify")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn python_verify(log: &Path) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/verify_log.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(log)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "verify_log.py: {text}");
    text
}

/// Runs the storm against a watch whose log fills; `resume` removes the filler afterwards.
/// Returns the watch's output, its stderr and the log's directory.
fn full_log_run(tag: &str, tmpfs: &Tmpfs, resume: bool) -> (Output, String, PathBuf) {
    let cgroup = TestCgroup::create(tag);
    let log = tmpfs.path().join("log");
    let watch = Watch::start(&cgroup.path, &log);
    wait_for("guard watching", 60, || watch.said("guard: watching"));
    let storm = Storm::start(&cgroup.path);
    storm.rounds(2);
    assert!(
        log_text(&log).contains("\"kind\":\"fork\""),
        "forks are logged"
    );
    let filler = tmpfs.path().join("filler");
    fill(&filler);
    wait_for("the log's outage", 60, || {
        watch.said("the forensic log cannot write")
            || watch.said("the forensic log stopped writing")
    });
    // Records keep coming, and are counted as missing; the writer's retries fail meanwhile.
    storm.rounds(1);
    if std::env::var_os("GUARD_BIN").is_none() {
        wait_for("a failed retry", 60, || watch.said("still cannot write"));
    }
    storm.rounds(1);
    if resume {
        std::fs::remove_file(&filler).unwrap();
        wait_for("the gap record", 60, || !gaps(&log).is_empty());
        storm.rounds(2);
    }
    drop(storm);
    let (output, stderr) = watch.interrupt();
    (output, stderr, log)
}

/// The filesystem fills mid-run, then space returns: the report comes out flagged with the
/// gap's range, the exit status is 6, and the log resumed with a gap naming exactly that range.
#[test]
fn a_log_that_fills_then_resumes_keeps_the_report_and_names_its_gap() {
    if !root_or_skip("a_log_that_fills_then_resumes_keeps_the_report_and_names_its_gap") {
        return;
    }
    let tmpfs = Tmpfs::mount("outage-resume", "size=1m");
    let (output, stderr, log) = full_log_run("outage-resume", &tmpfs, true);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reports: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no report on stdout ({e}): {stdout:?}\nstderr:\n{stderr}"));
    let report = &reports[0];
    assert!(report["counters"].is_object(), "{report}");
    let flagged = &report["loss"]["log_incomplete"];
    let gaps = gaps(&log);
    assert_eq!(gaps.len(), 1, "one outage, one gap: {gaps:?}");
    let gap = &gaps[0];
    eprintln!("the gap: {gap}\nthe report's flag: {flagged}");
    let (first, last) = (
        gap["first_seq"].as_u64().unwrap(),
        gap["last_seq"].as_u64().unwrap(),
    );
    assert!(last >= first, "{gap}");
    assert_eq!(flagged["first_missing_seq"], first, "{flagged}");
    assert_eq!(flagged["last_missing_seq"], last, "{flagged}");
    assert_eq!(flagged["resumed"], true, "{flagged}");
    assert!(
        flagged["reason"]
            .as_str()
            .is_some_and(|r| r.contains("No space left on device")),
        "{flagged}"
    );
    let by_kind: u64 = gap["kinds"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_kind, last - first + 1, "{gap}");
    // The storm's forks, as records or (past a burst's first 8) in summaries.
    let storm_records = ["fork", "summary"]
        .iter()
        .filter_map(|kind| gap["kinds"][kind].as_u64())
        .sum::<u64>();
    assert!(storm_records > 0, "{gap}");
    assert!(
        gap["retries"].as_u64().unwrap() >= 1,
        "the backoff was tried: {gap}"
    );
    assert_eq!(output.status.code(), Some(6), "stderr:\n{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(
        last_line.contains(&format!("log incomplete from seq {first}"))
            && last_line.contains("exit status 6"),
        "last stderr line: {last_line}"
    );
    // The records around the gap: the one before it is first - 1, the gap is last + 1.
    let seqs: Vec<u64> = log_text(&log)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let at = seqs.iter().position(|&s| s == last + 1).unwrap();
    assert_eq!(
        seqs[at - 1],
        first - 1,
        "the gap follows the last line written"
    );
    let (code, said) = verify(&log);
    assert_eq!(code, 0, "guard log verify: {said}");
    assert!(said.contains("1 gap record(s)"), "{said}");
    assert!(python_verify(&log).contains(": OK"));
}

/// The filesystem stays full: the report still comes out, flagged (no known end), status 6;
/// what was written verifies.
#[test]
fn a_log_that_stays_full_still_prints_the_report() {
    if !root_or_skip("a_log_that_stays_full_still_prints_the_report") {
        return;
    }
    let tmpfs = Tmpfs::mount("outage-full", "size=1m");
    let (output, stderr, log) = full_log_run("outage-full", &tmpfs, false);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reports: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no report on stdout ({e}): {stdout:?}\nstderr:\n{stderr}"));
    let flagged = &reports[0]["loss"]["log_incomplete"];
    assert!(flagged["first_missing_seq"].as_u64().is_some(), "{flagged}");
    assert_eq!(flagged["resumed"], false, "{flagged}");
    assert_eq!(flagged["last_missing_seq"], Value::Null, "{flagged}");
    assert_eq!(output.status.code(), Some(6), "stderr:\n{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(
        last_line.contains("log incomplete from seq") && last_line.contains("still not writing"),
        "last stderr line: {last_line}"
    );
    // Everything written is whole (no torn line), though the session never wrote its stop.
    let (code, said) = verify(&log);
    assert_eq!(code, 4, "guard log verify: {said}");
    assert!(python_verify(&log).contains(": OK"));
}

/// An events file that cannot be written (`--events /dev/full`) never costs the report either:
/// it comes out on stdout, and the status (6) and the last stderr line say why the evidence is
/// incomplete.
#[test]
fn a_failing_events_file_still_prints_the_report() {
    if !root_or_skip("a_failing_events_file_still_prints_the_report") {
        return;
    }
    let cgroup = TestCgroup::create("outage-events");
    let child = Command::new(bin())
        .args(["watch", "--json", "--events", "/dev/full", "--cgroup"])
        .arg(format!("storm={}", cgroup.path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guard runs");
    let mut watch = Watch {
        stderr: Arc::new(Mutex::new(String::new())),
        reader: std::thread::spawn(|| {}),
        child,
    };
    let pipe = watch.child.stderr.take().unwrap();
    let gathered = Arc::clone(&watch.stderr);
    watch.reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut all = gathered.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    wait_for("guard watching", 60, || watch.said("guard: watching"));
    let storm = Storm::start(&cgroup.path);
    storm.rounds(2);
    drop(storm);
    let (output, stderr) = watch.interrupt();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reports: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no report on stdout ({e}): {stdout:?}\nstderr:\n{stderr}"));
    assert!(
        reports[0]["counters"]["delivered"]["forks"].as_u64() > Some(0),
        "{reports}"
    );
    assert_eq!(output.status.code(), Some(6), "stderr:\n{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(
        last_line.contains("events file incomplete") && last_line.contains("/dev/full"),
        "last stderr line: {last_line}"
    );
}
