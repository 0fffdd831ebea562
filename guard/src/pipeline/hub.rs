//! The hub: where every event meets its container and its subscribers. Pure state, no I/O:
//! the reader and the inotify watcher hand it what they read, the guard reads its tallies.
use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicU64},
};

use guard_common::{EVENT_KIND_SLOTS, EventKind};
use tokio::sync::mpsc;
use tracing::warn;

use super::fanout::Subscribers;
use crate::{
    counters::{Delivered, HealthState, ReaderHealth, ReaderLoss, SourceCounters},
    events::{DecodeError, EventDetail, EventSource, GuardEvent, Lost, ReaderFault},
};

/// Per container: an OOM storm under emulation marks a few hundred victims.
const MAX_VICTIM_PIDS: usize = 16_384;

/// Attribution, tallies, losses and subscribers.
#[derive(Default)]
pub(crate) struct Hub {
    /// cgroup id → container id, for attribution.
    names: HashMap<u64, String>,
    /// A watched container's sub-cgroups: their cgroup id → (the container's cgroup id, the
    /// sub-cgroup's path), so a denial or an OOM below the container names where it was.
    sub_cgroups: HashMap<u64, (u64, String)>,
    /// Events received, by cgroup id (0: events that belong to no container).
    delivered: HashMap<u64, Delivered>,
    /// What the live sources without tracing delivered (tier 1), by cgroup id.
    sources: HashMap<u64, SourceCounters>,
    /// The pids the probes saw chosen as OOM victims, by container cgroup id (up to
    /// [`MAX_VICTIM_PIDS`] each): the kernel log says which OOM killer chose them.
    oom_victims: HashMap<u64, Vec<u32>>,
    loss: ReaderLoss,
    health: ReaderHealth,
    /// Ring-buffer reserve failures in the kernel by event kind, as of the last tally.
    kernel_lost: [u64; EVENT_KIND_SLOTS as usize],
    /// The highest sequence number seen per CPU.
    last_seq: HashMap<u32, u64>,
    subscribers: Subscribers,
}

impl Hub {
    /// A new subscription to every event and its own count of dropped events.
    pub fn subscribe(&mut self, capacity: usize) -> (mpsc::Receiver<GuardEvent>, Arc<AtomicU64>) {
        self.subscribers.add(capacity, None)
    }

    /// A new subscription to the events of the container of `cgroup_id`, ended by
    /// [`forget`](Self::forget).
    pub fn subscribe_container(
        &mut self,
        capacity: usize,
        cgroup_id: u64,
    ) -> mpsc::Receiver<GuardEvent> {
        self.subscribers.add(capacity, Some(cgroup_id)).0
    }

    /// Events of cgroup `cgroup_id` belong to container `id` from now on.
    pub fn name(&mut self, cgroup_id: u64, id: String) {
        self.names.insert(cgroup_id, id);
    }

    /// Cgroup `sub_cgroup_id` at `path` is a sub-cgroup of the container of `cgroup_id`.
    pub fn name_sub_cgroup(&mut self, cgroup_id: u64, sub_cgroup_id: u64, path: String) {
        self.sub_cgroups.insert(sub_cgroup_id, (cgroup_id, path));
    }

    /// The container of cgroup `cgroup_id`, if registered.
    pub fn container_of(&self, cgroup_id: u64) -> Option<&String> {
        self.names.get(&cgroup_id)
    }

    /// Forgets a container's name and tallies, and ends its subscriptions.
    pub fn forget(&mut self, cgroup_id: u64) {
        self.subscribers.end_container(cgroup_id);
        self.names.remove(&cgroup_id);
        self.delivered.remove(&cgroup_id);
        self.sources.remove(&cgroup_id);
        self.oom_victims.remove(&cgroup_id);
        self.sub_cgroups
            .retain(|_, (container, _)| *container != cgroup_id);
    }

    pub fn delivered(&self, cgroup_id: u64) -> Delivered {
        self.delivered.get(&cgroup_id).copied().unwrap_or_default()
    }

    /// What the live sources delivered for the container of `cgroup_id` (tier 1).
    pub fn source_counters(&self, cgroup_id: u64) -> SourceCounters {
        self.sources.get(&cgroup_id).copied().unwrap_or_default()
    }

    /// One exited task's delays, in the row of the container of `cgroup_id` (if registered).
    pub fn account_exit(&mut self, cgroup_id: u64, exit: &crate::sources::taskstats::TaskExit) {
        if self.names.contains_key(&cgroup_id) {
            crate::sources::delays::account(self.sources.entry(cgroup_id).or_default(), exit);
        }
    }

