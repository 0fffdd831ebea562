//! The memory controller's verdict: `memory.events` (max, oom, oom_kill) against the BPF OOM
//! kills, splitting the container's own memcg kills from the global OOM killer's.
use super::{Evidence, LimitVerdict, OomSummary, Verdict, limit_in_force};

/// How far the kernel may push memory usage past memory.max by itself: it force-charges some
/// allocations (an OOM victim exiting, __GFP_NOFAIL) and charges in batches of 64 pages
/// (MEMCG_CHARGE_BATCH). Overage within this is the kernel's documented behaviour, not a
/// violation.
pub const MEMORY_OVERCHARGE_SLACK: u64 = 64 * 4096;

pub(super) fn verdict(
    evidence: &Evidence<'_>,
    flags: &mut Vec<String>,
) -> (LimitVerdict, OomSummary) {
    let events = evidence.kernel.memory_events.clone().unwrap_or_default();
    let kernel_kills = events.get("oom_kill");
    let memcg_ooms = events.get("oom");
    let bpf_kills = evidence.bpf.map(|bpf| bpf.oom_kills);
    let source_kills = evidence.sources.map(|sources| sources.oom_kills);
    // Whichever live evidence names the victims: the probes' (tiers 2, 3) or the log's (1).
    let attributed = bpf_kills.or(source_kills);
    // A kill with no OOM of the container's own is an ancestor's (the guest budget's) when
    // one of those rose, else the global OOM killer's. The kernel log, where read, names the
    // global ones even when a limit's OOM rose beside them.
    let unexplained = if memcg_ooms == 0 && evidence.ancestor_ooms == 0 {
        kernel_kills
    } else {
        0
    };
    let logged_global_kills = evidence.kernel_log.map(|log| log.global);
    let global_kills = unexplained.max(logged_global_kills.unwrap_or(0).min(kernel_kills));
    let limit_kills = kernel_kills - global_kills;
    let memcg_kills = if memcg_ooms > 0 { limit_kills } else { 0 };
    let ancestor_kills = if memcg_ooms == 0 && evidence.ancestor_ooms > 0 {
        limit_kills
    } else {
        0
    };
    let local_ooms = evidence
        .kernel
        .memory_events_local
        .as_ref()
        .map_or(memcg_ooms, |local| local.get("oom"));
    let oom = OomSummary {
        bpf_kills,
        source_kills,
        kernel_kills,
        memcg_kills,
        ancestor_kills,
        global_kills,
        sub_cgroup_ooms: memcg_ooms.saturating_sub(local_ooms),
        logged_global_kills,
    };
    if let Some(overruns) = evidence
        .kernel_log
        .map(|log| log.overruns)
        .filter(|&n| n > 0)
    {
        flags.push(format!(
            "the kernel log's reader fell behind {overruns} time(s): global OOM kills may be \
             missing from it, and the split by scope rests on memory.events alone there"
        ));
    }
    if let Some(bpf) = attributed.filter(|&bpf| bpf > kernel_kills) {
        flags.push(format!(
            "{} OOM victim(s) were marked without a kill of their own: the OOM killer marks a \
             task that is already dying (a process sharing a killed process's memory) as its \
             victim again, and the kernel counts only kills",
            bpf - kernel_kills
        ));
    }
    if oom.ancestor_kills > 0 {
        flags.push(format!(
            "{} task(s) of this container were killed by an ancestor's memory.max (the guest \
             budget every container shares), not by the container's own",
            oom.ancestor_kills
        ));
    }
    if oom.sub_cgroup_ooms > 0 {
        flags.push(format!(
            "{} memcg OOM(s) hit a sub-cgroup's own memory.max inside the container, {} the \
             container's",
            oom.sub_cgroup_ooms, local_ooms
        ));
    }
    if oom.global_kills > 0 {
        flags.push(format!(
            "GLOBAL OOM: the global OOM killer killed {} task(s) of this container: the guest \
             as a whole ran out of memory{}",
            oom.global_kills,
            if logged_global_kills.is_some_and(|logged| logged == oom.global_kills) {
                " (the kernel log names them)"
            } else {
                ""
            }
        ));
    }
    if memcg_ooms > 0 && kernel_kills == 0 {
        flags.push(format!(
            "LIVELOCK: memory.events oom = {memcg_ooms} with oom_kill = 0: the memcg OOM killer \
             finds no victim (tasks with oom_score_adj -1000?)"
        ));
    }
    let limit = match limit_in_force(
        crate::cgroup::memory::MAX,
        evidence.requested_memory_max,
        evidence.applied.memory_max,
    ) {
        Ok(limit) => limit,
        Err(verdict) => return (verdict, oom),
    };
    if let Some(peak) = evidence.applied.memory_peak.filter(|&peak| peak > limit) {
        if peak - limit > MEMORY_OVERCHARGE_SLACK {
            return (
                LimitVerdict {
                    verdict: Verdict::Violated,
                    evidence: format!("memory.peak {peak} exceeds memory.max {limit}"),
                },
                oom,
            );
        }
        flags.push(format!(
            "memory.peak exceeded memory.max by {} bytes: the kernel's forced charges (an OOM \
             victim's last pages, __GFP_NOFAIL), within its {MEMORY_OVERCHARGE_SLACK}-byte \
             charge batch",
            peak - limit
        ));
    }
    if evidence.kernel.memory_events.is_none() {
        return (
            LimitVerdict {
                verdict: Verdict::Incomplete,
                evidence: "the cgroup has no memory.events: the memory controller is not enabled"
                    .to_string(),
            },
            oom,
        );
    }
    let hits = events.get("max");
    let mut numbers = format!(
        "memory.events max = {hits}, oom = {memcg_ooms}, oom_kill = {kernel_kills} at memory.max \
         {limit}"
    );
    if let Some(bpf) = evidence.bpf {
        numbers.push_str(&format!(
            "; BPF: OOM kills attributed = {}, memcg reclaims = {} ({} pages, {} µs)",
            bpf.oom_kills,
            bpf.reclaim_runs,
            bpf.reclaim_pages,
            bpf.reclaim_ns / 1000
        ));
    }
    if let Some(sources) = evidence.sources {
        numbers.push_str(&format!(
            "; kernel log: OOM kills attributed = {} ({} global)",
            sources.oom_kills, sources.oom_kills_global
        ));
        if sources.tasks_accounted > 0 {
            // Delay accounting, summed over the tasks that exited (none while they run).
            numbers.push_str(&format!(
                "; taskstats: {} exited tasks waited in direct reclaim {} times ({} µs), on \
                 thrashing {} µs",
                sources.tasks_accounted,
                sources.reclaim_delays,
                sources.reclaim_delay_ns / 1000,
                sources.thrashing_delay_ns / 1000
            ));
        }
    }
    if oom.ancestor_kills > 0 {
        numbers.push_str(&format!(
            "; {} kill(s) by the guest budget above it",
            oom.ancestor_kills
        ));
    }
    let verdict = if hits == 0 && memcg_ooms == 0 && kernel_kills == 0 {
        Verdict::NotExercised
    } else if attributed.is_some_and(|seen| seen < kernel_kills) {
        // The probes (or the log) missed kills the kernel counted.
        Verdict::Incomplete
    } else if oom.global_kills > 0 {
        // The limit did not keep the container from the global OOM killer.
        Verdict::Incomplete
    } else {
        Verdict::Enforced
    };
    (
        LimitVerdict {
            verdict,
            evidence: numbers,
        },
        oom,
    )
}

