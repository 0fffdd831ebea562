//! Reconciliation: the BPF counters against the kernel's own event files, one controller a
//! file (`pids.rs`, `memory.rs`), ending in a verdict with the numbers that justify it; the
//! container's whole report is `report.rs`.
//!
//! Verdicts: `enforced` (the limit was hit and the kernel's and the probes' counts agree),
//! `not_exercised` (nothing reached the limit, or no limit was in force), `incomplete` (the
//! counts disagree, or events were lost), `violated` (a requested limit was not in force, or
//! usage went past it).
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    Tier,
    cgroup::{EventFiles, HeldLimits, LimitValue},
    counters::{BpfCounters, SourceCounters},
};

mod memory;
mod pids;
pub(crate) mod report;

pub use memory::MEMORY_OVERCHARGE_SLACK;
pub use report::Report;

/// What the evidence says about a limit, or a container. Ordered from best to worst news: a
/// container's overall verdict is the worst of its limits', raised to [`Verdict::Incomplete`]
/// when events were lost or the cgroup was removed before the report. Serialized in snake
/// case (`not_exercised`, …); displayed in words (`not exercised`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Verdict {
    /// Nothing reached the limit, or no limit was in force (none asked for, and the kernel
    /// holds `max` or has no such file): pids: `pids.events max` and the probes' denials are
    /// both 0; memory: `memory.events` max, oom and oom_kill are all 0.
    NotExercised,
    /// The limit was hit and the kernel's and the probes' counts agree: pids: `pids.events
    /// max` above 0 and equal to the probes' denials (at tier 0, the kernel's count alone);
    /// memory: `memory.events` shows the limit reached, the probes saw at least the kernel's
    /// `oom_kill`s, and the global OOM killer took none of the container's tasks.
    Enforced,
    /// The evidence does not add up: the pids or memory controller is not enabled (no event
    /// file), the kernel's and the probes' counts differ (for memory: the probes saw fewer
    /// kills), the global OOM killer killed tasks of the container, events were lost in the
    /// ring buffer, or the cgroup was removed before the report.
    Incomplete,
    /// A limit was not kept: a requested limit the kernel does not hold (another value, `max`,
    /// or no file), `pids.peak` above `pids.max`, or `memory.peak` above `memory.max` by more
    /// than [`MEMORY_OVERCHARGE_SLACK`].
    Violated,
}

impl Verdict {
    /// Its name, as serialised (`not_exercised`, …).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::NotExercised => "not_exercised",
            Verdict::Enforced => "enforced",
            Verdict::Incomplete => "incomplete",
            Verdict::Violated => "violated",
        }
    }
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
#[non_exhaustive]
pub struct LimitVerdict {
    /// The verdict.
    pub verdict: Verdict,
    /// The numbers behind it (`pids.events max = 12, BPF fork denials = 12 …`), or why there
    /// are none.
    pub evidence: String,
}

/// How the container's OOM kills split between its own limit and the global OOM killer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct OomSummary {
    /// Kills the probes attributed to this container (None below tier 2).
    pub bpf_kills: Option<u64>,
    /// Kills the kernel log reported of this container's tasks, attributed through the task
    /// map (tier 1 only; None elsewhere).
    pub source_kills: Option<u64>,
    /// `memory.events` oom_kill since the container was watched.
    pub kernel_kills: u64,
    /// Kills by the container's own memory.max (its `oom` count rose).
    pub memcg_kills: u64,
    /// Kills by an ancestor's memory.max (the guest budget's): the container's own `oom` did
    /// not rise, an ancestor's did.
    pub ancestor_kills: u64,
    /// Kills of the container's tasks by the global OOM killer (no `oom` rise of its own or
    /// of an ancestor's).
    pub global_kills: u64,
    /// memcg OOMs inside the container that hit a sub-cgroup's own limit, not the
    /// container's (`memory.events` oom minus `memory.events.local` oom).
    pub sub_cgroup_ooms: u64,
    /// The container's victims the kernel log reports killed by the global OOM killer (None:
    /// the log was not read). Counted into `global_kills`, which without it rests on which
    /// `oom` counts rose: a container whose own limit was also hit would hide them.
    pub logged_global_kills: Option<u64>,
}

