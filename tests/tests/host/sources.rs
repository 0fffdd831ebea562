//! Host-kernel tests of the kernel sources that need no tracing (`guard::sources`): audit's
//! fork denials and taskstats' exit records, each checked against what the workload itself
//! counted. Audit is one global receiver, so its checks run in one test.
use std::{
    os::unix::process::CommandExt,
    process::Command,
    time::{Duration, Instant},
};

use guard::sources::{
    audit::{AuditError, AuditSource, Denial},
    taskstats::{TaskExit, TaskstatsSource},
};
use guard_tests::host::{root_or_skip, tally};

use crate::STRESS;

/// How long a record may take to arrive (the kernel sends at once; the host is loaded).
const ARRIVAL: Duration = Duration::from_secs(20);

/// Reads denials until `pid` has `want` of them (or the time is up), then a little more, so a
/// duplicate would show.
fn denials_of(source: &mut AuditSource, pid: u32, want: usize) -> Vec<Denial> {
    let mut found = Vec::new();
    let deadline = Instant::now() + ARRIVAL;
    let mut settle = None;
    while Instant::now() < deadline {
        let batch = source.read_batch().unwrap();
        assert!(batch.malformed.is_empty(), "{:?}", batch.malformed);
        found.extend(batch.denials.into_iter().filter(|denial| denial.pid == pid));
        if found.len() >= want && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(500));
        }
        if settle.is_some_and(|at| Instant::now() > at) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    found
}

#[test]
fn audit_names_each_denied_fork_once() {
    if !root_or_skip("audit_names_each_denied_fork_once") {
        return;
    }
    if !std::path::Path::new("/proc/self/loginuid").exists() {
        eprintln!("skipping audit_names_each_denied_fork_once: the kernel has no AUDITSYSCALL");
        return;
    }
    let mut source = AuditSource::open().expect("guard becomes the audit daemon");
    // A second receiver is refused by name, and leaves the first one working.
    match AuditSource::open() {
        Err(AuditError::DaemonPresent { pid }) => assert_eq!(pid, std::process::id()),
        other => panic!(
            "a second audit source must be refused, got {:?}",
            other.err()
        ),
    }

    // RLIMIT_NPROC for an unprivileged user: clone fails with EAGAIN past it.
    let mut command = Command::new(STRESS);
    command.args(["hold", "60"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 20,
                rlim_max: 20,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let eagain = tally(&line, "eagain");
    assert!(
        eagain >= 40,
        "RLIMIT_NPROC=20 must refuse most of 60: {line}"
    );

    let denials = denials_of(&mut source, pid, eagain as usize);
    assert_eq!(
        denials.len() as u64,
        eagain,
        "one denial per refused clone of pid {pid}: {line}; {denials:?}"
    );
    for denial in &denials {
        assert_eq!(denial.ppid, std::process::id(), "{denial:?}");
        assert_eq!(denial.comm, "guard-stress", "{denial:?}");
        assert_eq!(denial.syscall, libc::SYS_clone as u32, "{denial:?}");
    }
    let mut serials: Vec<u64> = denials.iter().map(|denial| denial.serial).collect();
    serials.dedup();
    assert_eq!(serials.len(), denials.len(), "one serial per attempt");

    // The kernel's lost counter comes back with a status reply, in-band.
    source.request_status().unwrap();
    let batch = source.read_batch().unwrap();
    assert_eq!(batch.loss.kernel_lost, 0, "{:?}", batch.loss);
    assert_eq!(batch.loss.enobufs, 0, "{:?}", batch.loss);
    drop(source);

    // Dropped: the rule is gone and the daemon's place free, so a new source opens.
    drop(AuditSource::open().expect("the place was given back"));
}

#[test]
fn taskstats_gives_each_exit_its_record() {
    if !root_or_skip("taskstats_gives_each_exit_its_record") {
        return;
    }
    let mut source = TaskstatsSource::open().expect("registered for every CPU's exits");
    let mut pids = Vec::new();
    for _ in 0..5 {
        let child = Command::new("/bin/true").spawn().unwrap();
        pids.push(child.id());
        assert!(child.wait_with_output().unwrap().status.success());
    }
    let mut found: Vec<TaskExit> = Vec::new();
    let deadline = Instant::now() + ARRIVAL;
    while Instant::now() < deadline && found.len() < pids.len() {
        let batch = source.read_batch().unwrap();
        assert!(batch.malformed.is_empty(), "{:?}", batch.malformed);
        found.extend(
            batch
                .exits
                .into_iter()
                .filter(|exit| pids.contains(&exit.pid)),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen: Vec<u32> = found.iter().map(|exit| exit.pid).collect();
    seen.sort_unstable();
    let mut want = pids.clone();
    want.sort_unstable();
    assert_eq!(seen, want, "one record per exited child: {found:?}");
    for exit in &found {
        assert_eq!(exit.comm, "true", "{exit:?}");
        assert_eq!(exit.ppid, std::process::id(), "{exit:?}");
        assert_eq!(exit.tgid, Some(exit.pid), "{exit:?}");
        assert_eq!(exit.exit_code, 0, "{exit:?}");
    }
    assert_eq!(
        std::fs::read_to_string(guard::sources::taskstats::DELAYACCT_SYSCTL)
            .unwrap()
            .trim(),
        "1",
        "delay accounting is on while the source is open"
    );
}
