//! Which watched container, if any, the current task belongs to.
use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use guard_common::{Counter, MAX_CGROUP_LEVEL, ProbeConfig};

use crate::maps::{COUNTERS, WATCHED};

pub struct Container {
    pub cgroup_id: u64,
    pub slot: u32,
}

/// The container of the current task: its own cgroup if registered, else its deepest registered
/// ancestor, so sub-cgroups a container creates stay attributed to it.
#[inline(always)]
pub fn current_container(config: &ProbeConfig) -> Option<Container> {
    let own = unsafe { bpf_get_current_cgroup_id() };
    if let Some(entry) = unsafe { WATCHED.get(own) } {
        return Some(Container {
            cgroup_id: own,
            slot: entry.slot,
        });
    }
    let levels = config.watched_levels;
    let mut level = MAX_CGROUP_LEVEL;
    while level > 0 {
        level -= 1;
        if levels & (1u64 << level) == 0 {
            continue;
        }
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 || ancestor == own {
            continue;
        }
        if let Some(entry) = unsafe { WATCHED.get(ancestor) } {
            return Some(Container {
                cgroup_id: ancestor,
                slot: entry.slot,
            });
        }
    }
    None
}

/// Adds `by` to one of a container's counters on this CPU. Returns false when the slot is out
/// of range (a loader bug, reported by the caller).
#[inline(always)]
pub fn bump(slot: u32, counter: Counter, by: u64) -> bool {
    match COUNTERS.get_ptr_mut(slot) {
        Some(row) => {
            unsafe { (*row).values[counter as usize] += by };
            true
        }
        None => false,
    }
}
