//! What a hostile container tries against the guard, on every guest kernel: `guard-tamper`
//! inside a container that `guard run` started the default way, and the same attempts by the
//! guest's root (the control, which must succeed at each: the attempts are real).
//!
//! The guest has a vsock device whose port-[`PORT`] connections reach a listener of this test
//! on the host, as the host's evidence port would: the control connects there, the container
//! must not even get a vsock socket.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::net::UnixListener,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use guard_tests::{
    guest::{assert_log_verifies, json_file, unpack_log},
    per_kernel,
};
use xtask::vm::{self, VmConfig, VmResult, VsockConfig};

use crate::runtime::{PRELUDE, file, log_records, requirements};

/// The port the control connects to (any port: the host listens there).
const PORT: u32 = 7001;

/// Accepts connections on a Unix socket (where a guest's vsock connections to a port arrive)
/// and counts them, until dropped.
pub(crate) struct HostListener {
    accepted: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostListener {
    pub(crate) fn bind(path: &std::path::Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (accepted, stop) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = std::thread::spawn({
            let (accepted, stop) = (accepted.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        // Hung up at once: the attempt is the connection itself.
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        });
        Self {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A short scratch folder for a guest's vsock sockets (Unix socket paths hold 107 bytes).
pub(crate) fn vsock_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gt-{}-{}-{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Inside a guarded container (its init and a process exec'd into it), every attempt on its
/// own or its parent's limits, on the log, on the kernel's BPF and on the host's evidence port
/// fails, and for the reason the design
/// gives (read-only cgroupfs, cgroup namespace, a log outside the rootfs, no CAP_SYS_ADMIN or
/// CAP_BPF, the seccomp rule: EPERM for AF_VSOCK and io_uring, where a guest without vsock would
/// say EAFNOSUPPORT). Two-sided: the same attempts by the guest's root all succeed, its vsock
/// connection reaches the host. The guard's record of the container stays true: limits read
/// back unchanged, no fault or loss, a log that verifies.
fn container_cannot_tamper(kernel: &str) {
    let Some(guard) = requirements(kernel) else {
        return;
    };
    let tamper = guard.with_file_name("guard-tamper");
    assert!(
        tamper.is_file(),
        "no {} (built with guard-stress)",
        tamper.display()
    );
    let scratch = vsock_dir("tamper");
    let vsock = VsockConfig::in_dir(&scratch);
    let host = HostListener::bind(&vsock.host_socket(PORT));
    let scenario = format!(
        r#"{PRELUDE}
        mkdir -p /tmp/rootfs/lib /tmp/rootfs/lib64
        cp -a /lib/. /tmp/rootfs/lib/ && cp -a /lib64/. /tmp/rootfs/lib64/
        cp /bin/guard-tamper /tmp/rootfs/bin/
        log=/results/tamper-log
        attempts="guard-tamper --cgroup /sys/fs/cgroup --log-file $log/guard-000000.jsonl --vsock-port {PORT}"
        # The init makes the attempts, then waits for the exec'd process (libcontainer's exec
        # builds a spec of its own: it must carry the filter too) to make them again.
        guard run --no-budget --id tamper --rootfs /tmp/rootfs --memory 24M --pids 40 --quiet --log $log \
            --report /results/tamper.json --exec "$attempts > /exec.out; echo > /go" -- \
            sh -c "$attempts; n=0; while [ ! -e /go ] && [ \$n -lt 1200 ]; do n=\$((n+1)); sleep 0.05; done" \
            > /results/inside.out 2> /results/tamper.err
        echo "tamper exit=$?"
        cp /tmp/rootfs/exec.out /results/exec.out
        # The control: the guest's root, in a scratch cgroup whose parent has limits too.
        mkdir -p /sys/fs/cgroup/scratch
        echo "+memory +pids" > /sys/fs/cgroup/scratch/cgroup.subtree_control
        mkdir -p /sys/fs/cgroup/scratch/child
        guard-tamper --cgroup /sys/fs/cgroup/scratch/child --log-file $log/guard-000000.jsonl \
            --vsock-port {PORT} > /results/outside.out
        echo "control exit=$?"
        "#
    );
    let config = VmConfig::shell(kernel, &scenario)
        .binary(&guard)
        .binary(&tamper)
        .vsock(vsock)
        .timeout(Duration::from_secs(300))
        .label(format!("runtime-tamper-{kernel}"));
    let outcome = vm::run(&config).expect("the harness itself failed");
    let done = match &outcome.result {
        VmResult::Completed(done) => done.clone(),
        other => panic!(
            "runtime-tamper-{kernel}: guest did not complete: {other}\n(run folder {})",
            outcome.run_dir.display()
        ),
    };
    let out = done.stdout_str();
    assert!(
        out.contains("tamper exit=0"),
        "{out}\n{}",
        file(&done, "tamper.err")
    );
    assert!(out.contains("control exit=0"), "{out}");
    let attempts = |name: &str| -> BTreeMap<String, (bool, String)> {
        file(&done, name)
            .lines()
            .filter(|line| line.starts_with(r#"{"attempt""#))
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|v| {
                let error = v["error"].as_str().unwrap_or_default().to_string();
                (
                    v["attempt"].as_str().unwrap().to_string(),
                    (v["ok"] == true, error),
                )
            })
            .collect()
    };
    let inside = attempts("inside.out");
    let exec = attempts("exec.out");
    let outside = attempts("outside.out");
    eprintln!("{kernel}: inside the container {inside:#?}\nthe guest's root {outside:#?}");
    // Each attempt, and why it must fail inside.
    let expected = [
        ("write own memory.max", "Read-only file system"),
        ("write own pids.max", "Read-only file system"),
        ("write own cgroup.procs", "Read-only file system"),
        // The cgroup namespace: the parent is not in the container's view at all.
        ("write parent memory.max", "No such file or directory"),
        ("write parent pids.max", "No such file or directory"),
        ("mount cgroup2", "Operation not permitted"),
        ("remount cgroupfs read-write", "Operation not permitted"),
        ("open the log", "No such file or directory"),
        ("open the log through /proc/PID/root", "not reachable"),
        ("bpf map create", "Operation not permitted"),
        ("bpf prog load", "Operation not permitted"),
        // The seccomp rule (EPERM): the socket is refused before any connect.
        ("vsock socket", "socket(AF_VSOCK): Operation not permitted"),
        (
            "vsock connect to the host",
            "socket(AF_VSOCK): Operation not permitted",
        ),
        ("io_uring setup", "io_uring_setup: Operation not permitted"),
    ];
    for (who, made) in [("the init", &inside), ("an exec'd process", &exec)] {
        assert_eq!(made.len(), expected.len(), "{who}: {made:#?}");
        for (attempt, reason) in expected {
            let (ok, error) = &made[attempt];
            assert!(!ok, "in the container, {who}'s `{attempt}` succeeded");
            assert!(
                error.contains(reason),
                "{who}'s `{attempt}` failed for another reason: {error}"
            );
        }
    }
    for (attempt, _) in expected {
        assert_eq!(
            outside[attempt],
            (true, String::new()),
            "the control could not `{attempt}`: the attempt itself is broken"
        );
    }
    // The host saw the control's connection, and only that one.
    assert_eq!(host.accepted(), 1, "connections at the host's port");

    // What the guard recorded is true: the limits the kernel held at the end are the ones
    // asked for, nothing faulted or got lost, and the log verifies.
    let report = json_file(&done, "tamper.json");
    let read_back = &report["guard"]["applied"];
    assert_eq!(
        read_back["memory_max"],
        serde_json::json!({"value": 24 << 20}),
        "{read_back:#}"
    );
    assert_eq!(
        read_back["pids_max"],
        serde_json::json!({"value": 40}),
        "{read_back:#}"
    );
    assert_ne!(
        report["guard"]["reconciliation"]["verdict"], "violated",
        "{report:#}"
    );
    assert_eq!(
        report["guard"]["loss"]["reader_health"]["faults"], 0,
        "{:#}",
        report["guard"]["loss"]
    );
    let log = unpack_log(&done, "tamper-log", kernel);
    let records = log_records(&log);
    let kinds: BTreeSet<&str> = records.iter().filter_map(|r| r["kind"].as_str()).collect();
    for unexpected in ["lost", "reader_fault", "oom_victim", "fork_denied"] {
        assert!(
            !kinds.contains(unexpected),
            "{unexpected} in the log: {kinds:?}"
        );
    }
    assert_log_verifies(&log);
    let _ = std::fs::remove_dir_all(&log);
    drop(host);
    let _ = std::fs::remove_dir_all(&scratch);
}

per_kernel!(container_cannot_tamper);
