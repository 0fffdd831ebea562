//! The event reader: a tokio task that drains the ring buffer, decodes records, attributes them
//! to containers, detects losses, and fans events out to subscribers.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use guard_common::{EVENT_KIND_SLOTS, EventKind, LostCounts};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};
use tracing::{error, warn};

use crate::events::{self, EventDetail, GuardEvent, KernelEvent};

/// Per-container tallies of events the reader has seen, keyed by cgroup id (0: events that
/// belong to no container, such as a global OOM kill).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub forks: u64,
    pub fork_denied: u64,
    pub oom_victims: u64,
    pub reclaims: u64,
    /// Throttle records, and the individual events they say were suppressed.
    pub throttle_records: u64,
    pub suppressed: u64,
}

impl Delivered {
    fn count(&mut self, detail: &EventDetail) {
        match detail {
            EventDetail::Fork { .. } => self.forks += 1,
            EventDetail::ForkDenied { .. } => self.fork_denied += 1,
            EventDetail::OomVictim { .. } => self.oom_victims += 1,
            EventDetail::Reclaim { .. } => self.reclaims += 1,
            EventDetail::Throttle { suppressed, .. } => {
                self.throttle_records += 1;
                self.suppressed += suppressed;
            }
            EventDetail::KernelFile { .. } | EventDetail::Lost { .. } => {}
        }
    }
}

/// Userspace-side losses: a reader can always tell "nothing happened" from "something happened
/// that we did not see".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReaderLoss {
    /// Records missing from a CPU's sequence (lost in the kernel, seen from userspace).
    pub sequence_gaps: u64,
    /// Records the reader could not decode.
    pub undecodable: u64,
    /// Events not handed to a subscriber whose buffer was full.
    pub subscriber_drops: u64,
}

/// State the reader updates and the [`crate::Guard`] reads.
#[derive(Default)]
pub struct ReaderState {
    /// Ring-buffer reserve failures in the kernel by event kind, as of the last drain.
    pub kernel_lost: [u64; EVENT_KIND_SLOTS as usize],
    /// cgroup id → container id, for attribution.
    pub names: HashMap<u64, String>,
    pub delivered: HashMap<u64, Delivered>,
    pub loss: ReaderLoss,
    last_seq: HashMap<u32, u64>,
    subscribers: Vec<mpsc::Sender<GuardEvent>>,
}

impl ReaderState {
    pub fn subscribe(&mut self, capacity: usize) -> mpsc::Receiver<GuardEvent> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        self.subscribers.push(sender);
        receiver
    }

    fn absorb(&mut self, records: Vec<Result<KernelEvent, events::DecodeError>>) {
        self.subscribers
            .retain(|subscriber| !subscriber.is_closed());
        for record in records {
            let event = match record {
                Ok(event) => event,
                Err(error) => {
                    self.loss.undecodable += 1;
                    warn!(%error, "dropping an undecodable ring-buffer record");
                    continue;
                }
            };
            // Sequence numbers start at 1 on every CPU, so gaps before the first record count.
            // A cross-check of the kernel's own loss counts (which the in-band records use).
            let last = self.last_seq.entry(event.cpu).or_insert(0);
            self.loss.sequence_gaps += event.seq.saturating_sub(*last + 1);
            *last = (*last).max(event.seq);
            self.delivered
                .entry(event.cgroup_id)
                .or_default()
                .count(&event.detail);
            self.publish(event);
        }
    }

    /// Publishes an in-band `lost` record for every kind whose kernel loss count grew.
    fn absorb_kernel_loss(&mut self, totals: [u64; EVENT_KIND_SLOTS as usize]) {
        for kind in EventKind::ALL {
            let index = kind as usize;
            let grown = totals[index].saturating_sub(self.kernel_lost[index]);
            if grown == 0 {
                continue;
            }
            self.kernel_lost[index] = totals[index];
            self.publish(KernelEvent {
                cpu: 0,
                seq: 0,
                ktime_ns: 0,
                cgroup_id: 0,
                detail: EventDetail::Lost {
                    event_kind: kind.name(),
                    count: grown,
                },
            });
        }
    }

    /// Publishes an event that did not come through the ring buffer (kernel file snapshots).
    pub fn publish_external(&mut self, event: KernelEvent) {
        self.subscribers
            .retain(|subscriber| !subscriber.is_closed());
        self.publish(event);
    }

    fn publish(&mut self, event: KernelEvent) {
        if self.subscribers.is_empty() {
            return;
        }
        let container = match event.cgroup_id {
            0 => None,
            cgroup_id => self.names.get(&cgroup_id).cloned(),
        };
        let attributed = GuardEvent { container, event };
        for subscriber in &self.subscribers {
            // A slow subscriber never blocks the reader: it loses events, counted.
            if subscriber.try_send(attributed.clone()).is_err() {
                self.loss.subscriber_drops += 1;
            }
        }
    }
}

/// A request to drain everything pending, answered once done.
pub type DrainRequest = oneshot::Sender<()>;

/// Runs until every [`DrainRequest`] sender is dropped (the guard went away).
pub async fn run(
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, LostCounts>,
    state: Arc<Mutex<ReaderState>>,
    mut requests: mpsc::Receiver<DrainRequest>,
    poll_interval: Duration,
) {
    // SAFETY: the RingBuf owns its map's fd and keeps it open, unchanged, for its lifetime,
    // which the AsyncFd owns.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            error!(%error, "cannot poll the event ring buffer; live events stop");
            return;
        }
    };
    // The programs wake us only for full batches; the tick picks up the rest.
    let mut tick = tokio::time::interval(poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => match ready {
                Ok(mut ready) => {
                    drain(ready.get_inner_mut(), &lost, &state);
                    ready.clear_ready();
                }
                Err(error) => {
                    error!(%error, "polling the event ring buffer failed; live events stop");
                    return;
                }
            },
            _ = tick.tick() => drain(ring.get_mut(), &lost, &state),
            request = requests.recv() => match request {
                Some(reply) => {
                    drain(ring.get_mut(), &lost, &state);
                    let _ = reply.send(());
                }
                None => return,
            },
        }
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    lost: &PerCpuArray<MapData, LostCounts>,
    state: &Mutex<ReaderState>,
) {
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        records.push(events::decode(&item));
    }
    // One lookup of the per-CPU loss counts per drain: losses become in-band records even when
    // nothing after them is ever delivered.
    let kernel_lost = match lost.get(&0, 0) {
        Ok(per_cpu) => {
            let mut totals = [0u64; EVENT_KIND_SLOTS as usize];
            for cpu in per_cpu.iter() {
                for (total, count) in totals.iter_mut().zip(cpu.per_kind) {
                    *total += count;
                }
            }
            Some(totals)
        }
        Err(error) => {
            warn!(%error, "cannot read the LOST map; losses are not reported in-band");
            None
        }
    };
    // One lock per batch, not per record.
    let mut state = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !records.is_empty() {
        state.absorb(records);
    }
    if let Some(totals) = kernel_lost {
        state.absorb_kernel_loss(totals);
    }
}
