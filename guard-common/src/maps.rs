//! Values of the programs' bookkeeping maps (container registry, task map, rate bound, losses).
use crate::EVENT_KIND_SLOTS;

/// Ring-buffer reserve failures on one CPU, by event kind (the single entry of the per-CPU
/// `LOST` array: one lookup reads them all).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LostCounts {
    pub per_kind: [u64; EVENT_KIND_SLOTS as usize],
}
const _: () = assert!(core::mem::size_of::<LostCounts>() == 8 * EVENT_KIND_SLOTS as usize);

/// A container registered for watching: the value of the `WATCHED` map, keyed by cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchEntry {
    /// Index of the container's row in the per-container counter map.
    pub slot: u32,
    /// cgroup level of the container's cgroup (root = 0).
    pub level: u32,
}
const _: () = assert!(core::mem::size_of::<WatchEntry>() == 8);

/// A task of a watched container: the value of the `TASKS` map, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskEntry {
    /// The container's cgroup id.
    pub cgroup_id: u64,
    pub slot: u32,
    pub level: u32,
}
const _: () = assert!(core::mem::size_of::<TaskEntry>() == 16);

/// Per-container, per-CPU rate-bound window (the value of the per-CPU `THROTTLE` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThrottleWindow {
    pub start_ns: u64,
    pub emitted: u64,
    pub suppressed: u64,
}
const _: () = assert!(core::mem::size_of::<ThrottleWindow>() == 24);
