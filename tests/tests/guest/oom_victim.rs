//! Guest tests of the oom_victim signal, on every guest kernel: a memory bomb in its container
//! is OOM-killed by its own memcg after memcg reclaim, the victim attributed to the container
//! and reconciled with `memory.events`; an OOM kill outside every container is global, its
//! victim attributed to no container. Two-sided: with the probes off (tier 0, by flag or on a
//! kernel without tracing) the same kill is seen only in the kernel's file, and nothing claims
//! a victim or a BPF figure.
//!
//! The scenarios run in the probe suites' one boot per kernel (`guard_tests::guest::probes`).
use guard_tests::{
    guest::{
        facts,
        probes::{Scenario, results, scenario},
    },
    per_kernel,
};

/// What a kill looks like to a guard without probes: the kernel's memory.events only.
fn seen_only_in_the_kernel_file(bomb: &Scenario) {
    assert_eq!(bomb.output["signal"], 9, "{}", bomb.output);
    assert!(
        bomb.report()["counters"]["bpf"].is_null(),
        "{}",
        bomb.report()
    );
    assert!(bomb.output["global"]["bpf"].is_null(), "{}", bomb.output);
    assert!(bomb.events_of("oom_victim").is_empty());
    assert_eq!(bomb.kernel("memory_events", "oom_kill"), 1);
}

fn memory_bomb_is_killed_in_its_container(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let bomb = scenario(done, "memory");
    if facts(kernel).tier == 0 {
        // No tracing in this kernel: the kill is the kernel's, in its container (memcg scope),
        // and the verdict rests on memory.events alone.
        seen_only_in_the_kernel_file(&bomb);
        assert!(bomb.kernel("memory_events_local", "oom") >= 1);
        assert_eq!(bomb.report()["oom"]["memcg_kills"], 1);
        assert_eq!(bomb.verdict("memory"), "enforced");
        seen_only_in_the_kernel_file(&scenario(done, "memory-unprobed"));
        return;
    }
    if facts(kernel).tier == 1 {
        // No tracing (tier 1): the kernel log names the victim and its scope, the task map
        // its container; no BPF figure, no reclaim detail.
        assert_eq!(bomb.output["signal"], 9, "{}", bomb.output);
        assert!(bomb.report()["counters"]["bpf"].is_null());
        let kills = bomb.events_of("oom_victim");
        assert_eq!(kills.len(), 1, "{:?}", bomb.events);
        let victim = &kills[0];
        assert_eq!(victim["container"], "memory");
        assert_eq!(victim["source"], "kmsg");
        assert_eq!(victim["detail"]["victim_pid"], bomb.output["command_pid"]);
        assert_eq!(victim["detail"]["comm"], "guard-stress");
        assert_eq!(victim["detail"]["scope"], "memcg");
        assert_eq!(bomb.report()["counters"]["sources"]["oom_kills"], 1);
        assert_eq!(bomb.kernel("memory_events", "oom_kill"), 1);
        assert_eq!(bomb.report()["oom"]["memcg_kills"], 1);
        assert_eq!(bomb.verdict("memory"), "enforced");
        // Two-sided: at tier 0 (by flag) the same kill is the kernel file's alone.
        seen_only_in_the_kernel_file(&scenario(done, "memory-unprobed"));
        return;
    }
    assert_eq!(
        bomb.output["signal"], 9,
        "the hog must be OOM-killed: {}",
        bomb.output
    );
    let kills = bomb.events_of("oom_victim");
    assert_eq!(kills.len(), 1, "{:?}", bomb.events);
    let victim = &kills[0];
    assert_eq!(victim["container"], "memory");
    assert_eq!(victim["detail"]["victim_pid"], bomb.output["command_pid"]);
    assert_eq!(victim["detail"]["comm"], "guard-stress");
    assert_eq!(victim["detail"]["outside_containers"], false);
    assert_eq!(bomb.bpf("oom_kills"), 1);
    assert_eq!(bomb.kernel("memory_events", "oom_kill"), 1);
    assert!(
        bomb.kernel("memory_events_local", "oom") >= 1,
        "memcg scope: {}",
        bomb.report()["kernel_since_watch"]
    );
    assert_eq!(bomb.report()["oom"]["memcg_kills"], 1);
    assert_eq!(bomb.report()["oom"]["global_kills"], 0);
    // Memory pressure came first: memcg reclaim events precede the kill.
    let first_reclaim = bomb
        .events_of("reclaim")
        .first()
        .map(|e| e["ktime_ns"].as_u64().unwrap());
    assert!(bomb.bpf("reclaim_runs") > 0);
    assert!(first_reclaim.is_some_and(|t| t < victim["ktime_ns"].as_u64().unwrap()));
    assert_eq!(bomb.verdict("memory"), "enforced");
    assert_eq!(
        bomb.output["global"]["bpf"]["oom_kills"], 0,
        "no global OOM"
    );

    // Two-sided: with the probes off (tier 0) the same kill is seen only in the kernel's file;
    // no victim, no attribution, no BPF counter, so the attribution assertions above fail.
    seen_only_in_the_kernel_file(&scenario(done, "memory-unprobed"));
}

