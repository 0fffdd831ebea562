//! The header every ring-buffer record starts with.

/// Common header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`crate::EventKind`] value.
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
