//! Guest VM tests: boot every guest kernel of `per_kernel!` (Debian's 6.1 and 6.12 on the PC
//! machine, guard's lean and lean-guard on microvm) under QEMU with xtask's harness and assert
//! from the host on what the guest sends back.
//!
//! Requirements: `cargo xtask setup` (QEMU, busybox-static, the kernels in
//! `<target>/guest-kernels`, where `<target>` is `$CARGO_TARGET_DIR` or the workspace's
//! `target/`; `GUARD_KERNELS_DIR` overrides). Under CI (`CI` set and not `false`/`0`) a missing
//! requirement fails the test with the reason: the guest suite is never skipped there.
//! Elsewhere it skips with a printed reason.
//!
//! Binaries: `guard-stress` comes from this crate (`CARGO_BIN_EXE_guard-stress`, built by
//! cargo for these tests). `guard` comes from `$GUARD_BIN_DIR` when set (`cargo xtask test`
//! builds release binaries and sets it), else from `<target>/release` if built there; the
//! one test that uses it checks guard-stress alone without it.
//!
//! Each guest boots in ~3–5 s of TCG here (PVH vmlinux); timeouts are generous (300 s): CI machines
//! are noisy and TCG is 10–50× slower than hardware.

use std::path::PathBuf;
use std::time::Duration;

use guard_tests::{guest::facts, per_kernel};
use xtask::vm::{self, Completed, VmConfig, VmResult};

/// Checks the harness can boot `k`: skips (None) outside CI, fails under CI.
fn kernel(k: &str) -> Option<String> {
    vm::kernel_or_skip(k)
}

fn run(config: VmConfig) -> vm::VmOutcome {
    let outcome = vm::run(&config).expect("the harness itself failed");
    eprintln!(
        "{}: {} | boot {:?} | scenario {:?} | wall {:?}",
        config.label.as_deref().unwrap_or(&config.kernel),
        match &outcome.result {
            VmResult::Completed(c) => format!("completed ({})", c.exit_code),
            VmResult::Died { .. } => "died".into(),
            VmResult::TimedOut { .. } => "timed out".into(),
        },
        outcome.boot_time,
        outcome.scenario_time,
        outcome.wall_time
    );
    outcome
}

/// Runs a shell scenario that must complete; returns its results.
fn shell(kernel: &str, label: &str, script: &str) -> Completed {
    let outcome = run(VmConfig::shell(kernel, script).label(format!("{label}-{kernel}")));
    let done = outcome.expect_completed().clone();
    assert_eq!(
        done.exit_code,
        0,
        "scenario failed in the {kernel} guest\nstdout:\n{}\nstderr:\n{}",
        done.stdout_str(),
        done.stderr_str()
    );
    done
}

/// The guest boots, runs as the design says (tmpfs root that pivot_root accepts, cgroup2 with
/// memory and pids delegated, tracefs, oom_score_adj -1000) and reports its kernel.
fn boots_with_cgroups_and_tracefs(k: &str) {
    let Some(k) = kernel(k) else { return };
    let k = k.as_str();
    let done = shell(
        k,
        "boot",
        r#"
        cat /proc/version
        echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
        echo "subtree: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
        echo "oom_score_adj: $(cat /proc/self/oom_score_adj)"
        echo "root: $(awk '$2 == "/" {print $3}' /proc/mounts)"
        test -r /sys/kernel/tracing/events/sched/sched_process_fork/format && echo tracefs: ok
        grep -qw tracefs /proc/filesystems || echo tracefs: not in this kernel
        # A container runtime pivot_roots; that fails on an initramfs root.
        unshare -m sh -c 'mkdir -p /tmp/nr && mount -t tmpfs nr /tmp/nr && mkdir /tmp/nr/old &&
            cd /tmp/nr && pivot_root . old && echo pivot_root: ok'
        "#,
    );
    let out = done.stdout_str();
    let facts = facts(k);
    let version = format!("Linux version {}.", facts.release);
    assert!(out.contains(&version), "expected {version:?} in:\n{out}");
    let controllers = out
        .lines()
        .find_map(|l| l.strip_prefix("controllers: "))
        .unwrap_or_default();
    for controller in ["memory", "pids"] {
        assert!(controllers.split(' ').any(|c| c == controller), "{out}");
    }
    assert!(out.contains("subtree: memory pids"), "{out}");
    assert!(out.contains("oom_score_adj: -1000"), "{out}");
    assert!(out.contains("root: tmpfs"), "{out}");
    // Tracing is what lifts guard to tier 2: the lean kernel has none, by design.
    if facts.bpf() {
        assert!(out.contains("tracefs: ok"), "{out}");
    } else {
        assert!(out.contains("tracefs: not in this kernel"), "{out}");
    }
    assert!(
        out.contains("pivot_root: ok"),
        "{out}\nstderr:\n{}",
        done.stderr_str()
    );
}

