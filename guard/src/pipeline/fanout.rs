//! The hub's subscribers: bounded queues, each taking every event or one container's. A slow
//! subscriber never blocks the reader: what its queue cannot take is dropped and counted. A
//! container's subscriptions end when the container is forgotten (after its final report's
//! drain), so their readers know the stream is over.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;

use crate::events::{EventDetail, GuardEvent};

#[derive(Default)]
pub(crate) struct Subscribers {
    list: Vec<Subscriber>,
}

struct Subscriber {
    sender: mpsc::Sender<GuardEvent>,
    /// Events this subscriber lost because its buffer was full.
    dropped: Arc<AtomicU64>,
    /// The container's cgroup id, for a container's subscription; None for every event.
    container: Option<u64>,
}

impl Subscribers {
    /// A new subscription (to `container`'s events, or to all) and its own count of dropped
    /// events. The queue holds `capacity` events, at least one.
    pub fn add(
        &mut self,
        capacity: usize,
        container: Option<u64>,
    ) -> (mpsc::Receiver<GuardEvent>, Arc<AtomicU64>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.list.push(Subscriber {
            sender,
            dropped: Arc::clone(&dropped),
            container,
        });
        (receiver, dropped)
    }

    /// Forgets subscribers whose receiver is gone.
    pub fn drop_closed(&mut self) {
        self.list
            .retain(|subscriber| !subscriber.sender.is_closed());
    }

    /// Ends the subscriptions to the container of `cgroup_id`: their receivers get what is
    /// queued, then `None`.
    pub fn end_container(&mut self, cgroup_id: u64) {
        self.list
            .retain(|subscriber| subscriber.container != Some(cgroup_id));
    }

    /// Hands `event` to every subscriber that takes it; returns how many could not take it.
    pub fn publish(&self, event: &GuardEvent) -> u64 {
        let mut drops = 0;
        for subscriber in self.list.iter().filter(|s| takes(s.container, event)) {
            if subscriber.sender.try_send(event.clone()).is_err() {
                drops += 1;
                subscriber.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drops
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.len()
    }
}

/// Whether a subscription to `container` (None: every event) takes `event`: a container's
/// own events, and the guard-wide ones that say its stream is incomplete.
fn takes(container: Option<u64>, event: &GuardEvent) -> bool {
    match container {
        None => true,
        Some(cgroup_id) => {
            event.cgroup_id == cgroup_id
                || matches!(
                    event.detail,
                    EventDetail::Lost(_) | EventDetail::ReaderFault(_)
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Fork, Lost};

    fn event(cgroup_id: u64, detail: EventDetail) -> GuardEvent {
        GuardEvent::synthetic(None, cgroup_id, crate::events::EventSource::Bpf, detail)
    }

    fn fork(cgroup_id: u64) -> GuardEvent {
        event(
            cgroup_id,
            EventDetail::Fork(Fork {
                parent_pid: 1,
                child_pid: 2,
            }),
        )
    }

    #[test]
    fn a_containers_subscription_takes_its_events_and_ends_with_it() {
        let mut subscribers = Subscribers::default();
        let (mut all, _) = subscribers.add(8, None);
        let (mut web, _) = subscribers.add(8, Some(7));
        let (mut db, _) = subscribers.add(8, Some(9));
        let lost = event(
            0,
            EventDetail::Lost(Lost {
                event_kind: "fork",
                count: 3,
            }),
        );
        for event in [fork(7), fork(9), fork(0), lost] {
            assert_eq!(subscribers.publish(&event), 0);
        }
        subscribers.end_container(7);
        let drain = |receiver: &mut mpsc::Receiver<GuardEvent>| {
            let mut seen = Vec::new();
            while let Ok(event) = receiver.try_recv() {
                seen.push((event.cgroup_id, event.detail.kind_name()));
            }
            (seen, receiver.is_closed())
        };
        // Its own fork and the guard-wide loss, then the end; the others stay open.
        assert_eq!(drain(&mut web), (vec![(7, "fork"), (0, "lost")], true));
        assert_eq!(drain(&mut db), (vec![(9, "fork"), (0, "lost")], false));
        assert_eq!(drain(&mut all).0.len(), 4);
        assert!(!all.is_closed());
        assert_eq!(subscribers.len(), 2);
    }
}
