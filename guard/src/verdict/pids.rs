//! The pids controller's verdict: `pids.events max` against the BPF fork denials (the
//! kretprobe's exact count at tier 2, EAGAIN at fork exit otherwise).
use super::{Evidence, LimitVerdict, Verdict, limit_in_force};

pub(super) fn verdict(evidence: &Evidence<'_>, flags: &mut Vec<String>) -> LimitVerdict {
    let limit = match limit_in_force(
        crate::cgroup::pids::MAX,
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
    if let Some((sources, audited)) = evidence
        .sources
        .and_then(|sources| Some((sources, sources.fork_denied?)))
    {
        // Tier 1 with audit: one record per denied attempt (EAGAIN, cause inferred, as at
        // tier 2), reconciled with the kernel's count.
        return LimitVerdict {
            verdict: match (kernel_denied, audited) {
                (0, 0) => Verdict::NotExercised,
                (kernel, records) if kernel == records => Verdict::Enforced,
                _ => Verdict::Incomplete,
            },
            evidence: format!(
                "pids.events max = {kernel_denied}, audit fork denials = {audited} (EAGAIN at \
                 fork exit, cause inferred), forks = {} (perf), pids.max = {limit}",
                sources.forks
            ),
        };
    }
    let Some(bpf) = evidence.bpf else {
        return LimitVerdict {
            verdict: if kernel_denied > 0 {
                Verdict::Enforced
            } else {
                Verdict::NotExercised
            },
            evidence: match evidence.sources {
                Some(sources) => format!(
                    "pids.events max = {kernel_denied} at pids.max {limit} (kernel counter); \
                     perf: forks = {}, exits = {}",
                    sources.forks, sources.exits
                ),
                None => format!(
                    "pids.events max = {kernel_denied} at pids.max {limit} (kernel counter only)"
                ),
            },
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

#[cfg(test)]
mod tests {
    use super::super::{fixtures::*, *};

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
    fn peak_past_the_limit_is_violated() {
        let mut applied = applied(Some(32 << 20), Some(64));
        applied.pids_peak = Some(65);
        let kernel = files("", "max 3\n");
        let result = reconcile(&evidence(&applied, &kernel, None));
        assert_eq!(result.pids.verdict, Verdict::Violated);
    }
}