/// What the kernel log says about a container's OOM kills (`guard::kmsg`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LoggedKills {
    /// The container's OOM victims (as the probes saw them) that the log reports killed by
    /// the global OOM killer.
    pub global: u64,
    /// Times the log's reader fell behind the kernel's buffer: kills may be missing from it.
    pub overruns: u64,
}

/// Everything reconciliation needs about one container: [`Guard::report`](crate::Guard::report)
/// gathers it from the kernel (the unit tests below build it by hand).
#[derive(Debug, Clone)]
pub(crate) struct Evidence<'a> {
    /// The tier the guard ran at (tier 0 adds a flag that there is no per-event detail).
    pub tier: Tier,
    /// What the agent asked for (None: unknown, e.g. a cgroup the guard did not create).
    pub requested_memory_max: Option<u64>,
    /// Likewise for `pids.max`.
    pub requested_pids_max: Option<u64>,
    /// What the cgroup holds (limits and peaks).
    pub applied: &'a HeldLimits,
    /// Kernel event counters since the container was watched.
    pub kernel: &'a EventFiles,
    /// The probes' counters for the container (None below tier 2).
    pub bpf: Option<&'a BpfCounters>,
    /// What the live sources without tracing delivered for it (tier 1 only).
    pub sources: Option<&'a SourceCounters>,
    /// Events of any container lost in the ring buffer since the guard started.
    pub events_lost: u64,
    /// `oom` events of the container's ancestors (the guest budget) since it was watched.
    pub ancestor_ooms: u64,
    /// The cgroup no longer exists: its event files are gone with it.
    pub cgroup_gone: bool,
    /// The kernel log's scope of the container's kills (None: not read, or no probes to
    /// name the victims).
    pub kernel_log: Option<LoggedKills>,
    /// Why the event stream stopped before this report (the reader gave up or died), if it
    /// did: individual events after it are missing.
    pub stream_stopped: Option<&'a str>,
}

/// The reconciled result for one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Reconciliation {
    /// `pids.max`'s verdict.
    pub pids: LimitVerdict,
    /// `memory.max`'s verdict.
    pub memory: LimitVerdict,
    /// How the container's OOM kills split by killer.
    pub oom: OomSummary,
    /// Things an operator must know that no single verdict says.
    pub flags: Vec<String>,
    /// The container's verdict: the worse of the two limits', raised to
    /// [`Verdict::Incomplete`] by lost events or a removed cgroup.
    pub verdict: Verdict,
}