per_kernel!(memory_bomb_is_killed_in_its_container);

fn oom_kill_outside_containers_is_global(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let outside = scenario(done, "outside");
    assert_eq!(outside.output["signal"], 9, "{}", outside.output);
    if facts(kernel).tier == 0 {
        // Without probes a global kill is invisible to the container's files, and guard does
        // not pretend to have seen it.
        assert_eq!(outside.kernel("memory_events", "oom_kill"), 0);
        assert!(
            outside.output["global"]["bpf"].is_null(),
            "{}",
            outside.output
        );
        assert!(outside.events_of("oom_victim").is_empty());
        return;
    }
    if facts(kernel).tier == 1 {
        // The kernel log's global kill, of a process that left the container (its cgroup read
        // as it died): in no container.
        assert_eq!(outside.kernel("memory_events", "oom_kill"), 0);
        let kills = outside.events_of("oom_victim");
        assert_eq!(kills.len(), 1, "{:?}", outside.events);
        assert!(kills[0]["container"].is_null(), "{}", kills[0]);
        assert_eq!(kills[0]["detail"]["outside_containers"], true);
        assert_eq!(kills[0]["detail"]["scope"], "global");
        assert_eq!(
            kills[0]["detail"]["victim_pid"],
            outside.output["command_pid"]
        );
        return;
    }
    // Not the container's: it left for the root cgroup before allocating.
    assert_eq!(outside.bpf("oom_kills"), 0);
    assert_eq!(
        outside.output["global"]["bpf"]["oom_kills"], 1,
        "{}",
        outside.output
    );
    let kills = outside.events_of("oom_victim");
    assert_eq!(kills.len(), 1, "{:?}", outside.events);
    assert_eq!(kills[0]["detail"]["outside_containers"], true);
    assert!(kills[0]["container"].is_null());
    assert_eq!(
        kills[0]["detail"]["victim_pid"],
        outside.output["command_pid"]
    );
}

per_kernel!(oom_kill_outside_containers_is_global);

/// A container whose sub-cgroup's limit was hit (a memcg kill) and whose workload the global
/// OOM killer then took: its memory.events (oom 1, oom_kill 2) cannot tell the two apart, the
/// kernel log can, by the victims' pids. Two-sided: at tier 0 (no probes to name the victims)
/// guard has only memory.events and reads both kills as the container's limits'.
fn a_global_kill_beside_a_limits_kill_is_named_by_the_kernel_log(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let mixed = scenario(done, "mixed");
    let oom = &mixed.report()["oom"];
    assert_eq!(mixed.output["signal"], 9, "{}", mixed.output);
    assert_eq!(mixed.kernel("memory_events", "oom_kill"), 2, "{oom}");
    assert!(mixed.kernel("memory_events", "oom") >= 1, "{oom}");
    if facts(kernel).tier == 0 {
        assert!(oom["logged_global_kills"].is_null(), "{oom}");
        assert_eq!(oom["global_kills"], 0, "memory.events alone: {oom}");
        return;
    }
    assert_eq!(oom["logged_global_kills"], 1, "{oom}");
    assert_eq!(
        (&oom["memcg_kills"], &oom["global_kills"]),
        (&1.into(), &1.into())
    );
    assert_eq!(mixed.verdict("memory"), "incomplete", "{}", mixed.report());
    let kills = mixed.events_of("oom_victim");
    assert_eq!(kills.len(), 2, "{:?}", mixed.events);
    assert!(kills.iter().all(|kill| kill["container"] == "mixed"));
    assert_eq!(
        kills[1]["detail"]["victim_pid"],
        mixed.output["command_pid"]
    );
}

per_kernel!(a_global_kill_beside_a_limits_kill_is_named_by_the_kernel_log);

