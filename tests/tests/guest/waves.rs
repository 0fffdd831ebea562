//! The enforcement suite: `guard selftest` in a 128 MiB guest on every guest kernel, three
//! escalating bomb waves in one guarded container, each asserted on evidence (BPF counters
//! reconciled with the kernel's event files; on a kernel without tracing, the kernel's files
//! alone, with no BPF figure anywhere), not on survival. Two-sided: the same waves with
//! `--no-limits` (probes on, limits off) must fail the same assertions.

use guard_tests::{
    guest::{assert_log_verifies, facts, guest, json_file, unpack_log},
    log_records, logged_count, per_kernel,
};
use serde_json::Value;
use xtask::vm::{self, Completed, VmConfig, VmResult};

/// Boots a guest running the selftest; None when skipped, Err(console) when the VM died.
pub(crate) fn selftest(kernel: &str, extra: &str) -> Option<Result<Completed, String>> {
    selftest_in(kernel, 128, extra)
}

/// [`selftest`] in a guest of `memory_mib`.
pub(crate) fn selftest_in(
    kernel: &str,
    memory_mib: u32,
    extra: &str,
) -> Option<Result<Completed, String>> {
    let guest = guest(kernel)?;
    let config = VmConfig::shell(kernel, &format!("guard selftest {extra}"))
        .memory_mib(memory_mib)
        .binary(guest.bin_dir.join("guard"))
        .binary(guest.bin_dir.join("guard-stress"))
        .timeout(std::time::Duration::from_secs(600))
        .label(format!("waves{}-{kernel}", extra.replace(' ', "")));
    let outcome = vm::run(&config).expect("the VM harness itself failed");
    eprintln!(
        "waves {extra} on {kernel}: boot {:?}, scenario {:?}, wall {:?}",
        outcome.boot_time, outcome.scenario_time, outcome.wall_time
    );
    Some(match outcome.result {
        VmResult::Completed(done) => Ok(done),
        VmResult::Died { console_tail } => Err(format!("VM died:\n{console_tail}")),
        VmResult::TimedOut { console_tail } => Err(format!("VM timed out:\n{console_tail}")),
    })
}

/// The one-container waves prove each limit by itself, as they did before the guest budget:
/// no budget, and a memory.max of 60% of MemAvailable (90% lets 6.1's global OOM killer strike
/// first; under the budget of a 128 MiB 6.1 guest, about 8 MiB, the pids bomb would meet
/// memory.max before pids.max). The budget is the tenants wave's to prove (`tenants.rs`).
const WAVES: &str = "--scenario waves --no-budget --memory 60%";

/// The guest's memory for the limits' own tests: `guard_tests::guest::memory_mib` (256 MiB on
/// Debian 6.1, whose 128 MiB guest leaves the agent about 36 MiB: at 60% of it the fork+alloc
/// bomb drew the global OOM killer beside the memcg kills, and the guest budget there would be
/// below its 10 MiB floor).
pub(crate) fn guest_memory_mib(kernel: &str) -> u32 {
    guard_tests::guest::memory_mib(kernel)
}

fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

fn check(ok: bool, what: String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what) }
}

