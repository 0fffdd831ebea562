//! What the loader hands the programs: tracepoint field offsets and stream thresholds.

/// Offset 0 in [`TracepointOffsets`] means "the kernel lacks this field" (offset 0 always holds
/// `common_type`, never a payload field).
pub const ABSENT: u16 = 0;

/// Record offsets of the tracepoint fields the programs read, from tracefs `format` files.
///
/// They differ between kernels (the 6.18 `sched_process_fork` uses `__data_loc` comms, 6.1 and
/// 6.12 fixed arrays; older `mark_victim` has only `pid`), so the loader reads them at load time
/// instead of the programs hard-coding them. Grouped by the signal that reads them.
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
    /// regardless; suppressed events are reported by a [`crate::ThrottleEvent`].
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