/// Reconciles one container's evidence: a verdict per limit with its numbers, the OOM kills
/// by killer, the flags, and the overall verdict. Pure: the same evidence, the same result
/// (see [`Evidence`] for an example).
pub(crate) fn reconcile(evidence: &Evidence<'_>) -> Reconciliation {
    let mut flags = Vec::new();
    let pids = pids::verdict(evidence, &mut flags);
    let (memory, oom) = memory::verdict(evidence, &mut flags);
    let mut verdict = pids.verdict.max(memory.verdict);
    if evidence.events_lost > 0 {
        flags.push(format!(
            "{} event(s) were lost in the ring buffer: individual events are missing (counters \
             are exact)",
            evidence.events_lost
        ));
        verdict = verdict.max(Verdict::Incomplete);
    }
    if let Some(reason) = evidence.stream_stopped {
        flags.push(format!(
            "the event stream stopped ({reason}): events after it are missing, OOM victims \
             among them (counters are exact)"
        ));
        verdict = verdict.max(Verdict::Incomplete);
    }
    if evidence.cgroup_gone {
        flags.push(
            "the cgroup was removed before this report: the kernel's event files went with it, \
             so nothing here is reconciled with them (unwatch before removing)"
                .to_string(),
        );
        verdict = verdict.max(Verdict::Incomplete);
    }
    if evidence.tier == Tier::CgroupFilesOnly {
        flags.push(
            "tier 0: no BPF tracing, the evidence is the kernel's event files alone (no \
             per-event detail, no attribution of OOM victims)"
                .to_string(),
        );
    } else if evidence.tier == Tier::KernelSources {
        flags.push(
            "tier 1: no BPF tracing; forks, execs and exits from perf's task records, OOM \
             victims from the kernel log, counted as delivered (not by the kernel); reclaim \
             only as delays summed per task at its exit (taskstats), no reclaim runs or pages"
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

fn limit_value(limit: Option<LimitValue>) -> Option<u64> {
    limit.and_then(LimitValue::value)
}

/// A requested limit that the kernel does not hold is a violation before anything ran.
fn limit_in_force(
    what: &str,
    requested: Option<u64>,
    applied: Option<LimitValue>,
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

#[cfg(test)]
pub(super) mod fixtures {
    //! Evidence for the controllers' unit tests.
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::cgroup::KeyedCounts;

    pub fn keyed(text: &str) -> Option<KeyedCounts> {
        Some(KeyedCounts::parse(Path::new("test"), text).unwrap())
    }

    pub fn applied(memory: Option<u64>, pids: Option<u64>) -> HeldLimits {
        HeldLimits {
            cgroup: PathBuf::from("/sys/fs/cgroup/guard/c"),
            memory_max: Some(memory.map_or(LimitValue::Max, LimitValue::Value)),
            memory_swap_max: Some(LimitValue::Value(0)),
            pids_max: Some(pids.map_or(LimitValue::Max, LimitValue::Value)),
            memory_peak: None,
            pids_peak: None,
        }
    }

    pub fn files(memory: &str, pids: &str) -> EventFiles {
        EventFiles {
            memory_events: keyed(memory),
            memory_events_local: keyed(memory),
            pids_events: keyed(pids),
            pids_events_local: None,
        }
    }

    pub fn evidence<'a>(
        applied: &'a HeldLimits,
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
            sources: None,
            events_lost: 0,
            ancestor_ooms: 0,
            cgroup_gone: false,
            kernel_log: None,
            stream_stopped: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

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

    /// A fork bomb that pids.max stopped: enforced; then lost records, then a limit the
    /// kernel does not hold.
    #[test]
    fn a_fork_bomb_stopped_by_pids_max_is_enforced() {
        let applied = applied(Some(32 << 20), Some(64));
        let kernel = files("max 0\noom 0\noom_kill 0\n", "max 12\n");
        let bpf = BpfCounters {
            forks: 63,
            fork_denied: 12,
            fork_denied_pids_max: Some(12),
            ..BpfCounters::default()
        };
        let mut evidence = Evidence {
            tier: Tier::TracepointsAndKprobes,
            requested_memory_max: Some(32 << 20),
            requested_pids_max: Some(64),
            ..evidence(&applied, &kernel, Some(&bpf))
        };
        let result = reconcile(&evidence);
        assert_eq!(result.pids.verdict, Verdict::Enforced);
        assert_eq!(result.memory.verdict, Verdict::NotExercised);
        assert_eq!(result.verdict, Verdict::Enforced);
        // Records lost in the ring buffer: the counters are exact, the events not all there.
        evidence.events_lost = 3;
        assert_eq!(reconcile(&evidence).verdict, Verdict::Incomplete);
        // The agent asked for 128 tasks, the kernel holds 64.
        evidence.requested_pids_max = Some(128);
        assert_eq!(reconcile(&evidence).pids.verdict, Verdict::Violated);
    }

    #[test]
    fn verdict_names_are_the_serialised_ones() {
        for verdict in [
            Verdict::NotExercised,
            Verdict::Enforced,
            Verdict::Incomplete,
            Verdict::Violated,
        ] {
            assert_eq!(serde_json::to_value(verdict).unwrap(), verdict.name());
        }
    }
}
