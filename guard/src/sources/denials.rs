//! audit's fork denials as `fork_denied` events (tier 1, where asked for: auditing costs every
//! task's syscalls, docs/KERNELS.md): each clone, clone3, fork or vfork that failed with EAGAIN
//! is one event, attributed by `/proc/<pid>/cgroup` (the task is alive: it just asked), else by
//! the task map. audit's own losses (its `lost` counter, serial gaps, ENOBUFS) become an
//! in-band `lost` event.
use std::{
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use guard_common::DenialCause;
use tokio::io::{Interest, unix::AsyncFd};

use super::audit::{AuditLoss, AuditSource, Denial};
use crate::events::{EventDetail, EventSource, ForkDenied, GuardEvent, Lost, monotonic_ns};

/// The audit source and how much of its loss was reported.
pub(crate) struct Denials {
    source: AuditSource,
    reported_loss: u64,
}

impl Denials {
    pub fn new(source: AuditSource) -> Self {
        Self {
            source,
            reported_loss: 0,
        }
    }

    /// Every record waiting, as events (their container by `attribute`, pid to cgroup id).
    pub fn drain(&mut self, attribute: &dyn Fn(u32) -> Option<u64>) -> Vec<GuardEvent> {
        let batch = match self.source.read_batch() {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "reading audit's records");
                return Vec::new();
            }
        };
        for malformed in &batch.malformed {
            tracing::warn!(%malformed, "an audit record guard could not read");
        }
        let mut events: Vec<GuardEvent> = batch
            .denials
            .iter()
            .map(|denial| denial_event(denial, attribute(denial.pid)))
            .collect();
        let AuditLoss {
            kernel_lost,
            serial_gaps,
            enobufs,
        } = batch.loss;
        let lost = kernel_lost + serial_gaps + enobufs;
        if lost > self.reported_loss {
            events.push(GuardEvent::from_source(
                EventSource::Audit,
                monotonic_ns(),
                0,
                EventDetail::Lost(Lost {
                    event_kind: "fork_denied",
                    count: lost - self.reported_loss,
                }),
            ));
            self.reported_loss = lost;
        }
        events
    }

    fn request_status(&mut self) {
        if let Err(error) = self.source.request_status() {
            tracing::warn!(%error, "asking audit for its lost count");
        }
    }

    fn fd(&self) -> std::io::Result<OwnedFd> {
        // SAFETY: the socket is open while the source lives; the clone is owned here.
        unsafe { BorrowedFd::borrow_raw(self.source.as_raw_fd()) }.try_clone_to_owned()
    }
}

/// One denial as an event of the container of cgroup id `container` (None: no container).
pub(crate) fn denial_event(denial: &Denial, container: Option<u64>) -> GuardEvent {
    GuardEvent::from_source(
        EventSource::Audit,
        monotonic_ns(),
        container.unwrap_or(0),
        EventDetail::ForkDenied(ForkDenied {
            tgid: denial.pid,
            tid: denial.pid,
            ret: -i64::from(libc::EAGAIN),
            cause: DenialCause::Inferred,
            syscall_nr: denial.syscall,
            task_cgroup_id: 0,
            sub_cgroup: None,
        }),
    )
}

/// Reads the records as they come, and asks for audit's `lost` count every `interval`.
pub(crate) async fn run(
    denials: Arc<Mutex<Denials>>,
    attribute: impl Fn(u32) -> Option<u64> + Send,
    deliver: impl Fn(Vec<GuardEvent>) + Send,
    interval: Duration,
) -> Result<(), String> {
    let fd = lock(&denials)
        .fd()
        .and_then(|fd| {
            // SAFETY: the AsyncFd owns the duplicate and deregisters it before closing it.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|error| error.into_parts().1)
        })
        .map_err(|error| format!("polling audit's socket: {error}"))?;
    loop {
        tokio::select! {
            ready = fd.readable() => {
                let mut ready = ready.map_err(|error| format!("polling audit's socket: {error}"))?;
                ready.clear_ready();
            }
            () = tokio::time::sleep(interval) => lock(&denials).request_status(),
        }
        let events = lock(&denials).drain(&attribute);
        if !events.is_empty() {
            deliver(events);
        }
    }
}

/// The lock, taken even if a panic poisoned it.
pub(crate) fn lock(denials: &Mutex<Denials>) -> std::sync::MutexGuard<'_, Denials> {
    denials.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