/// Every enforcement assertion of the suite; the first that fails, with its numbers. The
/// evidence is the probes' where the kernel lets guard load them, the kernel's files alone
/// where it does not (tier 0).
fn enforced(summary: &Value, tier: u8) -> Result<(), String> {
    check(
        summary["tier"] == tier,
        format!("guard ran at tier {}, expected {tier}", summary["tier"]),
    )?;
    let waves = summary["waves"].as_array().ok_or("no waves")?;
    check(waves.len() == 3, format!("{} waves ran", waves.len()))?;
    for wave in waves {
        let name = wave["wave"].as_str().unwrap_or("?");
        check(
            wave["fresh_exec_ok"] == true,
            format!("{name}: a fresh exec failed"),
        )?;
        check(
            number(&wave["leftover_processes"]) == 0,
            format!("{name}: {} processes left over", wave["leftover_processes"]),
        )?;
        check(
            wave["agent_oom_score_adj"] == -1000,
            format!(
                "{name}: the agent's oom_score_adj is {}",
                wave["agent_oom_score_adj"]
            ),
        )?;
    }
    if tier < 2 {
        enforced_by_the_kernel_files(summary, waves)?;
        if tier == 1 {
            // Tier 1: the kernel log named every kill of the waves, each its container's.
            for wave in waves {
                let (seen, killed) = (
                    number(&wave["sources"]["oom_kills"]),
                    number(&wave["kernel"]["memory_events"]["oom_kill"]),
                );
                check(
                    seen == killed,
                    format!(
                        "{}: the kernel log named {seen} OOM kill(s), memory.events says \
                         {killed}",
                        wave["wave"]
                    ),
                )?;
            }
        }
        return Ok(());
    }
    let (pids, memory, mixed) = (&waves[0], &waves[1], &waves[2]);

    // Wave 1: the pids bomb is stopped by pids.max, and the probes saw every denial.
    let denied = number(&pids["bpf"]["fork_denied"]);
    let kernel_denied = number(&pids["kernel"]["pids_events"]["max"]);
    check(
        denied > 0,
        format!("pids bomb: no fork was denied ({})", pids["bpf"]),
    )?;
    check(
        denied == kernel_denied,
        format!("pids bomb: BPF denials {denied} != pids.events max {kernel_denied}"),
    )?;
    check(
        tier < 3 || number(&pids["bpf"]["fork_denied_pids_max"]) == denied,
        format!(
            "pids bomb: the kretprobe saw {} pids.max denials",
            pids["bpf"]["fork_denied_pids_max"]
        ),
    )?;
    let forks = number(&pids["bpf"]["forks"]);
    check(
        forks <= 512, // and so well below the 1000 asked for
        format!("pids bomb: {forks} forks succeeded"),
    )?;

    // Wave 2: the 512 MiB allocation is OOM-killed by its own memcg, nothing global.
    let kills = number(&memory["bpf"]["oom_kills"]);
    check(
        kills >= 1,
        format!(
            "memory bomb: no OOM kill in the container ({})",
            memory["bpf"]
        ),
    )?;
    check(
        kills == number(&memory["kernel"]["memory_events"]["oom_kill"]),
        format!(
            "memory bomb: BPF kills {kills} != oom_kill {}",
            memory["kernel"]["memory_events"]
        ),
    )?;
    check(
        number(&memory["kernel"]["memory_events_local"]["oom"]) >= 1,
        format!(
            "memory bomb: no memcg OOM (scope global): {}",
            memory["kernel"]
        ),
    )?;

    // Wave 3: kills and/or denials inside the container only, after memory pressure.
    let mixed_kills = number(&mixed["bpf"]["oom_kills"]);
    check(
        mixed_kills + number(&mixed["bpf"]["fork_denied"]) >= 1,
        format!("fork+alloc bomb: nothing was stopped ({})", mixed["bpf"]),
    )?;
    check(
        mixed_kills == number(&mixed["kernel"]["memory_events"]["oom_kill"]),
        format!(
            "fork+alloc bomb: BPF kills {mixed_kills} != {}",
            mixed["kernel"]["memory_events"]
        ),
    )?;
    check(
        mixed_kills == 0 || number(&mixed["kernel"]["memory_events_local"]["oom"]) >= 1,
        format!(
            "fork+alloc bomb: kills without a memcg OOM (global): {}",
            mixed["kernel"]
        ),
    )?;
    check(
        number(&mixed["bpf"]["reclaim_runs"]) > 0,
        "fork+alloc bomb: no memcg reclaim recorded".to_string(),
    )?;

    check(
        number(&summary["global"]["bpf"]["oom_kills"]) == 0,
        format!(
            "{} OOM kills outside the container (global OOM)",
            summary["global"]["bpf"]["oom_kills"]
        ),
    )?;
    for limit in ["pids", "memory"] {
        check(
            summary["report"][limit]["verdict"] == "enforced",
            format!(
                "{limit}: verdict {} ({})",
                summary["report"][limit]["verdict"], summary["report"][limit]["evidence"]
            ),
        )?;
    }
    Ok(())
}

