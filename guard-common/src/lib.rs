//! The ABI shared by guard's eBPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, and every size is asserted at compile
//! time: the kernel side writes these bytes and the user side reads them, possibly built by
//! different compilers, so the layout must never drift silently. Numeric kinds and counter
//! indices are stable: a value, once given, is never reused for another meaning.
#![no_std]

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

/// Most tasks tracked in the task → container map (tasks of watched containers only). The map
/// is preallocated (no allocation in the hot path), about 80 bytes an entry: sized for 32
/// containers at the default pids.max of 512 without crowding a 128 MiB guest.
pub const MAX_TRACKED_TASKS: u32 = 16384;

/// Stable numeric event kinds, written in [`EventHeader::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A task in a watched container forked (`sched:sched_process_fork`).
    Fork = 1,
    /// A fork/clone in a watched container failed with EAGAIN (`syscalls:sys_exit_*`).
    ForkDenied = 3,
    /// The OOM killer chose a victim (`oom:mark_victim`).
    OomVictim = 4,
    /// A memcg direct reclaim finished in a watched container (`vmscan:*memcg_reclaim_end`).
    Reclaim = 5,
    /// Individual events of a container were suppressed by the rate bound (counters stay exact).
    Throttle = 7,
}

/// Number of distinct kind values a per-kind array must hold (kinds index it directly).
pub const EVENT_KIND_SLOTS: u32 = 16;

impl EventKind {
    /// Every kind, in numeric order.
    pub const ALL: [EventKind; 5] = [
        EventKind::Fork,
        EventKind::ForkDenied,
        EventKind::OomVictim,
        EventKind::Reclaim,
        EventKind::Throttle,
    ];

    /// The kind's stable name in logs and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Fork => "fork",
            Self::ForkDenied => "fork_denied",
            Self::OomVictim => "oom_victim",
            Self::Reclaim => "reclaim",
            Self::Throttle => "throttle",
        }
    }

    pub const fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Self::Fork),
            3 => Some(Self::ForkDenied),
            4 => Some(Self::OomVictim),
            5 => Some(Self::Reclaim),
            7 => Some(Self::Throttle),
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
    /// cgroup id of the watched container the record is attributed to (0: none).
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

/// Why a fork was denied, as far as the programs could tell.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialCause {
    /// EAGAIN alone: pids.max, RLIMIT_NPROC or threads-max; reconcile with `pids.events`.
    Inferred = 0,
    /// A kretprobe saw `pids_can_fork` refuse it: pids.max, exactly.
    PidsMax = 1,
}

/// A fork/clone that returned an error in a watched container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkDeniedEvent {
    pub header: EventHeader,
    /// Thread group id (process id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// The syscall's return value (a negative errno).
    pub ret: i64,
    /// A [`DenialCause`] value.
    pub cause: u32,
    /// The syscall number (clone, clone3, fork or vfork).
    pub syscall_nr: u32,
}
const _: () = assert!(core::mem::size_of::<ForkDeniedEvent>() == 56);

/// Longest command name the kernel keeps (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// The OOM killer's victim. `header.cgroup_id` is the victim's container from the task map
/// (0: the victim was in no watched container), never the allocating task's cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OomVictimEvent {
    pub header: EventHeader,
    pub victim_pid: u32,
    /// Counter row the kill was attributed to ([`GLOBAL_SLOT`] when in no container).
    pub slot: u32,
    /// cgroup of the task whose allocation triggered the OOM (`bpf_get_current_cgroup_id`).
    pub trigger_cgroup_id: u64,
    /// Sizes in kB as the tracepoint reports them (0 where the kernel lacks the field).
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub oom_score_adj: i16,
    /// 1 when the kernel's tracepoint carried the rss fields above.
    pub has_rss: u8,
    pub _pad0: [u8; 5],
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<OomVictimEvent>() == 104);

/// A finished memcg direct reclaim in a watched container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReclaimEvent {
    pub header: EventHeader,
    pub tid: u32,
    pub _pad0: u32,
    pub duration_ns: u64,
    pub nr_reclaimed: u64,
}
const _: () = assert!(core::mem::size_of::<ReclaimEvent>() == 56);

