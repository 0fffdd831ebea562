//! The public names renamed for clarity still compile, deprecated, and mean what the new ones
//! mean: an agent built against the old names gets warnings, not errors.
#![allow(deprecated)]

use guard::{GuardEvent, RingOptions, footprint::Footprint};

#[test]
fn old_names_are_the_new_ones() {
    let ring: RingOptions = guard::StreamOptions::default();
    let old: Footprint = guard::budget::MemoryBudget::new(&ring, &[16], true);
    assert_eq!(old, Footprint::new(&RingOptions::default(), &[16], true));
    let decoded: guard::events::KernelEvent = GuardEvent {
        container: None,
        ring: None,
        ktime_ns: 1,
        cgroup_id: 7,
        detail: guard::EventDetail::Lost(guard::events::Lost {
            event_kind: "fork",
            count: 1,
        }),
    };
    let attributed = GuardEvent::from_record(Some("web".into()), decoded.clone());
    assert_eq!(attributed.container.as_deref(), Some("web"));
    assert_eq!(
        (attributed.cgroup_id, attributed.detail),
        (7, decoded.detail)
    );
}