    /// The pids chosen as OOM victims in the container of `cgroup_id` (repeats included).
    pub fn oom_victims(&self, cgroup_id: u64) -> &[u32] {
        self.oom_victims.get(&cgroup_id).map_or(&[], Vec::as_slice)
    }

    pub fn loss(&self) -> ReaderLoss {
        self.loss
    }

    pub fn health(&self) -> &ReaderHealth {
        &self.health
    }

    pub fn kernel_lost(&self, kind: EventKind) -> u64 {
        self.kernel_lost[kind as usize]
    }

    /// One drained batch of ring-buffer records: checks each CPU's sequence, tallies,
    /// attributes and publishes what decoded, counts what did not.
    pub fn absorb(&mut self, records: Vec<Result<GuardEvent, DecodeError>>) {
        self.drop_closed_subscribers();
        for record in records {
            let mut event = match record {
                Ok(event) => event,
                Err(error) => {
                    self.loss.undecodable += 1;
                    warn!(%error, "dropping an undecodable ring-buffer record");
                    continue;
                }
            };
            // Sequence numbers start at 1 on every CPU, so gaps before the first record count.
            // A cross-check of the kernel's own loss counts (which the in-band records use).
            if let Some(ring) = event.ring {
                let last = self.last_seq.entry(ring.cpu).or_insert(0);
                self.loss.sequence_gaps += ring.seq.saturating_sub(*last + 1);
                *last = (*last).max(ring.seq);
            }
            event
                .detail
                .tally(self.delivered.entry(event.cgroup_id).or_default());
            if event.source != EventSource::Bpf {
                crate::sources::tally(
                    self.sources.entry(event.cgroup_id).or_default(),
                    &event.detail,
                );
            }
            if let EventDetail::OomVictim(victim) = &event.detail {
                self.remember_victim(event.cgroup_id, victim.victim_pid);
            }
            event.container = self.attribute(event.cgroup_id);
            self.name_where(&mut event);
            self.publish(event);
        }
    }

    fn remember_victim(&mut self, cgroup_id: u64, pid: u32) {
        if cgroup_id == 0 {
            return;
        }
        let victims = self.oom_victims.entry(cgroup_id).or_default();
        if victims.len() < MAX_VICTIM_PIDS {
            victims.push(pid);
        }
    }

    /// Names the sub-cgroup a denial or an OOM happened in, when it was below the container's
    /// own cgroup (and the sub-cgroup belongs to the container the event is attributed to).
    fn name_where(&self, event: &mut GuardEvent) {
        let sub_cgroup = |id: u64| {
            self.sub_cgroups
                .get(&id)
                .filter(|(container, _)| *container == event.cgroup_id)
                .map(|(_, path)| path.clone())
        };
        match &mut event.detail {
            EventDetail::ForkDenied(denied) => {
                denied.sub_cgroup = sub_cgroup(denied.task_cgroup_id)
            }
            EventDetail::OomVictim(victim) => {
                victim.trigger_sub_cgroup = sub_cgroup(victim.trigger_cgroup_id);
            }
            _ => {}
        }
    }

    /// The kernel's loss counts (totals by kind): publishes an in-band `lost` event for every
    /// kind whose count grew since the last call.
    pub fn absorb_kernel_loss(&mut self, totals: [u64; EVENT_KIND_SLOTS as usize]) {
        for &kind in EventKind::ALL {
            let index = kind as usize;
            let grown = totals[index].saturating_sub(self.kernel_lost[index]);
            if grown == 0 {
                continue;
            }
            self.kernel_lost[index] = totals[index];
            self.publish_synthetic(
                0,
                EventSource::Bpf,
                EventDetail::Lost(Lost {
                    event_kind: kind.name(),
                    count: grown,
                }),
            );
        }
    }

    /// A reader fault: recorded in the health state and published in-band.
    pub fn record_fault(&mut self, reason: &str, stopped: bool) {
        self.health.faults += 1;
        self.health.last_fault = Some(reason.to_string());
        if stopped {
            self.health.state = HealthState::Stopped;
        } else {
            self.health.state = HealthState::Recovered;
            self.health.restarts += 1;
        }
        self.publish_synthetic(
            0,
            EventSource::Guard,
            EventDetail::ReaderFault(ReaderFault {
                error: reason.to_string(),
                faults: self.health.faults,
                restarting: !stopped,
            }),
        );
    }

    /// Publishes an event guard made itself (a kernel file snapshot, a loss, a fault).
    pub fn publish_synthetic(&mut self, cgroup_id: u64, source: EventSource, detail: EventDetail) {
        self.drop_closed_subscribers();
        let container = self.attribute(cgroup_id);
        self.publish(GuardEvent::synthetic(container, cgroup_id, source, detail));
    }

