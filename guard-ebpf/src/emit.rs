//! Ring-buffer output with loss accounting, a per-container rate bound and batched wakeups.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
};
use guard_common::{Counter, EVENT_KIND_SLOTS, EventHeader, EventKind, ProbeConfig, ThrottleEvent};

use crate::{
    maps::{EVENTS, LOST, SEQ, THROTTLE},
    watch,
};

const WINDOW_NS: u64 = 1_000_000_000;

/// A header for a new record, taking the next per-CPU sequence number (taken even if the record
/// is then lost, so the reader sees the gap).
#[inline(always)]
pub fn header(kind: EventKind, cgroup_id: u64) -> EventHeader {
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
        ktime_ns: unsafe { bpf_ktime_get_ns() },
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

/// Whether one more individual event of the container in `slot` may be streamed in the current
/// one-second window on this CPU. Suppressed events are counted, and reported by a throttle
/// record when the window closes; the container's counters stay exact either way.
#[inline(always)]
pub fn admit(config: &ProbeConfig, slot: u32, cgroup_id: u64) -> bool {
    let limit = config.max_events_per_sec as u64;
    if limit == 0 {
        return true;
    }
    let Some(window) = THROTTLE.get_ptr_mut(slot) else {
        return true;
    };
    let window = unsafe { &mut *window };
    let now = unsafe { bpf_ktime_get_ns() };
    let elapsed = now.wrapping_sub(window.start_ns);
    if elapsed >= WINDOW_NS {
        if window.suppressed > 0 {
            let marker = ThrottleEvent {
                header: header(EventKind::Throttle, cgroup_id),
                suppressed: window.suppressed,
                window_ns: elapsed,
            };
            emit(config, EventKind::Throttle, marker);
        }
        window.start_ns = now;
        window.emitted = 0;
        window.suppressed = 0;
    }
    if window.emitted < limit {
        window.emitted += 1;
        true
    } else {
        window.suppressed += 1;
        watch::bump(slot, Counter::EventsThrottled, 1);
        false
    }
}
