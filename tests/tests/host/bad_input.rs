//! The bad-input cases that need root (docs/ERRORS.md lists them all; the others are in
//! guard/tests/bad_input.rs): a log directory on a full or read-only filesystem. Each mounts a
//! small tmpfs of its own and asserts the exact error, the counts, and that every record
//! acknowledged as written is in the file and verifies.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use guard::{
    Guard, GuardOptions, Tier,
    forensic::{self, FsyncPolicy, LogOptions, LogReader, LogWriter, StartInfo, WriterStats},
    sinks::event_log::EventLog,
};
use guard_tests::host::root_or_skip;
use serde_json::json;

/// A tmpfs mounted on a fresh directory, unmounted and removed on drop.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(tag: &str, options: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("guard-bad-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let data = CString::new(options).unwrap();
        let flags = if options.split(',').any(|o| o == "ro") {
            libc::MS_RDONLY
        } else {
            0
        };
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path; MNT_DETACH so a test that failed with files open still cleans up.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn options(fsync: FsyncPolicy) -> LogOptions {
    LogOptions {
        fsync,
        boot_id: Some("bad-input-test".to_string()),
        // These tests fill a small filesystem on purpose: a byte budget (by default a quarter
        // of the free space) would keep the log from ever meeting ENOSPC.
        budget: guard::forensic::ByteBudget::Unbounded,
        ..LogOptions::default()
    }
}

/// The seqs of the complete records in the log, in order.
fn seqs_in(dir: &Path) -> Vec<u64> {
    LogReader::open(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.record.seq)
        .collect()
}

/// Writes until the filesystem is full: the error names the file, ENOSPC and exactly the
/// accepted records that did not reach it; they are counted; every other accepted record is
/// in the file and the log verifies up to the failure.
#[test]
fn a_full_filesystem_is_an_error_naming_the_records_not_written() {
    if !root_or_skip("a_full_filesystem_is_an_error_naming_the_records_not_written") {
        return;
    }
    let tmpfs = Tmpfs::mount("enospc", "size=256k");
    let dir = tmpfs.path().join("log");
    // `never`: up to 64 KiB of accepted records wait in the buffer, the hardest case.
    let mut writer = LogWriter::create(
        &dir,
        options(FsyncPolicy::Never),
        &StartInfo::new(0, json!(null)),
    )
    .unwrap();
    let mut accepted = vec![0]; // the start record
    let error = loop {
        let i = accepted.len();
        match writer.append("fork", Some("c1"), &json!({"i": i, "pad": "x".repeat(300)})) {
            Ok(seq) => accepted.push(seq),
            Err(error) => break error,
        }
        assert!(i < 10_000, "256 KiB never filled up");
    };
    let failed_seq = *accepted.last().unwrap() + 1;

    let report = forensic::verify(&dir).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    let last_in_file = report.last_seq.unwrap();
    let file = dir.join("guard-000000.jsonl");
    assert_eq!(
        error.to_string(),
        format!(
            "cannot write to {}: No space left on device (os error 28); records seq {}..={failed_seq} ({}) are not in the log",
            file.display(),
            last_in_file + 1,
            failed_seq - last_in_file,
        )
    );
    // Nothing acknowledged is lost: the file holds exactly the accepted records up to the
    // failure, and the ones named in the error are the rest.
    let in_file = seqs_in(&dir);
    assert_eq!(in_file, (0..=last_in_file).collect::<Vec<_>>());
    assert!(accepted.iter().all(|seq| *seq <= failed_seq));
    assert_eq!(
        writer.stats(),
        WriterStats {
            write_errors: 1,
            records_not_written: failed_seq - last_in_file,
            records_over_budget: 0,
        }
    );

    // Later appends are refused during the outage, named as such, and counted.
    let refused = writer.append("fork", None, &json!({})).unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "the log cannot write to {} since seq {} ({error}); records are counted and it tries \
             again every second",
            file.display(),
            last_in_file + 1
        )
    );
    assert_eq!(
        writer.stats().records_not_written,
        failed_seq - last_in_file + 1
    );
    // Dropping the failed writer writes nothing more.
    drop(writer);
    assert_eq!(seqs_in(&dir), in_file);
    let after = forensic::verify(&dir).unwrap();
    assert_eq!((after.records, after.problem), (last_in_file + 1, None));
}