/// Individual events of one container suppressed in the window that just closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThrottleEvent {
    pub header: EventHeader,
    pub suppressed: u64,
    pub window_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ThrottleEvent>() == 48);

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

/// Indices into [`ContainerCounters::values`]. Stable: new counters take new indices.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Forks = 0,
    Exits = 1,
    /// Fork-family syscalls that returned EAGAIN.
    ForkDenied = 2,
    /// Of those, denials a kretprobe saw `pids_can_fork` make (tier 2 only).
    ForkDeniedPidsMax = 3,
    OomKills = 4,
    ReclaimRuns = 5,
    ReclaimNs = 6,
    ReclaimPages = 7,
    /// Individual events suppressed by the rate bound.
    EventsThrottled = 8,
    /// Task-map inserts that failed (map full): attribution of those tasks' OOM kills is lost.
    TaskMapFull = 9,
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

/// Per-container, per-CPU rate-bound window (the value of the per-CPU `THROTTLE` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThrottleWindow {
    pub start_ns: u64,
    pub emitted: u64,
    pub suppressed: u64,
}
const _: () = assert!(core::mem::size_of::<ThrottleWindow>() == 24);

/// Offset 0 in [`TracepointOffsets`] means "the kernel lacks this field" (offset 0 always holds
/// `common_type`, never a payload field).
pub const ABSENT: u16 = 0;

/// Record offsets of the tracepoint fields the programs read, from tracefs `format` files.
///
/// They differ between kernels (the 6.18 `sched_process_fork` uses `__data_loc` comms, 6.1 and
/// 6.12 fixed arrays; older `mark_victim` has only `pid`), so the loader reads them at load time
/// instead of the programs hard-coding them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracepointOffsets {
    pub fork_parent_pid: u16,
    pub fork_child_pid: u16,
    pub attach_dst_root: u16,
    pub attach_dst_level: u16,
    pub attach_dst_id: u16,
    pub attach_pid: u16,
    pub syscall_ret: u16,
    pub syscall_nr: u16,
    pub oom_pid: u16,
    /// `__data_loc char[] comm`.
    pub oom_comm: u16,
    pub oom_total_vm: u16,
    pub oom_anon_rss: u16,
    pub oom_file_rss: u16,
    pub oom_shmem_rss: u16,
    pub oom_score_adj: u16,
    pub reclaim_nr_reclaimed: u16,
}
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 32);

/// Loader-provided configuration, the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// Set to 1 by the loader once the rest is filled in; programs do nothing until then.
    pub ready: u32,
    /// Individual events per container per CPU per second (0 = unbounded). Counters are exact
    /// regardless; suppressed events are reported by a [`ThrottleEvent`].
    pub max_events_per_sec: u32,
    /// Bit `l` set when some container is registered at cgroup level `l`.
    pub watched_levels: u64,
    /// Wake the reader only once this many bytes are waiting; below that it polls. Waking it
    /// for every record costs about 15% on a fork storm.
    pub wakeup_bytes: u64,
    /// Set to 1 when the kretprobe on `pids_can_fork` is attached (tier 2).
    pub pids_kprobe: u32,
    pub _pad0: u32,
    pub offsets: TracepointOffsets,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 64);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers, and have no implicit padding
    // (explicit `_pad` fields fill every gap; the size assertions above pin that down).
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for ForkEvent {}
    unsafe impl aya::Pod for ForkDeniedEvent {}
    unsafe impl aya::Pod for OomVictimEvent {}
    unsafe impl aya::Pod for ReclaimEvent {}
    unsafe impl aya::Pod for ThrottleEvent {}
    unsafe impl aya::Pod for LostCounts {}
    unsafe impl aya::Pod for WatchEntry {}
    unsafe impl aya::Pod for TaskEntry {}
    unsafe impl aya::Pod for ContainerCounters {}
    unsafe impl aya::Pod for ThrottleWindow {}
    unsafe impl aya::Pod for TracepointOffsets {}
    unsafe impl aya::Pod for ProbeConfig {}
}
