//! Reconciliation: the BPF counters against the kernel's own event files, per limit, ending in
//! a verdict with the numbers that justify it.
//!
//! Verdicts: `enforced` (the limit was hit and the kernel's and the probes' counts agree),
//! `not_exercised` (nothing reached the limit, or no limit was in force), `incomplete` (the
//! counts disagree, or events were lost), `violated` (a requested limit was not in force, or
//! usage went past it).
use std::fmt;

use serde::Serialize;

use crate::{
    Tier,
    cgroup::{EventFiles, Limit, LimitsReadBack},
    guard::BpfCounters,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NotExercised,
    Enforced,
    Incomplete,
    Violated,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::NotExercised => "not exercised",
            Verdict::Enforced => "enforced",
            Verdict::Incomplete => "incomplete",
            Verdict::Violated => "violated",
        })
    }
}

/// One limit's verdict and the evidence for it, in words a reader can check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitVerdict {
    pub verdict: Verdict,
    pub evidence: String,
}

/// How the container's OOM kills split between its own limit and the global OOM killer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OomSummary {
    /// Kills the probes attributed to this container (None at tier 0).
    pub bpf_kills: Option<u64>,
    /// `memory.events` oom_kill since the container was watched.
    pub kernel_kills: u64,
    /// Kills by the container's own memory.max (its `oom` count rose).
    pub memcg_kills: u64,
    /// Kills of the container's tasks by the global OOM killer (no `oom` rise of its own).
    pub global_kills: u64,
}

/// Everything reconciliation needs about one container.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    pub tier: Tier,
    /// What the agent asked for (None: unknown, e.g. a cgroup the guard did not create).
    pub requested_memory_max: Option<u64>,
    pub requested_pids_max: Option<u64>,
    pub applied: &'a LimitsReadBack,
    /// Kernel event counters since the container was watched.
    pub kernel: &'a EventFiles,
    pub bpf: Option<&'a BpfCounters>,
    /// Events of any container lost in the ring buffer since the guard started.
    pub events_lost: u64,
}

/// The reconciled result for one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub pids: LimitVerdict,
    pub memory: LimitVerdict,
    pub oom: OomSummary,
    /// Things an operator must know that no single verdict says.
    pub flags: Vec<String>,
    pub verdict: Verdict,
}

pub fn reconcile(evidence: &Evidence<'_>) -> Reconciliation {
    let mut flags = Vec::new();
    let pids = pids_verdict(evidence, &mut flags);
    let (memory, oom) = memory_verdict(evidence, &mut flags);
    let mut verdict = pids.verdict.max(memory.verdict);
    if evidence.events_lost > 0 {
        flags.push(format!(
            "{} event(s) were lost in the ring buffer: individual events are missing (counters \
             are exact)",
            evidence.events_lost
        ));
        verdict = verdict.max(Verdict::Incomplete);
    }
    if evidence.tier == Tier::CgroupFilesOnly {
        flags.push(
            "tier 0: no BPF tracing, the evidence is the kernel's event files alone (no \
             per-event detail, no attribution of OOM victims)"
                .to_string(),
        );
    }
    Reconciliation {
        pids,
        memory,
        oom,
        flags,
        verdict,
    }
}

fn limit_value(limit: Option<Limit>) -> Option<u64> {
    limit.and_then(Limit::value)
}

/// A requested limit that the kernel does not hold is a violation before anything ran.
fn limit_in_force(
    what: &str,
    requested: Option<u64>,
    applied: Option<Limit>,
) -> Result<u64, LimitVerdict> {
    match (requested, limit_value(applied)) {
        (Some(requested), Some(applied)) if requested != applied => Err(LimitVerdict {
            verdict: Verdict::Violated,
            evidence: format!("{what} requested {requested}, but the kernel holds {applied}"),
        }),
        (_, Some(applied)) => Ok(applied),
        (Some(requested), None) => Err(LimitVerdict {
            verdict: Verdict::Violated,
            evidence: format!(
                "{what} requested {requested}, but the cgroup has {}",
                applied.map_or("no such file".to_string(), |limit| limit.to_string())
            ),
        }),
        (None, None) => Err(LimitVerdict {
            verdict: Verdict::NotExercised,
            evidence: format!("no {what} limit in force"),
        }),
    }
}

