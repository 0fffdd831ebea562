//! `aya::Pod` for every ABI struct, so userspace can read and write them in maps.
use crate::*;

// SAFETY: all of these are repr(C), contain only integers, and have no implicit padding
// (explicit `_pad` fields fill every gap; the size assertions pin that down).
unsafe impl aya::Pod for EventHeader {}
unsafe impl aya::Pod for ForkEvent {}
unsafe impl aya::Pod for ForkDeniedEvent {}
unsafe impl aya::Pod for OomVictimEvent {}
unsafe impl aya::Pod for ReclaimEvent {}
unsafe impl aya::Pod for ThrottleEvent {}
unsafe impl aya::Pod for LostCounts {}
unsafe impl aya::Pod for WatchEntry {}
unsafe impl aya::Pod for TaskEntry {}
unsafe impl aya::Pod for CounterRow {}
unsafe impl aya::Pod for ThrottleWindow {}
unsafe impl aya::Pod for TracepointOffsets {}
unsafe impl aya::Pod for ProbeConfig {}
