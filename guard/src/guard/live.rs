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
        denials::{self, Denials},
        oom,
        perf::{self, PerfSource},
    },
};

/// The sources a guard at `tier` runs, `kmsg` only where the kernel log is read, `audit`
/// where its records are.
pub(super) fn live_sources(tier: Tier, kernel_log: bool, audit: bool) -> Vec<&'static str> {
    let mut sources: Vec<&'static str> = crate::sources::live_at(tier)
        .iter()
        .copied()
        .filter(|source| kernel_log || *source != "kmsg")
        .collect();
    if audit {
        sources.insert(sources.len() - 1, "audit");
    }
    sources
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