fn pids_verdict(evidence: &Evidence<'_>, flags: &mut Vec<String>) -> LimitVerdict {
    let limit = match limit_in_force(
        "pids.max",
        evidence.requested_pids_max,
        evidence.applied.pids_max,
    ) {
        Ok(limit) => limit,
        Err(verdict) => return verdict,
    };
    if let Some(peak) = evidence.applied.pids_peak.filter(|&peak| peak > limit) {
        return LimitVerdict {
            verdict: Verdict::Violated,
            evidence: format!("pids.peak {peak} exceeds pids.max {limit}"),
        };
    }
    let Some(events) = &evidence.kernel.pids_events else {
        return LimitVerdict {
            verdict: Verdict::Incomplete,
            evidence: "the cgroup has no pids.events: the pids controller is not enabled"
                .to_string(),
        };
    };
    let kernel_denied = events.get("max");
    let Some(bpf) = evidence.bpf else {
        return LimitVerdict {
            verdict: if kernel_denied > 0 {
                Verdict::Enforced
            } else {
                Verdict::NotExercised
            },
            evidence: format!(
                "pids.events max = {kernel_denied} at pids.max {limit} (kernel counter only)"
            ),
        };
    };
    // Where the kretprobe ran, its count is exactly pids.max denials; otherwise EAGAIN
    // also counts RLIMIT_NPROC and threads-max refusals.
    let (bpf_denied, how) = match bpf.fork_denied_pids_max {
        Some(observed) => (observed, "observed at pids_can_fork"),
        None => (bpf.fork_denied, "EAGAIN at fork exit, cause inferred"),
    };
    if bpf.fork_denied > bpf_denied {
        flags.push(format!(
            "{} fork(s) failed with EAGAIN for another reason than pids.max (RLIMIT_NPROC or \
             threads-max)",
            bpf.fork_denied - bpf_denied
        ));
    }
    let numbers = format!(
        "pids.events max = {kernel_denied}, BPF fork denials = {bpf_denied} ({how}), forks = {}, \
         pids.max = {limit}",
        bpf.forks
    );
    let verdict = match (kernel_denied, bpf_denied) {
        (0, 0) => Verdict::NotExercised,
        (kernel, probes) if kernel == probes => Verdict::Enforced,
        _ => Verdict::Incomplete,
    };
    LimitVerdict {
        verdict,
        evidence: numbers,
    }
}

/// How far the kernel may push memory usage past memory.max by itself: it force-charges some
/// allocations (an OOM victim exiting, __GFP_NOFAIL) and charges in batches of 64 pages
/// (MEMCG_CHARGE_BATCH). Overage within this is the kernel's documented behaviour, not a
/// violation.
pub const MEMORY_OVERCHARGE_SLACK: u64 = 64 * 4096;

