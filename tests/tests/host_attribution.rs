//! Host-kernel tests of attribution and loss accounting: the task → container map follows
//! moves and exits, a forced ring-buffer overflow is accounted exactly and in-band, the rate
//! bound keeps counters exact, and EAGAIN fork denials are counted (cause inferred: the host has
//! no kprobes).
use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use guard::{
    EventDetail, Guard, GuardOptions, StreamOptions, event_log::EventLog, events::Cause,
    forensic::LogOptions,
};
use guard_tests::host::{
    TestCgroup, move_to_cgroup, root_or_skip, run_stress, tally, unbounded, watched_container,
};

const STRESS: &str = env!("CARGO_BIN_EXE_guard-stress");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_map_follows_moves_between_containers_and_exit() {
    if !root_or_skip("task_map_follows_moves_between_containers_and_exit") {
        return;
    }
    let first = TestCgroup::create("first");
    let second = TestCgroup::create("second");
    let elsewhere = TestCgroup::create("elsewhere");
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("first", &first.path).unwrap();
    guard.watch("second", &second.path).unwrap();

    // A task that waits on stdin until we close it.
    let mut task = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = task.id();
    assert_eq!(guard.task_container(pid).unwrap(), None);

    move_to_cgroup(pid, &first.path);
    assert_eq!(guard.task_container(pid).unwrap().as_deref(), Some("first"));
    move_to_cgroup(pid, &second.path);
    assert_eq!(
        guard.task_container(pid).unwrap().as_deref(),
        Some("second")
    );
    move_to_cgroup(pid, &elsewhere.path);
    assert_eq!(guard.task_container(pid).unwrap(), None);
    move_to_cgroup(pid, &first.path);
    assert_eq!(guard.task_container(pid).unwrap().as_deref(), Some("first"));

    drop(task.stdin.take());
    task.wait().unwrap();
    assert_eq!(
        guard.task_container(pid).unwrap(),
        None,
        "exit must forget the task"
    );
    let counters = guard.counters("first").await.unwrap();
    assert_eq!(counters.bpf.unwrap().exits, 1, "{counters:?}");
    assert_eq!(
        guard.counters("second").await.unwrap().bpf.unwrap().exits,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_children_are_tracked_and_forgotten() {
    if !root_or_skip("forked_children_are_tracked_and_forgotten") {
        return;
    }
    let (cgroup, guard) = watched_container("tracked").await;
    let mut events = guard.subscribe(10_000);

    // A shell that forks `sleep` only once told to (after it has been moved into the container):
    // the forked sleep must be in the task map while it lives, and gone after.
    let mut shell = Command::new("sh")
        .args(["-c", "read go; sleep 1000 & read stop; kill $!; wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    move_to_cgroup(shell.id(), &cgroup.path);
    let mut stdin = shell.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    let child = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("a fork event within 60 s")
            .expect("the event stream stays open");
        if let EventDetail::Fork { child_pid, .. } = event.event.detail {
            assert_eq!(event.container.as_deref(), Some("tracked"));
            break child_pid;
        }
    };
    assert_eq!(
        guard.task_container(child).unwrap().as_deref(),
        Some("tracked")
    );
    std::io::Write::write_all(&mut stdin, b"stop\n").unwrap();
    shell.wait().unwrap();
    assert_eq!(guard.task_container(child).unwrap(), None);
    let counters = guard.counters("tracked").await.unwrap();
    // The shell and its sleep: two exits, one fork.
    assert_eq!(counters.bpf.unwrap().forks, 1, "{counters:?}");
    assert_eq!(counters.bpf.unwrap().exits, 2, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_overflow_is_accounted_exactly_and_in_band() {
    if !root_or_skip("forced_overflow_is_accounted_exactly_and_in_band") {
        return;
    }
    // A one-page ring that is never drained during the storm must overflow.
    let options = GuardOptions {
        stream: StreamOptions {
            ring_bytes: 4096,
            wakeup_bytes: u64::MAX,
            max_events_per_sec: 0,
        },
        poll_interval: Duration::from_secs(3600),
        ..GuardOptions::default()
    };
    let cgroup = TestCgroup::create("overflow");
    let guard = Guard::start(options).await.unwrap();
    guard.watch("overflow", &cgroup.path).unwrap();
    let mut events = guard.subscribe(100_000);
    let log_dir = std::env::temp_dir().join(format!("guard-overflow-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&log_dir);
    let log = EventLog::start(
        &guard,
        &log_dir,
        LogOptions::default(),
        serde_json::Value::Null,
    )
    .unwrap();

    run_stress(STRESS, Some(&cgroup.path), &["fork", "3000"]);

    let counters = guard.counters("overflow").await.unwrap();
    let loss = guard.loss().await.unwrap();
    let bpf = counters.bpf.unwrap();
    let lost = loss.kernel_reserve_failures["fork"];
    assert_eq!(bpf.forks, 3000, "{counters:?}");
    assert!(lost > 0, "a 4 KiB ring must overflow: {loss:?}");
    assert_eq!(
        counters.delivered.forks + lost,
        bpf.forks,
        "{counters:?} {loss:?}"
    );

    let mut in_band_lost = 0;
    let mut in_band_forks = 0;
    while let Ok(event) = events.try_recv() {
        match event.event.detail {
            EventDetail::Lost { event_kind, count } => {
                assert_eq!(event_kind, "fork");
                in_band_lost += count;
            }
            EventDetail::Fork { .. } => in_band_forks += 1,
            _ => {}
        }
    }
    assert_eq!(in_band_forks, counters.delivered.forks);
    assert_eq!(in_band_lost, lost, "every loss must appear in-band");

    // The forensic log holds the same: every delivered fork, and the losses as `lost` records.
    log.close().await.unwrap();
    let report = guard::forensic::verify(&log_dir).unwrap();
    assert!(
        report.problem.is_none() && report.torn_tail.is_none(),
        "{report:?}"
    );
    let (mut logged_forks, mut logged_lost) = (0, 0);
    for entry in guard::forensic::LogReader::open(&log_dir).unwrap() {
        let entry = entry.unwrap();
        match entry.record.kind.as_str() {
            "fork" => logged_forks += 1,
            "lost" => logged_lost += entry.record.payload["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert_eq!(logged_forks, counters.delivered.forks);
    assert_eq!(logged_lost, lost);
    std::fs::remove_dir_all(&log_dir).unwrap();
    // The per-CPU sequence gaps see the same losses, except those after a CPU's last delivered
    // record.
    assert!(loss.reader.sequence_gaps <= lost, "{loss:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_bound_keeps_counters_exact() {
    if !root_or_skip("rate_bound_keeps_counters_exact") {
        return;
    }
    let options = GuardOptions {
        stream: StreamOptions {
            max_events_per_sec: 100,
            ..StreamOptions::default()
        },
        ..GuardOptions::default()
    };
    let cgroup = TestCgroup::create("throttled");
    let guard = Guard::start(options).await.unwrap();
    guard.watch("throttled", &cgroup.path).unwrap();

    run_stress(STRESS, Some(&cgroup.path), &["fork", "1000"]);

    let counters = guard.counters("throttled").await.unwrap();
    let bpf = counters.bpf.unwrap();
    assert_eq!(bpf.forks, 1000, "{counters:?}");
    assert!(bpf.events_throttled > 0, "{counters:?}");
    assert_eq!(
        counters.delivered.forks + bpf.events_throttled,
        1000,
        "{counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eagain_fork_denials_are_counted_with_inferred_cause() {
    if !root_or_skip("eagain_fork_denials_are_counted_with_inferred_cause") {
        return;
    }
    // The host has no pids controller: RLIMIT_NPROC for an unprivileged user gives the same
    // EAGAIN, which is exactly why the cause is only "inferred" without kprobes.
    let (cgroup, guard) = watched_container("nproc").await;

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
    let _ = Cause::Inferred;
}
