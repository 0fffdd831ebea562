//! What was counted and what was lost: plain data, below everything else. The kernel keeps the
//! BPF counters exactly; the pipeline counts what reached userspace and what did not.
use std::collections::BTreeMap;

use guard_common::{COUNTER_SLOTS, Counter};
use serde::{Deserialize, Serialize};

/// Counters the BPF programs keep in the kernel: exact, whatever happened to the stream. Read
/// back from JSON, a missing field is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BpfCounters {
    /// Forks and thread creations (`sched_process_fork`) by the container's tasks.
    pub forks: u64,
    /// Tasks of the container that exited (`sched_process_exit`, threads included).
    pub exits: u64,
    /// Fork-family syscalls that failed with EAGAIN.
    pub fork_denied: u64,
    /// Of those, denials the `pids_can_fork` kretprobe saw (None below tier 2: not observed).
    pub fork_denied_pids_max: Option<u64>,
    /// OOM victims chosen among the container's tasks (`oom:mark_victim`), by either killer:
    /// the verdict tells the container's own limit from the global OOM killer.
    pub oom_kills: u64,
    /// Direct memcg reclaim runs in the container's tasks (`mm_vmscan_memcg_reclaim_end`).
    pub reclaim_runs: u64,
    /// Time those reclaim runs took, in nanoseconds, summed.
    pub reclaim_ns: u64,
    /// Pages those reclaim runs reclaimed, summed.
    pub reclaim_pages: u64,
    /// Individual events not streamed because of the rate bound.
    pub events_throttled: u64,
    /// Tasks the task map could not hold (their OOM kills would be unattributed).
    pub task_map_full: u64,
}

impl BpfCounters {
    /// From one counter row summed over CPUs; `kprobes` says whether the kretprobe ran.
    pub(crate) fn from_values(values: &[u64; COUNTER_SLOTS], kprobes: bool) -> Self {
        let value = |counter: Counter| values[counter as usize];
        Self {
            forks: value(Counter::Forks),
            exits: value(Counter::Exits),
            fork_denied: value(Counter::ForkDenied),
            fork_denied_pids_max: kprobes.then(|| value(Counter::ForkDeniedPidsMax)),
            oom_kills: value(Counter::OomKills),
            reclaim_runs: value(Counter::ReclaimRuns),
            reclaim_ns: value(Counter::ReclaimNs),
            reclaim_pages: value(Counter::ReclaimPages),
            events_throttled: value(Counter::EventsThrottled),
            task_map_full: value(Counter::TaskMapFull),
        }
    }
}

/// Per-container tallies of the events the reader received (0 for a container: none). Each
/// streamed payload adds to its own (`signals::Streamed::tally`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Delivered {
    /// Fork events received.
    pub forks: u64,
    /// Fork-denial events received.
    pub fork_denied: u64,
    /// OOM-victim events received.
    pub oom_victims: u64,
    /// Reclaim events received.
    pub reclaims: u64,
    /// Throttle records received.
    pub throttle_records: u64,
    /// The individual events those throttle records say were suppressed, summed.
    pub suppressed: u64,
}

impl Delivered {
    /// Each tally with its name (its field's, as serialised).
    pub fn by_name(&self) -> [(&'static str, u64); 6] {
        [
            ("forks", self.forks),
            ("fork_denied", self.fork_denied),
            ("oom_victims", self.oom_victims),
            ("reclaims", self.reclaims),
            ("throttle_records", self.throttle_records),
            ("suppressed", self.suppressed),
        ]
    }
}

/// What the live sources without tracing delivered for one container (tier 1): perf's task
/// records, the kernel log's OOM kills, audit's denials. Counted as each record is read, so
/// unlike [`BpfCounters`] they are not the kernel's: a record the source lost is in `lost`
/// instead (perf's PERF_RECORD_LOST), never silently missing. Read back from JSON, a missing
/// field is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SourceCounters {
    /// Forks and thread creations (perf's PERF_RECORD_FORK).
    pub forks: u64,
    /// Tasks that exited, threads included (PERF_RECORD_EXIT).
    pub exits: u64,
    /// Execs (PERF_RECORD_COMM with the exec flag).
    pub execs: u64,
    /// OOM kills of the container's tasks the kernel log reported, by either killer.
    pub oom_kills: u64,
    /// Of those, the global OOM killer's (the log's scope).
    pub oom_kills_global: u64,
    /// Denied fork attempts, one per audit record (None: audit not read, the count is
    /// `pids.events max` alone).
    pub fork_denied: Option<u64>,
    /// Records the sources said they lost (perf's PERF_RECORD_LOST, summed).
    pub lost: u64,
    /// Tasks (threads included) whose exit statistics taskstats delivered and the task map
    /// attributed to the container: the delays below are theirs, summed. 0 where taskstats
    /// does not run (the guard's sources say whether it does).
    pub tasks_accounted: u64,
    /// Direct-reclaim waits of those tasks (delay accounting's `freepages_count`), summed.
    pub reclaim_delays: u64,
    /// Nanoseconds those tasks spent in direct reclaim (`freepages_delay_total`), summed.
    pub reclaim_delay_ns: u64,
    /// Nanoseconds those tasks waited on thrashing pages (`thrashing_delay_total`), summed.
    pub thrashing_delay_ns: u64,
}

