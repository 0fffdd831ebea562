//! Tier 1's wiring: which live sources a guard runs, and what it does with each kill the
//! kernel log reports.
use std::sync::{Arc, Mutex};

use crate::{
    Tier,
    cgroup::Hierarchy,
    kmsg::OnKill,
    pipeline::{hub::Hub, lock},
    sources::{
        oom,
        perf::{self, PerfSource},
    },
};

/// The sources a guard at `tier` runs, `kmsg` only where the kernel log is read.
pub(super) fn live_sources(tier: Tier, kernel_log: bool) -> Vec<&'static str> {
    crate::sources::live_at(tier)
        .iter()
        .copied()
        .filter(|source| kernel_log || *source != "kmsg")
        .collect()
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
