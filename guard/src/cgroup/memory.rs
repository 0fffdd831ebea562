//! The memory controller: the names of its files, and every limit guard writes there
//! (`memory.max`, `memory.swap.max`, `memory.high`). What a cgroup holds is read back by
//! [`HeldLimits::read`](super::HeldLimits::read), its counters by
//! [`EventFiles::read`](super::EventFiles::read), both with these names.
use std::path::Path;

use super::{CgroupError, write_limit, write_limit_unless_smaller};

/// The memory limit: the OOM killer acts beyond it.
pub const MAX: &str = "memory.max";
/// The swap limit (absent without swap accounting: CONFIG_SWAP, or swap accounting off).
pub const SWAP_MAX: &str = "memory.swap.max";
/// The throttling threshold: reclaim and throttling above it, no OOM kill.
pub const HIGH: &str = "memory.high";
/// The high-water mark (kernels 5.19+).
pub const PEAK: &str = "memory.peak";
/// What the cgroup and its descendants use now.
pub const CURRENT: &str = "memory.current";
/// Event counters of the cgroup and its descendants (`max`, `oom`, `oom_kill`, …).
pub const EVENTS: &str = "memory.events";
/// Event counters of the cgroup alone.
pub const EVENTS_LOCAL: &str = "memory.events.local";

/// Writes `memory.max`: `bytes`, or `max` for None.
pub fn apply_max(cgroup: &Path, bytes: Option<u64>) -> Result<(), CgroupError> {
    write_limit(cgroup, MAX, bytes)
}

/// Writes `memory.swap.max`: `bytes`, or `max` for None. Fails (NotFound) where the kernel
/// does not account swap.
pub fn apply_swap_max(cgroup: &Path, bytes: Option<u64>) -> Result<(), CgroupError> {
    write_limit(cgroup, SWAP_MAX, bytes)
}

/// Writes `memory.high`: `bytes`, or `max` for None.
pub fn apply_high(cgroup: &Path, bytes: Option<u64>) -> Result<(), CgroupError> {
    write_limit(cgroup, HIGH, bytes)
}

/// Whether the kernel accounts swap for `cgroup` (it has a `memory.swap.max`).
pub fn accounts_swap(cgroup: &Path) -> Result<bool, CgroupError> {
    Ok(super::read(cgroup, SWAP_MAX)?.is_some())
}

/// `memory.max` = `bytes` and, where the kernel accounts swap, `memory.swap.max` = 0, so that
/// swap cannot dodge the limit: the swap limit written (None: no swap accounting).
pub fn apply_max_without_swap(cgroup: &Path, bytes: u64) -> Result<Option<u64>, CgroupError> {
    apply_max(cgroup, Some(bytes))?;
    if !accounts_swap(cgroup)? {
        return Ok(None);
    }
    apply_swap_max(cgroup, Some(0))?;
    Ok(Some(0))
}

/// Writes `memory.max` = `bytes` unless the cgroup already holds a smaller limit, which is kept
/// (an operator's tighter limit wins) and returned.
pub fn apply_max_unless_smaller(cgroup: &Path, bytes: u64) -> Result<Option<u64>, CgroupError> {
    write_limit_unless_smaller(cgroup, MAX, bytes)
}