/// Tiers 0 and 1: each wave stopped by the kernel, as its own files say, and no BPF figure anywhere
/// (a report that showed one would claim evidence guard cannot have).
fn enforced_by_the_kernel_files(summary: &Value, waves: &[Value]) -> Result<(), String> {
    let (pids, memory, mixed) = (&waves[0], &waves[1], &waves[2]);
    for (what, value) in [
        ("pids wave", &pids["bpf"]),
        ("memory wave", &memory["bpf"]),
        ("fork+alloc wave", &mixed["bpf"]),
        ("report", &summary["report"]["counters"]["bpf"]),
        ("global counters", &summary["global"]["bpf"]),
    ] {
        check(
            value.is_null(),
            format!("no BPF at this tier, yet the {what} shows BPF counters: {value}"),
        )?;
    }
    let denied = number(&pids["kernel"]["pids_events"]["max"]);
    check(
        denied > 0,
        format!("pids bomb: pids.events max is 0 ({})", pids["kernel"]),
    )?;
    check(
        number(&memory["kernel"]["memory_events"]["oom_kill"]) >= 1,
        format!(
            "memory bomb: no OOM kill in the container ({})",
            memory["kernel"]
        ),
    )?;
    check(
        number(&memory["kernel"]["memory_events_local"]["oom"]) >= 1,
        format!(
            "memory bomb: no memcg OOM (scope global): {}",
            memory["kernel"]
        ),
    )?;
    let mixed_kills = number(&mixed["kernel"]["memory_events"]["oom_kill"]);
    check(
        mixed_kills + number(&mixed["kernel"]["pids_events"]["max"]) >= 1,
        format!("fork+alloc bomb: nothing was stopped ({})", mixed["kernel"]),
    )?;
    check(
        mixed_kills == 0 || number(&mixed["kernel"]["memory_events_local"]["oom"]) >= 1,
        format!(
            "fork+alloc bomb: kills without a memcg OOM (global): {}",
            mixed["kernel"]
        ),
    )?;
    check(
        number(&summary["report"]["oom"]["global_kills"]) == 0,
        format!(
            "global OOM kills in the container: {}",
            summary["report"]["oom"]
        ),
    )?;
    for limit in ["pids", "memory"] {
        check(
            summary["report"][limit]["verdict"] == "enforced",
            format!(
                "{limit}: verdict {} ({})",
                summary["report"][limit]["verdict"], summary["report"][limit]["evidence"]
            ),
        )?;
    }
    Ok(())
}

