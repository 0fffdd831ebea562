//! What the runtime hands back: the `limits_applied` record of a created container, the
//! times of its operations, and what a removed container left.
use std::{path::PathBuf, time::Duration};

use serde::Serialize;

use crate::{
    cgroup::{EventFiles, HeldLimits},
    container_id::ContainerId,
    limits::Limits,
};

/// What the kernel really holds for a freshly created container: the `limits_applied` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreationRecord {
    /// Always "limits_applied".
    pub kind: &'static str,
    /// The container.
    pub container: ContainerId,
    /// The cgroup directory (absolute, under the cgroup2 mount).
    pub cgroup: PathBuf,
    /// The cgroup's id (its inode number: what BPF sees).
    pub cgroup_id: u64,
    /// The container's init, as the guest sees it.
    pub init_pid: i32,
    /// The limits asked for.
    pub requested: Limits,
    /// What the kernel holds: equal to `requested`, or creation failed.
    pub read_back: HeldLimits,
    /// The init's `oom_score_adj` (read from /proc).
    pub oom_score_adj: i32,
}

/// Times of the runtime's operations, for reports and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// [`Runtime::create`](super::Runtime::create), checks included, in microseconds.
    pub create_us: u64,
    /// [`Container::start`](super::Container::start), in microseconds.
    pub start_us: u64,
    /// [`Container::delete`](super::Container::delete), in microseconds.
    pub delete_us: u64,
}

pub(super) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A container removed by [`Container::delete`](super::Container::delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The container.
    pub container: ContainerId,
    /// Its cgroup, now gone.
    pub cgroup: PathBuf,
    /// `memory.events`, `memory.events.local`, `pids.events` (and `pids.events.local`), read
    /// just before the cgroup was removed.
    pub final_events: EventFiles,
}
