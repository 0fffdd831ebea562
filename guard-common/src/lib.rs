//! The ABI shared by guard's eBPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, and every size is asserted at compile
//! time: the kernel side writes these bytes and the user side reads them, possibly built by
//! different compilers, so the layout must never drift silently. Numeric kinds are stable: a
//! value, once given, is never reused for another meaning.
#![no_std]

/// Most containers one guard tracks at once (size of the per-container maps).
pub const MAX_CONTAINERS: u32 = 1024;

/// Deepest cgroup level at which a container may be registered (levels are counted from the
/// cgroup v2 root, which is level 0).
pub const MAX_CGROUP_LEVEL: u32 = 16;

/// Stable numeric event kinds, written in [`EventHeader::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A task in a watched container forked (`sched:sched_process_fork`).
    Fork = 1,
}

/// Number of distinct kind values a per-kind array must hold (kinds index it directly).
pub const EVENT_KIND_SLOTS: u32 = 16;

impl EventKind {
    /// Every kind, in numeric order.
    pub const ALL: [EventKind; 1] = [EventKind::Fork];

    /// The kind's stable name in logs and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Fork => "fork",
        }
    }

    pub const fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Self::Fork),
            _ => None,
        }
    }
}

/// Common header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u16,
    pub _pad0: u16,
    /// CPU that produced the record.
    pub cpu: u32,
    /// Per-CPU sequence number, incremented for every record attempted (delivered or not), so a
    /// gap in one CPU's sequence is a loss the reader can see.
    pub seq: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the record was produced.
    pub ktime_ns: u64,
    /// cgroup id of the watched container the record is attributed to.
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);

/// A fork inside a watched container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// Thread id of the forking task, as the tracepoint reports it.
    pub parent_pid: u32,
    /// Thread id of the new task.
    pub child_pid: u32,
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 40);

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

/// Indices into [`ContainerCounters::values`]. Stable: new counters take new indices.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Forks = 0,
}

/// Number of counter slots per container (room left for later counters; the layout is fixed).
pub const COUNTER_SLOTS: usize = 16;

/// One container's counters on one CPU (the value of the per-CPU `COUNTERS` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ContainerCounters {
    pub values: [u64; COUNTER_SLOTS],
}
const _: () = assert!(core::mem::size_of::<ContainerCounters>() == 8 * COUNTER_SLOTS);

/// Loader-provided configuration, the single entry of the `CONFIG` array.
///
/// Tracepoint field offsets differ between kernels (the 6.18 `sched_process_fork` uses
/// `__data_loc` comms, 6.1 and 6.12 fixed arrays), so the loader reads them from tracefs
/// `format` files instead of the programs hard-coding them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// Set to 1 by the loader once the rest is filled in; programs do nothing until then.
    pub ready: u32,
    pub fork_parent_pid_offset: u32,
    pub fork_child_pid_offset: u32,
    pub _pad0: u32,
    /// Bit `l` set when some container is registered at cgroup level `l`.
    pub watched_levels: u64,
    /// Wake the reader only once this many bytes are waiting; below that it polls. Waking it
    /// for every record costs about 15% on a fork storm.
    pub wakeup_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers, and have no implicit padding
    // (explicit `_pad` fields fill every gap; the size assertions above pin that down).
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for ForkEvent {}
    unsafe impl aya::Pod for WatchEntry {}
    unsafe impl aya::Pod for ContainerCounters {}
    unsafe impl aya::Pod for ProbeConfig {}
}
