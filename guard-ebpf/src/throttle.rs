//! The throttle signal: a per-container, per-CPU rate bound on individual events. Counters stay
//! exact; what is suppressed is counted and reported by a throttle record when the window
//! closes.
use guard_common::{Counter, EventKind, ProbeConfig, ThrottleEvent};

use crate::{container, emit, maps::THROTTLE};

const WINDOW_NS: u64 = 1_000_000_000;

/// Whether one more individual event of the container in `slot` may be streamed in the current
/// one-second window on this CPU (`now`: the caller's `bpf_ktime_get_ns()`, which its record's
/// header carries too: one clock read per event). Suppressed events are counted, and reported by a throttle
/// record when the window closes; the container's counters stay exact either way.
#[inline(always)]
pub fn admit(config: &ProbeConfig, slot: u32, cgroup_id: u64, now: u64) -> bool {
    let limit = config.max_events_per_sec as u64;
    if limit == 0 {
        return true;
    }
    let Some(window) = THROTTLE.get_ptr_mut(slot) else {
        return true;
    };
    let window = unsafe { &mut *window };
    let elapsed = now.wrapping_sub(window.start_ns);
    if elapsed >= WINDOW_NS {
        if window.suppressed > 0 {
            let marker = ThrottleEvent {
                header: emit::header(EventKind::Throttle, cgroup_id, now),
                suppressed: window.suppressed,
                window_ns: elapsed,
            };
            emit::emit(config, EventKind::Throttle, marker);
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
        container::bump(slot, Counter::EventsThrottled, 1);
        false
    }
}