per_kernel!(boots_with_cgroups_and_tracefs);

/// A fork loop in a cgroup with pids.max=64 is stopped by the kernel, and the kernel's own
/// counter (`pids.events max`) says so. Pure busybox: no guard involved yet.
fn pids_max_stops_a_fork_loop(k: &str) {
    let Some(k) = kernel(k) else { return };
    let k = k.as_str();
    let done = shell(
        k,
        "pids",
        r#"
        set -e
        cg=/sys/fs/cgroup/t
        mkdir $cg
        echo 64 > $cg/pids.max
        # The loop's shell joins the cgroup, then forks 200 sleepers; ash gives up at the
        # first fork the kernel refuses, which is the point.
        sh -c "echo \$\$ > $cg/cgroup.procs; for i in \$(seq 200); do sleep 600 & done" 2>/dev/null || true
        echo "current $(cat $cg/pids.current)"
        cp $cg/pids.events /results/pids.events
        echo 1 > $cg/cgroup.kill
        "#,
    );
    let events = done
        .file_str("pids.events")
        .expect("pids.events returned from the guest");
    let max: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `max` line in pids.events: {events:?}"));
    assert!(max >= 1, "pids.max was never hit: {events:?}");
    let current: u64 = done
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("current "))
        .and_then(|v| v.trim().parse().ok())
        .expect("pids.current reported");
    assert!(current <= 64, "pids.current {current} above pids.max 64");
}

per_kernel!(pids_max_stops_a_fork_loop);

/// A kernel panic is a result: reported as Died well before the timeout, with the panic in
/// the console tail.
#[test]
fn kernel_panic_is_reported_as_vm_death() {
    let Some(k) = kernel("6.12") else { return };
    let k = k.as_str();
    let timeout = Duration::from_secs(300);
    let outcome = run(
        VmConfig::shell(k, "echo c > /proc/sysrq-trigger; sleep 600")
            .timeout(timeout)
            .label("panic"),
    );
    match &outcome.result {
        VmResult::Died { console_tail } => assert!(
            console_tail.contains("Kernel panic") || console_tail.contains("sysrq"),
            "no panic in the console tail:\n{console_tail}"
        ),
        other => panic!("expected VM death, got {other}"),
    }
    assert!(outcome.wall_time < timeout);
}

/// A guest that never finishes is killed at the timeout and reported as such.
#[test]
fn hung_guest_is_reported_as_timed_out() {
    let Some(k) = kernel("6.1") else { return };
    let k = k.as_str();
    let outcome = run(VmConfig::shell(k, "sleep 100000")
        .timeout(Duration::from_secs(15))
        .label("hang"));
    assert!(
        matches!(outcome.result, VmResult::TimedOut { .. }),
        "expected a timeout, got {}",
        outcome.result
    );
    // Killed at the deadline, not long after it.
    let wall = outcome.wall_time;
    assert!(
        wall >= Duration::from_secs(15) && wall < Duration::from_secs(45),
        "{wall:?}"
    );
}

