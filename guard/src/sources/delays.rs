//! Memory pressure per container at tier 1, from delay accounting: each task's exit statistics
//! (`taskstats.rs`) attributed to its container through the task map and summed in the
//! container's [`SourceCounters`] row (direct-reclaim waits and time, thrashing time, tasks
//! accounted). Exact for the tasks that exited; nothing while a task runs.
use std::{
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{Interest, unix::AsyncFd};

use super::{
    tasks::TaskMap,
    taskstats::{TaskExit, TaskstatsSource},
};
use crate::{
    counters::SourceCounters,
    events::{EventDetail, EventSource, GuardEvent, Lost, monotonic_ns},
};

/// The `event_kind` of a taskstats `lost` event: the exits a full receive buffer dropped.
pub(crate) const LOST_KIND: &str = "task_exits";

/// The taskstats socket and the overruns already reported.
pub(crate) struct Delays {
    source: TaskstatsSource,
    reported_overruns: u64,
}

impl Delays {
    pub fn new(source: TaskstatsSource) -> Self {
        Self {
            source,
            reported_overruns: 0,
        }
    }

    /// Every exit waiting, and a `lost` event (no container) where the receive buffer overran
    /// since the last drain.
    pub fn drain(&mut self) -> (Vec<TaskExit>, Option<GuardEvent>) {
        let batch = match self.source.read_batch() {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "reading taskstats' exits");
                return (Vec::new(), None);
            }
        };
        for malformed in &batch.malformed {
            tracing::warn!(%malformed, "a taskstats record guard could not read");
        }
        let lost = (batch.enobufs > self.reported_overruns).then(|| {
            let count = batch.enobufs - self.reported_overruns;
            self.reported_overruns = batch.enobufs;
            GuardEvent::from_source(
                EventSource::Taskstats,
                monotonic_ns(),
                0,
                EventDetail::Lost(Lost {
                    event_kind: LOST_KIND,
                    count,
                }),
            )
        });
        (batch.exits, lost)
    }

    fn fd(&self) -> std::io::Result<OwnedFd> {
        // SAFETY: the socket is open while the source lives; the clone is owned here.
        unsafe { BorrowedFd::borrow_raw(self.source.as_raw_fd()) }.try_clone_to_owned()
    }
}

/// The container of an exiting task: its process's (the thread group's) in the task map. The
/// map keeps an exited process findable a while, so the answer is the same whether perf's
/// exit record was read before this exit or after it.
pub(crate) fn container_of(tasks: &TaskMap, exit: &TaskExit) -> Option<u64> {
    tasks.container_of(exit.tgid.unwrap_or(exit.pid))
}

/// Adds one exited task's delays to its container's row.
pub(crate) fn account(counters: &mut SourceCounters, exit: &TaskExit) {
    counters.tasks_accounted += 1;
    counters.reclaim_delays = counters.reclaim_delays.saturating_add(exit.freepages_count);
    counters.reclaim_delay_ns = counters
        .reclaim_delay_ns
        .saturating_add(exit.freepages_delay_ns);
    counters.thrashing_delay_ns = counters
        .thrashing_delay_ns
        .saturating_add(exit.thrashing_delay_ns);
}

/// Reads the exits as they come (and every `interval`), handing each batch to `deliver`.
pub(crate) async fn run(
    delays: Arc<Mutex<Delays>>,
    deliver: impl Fn(Vec<TaskExit>, Option<GuardEvent>) + Send,
    interval: Duration,
) -> Result<(), String> {
    let fd = lock(&delays)
        .fd()
        .and_then(|fd| {
            // SAFETY: the AsyncFd owns the duplicate and deregisters it before closing it.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|error| error.into_parts().1)
        })
        .map_err(|error| format!("polling the taskstats socket: {error}"))?;
    loop {
        tokio::select! {
            ready = fd.readable() => {
                let mut ready = ready.map_err(|error| format!("polling the taskstats socket: {error}"))?;
                ready.clear_ready();
            }
            () = tokio::time::sleep(interval) => {}
        }
        let (exits, lost) = lock(&delays).drain();
        if !exits.is_empty() || lost.is_some() {
            deliver(exits, lost);
        }
    }
}

/// The lock, taken even if a panic poisoned it.
pub(crate) fn lock(delays: &Mutex<Delays>) -> std::sync::MutexGuard<'_, Delays> {
    delays.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn exit(pid: u32, tgid: u32, reclaim: (u64, u64), thrashing_ns: u64) -> TaskExit {
        TaskExit {
            version: 14,
            pid,
            tgid: Some(tgid),
            ppid: 1,
            uid: 0,
            comm: "guard-stress".into(),
            exit_code: 0,
            freepages_count: reclaim.0,
            freepages_delay_ns: reclaim.1,
            thrashing_count: u64::from(thrashing_ns > 0),
            thrashing_delay_ns: thrashing_ns,
        }
    }

    #[test]
    fn delays_are_summed_per_container_whichever_exit_is_read_first() {
        let mut tasks = TaskMap::default();
        tasks.insert(10, 1);
        tasks.insert(20, 2);
        tasks.insert(30, 1);
        // perf's exit of 10 read before its taskstats record; 30's after.
        tasks.exit(10);
        let exits = [
            exit(10, 10, (3, 3_000), 500),
            exit(11, 10, (1, 1_000), 0), // a thread of 10
            exit(20, 20, (0, 0), 0),
            exit(30, 30, (2, 7_000), 0),
            exit(40, 40, (9, 9_000), 9), // in no container
        ];
        let mut rows: HashMap<u64, SourceCounters> = HashMap::new();
        let mut unattributed = 0;
        for exit in &exits {
            match container_of(&tasks, exit) {
                Some(container) => account(rows.entry(container).or_default(), exit),
                None => unattributed += 1,
            }
        }
        tasks.exit(30);
        let one = rows[&1];
        assert_eq!(one.tasks_accounted, 3);
        assert_eq!(one.reclaim_delays, 6);
        assert_eq!(one.reclaim_delay_ns, 11_000);
        assert_eq!(one.thrashing_delay_ns, 500);
        let two = rows[&2];
        assert_eq!((two.tasks_accounted, two.reclaim_delay_ns), (1, 0));
        assert_eq!(unattributed, 1);
    }
}