/// Through the event log, as the CLI uses it: `record` returns the error, later records are
/// refused, the stats count them and `close` reports the first error with the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_stops_the_event_log_loudly() {
    if !root_or_skip("a_full_filesystem_stops_the_event_log_loudly") {
        return;
    }
    let tmpfs = Tmpfs::mount("enospc-events", "size=128k");
    let dir = tmpfs.path().join("log");
    // Tier 0 loads no BPF: only the log is under test.
    let mut guard_options = GuardOptions::default();
    guard_options.max_tier = Tier::CgroupFilesOnly;
    let guard = Guard::start(guard_options).await.unwrap();
    let log = EventLog::start(&guard, &dir, options(FsyncPolicy::Always), json!(null)).unwrap();
    let mut last_ok = 0;
    let error = loop {
        match log
            .record("note", None, &json!({"pad": "y".repeat(500)}))
            .await
        {
            Ok(seq) => last_ok = seq,
            Err(error) => break error,
        }
        assert!(last_ok < 10_000, "128 KiB never filled up");
    };
    let file = dir.join("guard-000000.jsonl");
    let first = format!(
        "forensic log: cannot write to {}: No space left on device (os error 28); record seq {} is not in the log",
        file.display(),
        last_ok + 1
    );
    assert_eq!(error.to_string(), first);
    let refused = log.record("note", None, &json!({})).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "forensic log: the log cannot write to {} since seq {} ({}); records are counted and \
             it tries again every second",
            file.display(),
            last_ok + 1,
            first.trim_start_matches("forensic log: ")
        )
    );
    let stats = log.stats();
    assert_eq!(
        (
            stats.write_errors,
            stats.records_not_written,
            stats.failure.as_deref()
        ),
        (1, 2, Some(first.as_str()))
    );
    // The guard's own figures say it too, for its health and every report.
    let incomplete = stats.incomplete.expect("flagged");
    assert_eq!(
        (incomplete.first_missing_seq, incomplete.resumed),
        (last_ok + 1, false)
    );
    assert_eq!(guard.log_incomplete(), Some(incomplete));
    // `always`: every acknowledged record is on disk, and nothing else.
    assert_eq!(seqs_in(&dir), (0..=last_ok).collect::<Vec<_>>());
    // The close tries once more: the disk is still (nearly) full, so either nothing more fits
    // (the first error, with the count) or a gap did and the `stop` did not.
    let closed = log.close().await.unwrap_err().to_string();
    assert!(
        closed == format!("{first}; 2 record(s) were not written in all")
            || closed.contains("No space left on device"),
        "{closed}"
    );
    let report = forensic::verify(&dir).unwrap();
    assert_eq!(report.problem, None);
    assert!(report.last_seq >= Some(last_ok), "{report:?}");
    assert!(
        report.gaps <= 1 && report.missing_records <= 3,
        "{report:?}"
    );
}

/// A read-only filesystem: the log directory cannot be created, or its lock file cannot.
#[test]
fn a_read_only_log_directory_is_refused_naming_the_path() {
    if !root_or_skip("a_read_only_log_directory_is_refused_naming_the_path") {
        return;
    }
    // Root ignores permission bits, so a read-only mount is the honest way to test this.
    let tmpfs = Tmpfs::mount("rofs", "ro,size=64k");
    let start = StartInfo::new(0, json!(null));
    let nested = tmpfs.path().join("log");
    let error = LogWriter::create(&nested, options(FsyncPolicy::Always), &start)
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot create log directory {}: Read-only file system (os error 30)",
            nested.display()
        )
    );
    let error = LogWriter::create(tmpfs.path(), options(FsyncPolicy::Always), &start)
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot open lock file {}: Read-only file system (os error 30)",
            tmpfs.path().join("guard.lock").display()
        )
    );
}

/// The guest budget refuses what cannot hold it, before creating anything: the cgroup root
/// itself, and a hierarchy without the memory and pids controllers (this host's cgroup v2
/// offers neither, which is why enforcement runs in guests).
#[test]
fn the_budget_refuses_the_root_cgroup_and_a_hierarchy_without_controllers() {
    use guard::runtime::{Runtime, RuntimeError, RuntimeOptions};
    if !root_or_skip("the_budget_refuses_the_root_cgroup_and_a_hierarchy_without_controllers") {
        return;
    }
    let scratch = std::env::temp_dir().join(format!("guard-bad-budget-{}", std::process::id()));
    let options = |cgroup_root: &str| {
        let mut options = RuntimeOptions {
            state_root: scratch.join("state"),
            bundle_root: scratch.join("bundles"),
            // This host's own setting is not the test's to change.
            allow_unprivileged_bpf: true,
            ..RuntimeOptions::default()
        };
        options.spec.cgroup_root = cgroup_root.to_string();
        options
    };
    let error = Runtime::new(options("/"))
        .err()
        .map(|error| error.to_string());
    assert_eq!(
        error.as_deref(),
        Some(
            "the guest budget needs a parent cgroup of its own: the cgroup root \"/\" cannot hold \
             one (choose a cgroup root such as /guard, or run without the budget)"
        )
    );
    let hierarchy = guard::cgroup::Hierarchy::find().unwrap();
    let offered = hierarchy.controllers().unwrap();
    if ["memory", "pids"]
        .iter()
        .all(|wanted| offered.iter().any(|have| have == wanted))
    {
        println!("skipped the missing-controller case: this kernel's cgroup v2 offers both");
    } else {
        let parent = "/guard-bad-budget";
        match Runtime::new(options(parent)) {
            Err(RuntimeError::NoControllers { file, missing, .. }) => {
                assert_eq!(file, hierarchy.mount.join("cgroup.controllers"));
                assert!(
                    missing.contains("memory") || missing.contains("pids"),
                    "{missing}"
                );
            }
            other => panic!("expected NoControllers, got {:?}", other.err()),
        }
        assert!(
            !hierarchy
                .mount
                .join(parent.trim_start_matches('/'))
                .exists(),
            "nothing may be created before the refusal"
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
