//! perf's task records per watched container (tier 1): for each container, one dummy
//! software event per online CPU, opened on the container's cgroup (`PERF_FLAG_PID_CGROUP`),
//! with `task` and `comm` side-band records. The kernel filters them by the cgroup of the task
//! running on that CPU, descendants included (`perf_cgroup_match`), so a container's sub-cgroups
//! are covered without adopting them. The rings are polled together through one epoll set
//! under tokio ([`run`]), and drained on demand (before a report, before an OOM kill is
//! attributed).
use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{Interest, unix::AsyncFd};

use super::{
    SourceError,
    records::{self, Record},
    ring::Ring,
    tasks::TaskMap,
};
use crate::events::{EventDetail, EventSource, Exec, Exit, Fork, GuardEvent, Lost};

/// Data pages per ring (64 KiB with 4 KiB pages): a fork, an exit and an exec take 40 bytes
/// each, so a ring holds ~540 short-lived processes between two drains.
pub(crate) const RING_PAGES: usize = 16;

/// The `event_kind` of a perf ring's `lost` event: the LOST record does not say which.
pub(crate) const LOST_KIND: &str = "task_records";

/// The rings of every watched container, and the task map their records keep.
pub(crate) struct PerfSource {
    epoll: OwnedFd,
    cpus: Vec<u32>,
    pages: usize,
    rings: HashMap<u64, Vec<Ring>>,
    /// pid → container, for the kernel log's kills.
    pub tasks: TaskMap,
    /// Records too short for their kind, or a ring whose sizes made no sense.
    pub undecodable: u64,
}

impl PerfSource {
    /// An empty source: no container yet, the online CPUs read.
    pub fn new(pages: usize) -> Result<Self, SourceError> {
        let path = "/sys/devices/system/cpu/online";
        let cpus = std::fs::read_to_string(path)
            .and_then(|text| {
                parse_cpu_list(&text).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, text.trim().to_string())
                })
            })
            .map_err(|source| SourceError::Cpus {
                path: path.to_string(),
                source,
            })?;
        // SAFETY: epoll_create1 has no preconditions; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(SourceError::Epoll {
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            // SAFETY: a fresh descriptor, owned here.
            epoll: unsafe { OwnedFd::from_raw_fd(epoll) },
            cpus,
            pages: pages.next_power_of_two(),
            rings: HashMap::new(),
            tasks: TaskMap::default(),
            undecodable: 0,
        })
    }

    /// Starts following the container of cgroup id `container` at `cgroup`: its rings first,
    /// then its processes from `cgroup.procs` (a process forked in between is in both, never
    /// in neither). Returns the processes seeded.
    pub fn watch(&mut self, container: u64, cgroup: &Path) -> Result<usize, SourceError> {
        let name = cgroup.display().to_string();
        let dir = std::fs::File::open(cgroup).map_err(|source| SourceError::Cgroup {
            cgroup: name.clone(),
            source,
        })?;
        let mut rings = Vec::with_capacity(self.cpus.len());
        for &cpu in &self.cpus {
            let ring =
                Ring::open(dir.as_raw_fd(), cpu, self.pages).map_err(|(source, mapping)| {
                    let cgroup = name.clone();
                    if mapping {
                        SourceError::PerfMap {
                            cgroup,
                            cpu,
                            source,
                        }
                    } else {
                        SourceError::PerfOpen {
                            cgroup,
                            cpu,
                            source,
                        }
                    }
                })?;
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: container,
            };
            // SAFETY: both descriptors are open; the event is a valid epoll_event.
            let added = unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    ring.fd(),
                    &mut event,
                )
            };
            if added < 0 {
                return Err(SourceError::Epoll {
                    source: io::Error::last_os_error(),
                });
            }
            rings.push(ring);
        }
        self.rings.insert(container, rings);
        Ok(self.tasks.seed(container, cgroup))
    }

    /// Stops following a container (its rings close, leaving the epoll set with them).
    pub fn unwatch(&mut self, container: u64) {
        self.rings.remove(&container);
        self.tasks.forget(container);
    }

    /// Every record read since the last drain, as events in time order (not yet named).
    pub fn drain(&mut self) -> Vec<GuardEvent> {
        let mut events = Vec::new();
        for (&container, rings) in &mut self.rings {
            for ring in rings {
                let (tasks, undecodable) = (&mut self.tasks, &mut self.undecodable);
                let sane = ring.drain(|bytes| match records::decode(bytes) {
                    Ok(record) => {
                        if let Some(event) = to_event(record, container, tasks) {
                            events.push(event);
                        }
                    }
                    Err(malformed) => {
                        *undecodable += 1;
                        tracing::warn!(?malformed, "a perf record too short for its kind");
                    }
                });
                if !sane {
                    self.undecodable += 1;
                    tracing::warn!(container, "a perf ring held an impossible record size");
                }
            }
        }
        events.sort_by_key(|event| event.ktime_ns);
        events
    }

    /// Bytes the rings map, over every container and CPU.
    pub fn mapped_bytes(&self) -> usize {
        self.rings.values().flatten().map(Ring::mapped_bytes).sum()
    }

    /// The online CPUs, one ring each per container.
    pub fn cpus(&self) -> usize {
        self.cpus.len()
    }

    fn epoll_fd(&self) -> io::Result<OwnedFd> {
        self.epoll.try_clone()
    }
}

