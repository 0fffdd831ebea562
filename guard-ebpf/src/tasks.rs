//! The task → container map: a dense array indexed by thread id, where recording and
//! forgetting a task are plain stores, and a hash beside it for thread ids past the array's
//! end (hosts whose `pid_max` exceeds the cap). Every hook that tracks tasks goes through here.
//!
//! An entry is empty when its `cgroup_id` is 0 (no cgroup has id 0). Entries are written with
//! plain stores: a reader racing a writer of the same thread id (a task forking or exiting
//! while another process moves it) may see a torn entry, which the hash's atomic replace did
//! not allow. A torn entry (one container's cgroup id, another's slot) fails the `SLOTS` check,
//! so `container_of` falls back to the task's cgroup ancestry.
use guard_common::{Counter, TaskEntry};

use crate::{
    container::{self, Container},
    maps::{SLOTS, TASKS, TASKS_SPILL},
};

/// Records `tid` as a task of `container`, counting a full spill map.
#[inline(always)]
pub fn track(tid: u32, container: &Container) {
    let entry = container.task_entry();
    match TASKS.get_ptr_mut(tid) {
        Some(slot) => unsafe { *slot = entry },
        None => {
            if TASKS_SPILL.insert(tid, entry, 0).is_err() {
                container::bump(container.slot, Counter::TaskMapFull, 1);
                // An older entry must not keep saying where the task was.
                let _ = TASKS_SPILL.remove(tid);
            }
        }
    }
}

/// Records `tid` as a task of `container` unless the map already says so (on the spill
/// path a lookup costs a fraction of an update).
#[inline(always)]
pub fn track_if_untracked(tid: u32, container: &Container) {
    if lookup(tid).is_none_or(|entry| entry.cgroup_id != container.cgroup_id) {
        track(tid, container);
    }
}

/// Forgets `tid` (it exited, or left every container).
#[inline(always)]
pub fn forget(tid: u32) {
    match TASKS.get_ptr_mut(tid) {
        Some(slot) => unsafe { (*slot).cgroup_id = 0 },
        None => {
            let _ = TASKS_SPILL.remove(tid);
        }
    }
}

/// The container `tid` was last recorded in.
#[inline(always)]
pub fn lookup(tid: u32) -> Option<TaskEntry> {
    match TASKS.get(tid) {
        Some(entry) => (entry.cgroup_id != 0).then_some(*entry),
        None => unsafe { TASKS_SPILL.get(tid) }.copied(),
    }
}

/// The watched container `tid` is recorded in: the task map is kept right by the fork and
/// attach programs, so for a tracked task this replaces the cgroup-id helper and the
/// `WATCHED` hash lookup with two array loads. None when the task is untracked or its
/// container was unwatched since (its slot no longer names its cgroup): the caller then asks
/// the task's cgroup ancestry.
#[inline(always)]
pub fn container_of(tid: u32) -> Option<Container> {
    let entry = lookup(tid)?;
    let serving = SLOTS.get(entry.slot)?;
    (*serving == entry.cgroup_id).then(|| Container::of_entry(&entry))
}
