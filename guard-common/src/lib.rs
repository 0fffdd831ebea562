//! The ABI shared by guard's eBPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, and every size is asserted at compile
//! time: the kernel side writes these bytes and the user side reads them, possibly built by
//! different compilers, so the layout must never drift silently. Numeric kinds and counter
//! indices are stable: a value, once given, is never reused for another meaning.
//!
//! - [`kind`]: the stable event kinds, from one list.
//! - [`header`]: the header every ring-buffer record starts with.
//! - [`events`]: one record per signal that streams (`events/<signal>.rs`).
//! - [`counters`]: the per-container counter row the programs keep exactly.
//! - [`maps`]: the values of the programs' other maps.
//! - [`config`]: what the loader hands the programs (tracepoint offsets, thresholds).
#![cfg_attr(not(test), no_std)]

pub mod config;
pub mod counters;
pub mod events;
pub mod header;
pub mod kind;
pub mod maps;
#[cfg(feature = "user")]
mod pod;

pub use config::{ABSENT, ProbeConfig, TracepointOffsets};
pub use counters::{COUNTER_SLOTS, Counter, CounterRow};
// Every record at the root: a new signal's record needs no line here.
pub use events::*;
pub use header::EventHeader;
pub use kind::{EVENT_KIND_SLOTS, EventKind};
pub use maps::{LostCounts, TaskEntry, ThrottleWindow, WatchEntry};

/// Most containers one guard tracks at once (rows of the per-container maps).
pub const MAX_CONTAINERS: u32 = 1024;

/// Counter row for events that belong to no registered container (an OOM victim outside every
/// container: a global OOM). It is the last row of `COUNTERS`.
pub const GLOBAL_SLOT: u32 = MAX_CONTAINERS;

/// Rows of the `COUNTERS` map: one per container plus the global row.
pub const COUNTER_ROWS: u32 = MAX_CONTAINERS + 1;

/// Deepest cgroup level at which a container may be registered (levels are counted from the
/// cgroup v2 root, which is level 0).
pub const MAX_CGROUP_LEVEL: u32 = 16;

/// Thread ids the dense task map covers at most: `TASKS` is an array indexed by thread id
/// (a store on fork and exit, where a hash map cost ~230 ns an update). The loader sizes it to
/// the kernel's `pid_max` up to this cap (16 bytes an entry: 512 KiB at the default `pid_max`
/// of 32768, 1 MiB here); thread ids beyond it go to the `TASKS_SPILL` hash.
pub const DENSE_TASKS_CAP: u32 = 65536;

/// Entries of the `TASKS_SPILL` hash when `pid_max` exceeds [`DENSE_TASKS_CAP`] (systemd hosts
/// raise it to 4194304): tasks of watched containers with thread ids beyond the dense array.
/// When every thread id fits the array, the loader shrinks it to one entry.
pub const SPILL_TASKS: u32 = 16384;

/// Sub-cgroups of watched containers the programs can resolve a move into.
pub const MAX_DESCENDANTS: u32 = 1024;
