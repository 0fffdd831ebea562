//! The public names renamed for clarity still compile, deprecated, and mean what the new ones
//! mean: an agent built against the old names gets warnings, not errors.
#![allow(deprecated)]

use guard::{RingOptions, footprint::Footprint};

#[test]
fn old_names_are_the_new_ones() {
    let ring: RingOptions = guard::StreamOptions::default();
    let old: Footprint = guard::budget::MemoryBudget::new(&ring, &[16], true);
    assert_eq!(old, Footprint::new(&RingOptions::default(), &[16], true));
}

/// `GuardEvent` is `#[non_exhaustive]`: an agent holds one only as guard made it, so the event
/// here is a decoded ring-buffer record, as the reader makes it (`internals`).
#[cfg(feature = "internals")]
#[test]
fn a_decoded_record_is_a_kernel_event_and_attributes_as_before() {
    use guard::GuardEvent;
    use guard_common::{EventHeader, EventKind, ForkEvent};

    let record = ForkEvent {
        header: EventHeader {
            kind: EventKind::Fork as u16,
            cpu: 0,
            seq: 1,
            ktime_ns: 1,
            cgroup_id: 7,
            ..Default::default()
        },
        parent_pid: 100,
        child_pid: 101,
    };
    // SAFETY: a repr(C) struct of integers viewed as its bytes, as the ring buffer hands them.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&record as *const ForkEvent).cast::<u8>(),
            size_of::<ForkEvent>(),
        )
    };
    let decoded: guard::events::KernelEvent = guard::internals::decode(bytes).unwrap();
    let attributed = GuardEvent::from_record(Some("web".into()), decoded.clone());
    assert_eq!(attributed.container.as_deref(), Some("web"));
    assert_eq!(
        (attributed.cgroup_id, attributed.ring, &attributed.detail),
        (7, decoded.ring, &decoded.detail)
    );
}
