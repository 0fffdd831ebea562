//! The maps shared by every program. Names are the ABI the loader looks up.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use guard_common::{
    COUNTER_ROWS, CounterRow, DENSE_TASKS_CAP, LostCounts, MAX_CONTAINERS, MAX_DESCENDANTS,
    ProbeConfig, SPILL_TASKS, TaskEntry, ThrottleWindow, WatchEntry,
};

/// Loader configuration (tracepoint offsets, watched levels, wakeup threshold, rate bound).
#[map]
pub static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

/// The configuration, once the loader has armed the programs (None before: do nothing).
#[inline(always)]
pub fn active_config() -> Option<&'static ProbeConfig> {
    CONFIG.get(0).filter(|config| config.ready != 0)
}

/// Registered containers: cgroup id → slot and level.
#[map]
pub static WATCHED: HashMap<u64, WatchEntry> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Which cgroup each counter slot serves now (0: none): the task map's entries outlive an
/// unwatch, and a slot is reused, so an entry counts only while its slot still names its
/// cgroup. An array, so the check is a load, where `WATCHED` is a hash lookup.
#[map]
pub static SLOTS: Array<u64> = Array::with_max_entries(COUNTER_ROWS, 0);

/// Sub-cgroups of watched containers that userspace has found (at watch time, and by inotify
/// as they are created): cgroup id → its container. A task moved into one by another process
/// is attributed through here (the attach program cannot read the moved task's ancestry).
#[map]
pub static DESCENDANTS: HashMap<u64, TaskEntry> = HashMap::with_max_entries(MAX_DESCENDANTS, 0);

/// Tasks of watched containers: thread id → container, indexed by thread id (see `tasks`).
/// The OOM victim's container comes from here: `bpf_get_current_cgroup_id()` in `mark_victim`
/// names the allocating task instead. The loader sizes it to `pid_max` (up to a cap).
#[map]
pub static TASKS: Array<TaskEntry> = Array::with_max_entries(DENSE_TASKS_CAP, 0);

/// Tasks whose thread ids lie past `TASKS`'s end. The loader sizes it (one entry when every
/// thread id fits the array).
#[map]
pub static TASKS_SPILL: HashMap<u32, TaskEntry> = HashMap::with_max_entries(SPILL_TASKS, 0);

/// Exact per-container counters, one row per slot plus the global row, per CPU (no atomics
/// on the hot path).
#[map]
pub static COUNTERS: PerCpuArray<CounterRow> = PerCpuArray::with_max_entries(COUNTER_ROWS, 0);

/// Rate-bound windows, one per container slot, per CPU.
#[map]
pub static THROTTLE: PerCpuArray<ThrottleWindow> = PerCpuArray::with_max_entries(COUNTER_ROWS, 0);

/// Start time of a memcg reclaim in progress, by thread id.
#[map]
pub static RECLAIM_START: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Threads whose last `pids_can_fork` refused them (set by the kretprobe, consumed at the
/// syscall's exit).
#[map]
pub static PIDS_DENIED: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Individual events for the userspace reader. The loader may resize it.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Ring-buffer reserve failures, per CPU, by event kind.
#[map]
pub static LOST: PerCpuArray<LostCounts> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sequence of records attempted.
#[map]
pub static SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