#[cfg(test)]
mod tests {
    use super::super::{fixtures::*, *};
    use super::*;

    #[test]
    fn memcg_oom_kill_attributed_by_bpf_is_enforced() {
        let applied = applied(Some(32 << 20), Some(512));
        let kernel = files("max 40\noom 1\noom_kill 1\n", "max 0\n");
        let bpf = BpfCounters {
            oom_kills: 1,
            reclaim_runs: 30,
            fork_denied_pids_max: Some(0),
            ..Default::default()
        };
        let result = reconcile(&evidence(&applied, &kernel, Some(&bpf)));
        assert_eq!(result.memory.verdict, Verdict::Enforced, "{result:?}");
        assert_eq!(result.oom.memcg_kills, 1);
        assert_eq!(result.oom.global_kills, 0);
        // The probe missing the kill makes it incomplete.
        let missed = BpfCounters {
            oom_kills: 0,
            ..bpf
        };
        let result = reconcile(&evidence(&applied, &kernel, Some(&missed)));
        assert_eq!(result.memory.verdict, Verdict::Incomplete, "{result:?}");
    }

    #[test]
    fn kill_without_own_oom_is_global_and_shouted() {
        let applied = applied(Some(32 << 20), Some(512));
        let kernel = files("max 0\noom 0\noom_kill 2\n", "max 0\n");
        let bpf = BpfCounters {
            oom_kills: 2,
            ..Default::default()
        };
        let result = reconcile(&evidence(&applied, &kernel, Some(&bpf)));
        assert_eq!(result.oom.global_kills, 2);
        assert!(
            result
                .flags
                .iter()
                .any(|flag| flag.starts_with("GLOBAL OOM"))
        );
        assert_eq!(result.memory.verdict, Verdict::Incomplete);
    }