/// One container's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ContainerCounters {
    /// The container's id.
    pub container: String,
    /// The id (inode number) of the container's cgroup.
    pub cgroup_id: u64,
    /// None below tier 2, where no BPF program runs: the guard never pretends to detail it
    /// lacks.
    pub bpf: Option<BpfCounters>,
    /// What the live sources without tracing delivered: Some at tier 1 only.
    pub sources: Option<SourceCounters>,
    /// Events the reader received for this container.
    pub delivered: Delivered,
}

/// Events that belong to no registered container: OOM kills of tasks outside every container
/// (global OOM, or the agent itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GlobalCounters {
    /// The kernel's counts for tasks in no container (None at tier 0). Only OOM kills are
    /// counted here: the programs attribute nothing else outside a container.
    pub bpf: Option<BpfCounters>,
    /// Events the reader received that belong to no container.
    pub delivered: Delivered,
}

/// Userspace-side losses: a reader can always tell "nothing happened" from "something happened
/// that we did not see".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ReaderLoss {
    /// Records missing from a CPU's sequence (lost in the kernel, seen from userspace).
    pub sequence_gaps: u64,
    /// Records the reader could not decode.
    pub undecodable: u64,
    /// Events not handed to a subscriber whose buffer was full: a total over every subscriber
    /// the guard has had, so an event two full subscribers missed counts twice. One
    /// subscriber's own count comes with
    /// [`Guard::subscribe_counted`](crate::Guard::subscribe_counted).
    pub subscriber_drops: u64,
}

/// How the event reader is doing. Faults also reach subscribers in-band, as `reader_fault`
/// events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ReaderHealth {
    /// Healthy, recovered after faults, or stopped.
    pub state: HealthState,
    /// Faults so far (a panic while draining, a failed poll of the ring buffer).
    pub faults: u64,
    /// Times the reader resumed after a fault.
    pub restarts: u64,
    /// What the last fault was (a panic message or the poll's error); None if none.
    pub last_fault: Option<String>,
}

/// The event reader's state (serialized in snake case: `healthy`, `recovered`, `stopped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthState {
    /// Never faulted.
    #[default]
    Healthy,
    /// Faulted and resumed: counts stay exact (the kernel kept counting, the ring buffer keeps
    /// its read position), but live events may have been delayed.
    Recovered,
    /// Gave up after repeated faults: no live events; kernel counters still count.
    Stopped,
}

impl HealthState {
    /// Its name, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Recovered => "recovered",
            HealthState::Stopped => "stopped",
        }
    }
}

/// Everything lost anywhere between the kernel and the subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LossReport {
    /// Ring-buffer reserve failures in the kernel, by event kind name.
    pub kernel_reserve_failures: BTreeMap<String, u64>,
    /// What userspace lost or missed: sequence gaps, undecodable records, subscriber drops.
    pub reader: ReaderLoss,
    /// Whether the reader faulted on the way (its faults are not losses by themselves: the
    /// sequence check above counts any record that went missing).
    pub reader_health: ReaderHealth,
    /// The forensic log could not write some records: from which seq, why, whether it writes
    /// again (None: the log is whole, or there is none). The counters above stay exact.
    pub log_incomplete: Option<crate::forensic::LogIncomplete>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the metrics label tallies and states with are the serialised ones.
    #[test]
    fn names_are_the_serialised_ones() {
        let delivered = Delivered {
            forks: 1,
            fork_denied: 2,
            oom_victims: 3,
            reclaims: 4,
            throttle_records: 5,
            suppressed: 6,
        };
        let json = serde_json::to_value(delivered).unwrap();
        let names = delivered.by_name();
        assert_eq!(json.as_object().unwrap().len(), names.len());
        for (name, value) in names {
            assert_eq!(json[name], value, "{name}");
        }
        for state in [
            HealthState::Healthy,
            HealthState::Recovered,
            HealthState::Stopped,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.name());
        }
    }
}
