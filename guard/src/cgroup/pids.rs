//! The pids controller: the names of its files, and the limit guard writes there
//! (`pids.max`). What a cgroup holds is read back by
//! [`HeldLimits::read`](super::HeldLimits::read), its counters by
//! [`EventFiles::read`](super::EventFiles::read), both with these names.
use std::path::Path;

use super::{CgroupError, write_limit, write_limit_unless_smaller};

/// The task limit: forks beyond it fail with EAGAIN.
pub const MAX: &str = "pids.max";
/// The high-water mark (newer kernels only).
pub const PEAK: &str = "pids.peak";
/// Tasks in the cgroup and its descendants now (exited but unreaped ones included).
pub const CURRENT: &str = "pids.current";
/// Event counters of the cgroup and its descendants (`max`: forks refused at a `pids.max`).
pub const EVENTS: &str = "pids.events";
/// Event counters of the cgroup alone (newer kernels only).
pub const EVENTS_LOCAL: &str = "pids.events.local";

/// Writes `pids.max`: `count`, or `max` for None.
pub fn apply_max(cgroup: &Path, count: Option<u64>) -> Result<(), CgroupError> {
    write_limit(cgroup, MAX, count)
}

/// Writes `pids.max` = `count` unless the cgroup already holds a smaller limit, which is kept
/// (an operator's tighter limit wins) and returned.
pub fn apply_max_unless_smaller(cgroup: &Path, count: u64) -> Result<Option<u64>, CgroupError> {
    write_limit_unless_smaller(cgroup, MAX, count)
}
