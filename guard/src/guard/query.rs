//! What an agent asks a running guard: a container's counters and report, losses, health.
use std::collections::BTreeMap;

use guard_common::{EventKind, GLOBAL_SLOT};
use tokio::sync::oneshot;

use super::{Guard, GuardError};
use crate::{
    Tier,
    cgroup::{EventFiles, HeldLimits},
    container_id::ContainerId,
    counters::{
        BpfCounters, ContainerCounters, GlobalCounters, HealthState, LossReport, ReaderHealth,
    },
    pipeline::lock,
    verdict::{Evidence, LoggedKills, reconcile, report::Report},
};

impl Guard {
    /// The ids of the containers watched now, in order.
    pub fn watched(&self) -> Vec<String> {
        lock(&self.registry)
            .by_id
            .keys()
            .map(|id| id.as_str().to_string())
            .collect()
    }

    /// The container's report now: limits read back, counters, the kernel's event files since
    /// watching began, and the reconciled verdict.
    pub async fn report(&self, id: &str) -> Result<Report, GuardError> {
        let id_parsed = ContainerId::parse(id)?;
        let stream_stopped = self.drain_or_why_not().await;
        let counters = self.counters_now(&id_parsed)?;
        // counters() has just drained: no second round trip to the reader.
        let loss = self.loss_as_of_last_drain();
        let (cgroup, requested, baseline, ancestor_baseline) = {
            let registry = lock(&self.registry);
            let watched = registry
                .by_id
                .get(&id_parsed)
                .ok_or_else(|| GuardError::NotWatched { id: id.to_string() })?;
            (
                watched.cgroup.clone(),
                watched.requested,
                watched.baseline.clone(),
                watched.ancestor_ooms,
            )
        };
        let cgroup_gone = !cgroup.is_dir();
        let ancestor_ooms = self.hierarchy.as_ref().map_or(0, |hierarchy| {
            super::registry::ancestor_ooms(&cgroup, &hierarchy.mount)
                .saturating_sub(ancestor_baseline)
        });
        let kernel_log = self.kernel_log.as_ref().map(|log| {
            // Copied out first: at tier 1 reading the log takes the hub's lock for each kill.
            let victims = lock(&self.hub).oom_victims(counters.cgroup_id).to_vec();
            let (global, overruns) = log.global_kills_among(&victims);
            LoggedKills { global, overruns }
        });
        let applied = HeldLimits::read(&cgroup)?;
        let kernel_since_watch = EventFiles::read(&cgroup)?.since(&baseline);
        let reconciliation = reconcile(&Evidence {
            tier: self.tier,
            requested_memory_max: requested.and_then(|limits| limits.memory_max),
            requested_pids_max: requested.and_then(|limits| limits.pids_max),
            applied: &applied,
            kernel: &kernel_since_watch,
            bpf: counters.bpf.as_ref(),
            sources: counters.sources.as_ref(),
            events_lost: loss.kernel_reserve_failures.values().sum::<u64>()
                + counters.sources.map_or(0, |sources| sources.lost),
            ancestor_ooms,
            cgroup_gone,
            kernel_log,
            stream_stopped: stream_stopped.as_deref(),
        });
        Ok(Report {
            container: counters.container.clone(),
            cgroup,
            cgroup_id: counters.cgroup_id,
            tier: self.tier,
            requested,
            applied,
            counters,
            kernel_since_watch,
            loss,
            reconciliation,
        })
    }

    /// Drains when the reader runs; None then. When it is gone (gave up, died, or the
    /// runtime is shutting down), why: the kernel's counters are still exact and are read
    /// anyway, and a report says the stream stopped.
    async fn drain_or_why_not(&self) -> Option<String> {
        match self.drain().await {
            Ok(()) => None,
            Err(_) => Some(
                self.health()
                    .last_fault
                    .filter(|_| self.health().state == HealthState::Stopped)
                    .unwrap_or_else(|| GuardError::ReaderStopped.to_string()),
            ),
        }
    }

    /// Waits until the reader has consumed every record the kernel produced so far.
    pub async fn drain(&self) -> Result<(), GuardError> {
        if let Some(perf) = &self.perf {
            // Tier 1: the rings, then the kernel log (whose kills the task map attributes).
            let events = crate::sources::perf::lock(perf).drain();
            if !events.is_empty() {
                lock(&self.hub).absorb(events.into_iter().map(Ok).collect());
            }
            if let Some(log) = &self.kernel_log {
                log.catch_up();
            }
            if let Some(audit) = &self.audit {
                let events = audit.drain();
                if !events.is_empty() {
                    lock(&self.hub).absorb(events.into_iter().map(Ok).collect());
                }
            }
            if let Some(taskstats) = &self.taskstats {
                let (exits, lost) = crate::sources::delays::lock(taskstats).drain();
                super::live::account_exits(perf, &self.hub, &exits, lost);
            }
        }
        let Some(requests) = &self.drain_requests else {
            return Ok(()); // Tiers 0 and 1: no ring buffer.
        };
        let (reply, done) = oneshot::channel();
        requests
            .send(reply)
            .await
            .map_err(|_| GuardError::ReaderStopped)?;
        done.await.map_err(|_| GuardError::ReaderStopped)
    }

