//! Ring-buffer output with loss accounting and batched wakeups.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_smp_processor_id,
};
use guard_common::{EVENT_KIND_SLOTS, EventHeader, EventKind, ProbeConfig};

use crate::maps::{EVENTS, LOST, SEQ};

/// A header for a new record, taking the next per-CPU sequence number (taken even if the record
/// is then lost, so the reader sees the gap). `ktime_ns` is the caller's `bpf_ktime_get_ns()`.
#[inline(always)]
pub fn header(kind: EventKind, cgroup_id: u64, ktime_ns: u64) -> EventHeader {
    let seq = match SEQ.get_ptr_mut(0) {
        Some(seq) => unsafe {
            *seq += 1;
            *seq
        },
        None => 0,
    };
    EventHeader {
        kind: kind as u16,
        _pad0: 0,
        cpu: unsafe { bpf_get_smp_processor_id() },
        seq,
        ktime_ns,
        cgroup_id,
    }
}

/// Writes `event` to the ring buffer, or counts it lost under `kind`.
#[inline(always)]
pub fn emit<T: 'static>(config: &ProbeConfig, kind: EventKind, event: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(event);
            // Wake the reader only when a batch is waiting: it polls for the rest.
            let waiting = EVENTS.query(BPF_RB_AVAIL_DATA.into());
            let flags = if waiting >= config.wakeup_bytes {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags.into());
        }
        None => {
            if let Some(lost) = LOST.get_ptr_mut(0) {
                let index = kind as usize % EVENT_KIND_SLOTS as usize;
                unsafe { (*lost).per_kind[index] += 1 };
            }
        }
    }
}