/// The guest's root writes the memory bomb's victim into `/dev/kmsg` as the global OOM
/// killer's kill, word for word as the kernel logs one: the kernel gives such a line a user
/// facility, and the verdict counts only the kernel's own, so the kill stays the container's
/// limit's and the verdict `enforced`. Two-sided: the real global kill of `mixed` above, the
/// same text at the kernel's facility, is counted; and this scenario read the forged lines as
/// a global kill before the facility was checked (`logged_global_kills` 1, verdict
/// `incomplete`).
fn forged_kill_lines_are_not_counted(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let forged = scenario(done, "forged");
    let err = done.file_str("forged.err").unwrap_or_default();
    let pid: u64 = err
        .lines()
        .find_map(|line| line.strip_prefix("forged "))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("the scenario forged nothing: {err}"));
    let oom = &forged.report()["oom"];
    assert_eq!(forged.kernel("memory_events", "oom_kill"), 1, "{oom}");
    assert_eq!(oom["memcg_kills"], 1, "{oom}");
    assert_eq!(oom["global_kills"], 0, "{oom}");
    assert_eq!(forged.verdict("memory"), "enforced", "{}", forged.report());
    if facts(kernel).tier == 0 {
        // No probes, no victims to match: the kernel log is not read at all.
        assert!(oom["logged_global_kills"].is_null(), "{oom}");
        return;
    }
    // The forged lines named the real victim: only their facility kept them out.
    let kills = forged.events_of("oom_victim");
    assert_eq!(kills.len(), 1, "{:?}", forged.events);
    assert_eq!(kills[0]["detail"]["victim_pid"], pid, "{:?}", kills[0]);
    assert_eq!(oom["logged_global_kills"], 0, "{oom}");
}

per_kernel!(forged_kill_lines_are_not_counted);

/// A workload that moves itself into a grandchild of the watched cgroup (with limits of its
/// own), is denied forks there and OOM-killed there: every event the container's, the verdict
/// naming the sub-cgroup's limit. Two-sided: at tier 0 nothing is attributed (no probes), and
/// the kill is only in the kernel's hierarchical file.
fn grandchild_events_belong_to_the_container(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let nested = scenario(done, "nested");
    let report = nested.report();
    assert_eq!(nested.kernel("memory_events", "oom_kill"), 1, "{report}");
    assert_eq!(
        nested.kernel("memory_events_local", "oom"),
        0,
        "the container's own limit was not the one hit: {report}"
    );
    assert!(
        report["oom"]["sub_cgroup_ooms"].as_u64().unwrap_or(0) >= 1,
        "the verdict must name the sub-cgroup's limit: {}",
        report["oom"]
    );
    if facts(kernel).tier == 0 {
        assert!(report["counters"]["bpf"].is_null(), "{report}");
        assert!(nested.events_of("oom_victim").is_empty());
        return;
    }
    if facts(kernel).tier == 1 {
        // The grandchild's kill, named by the kernel log, is the container's.
        assert!(report["counters"]["bpf"].is_null(), "{report}");
        let kills = nested.events_of("oom_victim");
        assert_eq!(kills.len(), 1, "{:?}", nested.events);
        assert_eq!(kills[0]["container"], "nested");
        assert_eq!(kills[0]["detail"]["outside_containers"], false);
        assert_eq!(report["counters"]["sources"]["oom_kills"], 1, "{report}");
        return;
    }
    let eagain = nested.tally("eagain");
    assert!(
        eagain > 0,
        "the grandchild's pids.max must deny: {:?}",
        nested.tally
    );
    assert_eq!(nested.bpf("fork_denied"), eagain, "{report}");
    assert_eq!(nested.bpf("oom_kills"), 1, "{report}");
    let kills = nested.events_of("oom_victim");
    assert_eq!(kills.len(), 1, "{:?}", nested.events);
    assert_eq!(kills[0]["container"], "nested");
    assert_eq!(kills[0]["detail"]["outside_containers"], false);
    assert!(
        nested
            .events_of("fork_denied")
            .iter()
            .all(|event| event["container"] == "nested")
    );
    // Each event names the sub-cgroup it happened in (the workload waited for the adoption).
    // Two-sided: without the hub's naming (or the denial's task cgroup) these fields are absent.
    let grandchild = "/nested/a/b";
    assert_eq!(
        kills[0]["detail"]["trigger_sub_cgroup"], grandchild,
        "{}",
        kills[0]
    );
    for denial in nested.events_of("fork_denied") {
        assert_eq!(denial["detail"]["sub_cgroup"], grandchild, "{denial}");
    }
    assert_eq!(report["oom"]["global_kills"], 0);
}

per_kernel!(grandchild_events_belong_to_the_container);