    /// Exact counters for `id`, after draining pending events (the BPF counters are exact
    /// even where the event reader is gone; `delivered` then stops where it stopped).
    pub async fn counters(&self, id: &str) -> Result<ContainerCounters, GuardError> {
        let id = ContainerId::parse(id)?;
        self.drain_or_why_not().await;
        self.counters_now(&id)
    }

    /// `id`'s counters as they stand, without a drain.
    fn counters_now(&self, id: &ContainerId) -> Result<ContainerCounters, GuardError> {
        let (cgroup_id, slot) = {
            let registry = lock(&self.registry);
            let watched = registry
                .by_id
                .get(id)
                .ok_or_else(|| GuardError::NotWatched { id: id.to_string() })?;
            (watched.identity.id, watched.slot)
        };
        let bpf = self.bpf_counters(slot)?;
        let hub = lock(&self.hub);
        let audited = self.audit.is_some();
        let sources = (self.tier == Tier::KernelSources).then(|| {
            let mut sources = hub.source_counters(cgroup_id);
            // Denials are observed only where audit is read; then none is a count of 0.
            sources.fork_denied = audited.then(|| sources.fork_denied.unwrap_or(0));
            sources
        });
        Ok(ContainerCounters {
            container: id.to_string(),
            cgroup_id,
            bpf,
            sources,
            delivered: hub.delivered(cgroup_id),
        })
    }

    /// The container the kernel-side task map attributes thread `tid` to (what an OOM kill of
    /// it would be attributed to). None at tier 0 and for tasks in no container.
    pub fn task_container(&self, tid: u32) -> Result<Option<String>, GuardError> {
        let Some(probes) = &self.probes else {
            return Ok(None);
        };
        let Some(cgroup_id) = lock(probes).task_cgroup(tid)? else {
            return Ok(None);
        };
        Ok(lock(&self.hub).container_of(cgroup_id).cloned())
    }

    /// Counters of events outside every container, after draining pending events.
    pub async fn global_counters(&self) -> Result<GlobalCounters, GuardError> {
        self.drain_or_why_not().await;
        Ok(GlobalCounters {
            bpf: self.bpf_counters(GLOBAL_SLOT)?,
            delivered: lock(&self.hub).delivered(0),
        })
    }

    fn bpf_counters(&self, slot: u32) -> Result<Option<BpfCounters>, GuardError> {
        let Some(probes) = &self.probes else {
            return Ok(None);
        };
        let values = lock(probes).counters(slot)?;
        let kprobes = self.tier >= Tier::TracepointsAndKprobes;
        Ok(Some(BpfCounters::from_values(&values, kprobes)))
    }

    /// Losses so far, after draining pending events.
    pub async fn loss(&self) -> Result<LossReport, GuardError> {
        self.drain_or_why_not().await;
        Ok(self.loss_as_of_last_drain())
    }

    fn loss_as_of_last_drain(&self) -> LossReport {
        let hub = lock(&self.hub);
        let kernel_reserve_failures = match self.probes {
            Some(_) => EventKind::ALL
                .iter()
                .map(|&kind| (kind.name().to_string(), hub.kernel_lost(kind)))
                .collect(),
            None => BTreeMap::new(),
        };
        LossReport {
            kernel_reserve_failures,
            reader: hub.loss(),
            reader_health: hub.health().clone(),
            log_incomplete: self.log_incomplete(),
        }
    }

    /// From which seq the forensic log is incomplete and why, as the log's sink
    /// ([`EventLog`](crate::sinks::event_log::EventLog)) last said; None while it is whole (or
    /// there is no log). Every report's [`LossReport`] carries it too.
    pub fn log_incomplete(&self) -> Option<crate::forensic::LogIncomplete> {
        lock(&self.log_incomplete).clone()
    }

    /// Where the log's sink says whether the log is whole.
    pub(crate) fn log_incomplete_slot(
        &self,
    ) -> std::sync::Arc<std::sync::Mutex<Option<crate::forensic::LogIncomplete>>> {
        std::sync::Arc::clone(&self.log_incomplete)
    }

    /// The event reader's health: whether it faulted, resumed, or gave up.
    pub fn health(&self) -> ReaderHealth {
        lock(&self.hub).health().clone()
    }
}