fn memory_verdict(evidence: &Evidence<'_>, flags: &mut Vec<String>) -> (LimitVerdict, OomSummary) {
    let events = evidence.kernel.memory_events.clone().unwrap_or_default();
    let kernel_kills = events.get("oom_kill");
    let memcg_ooms = events.get("oom");
    let bpf_kills = evidence.bpf.map(|bpf| bpf.oom_kills);
    // A kill with no OOM of the container's own is the global OOM killer's.
    let memcg_kills = if memcg_ooms > 0 { kernel_kills } else { 0 };
    let oom = OomSummary {
        bpf_kills,
        kernel_kills,
        memcg_kills,
        global_kills: kernel_kills - memcg_kills,
    };
    if oom.global_kills > 0 {
        flags.push(format!(
            "GLOBAL OOM: the global OOM killer killed {} task(s) of this container: the guest \
             as a whole ran out of memory",
            oom.global_kills
        ));
    }
    if memcg_ooms > 0 && kernel_kills == 0 {
        flags.push(format!(
            "LIVELOCK: memory.events oom = {memcg_ooms} with oom_kill = 0: the memcg OOM killer \
             finds no victim (tasks with oom_score_adj -1000?)"
        ));
    }
    let limit = match limit_in_force(
        "memory.max",
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
    let verdict = if hits == 0 && memcg_ooms == 0 && kernel_kills == 0 {
        Verdict::NotExercised
    } else if bpf_kills.is_some_and(|bpf| bpf != kernel_kills) {
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
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::cgroup::KeyedCounts;

    fn keyed(text: &str) -> Option<KeyedCounts> {
        Some(KeyedCounts::parse(Path::new("test"), text).unwrap())
    }

    fn applied(memory: Option<u64>, pids: Option<u64>) -> LimitsReadBack {
        LimitsReadBack {
            cgroup: PathBuf::from("/sys/fs/cgroup/guard/c"),
            memory_max: Some(memory.map_or(Limit::Max, Limit::Value)),
            memory_swap_max: Some(Limit::Value(0)),
            pids_max: Some(pids.map_or(Limit::Max, Limit::Value)),
            memory_peak: None,
            pids_peak: None,
        }
    }

    fn files(memory: &str, pids: &str) -> EventFiles {
        EventFiles {
            memory_events: keyed(memory),
            memory_events_local: keyed(memory),
            pids_events: keyed(pids),
            pids_events_local: None,
        }
    }

    fn evidence<'a>(
        applied: &'a LimitsReadBack,
        kernel: &'a EventFiles,
        bpf: Option<&'a BpfCounters>,
    ) -> Evidence<'a> {
        Evidence {
            tier: if bpf.is_some() {
                Tier::TracepointsAndKprobes
            } else {
                Tier::CgroupFilesOnly
            },
            requested_memory_max: limit_value(applied.memory_max),
            requested_pids_max: limit_value(applied.pids_max),
            applied,
            kernel,
            bpf,
            events_lost: 0,
        }
    }

    #[test]
    fn pids_bomb_with_matching_counts_is_enforced() {
        let applied = applied(Some(100 << 20), Some(512));
        let kernel = files("max 0\noom 0\noom_kill 0\n", "max 488\n");
        let bpf = BpfCounters {
            forks: 511,
            fork_denied: 488,
            fork_denied_pids_max: Some(488),
            ..Default::default()
        };
        let result = reconcile(&evidence(&applied, &kernel, Some(&bpf)));
        assert_eq!(result.pids.verdict, Verdict::Enforced, "{result:?}");
        assert_eq!(result.memory.verdict, Verdict::NotExercised);
        assert_eq!(result.verdict, Verdict::Enforced);
        assert!(result.pids.evidence.contains("pids.events max = 488"));
    }

    #[test]
    fn disagreeing_counts_are_incomplete() {
        let applied = applied(Some(100 << 20), Some(512));
        let kernel = files("", "max 488\n");
        let bpf = BpfCounters {
            fork_denied: 400,
            fork_denied_pids_max: Some(400),
            ..Default::default()
        };
        let result = reconcile(&evidence(&applied, &kernel, Some(&bpf)));
        assert_eq!(result.pids.verdict, Verdict::Incomplete, "{result:?}");
        assert_eq!(result.verdict, Verdict::Incomplete);
    }

    #[test]
    fn eagain_from_other_causes_is_flagged_not_counted() {
        let applied = applied(None, Some(512));
        let kernel = files("", "max 0\n");
        let bpf = BpfCounters {
            fork_denied: 7,
            fork_denied_pids_max: Some(0),
            ..Default::default()
        };
        let result = reconcile(&evidence(&applied, &kernel, Some(&bpf)));
        assert_eq!(result.pids.verdict, Verdict::NotExercised, "{result:?}");
        assert!(result.flags.iter().any(|flag| flag.contains("7 fork(s)")));
    }

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
    fn oom_without_kill_is_a_livelock() {
        let applied = applied(Some(32 << 20), Some(512));
        let kernel = files("max 9000\noom 5620\noom_kill 0\n", "max 0\n");
        let result = reconcile(&evidence(&applied, &kernel, None));
        assert!(result.flags.iter().any(|flag| flag.starts_with("LIVELOCK")));
    }

    #[test]
    fn requested_limit_not_in_force_is_violated() {
        let applied = applied(None, None);
        let kernel = files("", "");
        let mut evidence = evidence(&applied, &kernel, None);
        evidence.requested_pids_max = Some(512);
        let result = reconcile(&evidence);
        assert_eq!(result.pids.verdict, Verdict::Violated, "{result:?}");
        assert!(result.pids.evidence.contains("512"));
        // And no limit at all, none requested: nothing to enforce.
        evidence.requested_pids_max = None;
        assert_eq!(reconcile(&evidence).pids.verdict, Verdict::NotExercised);
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

    #[test]
    fn peak_past_the_limit_is_violated() {
        let mut applied = applied(Some(32 << 20), Some(64));
        applied.pids_peak = Some(65);
        let kernel = files("", "max 3\n");
        let result = reconcile(&evidence(&applied, &kernel, None));
        assert_eq!(result.pids.verdict, Verdict::Violated);
    }

    #[test]
    fn tier_0_says_what_it_lacks_and_lost_events_make_it_incomplete() {
        let applied = applied(Some(32 << 20), Some(64));
        let kernel = files("max 0\n", "max 3\n");
        let mut evidence = evidence(&applied, &kernel, None);
        let result = reconcile(&evidence);
        assert_eq!(result.pids.verdict, Verdict::Enforced);
        assert!(result.flags.iter().any(|flag| flag.starts_with("tier 0")));
        evidence.events_lost = 5;
        assert_eq!(reconcile(&evidence).verdict, Verdict::Incomplete);
    }
}
