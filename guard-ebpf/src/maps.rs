//! The maps shared by every program. Names are the ABI the loader looks up.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use guard_common::{ContainerCounters, EVENT_KIND_SLOTS, MAX_CONTAINERS, ProbeConfig, WatchEntry};

/// Loader configuration (tracepoint offsets, watched levels, wakeup threshold).
#[map]
pub static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

/// Registered containers: cgroup id → slot and level.
#[map]
pub static WATCHED: HashMap<u64, WatchEntry> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Exact per-container counters, one row per slot, per CPU (no atomics on the hot path).
#[map]
pub static COUNTERS: PerCpuArray<ContainerCounters> =
    PerCpuArray::with_max_entries(MAX_CONTAINERS, 0);

/// Individual events for the userspace reader. The loader may resize it.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Ring-buffer reserve failures, per CPU, indexed by event kind.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_SLOTS, 0);

/// Per-CPU sequence of records attempted.
#[map]
pub static SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