    #[test]
    fn kills_by_the_budget_above_are_enforced_not_global() {
        let applied = applied(Some(32 << 20), Some(512));
        let kernel = files("max 0\noom 0\noom_kill 3\n", "max 0\n");
        // Four victims marked for three kills: one was already dying.
        let bpf = BpfCounters {
            oom_kills: 4,
            ..Default::default()
        };
        let mut evidence = evidence(&applied, &kernel, Some(&bpf));
        evidence.ancestor_ooms = 7;
        let result = reconcile(&evidence);
        assert_eq!(result.oom.ancestor_kills, 3, "{result:?}");
        assert_eq!(result.oom.global_kills, 0);
        assert_eq!(result.memory.verdict, Verdict::Enforced, "{result:?}");
        assert!(
            result
                .flags
                .iter()
                .any(|flag| flag.contains("guest budget"))
        );
        assert!(
            result
                .flags
                .iter()
                .any(|flag| flag.contains("already dying"))
        );
        // Two-sided: without the ancestor's OOMs the same kills are global.
        evidence.ancestor_ooms = 0;
        let result = reconcile(&evidence);
        assert_eq!(result.oom.global_kills, 3);
        assert_eq!(result.memory.verdict, Verdict::Incomplete);
    }

    #[test]
    fn global_kills_the_kernel_log_names_are_global_beside_the_containers_own() {
        // The container's own limit was hit (oom 1) and it lost 3 tasks: by memory.events
        // alone all 3 are its limit's.
        let applied = applied(Some(32 << 20), Some(512));
        let kernel = files(
            "max 9
oom 1
oom_kill 3
",
            "max 0
",
        );
        let bpf = BpfCounters {
            oom_kills: 3,
            ..Default::default()
        };
        let mut evidence = evidence(&applied, &kernel, Some(&bpf));
        evidence.kernel_log = Some(LoggedKills {
            global: 0,
            overruns: 0,
        });
        let result = reconcile(&evidence);
        assert_eq!(result.memory.verdict, Verdict::Enforced, "{result:?}");
        assert_eq!(result.oom.logged_global_kills, Some(0));
        // The log says two of them were the global OOM killer's.
        evidence.kernel_log = Some(LoggedKills {
            global: 2,
            overruns: 0,
        });
        let result = reconcile(&evidence);
        assert_eq!((result.oom.memcg_kills, result.oom.global_kills), (1, 2));
        assert_eq!(result.memory.verdict, Verdict::Incomplete, "{result:?}");
        assert!(
            result
                .flags
                .iter()
                .any(|flag| flag.contains("the kernel log names them"))
        );
        // A log that fell behind says so; it never lowers what memory.events shows.
        evidence.kernel_log = Some(LoggedKills {
            global: 9,
            overruns: 1,
        });
        let result = reconcile(&evidence);
        assert_eq!((result.oom.memcg_kills, result.oom.global_kills), (0, 3));
        assert!(result.flags.iter().any(|flag| flag.contains("fell behind")));
    }

    #[test]
    fn a_sub_cgroups_own_limit_is_named() {
        let applied = applied(Some(64 << 20), Some(512));
        let mut kernel = files("max 3\noom 1\noom_kill 1\n", "max 0\n");
        kernel.memory_events_local = Some(
            crate::cgroup::KeyedCounts::parse(std::path::Path::new("l"), "max 0\noom 0\n").unwrap(),
        );
        let result = reconcile(&evidence(&applied, &kernel, None));
        assert_eq!(result.oom.sub_cgroup_ooms, 1, "{result:?}");
        assert!(result.flags.iter().any(|flag| flag.contains("sub-cgroup")));
    }

    #[test]
    fn oom_without_kill_is_a_livelock() {
        let applied = applied(Some(32 << 20), Some(512));
        let kernel = files("max 9000\noom 5620\noom_kill 0\n", "max 0\n");
        let result = reconcile(&evidence(&applied, &kernel, None));
        assert!(result.flags.iter().any(|flag| flag.starts_with("LIVELOCK")));
    }

    #[test]
    fn a_page_of_forced_overcharge_is_flagged_not_violated() {
        let mut applied = applied(Some(32 << 20), Some(64));
        applied.memory_peak = Some((32 << 20) + 4096);
        let kernel = files("max 5\noom 1\noom_kill 1\n", "max 0\n");
        let result = reconcile(&evidence(&applied, &kernel, None));
        assert_eq!(result.memory.verdict, Verdict::Enforced, "{result:?}");
        assert!(
            result
                .flags
                .iter()
                .any(|flag| flag.contains("by 4096 bytes"))
        );
        applied.memory_peak = Some((32 << 20) + MEMORY_OVERCHARGE_SLACK + 1);
        let result = reconcile(&evidence(&applied, &kernel, None));
        assert_eq!(result.memory.verdict, Verdict::Violated);
    }
}
