//! `examples/agent.rs`, the small agent that links guard as its users do, run in a guest: its
//! container's fork loop meets pids.max, its own subscriber receives the events, and its
//! report says the limit was enforced, reconciled with the kernel's count; and its runtime
//! closes bpf(2) to unprivileged processes unless told not to. And `examples/monitor.rs`, the
//! monitoring-only agent (no libcontainer): its command's forks counted, every one delivered
//! to its container's subscription, which ends at the unwatch.
use std::time::Duration;

use guard_tests::{
    guest::{facts, guest},
    per_kernel,
};
use serde_json::Value;
use xtask::vm::{self, VmConfig};

use crate::waves::guest_memory_mib;

/// A rootfs of static busybox, then the agent with a pids.max the loop goes past.
const SCENARIO: &str = r#"set -e
mkdir -p /tmp/rootfs/bin
cp /bin/busybox /tmp/rootfs/bin/
for applet in sh sleep true; do ln -s busybox /tmp/rootfs/bin/$applet; done
# The shell gives up at its first refused fork: the agent then exits 1, the container's status.
agent --rootfs /tmp/rootfs --pids 16 --min-tier 0 -- /bin/sh -c 'i=0; while [ $i -lt 40 ]; do (sleep 3) & i=$((i+1)); done; wait' || echo "agent: exit $?" >&2
"#;

fn example_agent_enforces_and_forwards(kernel: &str) {
    let Some(guest) = guest(kernel) else { return };
    let agent = guest.bin_dir.join("examples").join("agent");
    assert!(
        agent.is_file(),
        "{} is missing: cargo build --release -p guard --example agent --features runtime \
         (cargo xtask test does)",
        agent.display()
    );
    let config = VmConfig::shell(&guest.kernel, SCENARIO)
        .memory_mib(guest_memory_mib(kernel))
        .binary(agent)
        .timeout(Duration::from_secs(600))
        .label(format!("agent-{kernel}"));
    let outcome = vm::run(&config).expect("the VM harness itself failed");
    let done = outcome.expect_completed();
    let stdout = done.stdout_str();
    let stderr = done.stderr_str();
    assert_eq!(done.exit_code, 0, "{stderr}");
    let tier = facts(kernel).tier;
    assert!(
        stderr.contains(&format!("agent: guard at tier {tier}")),
        "{stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("the agent's report: {error}\n{stdout}"));
    let denied = report["kernel_since_watch"]["pids_events"]["max"]
        .as_u64()
        .unwrap_or(0);
    assert!(denied > 0, "the loop must meet pids.max: {report}");
    assert_eq!(report["pids"]["verdict"], "enforced", "{report}");
    let forwarded = |kind: &str| {
        stdout
            .lines()
            .filter(|line| line.starts_with("event agent-demo ") && line.contains(kind))
            .count() as u64
    };
    if tier >= 2 {
        assert_eq!(
            report["counters"]["bpf"]["fork_denied"].as_u64(),
            Some(denied),
            "the probes' denials = the kernel's: {report}"
        );
        assert_eq!(
            forwarded("fork_denied"),
            report["counters"]["delivered"]["fork_denied"]
                .as_u64()
                .unwrap(),
            "every delivered denial reached the agent's subscriber"
        );
        assert!(forwarded("fork_denied") > 0);
    } else {
        assert!(report["counters"]["bpf"].is_null(), "{report}");
        assert!(
            forwarded("kernel_file") > 0,
            "at tier 0 the kernel's files are the events: {stdout}"
        );
    }
}

per_kernel!(example_agent_enforces_and_forwards);

/// The library's runtime closes bpf(2) to unprivileged processes by default, on the path an
/// agent takes (`Runtime::new`, here in the example agent without a guard): on a kernel that
/// ships it open (as lean guest kernels do; the scenario opens it on Debian's), a container's
/// `bpf(BPF_MAP_CREATE)` is refused and the sysctl reads 2 afterwards. Two-sided: with the
/// documented opt-out (`RuntimeOptions::allow_unprivileged_bpf`, the example's
/// `--allow-unprivileged-bpf`) the same container creates its map.
fn example_agent_closes_unprivileged_bpf(kernel: &str) {
    let Some(guest) = guest(kernel) else { return };
    let agent = guest.bin_dir.join("examples").join("agent");
    let tamper = guest.bin_dir.join("guard-tamper");
    for binary in [&agent, &tamper] {
        assert!(binary.is_file(), "{} is missing", binary.display());
    }
    let script = r#"set -e
mkdir -p /tmp/rootfs/bin /tmp/rootfs/lib /tmp/rootfs/lib64
cp /bin/busybox /tmp/rootfs/bin/ && ln -s busybox /tmp/rootfs/bin/sh
cp -a /lib/. /tmp/rootfs/lib/ && cp -a /lib64/. /tmp/rootfs/lib64/
cp /bin/guard-tamper /tmp/rootfs/bin/
sysctl=/proc/sys/kernel/unprivileged_bpf_disabled
for run in default allowed; do
    opt=""; [ $run = allowed ] && opt=--allow-unprivileged-bpf
    echo 0 > $sysctl
    agent $opt --no-guard --rootfs /tmp/rootfs -- /bin/guard-tamper --cgroup /sys/fs/cgroup \
        --log-file /none > /results/$run.out 2> /results/$run.err
    echo "$run after=$(cat $sysctl)"
done
"#;
    let config = VmConfig::shell(&guest.kernel, script)
        .memory_mib(guest_memory_mib(kernel))
        .binary(agent)
        .binary(tamper)
        .timeout(Duration::from_secs(600))
        .label(format!("agent-bpf-{kernel}"));
    let outcome = vm::run(&config).expect("the VM harness itself failed");
    let done = outcome.expect_completed();
    let stdout = done.stdout_str();
    assert_eq!(done.exit_code, 0, "{stdout}\n{}", done.stderr_str());
    let map_create = |run: &str| -> Value {
        let out = done.file_str(&format!("{run}.out")).unwrap_or_default();
        out.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|attempt| attempt["attempt"] == "bpf map create")
            .unwrap_or_else(|| {
                panic!(
                    "{run}: no map attempt in {out}\n{}",
                    done.file_str(&format!("{run}.err")).unwrap_or_default()
                )
            })
    };
    let default = map_create("default");
    assert_eq!(default["ok"], false, "{default}");
    assert!(
        default["error"]
            .as_str()
            .is_some_and(|error| error.contains("Operation not permitted")),
        "{default}"
    );
    assert!(stdout.contains("default after=2"), "{stdout}");
    let default_err = done.file_str("default.err").unwrap_or_default();
    assert!(
        default_err.contains("kernel.unprivileged_bpf_disabled 0 -> 2"),
        "{default_err}"
    );
    let allowed = map_create("allowed");
    assert_eq!(allowed["ok"], true, "the opt-out leaves it open: {allowed}");
    assert!(stdout.contains("allowed after=0"), "{stdout}");
}

