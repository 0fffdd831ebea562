//! The ring-buffer reader: a tokio task that drains the ring buffer on wakeups, ticks and
//! drain requests, decodes the records, reads the kernel's loss counts, and hands both to the
//! hub. A fault (a panic while draining, a failed poll) is recorded and followed by a restart
//! on the same ring buffer.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use guard_common::{EVENT_KIND_SLOTS, LostCounts};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};
use tracing::{error, warn};

use super::{
    fault::{FaultPoint, InjectedPanics},
    hub::Hub,
    lock, task,
};
use crate::events;

/// A request to drain everything pending, answered once done.
pub(crate) type DrainRequest = oneshot::Sender<()>;

/// Faults in a row after which the reader gives up (a fault that repeats on every drain is a
/// bug, not bad luck); a successful drain resets the count.
const MAX_CONSECUTIVE_FAULTS: u32 = 10;

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

/// The ring buffer, once registered with the runtime's IO driver and released: a reader that
/// could not poll it is refused at start, not restarted ten times.
pub(crate) fn pollable(ring: RingBuf<MapData>) -> Result<RingBuf<MapData>, std::io::Error> {
    // SAFETY: the RingBuf owns its map's fd and keeps it open while the AsyncFd has it.
    match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
        Ok(registered) => Ok(registered.into_inner()),
        Err(error) => Err(error.into_parts().1),
    }
}

/// Runs until every [`DrainRequest`] sender is dropped (the guard went away). A fault (a panic
/// while draining, a failed poll) is recorded in the health state, published as a
/// `reader_fault` event, and followed by a restart on the same ring buffer: the kernel keeps
/// the consumer position in the map, so the reader resumes exactly where it stopped, and the
/// per-CPU sequence check would count any record that went missing. Giving up is recorded
/// here too; the task then ends with `Ok` (`pipeline::task` records other ends).
pub(crate) async fn run(
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, LostCounts>,
    hub: Arc<Mutex<Hub>>,
    requests: mpsc::Receiver<DrainRequest>,
    poll_interval: Duration,
    injected: Arc<InjectedPanics>,
) -> Result<(), String> {
    let mut reader = Reader {
        lost,
        hub,
        requests,
        poll_interval,
        injected,
        consecutive_faults: 0,
    };
    let mut ring = ring;
    let mut pending = None;
    loop {
        let Served::Fault(fault) = reader.serve(ring, pending).await else {
            return Ok(());
        };
        reader.consecutive_faults += 1;
        let consecutive = reader.consecutive_faults;
        let give_up = consecutive >= MAX_CONSECUTIVE_FAULTS;
        lock(&reader.hub).record_fault(&fault.reason, give_up);
        if give_up {
            error!(reason = %fault.reason, consecutive, "event reader faulted too often; live events stop");
            return Ok(());
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
    hub: Arc<Mutex<Hub>>,
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
            self.injected.strike(FaultPoint::OutsideDrain);
        }
    }

    /// [`drain`], with a panic (a bug in decoding or attribution) caught and returned as text.
    fn guarded_drain(&self, ring: &mut RingBuf<MapData>) -> Result<(), String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drain(ring, &self.lost, &self.hub, &self.injected)
        }))
        .map_err(|panic| {
            format!(
                "panic while draining the ring buffer: {}",
                task::panic_message(panic.as_ref())
            )
        })
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    lost: &PerCpuArray<MapData, LostCounts>,
    hub: &Mutex<Hub>,
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
    let mut hub = lock(hub);
    if !records.is_empty() {
        hub.absorb(records);
    }
    if let Some(totals) = kernel_lost {
        hub.absorb_kernel_loss(totals);
    }
}
