//! The event reader: a tokio task that drains the ring buffer, decodes records, attributes them
//! to containers, detects losses, and fans events out to subscribers.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
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
            EventDetail::KernelFile { .. }
            | EventDetail::Lost { .. }
            | EventDetail::ReaderFault { .. } => {}
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
    pub health: ReaderHealth,
    last_seq: HashMap<u32, u64>,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    sender: mpsc::Sender<GuardEvent>,
    /// Events this subscriber lost because its buffer was full.
    dropped: Arc<AtomicU64>,
}

impl ReaderState {
    /// A new subscription and its own count of dropped events.
    pub fn subscribe(&mut self, capacity: usize) -> (mpsc::Receiver<GuardEvent>, Arc<AtomicU64>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.subscribers.push(Subscriber {
            sender,
            dropped: Arc::clone(&dropped),
        });
        (receiver, dropped)
    }

    fn absorb(&mut self, records: Vec<Result<KernelEvent, events::DecodeError>>) {
        self.subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
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

    /// Records a reader fault in the health state and publishes it in-band.
    fn record_fault(&mut self, reason: &str, stopped: bool) {
        self.health.faults += 1;
        self.health.last_fault = Some(reason.to_string());
        if stopped {
            self.health.state = HealthState::Stopped;
        } else {
            self.health.state = HealthState::Recovered;
            self.health.restarts += 1;
        }
        self.publish_external(KernelEvent {
            cpu: 0,
            seq: 0,
            ktime_ns: 0,
            cgroup_id: 0,
            detail: EventDetail::ReaderFault {
                error: reason.to_string(),
                faults: self.health.faults,
                restarting: !stopped,
            },
        });
    }

    /// Publishes an event that did not come through the ring buffer (kernel file snapshots).
    pub fn publish_external(&mut self, event: KernelEvent) {
        self.subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
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
            if subscriber.sender.try_send(attributed.clone()).is_err() {
                self.loss.subscriber_drops += 1;
                subscriber.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A request to drain everything pending, answered once done.
pub type DrainRequest = oneshot::Sender<()>;

/// Faults in a row after which the reader gives up (a fault that repeats on every drain is a
/// bug, not bad luck); a successful drain resets the count.
const MAX_CONSECUTIVE_FAULTS: u32 = 10;

/// How the reader is doing. Faults also reach subscribers in-band, as `reader_fault` events.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReaderHealth {
    pub state: HealthState,
    /// Faults so far (a panic while draining, a failed poll of the ring buffer).
    pub faults: u64,
    /// Times the reader resumed after a fault.
    pub restarts: u64,
    pub last_fault: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Never faulted.
    #[default]
    Healthy,
    /// Faulted and resumed: counts stay exact (the kernel kept counting, the ring buffer keeps
    /// its read position), but live events may have been delayed.
    Recovered,
    /// Gave up after repeated faults: no live events; kernel counters still count.
    Stopped,
}

/// Where an injected panic strikes a drain (feature `fault-injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Before any record is read: nothing is lost, the restart reads them all.
    BeforeReading,
    /// After the batch left the ring buffer, before it was counted: the batch is lost, and the
    /// sequence check must say so.
    AfterReading,
}

/// Test hook: panics the reader injects into its next drains (see `Guard::inject_reader_panic`).
#[derive(Debug, Default)]
pub struct InjectedPanics {
    before_reading: std::sync::atomic::AtomicU32,
    after_reading: std::sync::atomic::AtomicU32,
}

impl InjectedPanics {
    pub fn add(&self, point: FaultPoint) {
        self.counter(point).fetch_add(1, Ordering::Relaxed);
    }

    fn counter(&self, point: FaultPoint) -> &std::sync::atomic::AtomicU32 {
        match point {
            FaultPoint::BeforeReading => &self.before_reading,
            FaultPoint::AfterReading => &self.after_reading,
        }
    }

    /// Panics if a panic is pending at `point` (consuming it).
    fn strike(&self, point: FaultPoint) {
        let take_one = |n: u32| n.checked_sub(1);
        if self
            .counter(point)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take_one)
            .is_ok()
        {
            panic!("injected reader fault ({point:?})");
        }
    }
}

/// How one stint of serving ended.
enum Served {
    /// Every drain-request sender is gone: the guard went away.
    Closed,
    Fault(Box<Fault>),
}

struct Fault {
    ring: RingBuf<MapData>,
    reason: String,
    /// A drain request that was being answered when the fault hit: answered after the
    /// restart, so the caller never sees a fault as "drained".
    pending: Option<DrainRequest>,
}

/// Runs until every [`DrainRequest`] sender is dropped (the guard went away). A fault (a panic
/// while draining, a failed poll) is recorded in the health state, published as a
/// `reader_fault` event, and followed by a restart on the same ring buffer: the kernel keeps
/// the consumer position in the map, so the reader resumes exactly where it stopped, and the
/// per-CPU sequence check would count any record that went missing.
pub async fn run(
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, LostCounts>,
    state: Arc<Mutex<ReaderState>>,
    requests: mpsc::Receiver<DrainRequest>,
    poll_interval: Duration,
    injected: Arc<InjectedPanics>,
) {
    let mut reader = Reader {
        lost,
        state,
        requests,
        poll_interval,
        injected,
        consecutive_faults: 0,
    };
    let mut ring = ring;
    let mut pending = None;
    loop {
        let Served::Fault(fault) = reader.serve(ring, pending).await else {
            return;
        };
        reader.consecutive_faults += 1;
        let consecutive = reader.consecutive_faults;
        let give_up = consecutive >= MAX_CONSECUTIVE_FAULTS;
        lock(&reader.state).record_fault(&fault.reason, give_up);
        if give_up {
            error!(reason = %fault.reason, consecutive, "event reader faulted too often; live events stop");
            return;
        }
        error!(reason = %fault.reason, consecutive, "event reader faulted; restarting it");
        // Backing off keeps a persistent fault from spinning a CPU the containers need.
        tokio::time::sleep(reader.poll_interval * consecutive).await;
        ring = fault.ring;
        pending = fault.pending;
    }
}

/// Everything the reader keeps across restarts (the ring buffer itself is handed back by a
/// fault).
struct Reader {
    lost: PerCpuArray<MapData, LostCounts>,
    state: Arc<Mutex<ReaderState>>,
    requests: mpsc::Receiver<DrainRequest>,
    poll_interval: Duration,
    injected: Arc<InjectedPanics>,
    /// Faults since the last successful drain.
    consecutive_faults: u32,
}

impl Reader {
    /// Drains on every wakeup, tick and request until the guard goes away or a fault; first
    /// of all, answers `pending` (the request a fault interrupted).
    async fn serve(&mut self, ring: RingBuf<MapData>, pending: Option<DrainRequest>) -> Served {
        // SAFETY: the RingBuf owns its map's fd and keeps it open, unchanged, for its
        // lifetime, which the AsyncFd owns.
        let registered =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
        let mut ring = match registered {
            Ok(ring) => ring,
            Err(error) => {
                let (ring, error) = error.into_parts();
                return Served::Fault(Box::new(Fault {
                    ring,
                    reason: format!("cannot poll the event ring buffer: {error}"),
                    pending,
                }));
            }
        };
        // The programs wake us only for full batches; the tick picks up the rest.
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut reply = pending;
        loop {
            if let Err(reason) = self.guarded_drain(ring.get_mut()) {
                return Served::Fault(Box::new(Fault {
                    ring: ring.into_inner(),
                    reason,
                    pending: reply,
                }));
            }
            self.consecutive_faults = 0;
            if let Some(reply) = reply.take() {
                let _ = reply.send(());
            }
            reply = tokio::select! {
                ready = ring.readable_mut() => match ready {
                    Ok(mut ready) => {
                        ready.clear_ready();
                        None
                    }
                    Err(error) => {
                        return Served::Fault(Box::new(Fault {
                            ring: ring.into_inner(),
                            reason: format!("polling the event ring buffer failed: {error}"),
                            pending: None,
                        }));
                    }
                },
                _ = tick.tick() => None,
                request = self.requests.recv() => match request {
                    Some(reply) => Some(reply),
                    None => return Served::Closed,
                },
            };
        }
    }

    /// [`drain`], with a panic (a bug in decoding or attribution) caught and returned as text.
    fn guarded_drain(&self, ring: &mut RingBuf<MapData>) -> Result<(), String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drain(ring, &self.lost, &self.state, &self.injected)
        }))
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            format!("panic while draining the ring buffer: {message}")
        })
    }
}

fn lock(state: &Mutex<ReaderState>) -> std::sync::MutexGuard<'_, ReaderState> {
    // A panic while the state was held leaves plain counters behind: keep going.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn drain(
    ring: &mut RingBuf<MapData>,
    lost: &PerCpuArray<MapData, LostCounts>,
    state: &Mutex<ReaderState>,
    injected: &InjectedPanics,
) {
    injected.strike(FaultPoint::BeforeReading);
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        records.push(events::decode(&item));
    }
    if !records.is_empty() {
        injected.strike(FaultPoint::AfterReading);
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
    let mut state = lock(state);
    if !records.is_empty() {
        state.absorb(records);
    }
    if let Some(totals) = kernel_lost {
        state.absorb_kernel_loss(totals);
    }
}
