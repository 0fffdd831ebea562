//! Tier 1's wiring: which live sources a guard runs, what it does with each kill the kernel
//! log reports, and where a denied fork's task is.
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tracing::warn;

use crate::{
    Tier,
    cgroup::Hierarchy,
    events::GuardEvent,
    kmsg::OnKill,
    pipeline::{hub::Hub, lock, task},
    sources::{
        audit::AuditSource,
        delays::{self, Delays},
        denials::{self, Denials},
        oom,
        perf::{self, PerfSource},
        taskstats::{TaskExit, TaskstatsSource},
    },
};

/// The sources a guard at `tier` runs, `kmsg` only where the kernel log is read, `audit`
/// where its records are, `taskstats` where delay accounting is read.
pub(super) fn live_sources(
    tier: Tier,
    kernel_log: bool,
    audit: bool,
    taskstats: bool,
) -> Vec<&'static str> {
    let mut sources: Vec<&'static str> = crate::sources::live_at(tier)
        .iter()
        .copied()
        .filter(|source| kernel_log || *source != "kmsg")
        .collect();
    if audit {
        sources.insert(sources.len() - 1, "audit");
    }
    if taskstats {
        sources.insert(sources.len() - 1, "taskstats");
    }
    sources
}

/// Opens taskstats and starts its reader (None, with a warning, where the kernel has no
/// taskstats or no delay accounting: the tier runs without per-container delays).
pub(super) fn start_taskstats(
    perf: &Arc<Mutex<PerfSource>>,
    hub: &Arc<Mutex<Hub>>,
    interval: Duration,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Option<Arc<Mutex<Delays>>> {
    let source = TaskstatsSource::open()
        .inspect_err(|error| {
            warn!(%error, "memory pressure per container is memory.events alone (no taskstats delays)")
        })
        .ok()?;
    let delays = Arc::new(Mutex::new(Delays::new(source)));
    let deliver = {
        let (perf, hub) = (Arc::clone(perf), Arc::clone(hub));
        move |exits: Vec<TaskExit>, lost: Option<GuardEvent>| {
            account_exits(&perf, &hub, &exits, lost)
        }
    };
    tasks.push(task::spawn(
        "the taskstats reader",
        Arc::clone(hub),
        delays::run(Arc::clone(&delays), deliver, interval),
    ));
    Some(delays)
}

/// Sums exited tasks' delays in their containers' rows: the perf rings are drained first (a
/// task's fork record may still be in one), then each task's container is read from the task
/// map, which keeps exited processes a while (perf's exit record may come before or after).
/// Locks are taken one at a time: the perf source, then the hub.
pub(super) fn account_exits(
    perf: &Mutex<PerfSource>,
    hub: &Mutex<Hub>,
    exits: &[TaskExit],
    lost: Option<GuardEvent>,
) {
    let (pending, containers) = {
        let mut source = perf::lock(perf);
        let pending = source.drain();
        let containers: Vec<Option<u64>> = exits
            .iter()
            .map(|exit| delays::container_of(&source.tasks, exit))
            .collect();
        (pending, containers)
    };
    let mut hub = lock(hub);
    if !pending.is_empty() {
        hub.absorb(pending.into_iter().map(Ok).collect());
    }
    for (exit, container) in exits.iter().zip(containers) {
        if let Some(container) = container {
            hub.account_exit(container, exit);
        }
    }
    if let Some(lost) = lost {
        hub.absorb(vec![Ok(lost)]);
    }
}

/// Tier 1's audit reader: its records and where their tasks are.
pub(super) struct AuditReader {
    pub denials: Arc<Mutex<Denials>>,
    pub attribute: Arc<dyn Fn(u32) -> Option<u64> + Send + Sync>,
}

impl AuditReader {
    /// Every denial waiting, as events.
    pub fn drain(&self) -> Vec<GuardEvent> {
        denials::lock(&self.denials).drain(&*self.attribute)
    }
}

/// Opens audit and starts its reader (None, with a warning, where audit cannot be had).
pub(super) fn start_audit(
    perf: &Arc<Mutex<PerfSource>>,
    hub: &Arc<Mutex<Hub>>,
    hierarchy: Option<Hierarchy>,
    interval: Duration,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Option<AuditReader> {
    let source = AuditSource::open()
        .inspect_err(|error| {
            warn!(%error, "fork denials are counted from pids.events alone (no audit records)")
        })
        .ok()?;
    let denials = Arc::new(Mutex::new(Denials::new(source)));
    let attribute: Arc<dyn Fn(u32) -> Option<u64> + Send + Sync> = Arc::new(denials_container(
        Arc::clone(perf),
        Arc::clone(hub),
        hierarchy,
    ));
    let deliver = {
        let hub = Arc::clone(hub);
        move |events: Vec<GuardEvent>| lock(&hub).absorb(events.into_iter().map(Ok).collect())
    };
    tasks.push(task::spawn(
        "the audit reader",
        Arc::clone(hub),
        denials::run(
            Arc::clone(&denials),
            {
                let attribute = Arc::clone(&attribute);
                move |pid| attribute(pid)
            },
            deliver,
            interval,
        ),
    ));
    Some(AuditReader { denials, attribute })
}

/// The container of task `pid` for a denial: where `/proc` says it is (it is alive: it just
/// asked), else the task map.
pub(super) fn denials_container(
    perf: Arc<Mutex<PerfSource>>,
    hub: Arc<Mutex<Hub>>,
    hierarchy: Option<Hierarchy>,
) -> impl Fn(u32) -> Option<u64> + Send + 'static {
    move |pid| {
        let now = hierarchy.as_ref().and_then(|hierarchy| {
            let hub = lock(&hub);
            oom::container_from_proc(pid, &hierarchy.mount, |id| hub.container_of(id).is_some())
        });
        now.unwrap_or_else(|| perf::lock(&perf).tasks.container_of(pid))
    }
}

/// What tier 1 does with each kill the kernel log reports: the perf rings are drained first
/// (the victim's fork record may still be in one), then the victim's container is read from
/// `/proc/<pid>/cgroup` while the dying process is there, else from the task map, and the
/// `oom_victim` event goes through the hub. Locks are taken one at a time: the perf source,
/// then the hub.
pub(super) fn victims_of_the_log(
    perf: Arc<Mutex<PerfSource>>,
    hub: Arc<Mutex<Hub>>,
    hierarchy: Option<Hierarchy>,
) -> OnKill {
    Box::new(move |kill| {
        let (pending, known) = {
            let mut source = perf::lock(&perf);
            let pending = source.drain();
            (pending, source.tasks.container_of(kill.pid))
        };
        let mut hub = lock(&hub);
        if !pending.is_empty() {
            hub.absorb(pending.into_iter().map(Ok).collect());
        }
        let now = hierarchy.as_ref().and_then(|hierarchy| {
            oom::container_from_proc(kill.pid, &hierarchy.mount, |id| {
                hub.container_of(id).is_some()
            })
        });
        let container = now.unwrap_or(known);
        hub.absorb(vec![Ok(oom::victim_event(kill, container))]);
    })
}
