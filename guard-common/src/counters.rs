//! The exact per-container counters the programs keep (one row per container slot, per CPU).

/// Indices into [`CounterRow::values`]. Stable: new counters take new indices.
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
    /// Task-map inserts that failed: the spill hash for thread ids past the task array was
    /// full (the array itself cannot be). Attribution of those tasks' OOM kills is lost.
    TaskMapFull = 9,
}

/// Number of counter slots per container (room left for later counters; the layout is fixed).
pub const COUNTER_SLOTS: usize = 16;

/// One container's counters on one CPU (the value of the per-CPU `COUNTERS` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CounterRow {
    pub values: [u64; COUNTER_SLOTS],
}
const _: () = assert!(core::mem::size_of::<CounterRow>() == 8 * COUNTER_SLOTS);