/// Exit code, stdout, stderr and nested result files come back intact; a 1 MiB file survives
/// the serial line byte for byte.
#[test]
fn results_come_back_intact() {
    let Some(k) = kernel("6.12") else { return };
    let k = k.as_str();
    let outcome = run(VmConfig::shell(
        k,
        r#"
            head -c 1048576 /dev/urandom > /results/big.bin
            sha256sum /results/big.bin | cut -d' ' -f1
            mkdir -p /results/sub && printf 'a\nb' > /results/sub/x.txt
            echo to-stderr >&2
            exit 7
            "#,
    )
    .label("results"));
    let done = outcome.expect_completed();
    assert_eq!(done.exit_code, 7);
    assert_eq!(done.stderr_str(), "to-stderr\n");
    assert_eq!(done.file_str("sub/x.txt").as_deref(), Some("a\nb"));
    let big = &done.files["big.bin"];
    assert_eq!(big.len(), 1 << 20);
    let host_sum = {
        let dir = outcome.run_dir.join("big.bin");
        std::fs::write(&dir, big).unwrap();
        let out = std::process::Command::new("sha256sum")
            .arg(&dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(done.stdout_str().trim(), host_sum);
}

/// The workspace's own dynamically linked binaries run in the guest (their glibc and loader
/// are copied by the image builder), and `guard probe` finds the tier the kernel must give:
/// below tier 2 it names the kernel options that would lift it, on a lean kernel the options
/// that are off rather than the symptoms.
fn workspace_binaries_run_and_probe_the_tier(k: &str) {
    let Some(k) = kernel(k) else { return };
    let k = k.as_str();
    let guard = guard_binary();
    if guard.is_none() {
        assert!(!vm::in_ci(), "no guard binary under CI (set GUARD_BIN_DIR)");
        eprintln!("no guard binary (set GUARD_BIN_DIR): checking guard-stress only");
    }
    let mut config = VmConfig::shell(
        k,
        "set -e
        guard-stress fork 10
        echo stress: ok
        if [ -x /bin/guard ]; then guard probe --json > /results/probe.json; fi",
    )
    .binary(env!("CARGO_BIN_EXE_guard-stress"))
    .label(format!("bins-{k}"));
    if let Some(guard) = &guard {
        config = config.binary(guard);
    }
    let done = run(config).expect_completed().clone();
    assert_eq!(
        done.exit_code,
        0,
        "{}{}",
        done.stdout_str(),
        done.stderr_str()
    );
    assert!(done.stdout_str().contains("stress: ok"));
    if guard.is_none() {
        return;
    }
    let probe: serde_json::Value =
        serde_json::from_str(&done.file_str("probe.json").expect("probe.json returned")).unwrap();
    let facts = facts(k);
    assert_eq!(probe["tier"], facts.tier, "{probe:#}");
    let options: Vec<&str> = probe["options_to_lift_tier"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|option| option.as_str())
        .collect();
    let notes = probe["notes"].to_string();
    // What is off is said, by option: the JIT where programs run (the interpreter is slower,
    // as exact) and PSI everywhere. Nothing needs BTF: lean-guard runs its tier without it.
    if facts.bpf() && probe["bpf_jit"] == false {
        assert!(notes.contains("CONFIG_BPF_JIT is off"), "{notes}");
    }
    if probe["psi"] == false {
        assert!(notes.contains("PSI"), "{notes}");
    }
    let sources: Vec<&str> = probe["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|source| source.as_str())
        .collect();
    match facts.tier {
        3 => assert!(options.is_empty(), "{probe:#}"),
        2 => assert!(options.contains(&"CONFIG_KPROBE_EVENTS"), "{probe:#}"),
        _ => {
            // Tier 1 without tracing: perf's records and the kernel log are the live sources.
            // lean has TASKSTATS and TASK_DELAY_ACCT (every default guest config does).
            assert_eq!(
                sources,
                ["perf", "kmsg", "taskstats", "cgroup_files"],
                "{probe:#}"
            );
            assert_eq!(probe["delay_accounting"], true, "{probe:#}");
            assert_eq!(
                (&probe["perf_events"], &probe["cgroup_perf"]),
                (&true.into(), &true.into())
            );
            // libkrunfw's config: no tracing at all. Named by option, not by symptom.
            for option in ["CONFIG_FTRACE", "CONFIG_BPF_EVENTS"] {
                assert!(options.contains(&option), "{probe:#}");
            }
            assert!(notes.contains("CONFIG_FTRACE is off"), "{notes}");
            assert!(notes.contains("CONFIG_PSI is off"), "{notes}");
            assert!(
                !notes.contains("mounting") && !notes.contains("psi=1"),
                "{notes}"
            );
            assert_eq!(probe["tracefs"], serde_json::Value::Null, "{probe:#}");
        }
    }
}

per_kernel!(workspace_binaries_run_and_probe_the_tier);

/// The release `guard` binary, if one was built (see the module docs). A debug build would
/// do too (the image builder strips debug info), but release is what the guest suites use.
fn guard_binary() -> Option<PathBuf> {
    let dir = match std::env::var_os("GUARD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => xtask::paths::target_dir().join("release"),
    };
    let guard = dir.join("guard");
    guard.is_file().then_some(guard)
}
