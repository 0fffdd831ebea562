//! Host-kernel test of the fork_denied signal: EAGAIN fork denials are counted exactly, with
//! the cause only inferred (the host has no kprobes; the guest suite sees the pids.max cause).
use std::{os::unix::process::CommandExt, process::Command};

use guard::{EventDetail, events::ForkDenied};
use guard_common::DenialCause;
use guard_tests::host::{root_or_skip, tally, watched_container};

use crate::STRESS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eagain_fork_denials_are_counted_with_inferred_cause() {
    if !root_or_skip("eagain_fork_denials_are_counted_with_inferred_cause") {
        return;
    }
    // The host has no pids controller: RLIMIT_NPROC for an unprivileged user gives the same
    // EAGAIN, which is exactly why the cause is only "inferred" without kprobes.
    let (cgroup, guard) = watched_container("nproc").await;
    let mut events = guard.subscribe(1024);

    let procs = std::ffi::CString::new(
        cgroup
            .path
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let mut command = Command::new(STRESS);
    command.args(["hold", "60"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
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
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let eagain = tally(&line, "eagain");
    assert!(
        eagain >= 40,
        "RLIMIT_NPROC=20 must refuse most of 60 forks: {line}"
    );

    let counters = guard.counters("nproc").await.unwrap();
    let bpf = counters.bpf.unwrap();
    assert_eq!(bpf.fork_denied, eagain, "{counters:?} vs {line}");
    assert_eq!(
        bpf.forks,
        tally(&line, "succeeded"),
        "{counters:?} vs {line}"
    );
    assert_eq!(counters.delivered.fork_denied, eagain, "{counters:?}");
    assert_eq!(bpf.fork_denied_pids_max, None, "no kprobes on the host");
    // Each denial reached the stream with its cause only inferred: EAGAIN, nothing more.
    let mut causes = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventDetail::ForkDenied(ForkDenied { cause, ret, .. }) = event.detail {
            assert_eq!(ret, -11, "{event:?}");
            causes.push(cause);
        }
    }
    assert_eq!(causes.len() as u64, eagain, "{causes:?}");
    assert!(
        causes.iter().all(|cause| *cause == DenialCause::Inferred),
        "{causes:?}"
    );
}
