//! A container's report: what was asked, what the kernel holds, what was counted, and the
//! reconciled verdict, as JSON (serde) or as text for a terminal.
use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;

use super::Reconciliation;
use crate::{
    Tier,
    cgroup::{EventFiles, HeldLimits, LimitValue},
    counters::{ContainerCounters, LossReport},
    limits::Limits,
};

/// A container's report.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The container's id.
    pub container: String,
    /// Its cgroup's path.
    pub cgroup: PathBuf,
    /// Its cgroup's id.
    pub cgroup_id: u64,
    /// The tier the guard ran at.
    pub tier: Tier,
    /// The limits the agent said it applied (None: the guard was not told, e.g. a cgroup it
    /// did not create), so the verdict can check the kernel holds exactly those.
    pub requested: Option<Limits>,
    /// What the kernel holds now.
    pub applied: HeldLimits,
    /// The container's counters, after a drain.
    pub counters: ContainerCounters,
    /// The kernel's event counters since watching began.
    pub kernel_since_watch: EventFiles,
    /// Everything lost between the kernel and the subscribers, guard-wide.
    pub loss: LossReport,
    /// The verdicts and the evidence for them (serialized flat, beside the fields above).
    #[serde(flatten)]
    pub reconciliation: Reconciliation,
}

impl Report {
    /// A compact human-readable rendering.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let r = &self.reconciliation;
        let _ = writeln!(
            out,
            "container {}  cgroup {} (id {})  tier {}",
            self.container,
            self.cgroup.display(),
            self.cgroup_id,
            self.tier
        );
        let show =
            |limit: Option<LimitValue>| limit.map_or("-".to_string(), |limit| limit.to_string());
        let _ = writeln!(
            out,
            "  limits      memory.max {} (asked {})  memory.swap.max {}  pids.max {} (asked {})",
            show(self.applied.memory_max),
            asked(self.requested.map(|limits| limits.memory_max)),
            show(self.applied.memory_swap_max),
            show(self.applied.pids_max),
            asked(self.requested.map(|limits| limits.pids_max)),
        );
        match &self.counters.bpf {
            Some(bpf) => {
                let _ = writeln!(
                    out,
                    "  BPF         forks {}  exits {}  fork denied {}  OOM kills {}  reclaims {} ({} pages)  throttled {}",
                    bpf.forks,
                    bpf.exits,
                    bpf.fork_denied,
                    bpf.oom_kills,
                    bpf.reclaim_runs,
                    bpf.reclaim_pages,
                    bpf.events_throttled
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  BPF         unavailable (tier {})",
                    u8::from(self.tier)
                );
            }
        }
        let _ = writeln!(
            out,
            "  pids        {:<14} {}",
            r.pids.verdict.to_string(),
            r.pids.evidence
        );
        let _ = writeln!(
            out,
            "  memory      {:<14} {}",
            r.memory.verdict.to_string(),
            r.memory.evidence
        );
        for flag in &r.flags {
            let _ = writeln!(out, "  ! {flag}");
        }
        let health = &self.loss.reader_health;
        if health.faults > 0 {
            let _ = writeln!(
                out,
                "  ! event reader {:?} after {} fault(s), last: {}",
                health.state,
                health.faults,
                health.last_fault.as_deref().unwrap_or("?")
            );
        }
        if let Some(log) = &self.loss.log_incomplete {
            let _ = writeln!(out, "  ! forensic {log}");
        }
        let _ = writeln!(out, "  verdict     {}", r.verdict);
        out
    }
}

/// What was asked for one limit (`-`: not told, or no limit).
fn asked(limit: Option<Option<u64>>) -> String {
    limit
        .flatten()
        .map_or("-".to_string(), |value| value.to_string())
}
