//! Which watched container, if any, a task belongs to, and its exact counters. Every hook
//! that attributes an event goes through here.
use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
};
use guard_common::{Counter, MAX_CGROUP_LEVEL, ProbeConfig, TaskEntry};

use crate::maps::{COUNTERS, WATCHED};

#[derive(Clone, Copy)]
pub struct Container {
    pub cgroup_id: u64,
    pub slot: u32,
    pub level: u32,
}

impl Container {
    /// The container a task-map or sub-cgroup entry names.
    pub fn of_entry(entry: &TaskEntry) -> Self {
        Self {
            cgroup_id: entry.cgroup_id,
            slot: entry.slot,
            level: entry.level,
        }
    }

    pub fn task_entry(&self) -> TaskEntry {
        TaskEntry {
            cgroup_id: self.cgroup_id,
            slot: self.slot,
            level: self.level,
        }
    }
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
            level: entry.level,
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
                level: entry.level,
            });
        }
    }
    None
}

/// Thread id of the current task.
#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Adds `by` to one of a row's counters on this CPU. Returns false when the slot is out of
/// range (a loader bug).
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