/// One record as an event of `container` (None: a record that is not one), keeping the task
/// map: a new process is the container's, and so is every process a record shows running in
/// it (a fork's parent, an exec's caller: a process moved in through `cgroup.procs` has no
/// fork record of its own); an exited one is remembered a while.
fn to_event(record: Record, container: u64, tasks: &mut TaskMap) -> Option<GuardEvent> {
    let (time, detail) = match record {
        Record::Fork {
            pid,
            tid,
            ppid,
            ptid,
            time,
        } => {
            tasks.insert(ppid, container);
            if pid == tid {
                tasks.insert(pid, container);
            }
            let fork = Fork {
                parent_pid: ptid,
                child_pid: tid,
            };
            (time, EventDetail::Fork(fork))
        }
        Record::Exit { pid, tid, time } => {
            if pid == tid {
                tasks.exit(pid);
            }
            (time, EventDetail::Exit(Exit { pid, tid }))
        }
        Record::Exec {
            pid,
            tid,
            comm,
            time,
        } => {
            tasks.insert(pid, container);
            (time, EventDetail::Exec(Exec { pid, tid, comm }))
        }
        Record::Lost { lost, time } => (
            time,
            EventDetail::Lost(Lost {
                event_kind: LOST_KIND,
                count: lost,
            }),
        ),
        Record::Other => return None,
    };
    Some(GuardEvent::from_source(
        EventSource::Perf,
        time,
        container,
        detail,
    ))
}

/// `0-3,5`: the kernel's CPU list format.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.parse::<u32>().ok()?..=last.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Reads the rings as they fill (the watermark's wakeups through the epoll set) and every
/// `interval` (what stays below the watermark), handing each batch to `deliver`.
pub(crate) async fn run(
    source: Arc<Mutex<PerfSource>>,
    deliver: impl Fn(Vec<GuardEvent>) + Send,
    interval: Duration,
) -> Result<(), String> {
    let epoll = lock(&source)
        .epoll_fd()
        // SAFETY: the descriptor is owned by the AsyncFd, which deregisters it before it
        // closes.
        .and_then(|fd| {
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|error| error.into_parts().1)
        })
        .map_err(|error| format!("polling the perf rings: {error}"))?;
    loop {
        tokio::select! {
            ready = epoll.readable() => {
                let mut ready = ready.map_err(|error| format!("polling the perf rings: {error}"))?;
                consume_wakeups(epoll.get_ref().as_raw_fd());
                ready.clear_ready();
            }
            () = tokio::time::sleep(interval) => {}
        }
        let events = lock(&source).drain();
        if !events.is_empty() {
            deliver(events);
        }
    }
}

/// Takes the epoll set's pending wakeups (the rings are drained whatever they were).
fn consume_wakeups(epoll: RawFd) {
    let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 16];
    // SAFETY: the buffer holds 16 events; a zero timeout never blocks.
    while unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), 16, 0) } == 16 {}
}

/// The source's lock, taken even if a panic poisoned it (its state stays consistent: every
/// method leaves it whole).
pub(crate) fn lock(source: &Mutex<PerfSource>) -> std::sync::MutexGuard<'_, PerfSource> {
    source
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use perf_event_open_sys::bindings;

    use super::*;
    use crate::sources::records::tests::task;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0\n"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-2,5\n"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn records_become_events_and_keep_the_task_map() {
        let mut tasks = TaskMap::default();
        let fork = records::decode(&task(bindings::PERF_RECORD_FORK, 20, 10, 20, 10, 5)).unwrap();
        let event = to_event(fork, 7, &mut tasks).unwrap();
        assert_eq!(
            (event.source, event.cgroup_id, event.ktime_ns),
            (EventSource::Perf, 7, 5)
        );
        assert_eq!(
            event.detail,
            EventDetail::Fork(Fork {
                parent_pid: 10,
                child_pid: 20
            })
        );
        assert_eq!(tasks.container_of(20), Some(7));
        // The parent was moved in (no fork record of its own): its fork shows it there.
        assert_eq!(tasks.container_of(10), Some(7));
        // A thread's creation is a fork record too, but maps no process.
        let thread = records::decode(&task(bindings::PERF_RECORD_FORK, 20, 20, 21, 20, 6)).unwrap();
        to_event(thread, 7, &mut tasks).unwrap();
        assert_eq!(tasks.container_of(21), None);
        let exit = records::decode(&task(bindings::PERF_RECORD_EXIT, 20, 10, 20, 10, 9)).unwrap();
        let event = to_event(exit, 7, &mut tasks).unwrap();
        assert_eq!(event.detail, EventDetail::Exit(Exit { pid: 20, tid: 20 }));
        // Exited, still attributable (the kernel log's line may come after the exit record).
        assert_eq!(tasks.container_of(20), Some(7));
    }
}