/// The agent's resident memory stays within its bound (its RSS once set up plus the guard's
/// memory budget: every queue and buffer full) through every wave; its peak never exceeds the
/// bound or the peak it already had when loading (aya parses the kernel's BTF at load).
fn agent_memory_bounded(kernel: &str, summary: &Value) -> Result<(), String> {
    let memory = &summary["agent_memory"];
    let bound = memory["bound_kib"]
        .as_u64()
        .ok_or(format!("no agent_memory in the summary: {memory}"))?;
    let peak_before = number(&memory["rss_before_waves_kib"]["peak"]);
    let budget_kib = number(&memory["budget_bytes"]["total"]) / 1024;
    check_bound(bound, budget_kib, peak_before, summary)?;
    let rss: Vec<String> = summary["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|wave| format!("{} {}", wave["wave"], wave["agent_rss_kib"]))
        .collect();
    eprintln!(
        "{kernel}: agent RSS before the waves {}, budget {budget_kib} KiB, bound {bound} KiB; {}",
        memory["rss_before_waves_kib"],
        rss.join("; ")
    );
    Ok(())
}

fn check_bound(
    bound: u64,
    budget_kib: u64,
    peak_before: u64,
    summary: &Value,
) -> Result<(), String> {
    if budget_kib == 0 || peak_before == 0 {
        return Err(format!(
            "no budget or peak measured: {}",
            summary["agent_memory"]
        ));
    }
    for wave in summary["waves"].as_array().into_iter().flatten() {
        let name = &wave["wave"];
        let current = number(&wave["agent_rss_kib"]["current"]);
        let peak = number(&wave["agent_rss_kib"]["peak"]);
        if current == 0 || current > bound {
            return Err(format!(
                "{name}: agent RSS {current} KiB, bound {bound} KiB"
            ));
        }
        if peak > bound.max(peak_before) {
            return Err(format!(
                "{name}: agent peak RSS {peak} KiB above both the bound {bound} KiB and the \
                 load peak {peak_before} KiB"
            ));
        }
    }
    Ok(())
}

fn limits_hold_against_three_waves(kernel: &str) {
    let Some(result) = selftest_in(kernel, guest_memory_mib(kernel), WAVES) else {
        return;
    };
    let done =
        result.unwrap_or_else(|console| panic!("the {kernel} guest must survive: {console}"));
    assert_eq!(
        done.exit_code,
        0,
        "{}\n{}",
        done.stdout_str(),
        done.stderr_str()
    );
    let summary = json_file(&done, "waves.json");
    if let Err(failure) = enforced(&summary, facts(kernel).tier) {
        panic!(
            "{kernel}: {failure}\n{}",
            serde_json::to_string_pretty(&summary["waves"]).unwrap()
        );
    }
    if let Err(failure) = agent_memory_bounded(kernel, &summary) {
        panic!("{kernel}: {failure}");
    }
    // The forensic log verifies with the independent verifier and holds the three waves.
    let log = unpack_log(&done, "log", kernel);
    assert_log_verifies(&log);
    let records = log_records(&log);
    let count = |kind: &str| records.iter().filter(|r| r["kind"] == kind).count();
    assert_eq!(count("wave"), 3);
    assert_eq!(count("limits_applied"), 1);
    assert_eq!(count("report"), 1);
    // The waves' storms are summarized, and the log still holds every event the guard
    // delivered, up to the container's report: its own records plus its summaries' counts
    // (short only by what the log's queue dropped, which `lost` records count).
    let at = records.iter().position(|r| r["kind"] == "report").unwrap();
    let report = &records[at]["payload"];
    let id = records[at]["container"].as_str().unwrap();
    let dropped: u64 = records
        .iter()
        .filter(|r| r["kind"] == "lost" && r["payload"]["source"] == "user_queue")
        .map(|r| r["payload"]["count"].as_u64().unwrap_or(0))
        .sum();
    for (kind, key) in [
        ("fork", "forks"),
        ("fork_denied", "fork_denied"),
        ("oom_victim", "oom_victims"),
        ("reclaim", "reclaims"),
    ] {
        let delivered = report["counters"]["delivered"][key].as_u64().unwrap();
        let logged = logged_count(&records[..at], kind, Some(id));
        assert!(
            logged <= delivered && delivered - logged <= dropped,
            "{kernel}: {kind}: {logged} logged, {delivered} delivered, {dropped} dropped"
        );
    }
    if facts(kernel).tier > 0 {
        assert!(
            count("summary") > 0,
            "{kernel}: the waves' storms were not summarized"
        );
    }
    eprintln!(
        "{kernel}: log {} records ({} summaries), {} bytes",
        records.len(),
        count("summary"),
        std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum::<u64>()
    );
}

per_kernel!(limits_hold_against_three_waves);

fn without_limits_the_assertions_fail(kernel: &str) {
    let Some(result) = selftest(kernel, "--no-limits --scenario waves") else {
        return;
    };
    // A dead VM fails enforcement by itself; a surviving one must fail the same checks.
    let failure = match result {
        Err(console) => console,
        Ok(done) => {
            let summary = json_file(&done, "waves.json");
            // Even with the VM in global OOM, the agent (oom_score_adj -1000) keeps its bound.
            if let Err(failure) = agent_memory_bounded(kernel, &summary) {
                panic!("{kernel} without limits: {failure}");
            }
            match enforced(&summary, facts(kernel).tier) {
                Ok(()) => {
                    panic!("{kernel}: with limits off the enforcement assertions must fail")
                }
                Err(failure) => failure,
            }
        }
    };
    eprintln!("{kernel} without limits fails as it must: {failure}");
}

per_kernel!(without_limits_the_assertions_fail);

#[test]
fn an_agent_above_its_bound_fails_the_memory_check() {
    // Two-sided for agent_memory_bounded: the same summary shape with one wave's RSS above
    // the bound, or a peak above bound and load peak, is refused.
    let summary = |current: u64, peak: u64| {
        serde_json::json!({
            "agent_memory": {"bound_kib": 20_000, "budget_bytes": {"total": 10_000_000},
                             "rss_before_waves_kib": {"current": 9_000, "peak": 24_000}},
            "waves": [{"wave": "pids", "agent_rss_kib": {"current": current, "peak": peak}}],
        })
    };
    assert_eq!(
        agent_memory_bounded("test", &summary(12_000, 24_000)),
        Ok(())
    );
    assert!(agent_memory_bounded("test", &summary(20_001, 24_000)).is_err());
    assert!(agent_memory_bounded("test", &summary(12_000, 24_001)).is_err());
    assert!(agent_memory_bounded("test", &summary(0, 24_000)).is_err());
}