per_kernel!(example_agent_closes_unprivileged_bpf);

/// The monitoring example's command: forks it makes inside the cgroup it watches.
const MONITOR_SCENARIO: &str = r#"set -e
monitor --cgroup /sys/fs/cgroup/monitor-test --min-tier 0 -- /bin/sh -c 'i=0; while [ $i -lt 40 ]; do /bin/true; i=$((i+1)); done'
"#;

fn example_monitor_counts_and_ends_its_subscription(kernel: &str) {
    let Some(guest) = guest(kernel) else { return };
    let monitor = guest.bin_dir.join("examples").join("monitor");
    assert!(
        monitor.is_file(),
        "{} is missing: cargo build --release -p guard --example monitor (cargo xtask test \
         does)",
        monitor.display()
    );
    let config = VmConfig::shell(&guest.kernel, MONITOR_SCENARIO)
        .memory_mib(guest_memory_mib(kernel))
        .binary(monitor)
        .timeout(Duration::from_secs(600))
        .label(format!("monitor-{kernel}"));
    let outcome = vm::run(&config).expect("the VM harness itself failed");
    let done = outcome.expect_completed();
    let (stdout, stderr) = (done.stdout_str(), done.stderr_str());
    assert_eq!(done.exit_code, 0, "{stderr}");
    let tier = facts(kernel).tier;
    assert!(
        stderr.contains(&format!("monitor: guard at tier {tier}\n")),
        "{stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("the monitor's report: {error}\n{stdout}"));
    assert_eq!(report["pids"]["verdict"], "not_exercised", "{report}");
    // What the container's subscription received, counted by the example until it ended.
    let received = |kind: &str| -> u64 {
        stderr
            .lines()
            .filter_map(|line| line.strip_prefix("monitor: "))
            .find(|line| line.contains(" event(s): "))
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix(&format!("{kind}=")))
            })
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    };
    if tier == 1 {
        // perf's fork records: every fork of the loop, each delivered to the subscription.
        let forks = report["counters"]["sources"]["forks"].as_u64().unwrap_or(0);
        assert!(forks >= 40, "the 40 forks of the loop: {report}");
        assert_eq!(received("fork"), forks, "{stderr}");
    } else if tier >= 2 {
        let forks = report["counters"]["bpf"]["forks"].as_u64().unwrap_or(0);
        assert!(forks >= 40, "the 40 forks of the loop: {report}");
        assert_eq!(
            report["counters"]["delivered"]["forks"].as_u64(),
            Some(forks),
            "every fork delivered: {report}"
        );
        assert_eq!(
            received("fork"),
            forks,
            "every fork reached the subscription before it ended: {stderr}"
        );
    } else {
        assert!(report["counters"]["bpf"].is_null(), "{report}");
        assert_eq!(received("fork"), 0, "{stderr}");
    }
}

per_kernel!(example_monitor_counts_and_ends_its_subscription);
