//! Live sources that need no tracing (tier 1): what the kernels micro-VM runtimes ship by
//! default still tell about a container's tasks. `perf.rs`: a dummy software event per CPU and
//! watched cgroup whose side-band records (fork, exit, exec) the kernel filters to the cgroup
//! and its descendants, read from mmap'd rings (`ring.rs`, the records in `records.rs`);
//! `tasks.rs`: which container each process is in, kept from those records and seeded from
//! `cgroup.procs` at watch; `oom.rs`: the kernel log's kill lines made `oom_victim` events,
//! attributed through that map. Every event they make says its source
//! ([`EventSource`](crate::events::EventSource)) and goes through the same hub as the BPF
//! tiers' records. `audit.rs`: guard as the audit daemon, each fork, clone, clone3 or vfork
//! that failed with EAGAIN a record (`denials.rs` makes them `fork_denied` events);
//! `taskstats.rs`: every task's exit statistics, its direct-reclaim and thrashing delays;
//! `delays.rs` sums them per container through the task map.
use crate::{Tier, counters::SourceCounters, events::EventDetail};

pub mod audit;
pub(crate) mod delays;
pub(crate) mod denials;
pub(crate) mod oom;
pub(crate) mod perf;
mod records;
mod ring;
pub(crate) mod tasks;
pub mod taskstats;

/// The live sources a guard runs at `tier`, by the names events carry
/// ([`EventSource::name`](crate::events::EventSource::name)).
pub fn live_at(tier: Tier) -> &'static [&'static str] {
    match tier {
        Tier::CgroupFilesOnly => &["cgroup_files"],
        Tier::KernelSources => &["perf", "kmsg", "cgroup_files"],
        Tier::Tracepoints | Tier::TracepointsAndKprobes => &["bpf", "kmsg", "cgroup_files"],
    }
}

/// Counts one event of a live source without tracing in its container's row.
pub(crate) fn tally(counters: &mut SourceCounters, detail: &EventDetail) {
    match detail {
        EventDetail::Fork(_) => counters.forks += 1,
        EventDetail::Exit(_) => counters.exits += 1,
        EventDetail::Exec(_) => counters.execs += 1,
        EventDetail::ForkDenied(_) => *counters.fork_denied.get_or_insert(0) += 1,
        EventDetail::OomVictim(victim) => {
            counters.oom_kills += 1;
            if victim.scope == Some("global") {
                counters.oom_kills_global += 1;
            }
        }
        EventDetail::Lost(lost) => counters.lost += lost.count,
        _ => {}
    }
}

/// A live source could not be started or extended to a container.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `perf_event_open` refused an event for a cgroup on a CPU.
    #[error("perf_event_open for cgroup {cgroup} on CPU {cpu}: {source}")]
    PerfOpen {
        /// The cgroup's directory.
        cgroup: String,
        /// The CPU.
        cpu: u32,
        /// The syscall's error.
        source: std::io::Error,
    },
    /// The event's ring could not be mapped.
    #[error("mapping the perf ring of cgroup {cgroup} on CPU {cpu}: {source}")]
    PerfMap {
        /// The cgroup's directory.
        cgroup: String,
        /// The CPU.
        cpu: u32,
        /// The mmap's error.
        source: std::io::Error,
    },
    /// The cgroup's directory could not be opened (its fd names the cgroup to perf).
    #[error("opening cgroup {cgroup}: {source}")]
    Cgroup {
        /// The cgroup's directory.
        cgroup: String,
        /// The open's error.
        source: std::io::Error,
    },
    /// The epoll set the rings are polled with could not be made or extended.
    #[error("polling the perf rings (epoll): {source}")]
    Epoll {
        /// The error.
        source: std::io::Error,
    },
    /// The online CPUs could not be read.
    #[error("reading {path}: {source}")]
    Cpus {
        /// The file read.
        path: String,
        /// The read's or the parse's error.
        source: std::io::Error,
    },
}