    fn attribute(&self, cgroup_id: u64) -> Option<String> {
        match cgroup_id {
            0 => None,
            cgroup_id => self.names.get(&cgroup_id).cloned(),
        }
    }

    fn drop_closed_subscribers(&mut self) {
        self.subscribers.drop_closed();
    }

    fn publish(&mut self, event: GuardEvent) {
        self.loss.subscriber_drops += self.subscribers.publish(&event);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::events::{Fork, RingPosition, Throttle};

    /// A decoded ring-buffer record, not yet attributed.
    fn record(cpu: u32, seq: u64, cgroup_id: u64, detail: EventDetail) -> GuardEvent {
        GuardEvent {
            container: None,
            ring: Some(RingPosition { cpu, seq }),
            ktime_ns: seq,
            cgroup_id,
            source: EventSource::Bpf,
            detail,
        }
    }

    fn fork(cpu: u32, seq: u64, cgroup_id: u64) -> Result<GuardEvent, DecodeError> {
        Ok(record(
            cpu,
            seq,
            cgroup_id,
            EventDetail::Fork(Fork {
                parent_pid: 1,
                child_pid: 2,
            }),
        ))
    }

    fn denial(cgroup_id: u64, task_cgroup_id: u64) -> Result<GuardEvent, DecodeError> {
        Ok(record(
            0,
            1,
            cgroup_id,
            EventDetail::ForkDenied(crate::events::ForkDenied {
                tgid: 1,
                tid: 1,
                ret: -11,
                cause: guard_common::DenialCause::Inferred,
                syscall_nr: 56,
                task_cgroup_id,
                sub_cgroup: None,
            }),
        ))
    }

    fn victim(seq: u64, cgroup_id: u64, pid: u32) -> Result<GuardEvent, DecodeError> {
        Ok(record(
            0,
            seq,
            cgroup_id,
            EventDetail::OomVictim(crate::events::OomVictim {
                victim_pid: pid,
                comm: "bomb".into(),
                outside_containers: cgroup_id == 0,
                trigger_cgroup_id: cgroup_id,
                trigger_sub_cgroup: None,
                rss: None,
                oom_score_adj: 0,
                scope: None,
            }),
        ))
    }

    #[test]
    fn oom_victims_are_remembered_per_container_until_unwatched() {
        let mut hub = Hub::default();
        hub.name(7, "web".into());
        hub.absorb(vec![
            victim(1, 7, 100),
            victim(2, 0, 200),
            victim(3, 7, 101),
        ]);
        assert_eq!(hub.oom_victims(7), &[100, 101]);
        // A victim in no container is nobody's.
        assert_eq!(hub.oom_victims(0), &[] as &[u32]);
        hub.forget(7);
        assert_eq!(hub.oom_victims(7), &[] as &[u32]);
    }

    fn sub_cgroup_of(event: &GuardEvent) -> Option<&str> {
        match &event.detail {
            EventDetail::ForkDenied(denied) => denied.sub_cgroup.as_deref(),
            other => panic!("not a denial: {other:?}"),
        }
    }

    #[test]
    fn a_denial_below_the_container_names_its_sub_cgroup_until_unwatched() {
        let mut hub = Hub::default();
        let (mut receiver, _) = hub.subscribe(8);
        hub.name(7, "web".into());
        hub.name_sub_cgroup(7, 70, "/guard/web/worker".into());
        // In the sub-cgroup, in the container's own cgroup, and a sub-cgroup id claimed by
        // another container's event (never misnamed).
        hub.absorb(vec![denial(7, 70), denial(7, 7), denial(8, 70)]);
        assert_eq!(
            sub_cgroup_of(&receiver.try_recv().unwrap()),
            Some("/guard/web/worker")
        );
        assert_eq!(sub_cgroup_of(&receiver.try_recv().unwrap()), None);
        assert_eq!(sub_cgroup_of(&receiver.try_recv().unwrap()), None);
        hub.forget(7);
        hub.absorb(vec![denial(7, 70)]);
        assert_eq!(sub_cgroup_of(&receiver.try_recv().unwrap()), None);
    }

    #[test]
    fn sequence_gaps_are_counted_per_cpu_from_the_first_record() {
        let mut hub = Hub::default();
        // CPU 0: 1, 2, 5 (3 and 4 lost); CPU 1 starts at 3 (1 and 2 lost).
        hub.absorb(vec![
            fork(0, 1, 7),
            fork(0, 2, 7),
            fork(1, 3, 7),
            fork(0, 5, 7),
        ]);
        assert_eq!(hub.loss().sequence_gaps, 4);
        // A later batch continues each CPU's sequence; nothing new is missing.
        hub.absorb(vec![fork(1, 4, 7), fork(0, 6, 7)]);
        assert_eq!(hub.loss().sequence_gaps, 4);
        assert_eq!(hub.delivered(7).forks, 6);
    }

    #[test]
    fn events_are_attributed_tallied_and_fanned_out() {
        let mut hub = Hub::default();
        hub.name(7, "web".into());
        let (mut first, _) = hub.subscribe(8);
        let (mut second, _) = hub.subscribe(8);
        hub.absorb(vec![fork(0, 1, 7), fork(0, 2, 9)]);
        for receiver in [&mut first, &mut second] {
            let known = receiver.try_recv().unwrap();
            assert_eq!(known.container.as_deref(), Some("web"));
            assert_eq!(known.ring.map(|ring| ring.seq), Some(1));
            // A cgroup nobody registered: delivered, but to no container.
            assert_eq!(receiver.try_recv().unwrap().container, None);
        }
        assert_eq!((hub.delivered(7).forks, hub.delivered(9).forks), (1, 1));
        hub.forget(7);
        assert_eq!(hub.delivered(7), Delivered::default());
        assert!(hub.container_of(7).is_none());
    }

    #[test]
    fn a_full_subscriber_loses_events_counted_and_a_closed_one_is_dropped() {
        let mut hub = Hub::default();
        let (slow, slow_dropped) = hub.subscribe(2);
        let (closed, _) = hub.subscribe(2);
        drop(closed);
        hub.absorb((1..=5).map(|seq| fork(0, seq, 7)).collect());
        assert_eq!(slow_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(hub.loss().subscriber_drops, 3);
        assert_eq!(hub.subscribers.len(), 1);
        drop(slow);
    }

    #[test]
    fn undecodable_records_are_counted_not_published() {
        let mut hub = Hub::default();
        let (mut events, _) = hub.subscribe(8);
        hub.absorb(vec![
            Err(DecodeError::UnknownKind { kind: 99 }),
            fork(0, 1, 7),
        ]);
        assert_eq!(hub.loss().undecodable, 1);
        assert!(events.try_recv().is_ok());
        assert!(events.try_recv().is_err());
    }

    #[test]
    fn kernel_losses_become_synthetic_lost_events_once() {
        let mut hub = Hub::default();
        let (mut events, _) = hub.subscribe(8);
        let mut totals = [0; EVENT_KIND_SLOTS as usize];
        totals[EventKind::Fork as usize] = 5;
        hub.absorb_kernel_loss(totals);
        hub.absorb_kernel_loss(totals);
        let lost = events.try_recv().unwrap();
        assert!(lost.ring.is_none(), "synthetic: no ring position");
        assert_eq!(
            lost.detail,
            EventDetail::Lost(Lost {
                event_kind: "fork",
                count: 5
            })
        );
        assert!(
            events.try_recv().is_err(),
            "the same total is not reported twice"
        );
        assert_eq!(hub.kernel_lost(EventKind::Fork), 5);
    }

    #[test]
    fn faults_move_health_to_recovered_then_stopped() {
        let mut hub = Hub::default();
        let (mut events, _) = hub.subscribe(8);
        hub.record_fault("boom", false);
        assert_eq!(hub.health().state, HealthState::Recovered);
        hub.record_fault("boom again", true);
        let health = hub.health();
        assert_eq!(
            (health.state, health.faults, health.restarts),
            (HealthState::Stopped, 2, 1)
        );
        assert_eq!(health.last_fault.as_deref(), Some("boom again"));
        let first = events.try_recv().unwrap();
        let last = events.try_recv().unwrap();
        assert!(matches!(
            first.detail,
            EventDetail::ReaderFault(ReaderFault {
                restarting: true,
                ..
            })
        ));
        assert!(matches!(
            last.detail,
            EventDetail::ReaderFault(ReaderFault {
                restarting: false,
                faults: 2,
                ..
            })
        ));
    }

    #[test]
    fn throttle_records_tally_what_they_suppressed() {
        let mut hub = Hub::default();
        let throttle = record(
            0,
            1,
            7,
            EventDetail::Throttle(Throttle {
                suppressed: 40,
                window_ns: 1,
            }),
        );
        hub.absorb(vec![Ok(throttle)]);
        let delivered = hub.delivered(7);
        assert_eq!((delivered.throttle_records, delivered.suppressed), (1, 40));
    }
}
