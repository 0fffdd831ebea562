//! [`Guard`]: the handle an agent holds. It owns the probes and the reader task, keeps the
//! registry of watched containers, and answers with exact counters.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use guard_common::{COUNTER_SLOTS, Counter, EventKind, GLOBAL_SLOT, MAX_CONTAINERS, WatchEntry};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    capability::{CapabilityReport, Tier},
    cgroup::{CgroupError, CgroupIdentity, EventFiles, Hierarchy, read_limits},
    container_id::{ContainerId, ContainerIdError},
    events::GuardEvent,
    file_watch::FileWatcher,
    probes::{ProbeError, Probes, StreamOptions},
    reader::{
        self, Delivered, DrainRequest, HealthState, InjectedPanics, ReaderHealth, ReaderLoss,
        ReaderState,
    },
    reconcile::{Evidence, reconcile},
    report::{Report, RequestedLimits},
};

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    #[error("container {id} is already watched (cgroup {cgroup})")]
    AlreadyWatched { id: String, cgroup: PathBuf },
    #[error("cgroup {cgroup} is already watched as container {id}")]
    CgroupTaken { id: String, cgroup: PathBuf },
    #[error("container {id} is not watched")]
    NotWatched { id: String },
    #[error("all {MAX_CONTAINERS} container slots are in use")]
    SlotsExhausted,
    #[error(transparent)]
    FileWatch(#[from] crate::file_watch::FileWatchError),
    #[error("the event reader has stopped")]
    ReaderStopped,
}

/// How the guard runs.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    pub stream: StreamOptions,
    /// How often the reader polls for records that did not wake it.
    pub poll_interval: Duration,
    /// Never run above this tier, even if the kernel allows it (tests exercise each tier).
    pub max_tier: Tier,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            stream: StreamOptions::default(),
            poll_interval: Duration::from_millis(10),
            max_tier: Tier::TracepointsAndKprobes,
        }
    }
}

/// Counters the BPF programs keep in the kernel: exact, whatever happened to the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BpfCounters {
    pub forks: u64,
    pub exits: u64,
    /// Fork-family syscalls that failed with EAGAIN.
    pub fork_denied: u64,
    /// Of those, denials the `pids_can_fork` kretprobe saw (None below tier 2: not observed).
    pub fork_denied_pids_max: Option<u64>,
    pub oom_kills: u64,
    pub reclaim_runs: u64,
    pub reclaim_ns: u64,
    pub reclaim_pages: u64,
    /// Individual events not streamed because of the rate bound.
    pub events_throttled: u64,
    /// Tasks the task map could not hold (their OOM kills would be unattributed).
    pub task_map_full: u64,
}

impl BpfCounters {
    fn from_values(values: &[u64; COUNTER_SLOTS], kprobes: bool) -> Self {
        let value = |counter: Counter| values[counter as usize];
        Self {
            forks: value(Counter::Forks),
            exits: value(Counter::Exits),
            fork_denied: value(Counter::ForkDenied),
            fork_denied_pids_max: kprobes.then(|| value(Counter::ForkDeniedPidsMax)),
            oom_kills: value(Counter::OomKills),
            reclaim_runs: value(Counter::ReclaimRuns),
            reclaim_ns: value(Counter::ReclaimNs),
            reclaim_pages: value(Counter::ReclaimPages),
            events_throttled: value(Counter::EventsThrottled),
            task_map_full: value(Counter::TaskMapFull),
        }
    }
}

/// One container's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerCounters {
    pub container: String,
    pub cgroup_id: u64,
    /// None at tier 0, where no BPF program runs: the guard never pretends to detail it lacks.
    pub bpf: Option<BpfCounters>,
    /// Events the reader received for this container.
    pub delivered: Delivered,
}

/// Events that belong to no registered container: OOM kills of tasks outside every container
/// (global OOM, or the agent itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GlobalCounters {
    pub bpf: Option<BpfCounters>,
    pub delivered: Delivered,
}

/// Everything lost anywhere between the kernel and the subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LossReport {
    /// Ring-buffer reserve failures in the kernel, by event kind name.
    pub kernel_reserve_failures: BTreeMap<String, u64>,
    pub reader: ReaderLoss,
    /// Whether the reader faulted on the way (its faults are not losses by themselves: the
    /// sequence check above counts any record that went missing).
    pub reader_health: ReaderHealth,
}

struct Watched {
    cgroup: PathBuf,
    identity: CgroupIdentity,
    slot: u32,
    requested: RequestedLimits,
    /// The kernel's event counters when watching began: reports count from here.
    baseline: EventFiles,
}

#[derive(Default)]
struct Registry {
    by_id: BTreeMap<ContainerId, Watched>,
    free_slots: BTreeSet<u32>,
    next_slot: u32,
}

impl Registry {
    fn allocate_slot(&mut self) -> Result<u32, GuardError> {
        if let Some(slot) = self.free_slots.pop_first() {
            return Ok(slot);
        }
        if self.next_slot >= MAX_CONTAINERS {
            return Err(GuardError::SlotsExhausted);
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    fn watched_levels(&self) -> u64 {
        self.by_id
            .values()
            .fold(0, |levels, watched| levels | 1 << watched.identity.level)
    }
}

/// The guard: load it once, watch containers, read their counters and events.
pub struct Guard {
    hierarchy: Option<Hierarchy>,
    capabilities: CapabilityReport,
    tier: Tier,
    probes: Option<Mutex<Probes>>,
    registry: Mutex<Registry>,
    reader_state: Arc<Mutex<ReaderState>>,
    drain_requests: Option<mpsc::Sender<DrainRequest>>,
    file_watcher: FileWatcher,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    injected_panics: Arc<InjectedPanics>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Guard {
    /// Probes the kernel, loads and attaches the programs the tier allows, and starts the
    /// reader. Must be called inside a tokio runtime.
    pub async fn start(options: GuardOptions) -> Result<Self, GuardError> {
        let capabilities = CapabilityReport::probe();
        let tier = capabilities.tier.min(options.max_tier);
        let hierarchy = match Hierarchy::find() {
            Ok(hierarchy) => Some(hierarchy),
            Err(error) => {
                warn!(%error, "no cgroup v2 hierarchy: containers cannot be watched");
                None
            }
        };
        let reader_state = Arc::new(Mutex::new(ReaderState::default()));
        let mut tasks = Vec::new();
        let mut drain_requests = None;
        let injected_panics = Arc::new(InjectedPanics::default());
        let probes = if tier >= Tier::Tracepoints {
            let kprobes = tier >= Tier::TracepointsAndKprobes;
            let mut probes = Probes::load(options.stream, kprobes)?;
            if let (Some(ring), Some(lost)) = (probes.take_ring(), probes.take_lost()) {
                let (sender, receiver) = mpsc::channel(16);
                drain_requests = Some(sender);
                tasks.push(tokio::spawn(reader::run(
                    ring,
                    lost,
                    Arc::clone(&reader_state),
                    receiver,
                    options.poll_interval,
                    Arc::clone(&injected_panics),
                )));
            }
            if let Some(logger) = probes.take_logger() {
                tasks.push(tokio::spawn(forward_program_logs(logger)));
            }
            Some(Mutex::new(probes))
        } else {
            None
        };
        let (file_watcher, file_task) = FileWatcher::start(Arc::clone(&reader_state))?;
        tasks.push(file_task);
        info!(%tier, kernel = %capabilities.kernel_release, "guard started");
        Ok(Self {
            hierarchy,
            capabilities,
            tier,
            probes,
            registry: Mutex::new(Registry::default()),
            reader_state,
            drain_requests,
            file_watcher,
            tasks,
            injected_panics,
        })
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn capabilities(&self) -> &CapabilityReport {
        &self.capabilities
    }

    /// Starts attributing everything that happens in `cgroup` (and its sub-cgroups) to `id`.
    pub fn watch(&self, id: &str, cgroup: impl AsRef<Path>) -> Result<(), GuardError> {
        self.watch_limited(id, cgroup, RequestedLimits::default())
    }

    /// Like [`Guard::watch`], remembering the limits the agent asked for: the report then checks
    /// the kernel holds exactly those.
    pub fn watch_limited(
        &self,
        id: &str,
        cgroup: impl AsRef<Path>,
        requested: RequestedLimits,
    ) -> Result<(), GuardError> {
        let id = ContainerId::parse(id)?;
        let cgroup = cgroup.as_ref();
        let hierarchy = self.hierarchy.as_ref().ok_or(CgroupError::NotMounted {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        })?;
        let identity = hierarchy.identify(cgroup)?;
        let baseline = EventFiles::read(cgroup)?;
        let mut registry = lock(&self.registry);
        if let Some(existing) = registry.by_id.get(&id) {
            return Err(GuardError::AlreadyWatched {
                id: id.to_string(),
                cgroup: existing.cgroup.clone(),
            });
        }
        if let Some((other, _)) = registry
            .by_id
            .iter()
            .find(|(_, watched)| watched.identity.id == identity.id)
        {
            return Err(GuardError::CgroupTaken {
                id: other.to_string(),
                cgroup: cgroup.to_path_buf(),
            });
        }
        let slot = registry.allocate_slot()?;
        if let Some(probes) = &self.probes {
            let mut probes = lock(probes);
            let entry = WatchEntry {
                slot,
                level: identity.level,
            };
            if let Err(error) = probes.watch(identity.id, entry) {
                registry.free_slots.insert(slot);
                return Err(error.into());
            }
        }
        lock(&self.reader_state)
            .names
            .insert(identity.id, id.to_string());
        registry.by_id.insert(
            id.clone(),
            Watched {
                cgroup: cgroup.to_path_buf(),
                identity,
                slot,
                requested,
                baseline,
            },
        );
        if let Some(probes) = &self.probes {
            lock(probes).set_watched_levels(registry.watched_levels())?;
        }
        self.file_watcher.add(identity.id, cgroup)?;
        info!(container = %id, cgroup = %cgroup.display(), cgroup_id = identity.id, level = identity.level, slot, "watching");
        Ok(())
    }

    /// Stops watching `id`, returning its final report (read after a full drain). Call it
    /// before the cgroup is removed: removal erases the kernel's event files.
    pub async fn unwatch(&self, id: &str) -> Result<Report, GuardError> {
        let report = self.report(id).await?;
        let id = ContainerId::parse(id)?;
        let mut registry = lock(&self.registry);
        let watched = registry
            .by_id
            .remove(&id)
            .ok_or_else(|| GuardError::NotWatched { id: id.to_string() })?;
        if let Some(probes) = &self.probes {
            let mut probes = lock(probes);
            probes.unwatch(watched.identity.id)?;
            probes.set_watched_levels(registry.watched_levels())?;
        }
        registry.free_slots.insert(watched.slot);
        self.file_watcher.remove(watched.identity.id);
        let mut state = lock(&self.reader_state);
        state.names.remove(&watched.identity.id);
        state.delivered.remove(&watched.identity.id);
        Ok(report)
    }

    /// The container's report now: limits read back, counters, the kernel's event files since
    /// watching began, and the reconciled verdict.
    pub async fn report(&self, id: &str) -> Result<Report, GuardError> {
        let counters = self.counters(id).await?;
        // counters() has just drained: no second round trip to the reader.
        let loss = self.loss_as_of_last_drain();
        let (cgroup, requested, baseline) = {
            let registry = lock(&self.registry);
            let watched = registry
                .by_id
                .get(&ContainerId::parse(id)?)
                .ok_or_else(|| GuardError::NotWatched { id: id.to_string() })?;
            (
                watched.cgroup.clone(),
                watched.requested,
                watched.baseline.clone(),
            )
        };
        let applied = read_limits(&cgroup)?;
        let kernel_since_watch = EventFiles::read(&cgroup)?.since(&baseline);
        let reconciliation = reconcile(&Evidence {
            tier: self.tier,
            requested_memory_max: requested.memory_max,
            requested_pids_max: requested.pids_max,
            applied: &applied,
            kernel: &kernel_since_watch,
            bpf: counters.bpf.as_ref(),
            events_lost: loss.kernel_reserve_failures.values().sum(),
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

    /// Drains when the reader runs; when it gave up after repeated faults, the kernel's
    /// counters are still exact and are read anyway ([`Guard::health`] tells the agent).
    async fn drain_if_running(&self) -> Result<(), GuardError> {
        match self.drain().await {
            Err(GuardError::ReaderStopped) if self.health().state == HealthState::Stopped => Ok(()),
            other => other,
        }
    }

    /// Waits until the reader has consumed every record the kernel produced so far.
    pub async fn drain(&self) -> Result<(), GuardError> {
        let Some(requests) = &self.drain_requests else {
            return Ok(()); // Tier 0: nothing streams.
        };
        let (reply, done) = oneshot::channel();
        requests
            .send(reply)
            .await
            .map_err(|_| GuardError::ReaderStopped)?;
        done.await.map_err(|_| GuardError::ReaderStopped)
    }

    /// Exact counters for `id`, after draining pending events.
    pub async fn counters(&self, id: &str) -> Result<ContainerCounters, GuardError> {
        let id = ContainerId::parse(id)?;
        self.drain_if_running().await?;
        let (cgroup_id, slot) = {
            let registry = lock(&self.registry);
            let watched = registry
                .by_id
                .get(&id)
                .ok_or_else(|| GuardError::NotWatched { id: id.to_string() })?;
            (watched.identity.id, watched.slot)
        };
        let bpf = self.bpf_counters(slot)?;
        let delivered = lock(&self.reader_state)
            .delivered
            .get(&cgroup_id)
            .copied()
            .unwrap_or_default();
        Ok(ContainerCounters {
            container: id.to_string(),
            cgroup_id,
            bpf,
            delivered,
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
        Ok(lock(&self.reader_state).names.get(&cgroup_id).cloned())
    }

    /// Counters of events outside every container, after draining pending events.
    pub async fn global_counters(&self) -> Result<GlobalCounters, GuardError> {
        self.drain_if_running().await?;
        Ok(GlobalCounters {
            bpf: self.bpf_counters(GLOBAL_SLOT)?,
            delivered: lock(&self.reader_state)
                .delivered
                .get(&0)
                .copied()
                .unwrap_or_default(),
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
        self.drain_if_running().await?;
        Ok(self.loss_as_of_last_drain())
    }

    fn loss_as_of_last_drain(&self) -> LossReport {
        let state = lock(&self.reader_state);
        let kernel_reserve_failures = match self.probes {
            Some(_) => EventKind::ALL
                .iter()
                .map(|kind| (kind.name().to_string(), state.kernel_lost[*kind as usize]))
                .collect(),
            None => BTreeMap::new(),
        };
        LossReport {
            kernel_reserve_failures,
            reader: state.loss,
            reader_health: state.health.clone(),
        }
    }

    /// The event reader's health: whether it faulted, resumed, or gave up.
    pub fn health(&self) -> ReaderHealth {
        lock(&self.reader_state).health.clone()
    }

    /// Makes the event reader panic on its next drain, as a bug in it would (feature
    /// `fault-injection`, for tests of an agent's fault handling).
    #[cfg(feature = "fault-injection")]
    pub fn inject_reader_panic(&self, point: crate::reader::FaultPoint) {
        self.injected_panics.add(point);
    }

    /// A live stream of attributed events. A subscriber that falls more than `capacity` events
    /// behind loses the excess (counted in [`LossReport`]); it never slows the reader.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<GuardEvent> {
        self.subscribe_counted(capacity).0
    }

    /// Like [`Guard::subscribe`], with this subscription's own count of dropped events (for a
    /// consumer that must report its losses in-band, like the forensic log).
    pub fn subscribe_counted(
        &self,
        capacity: usize,
    ) -> (
        mpsc::Receiver<GuardEvent>,
        Arc<std::sync::atomic::AtomicU64>,
    ) {
        lock(&self.reader_state).subscribe(capacity)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Forwards the programs' own aya-log messages to our `log`/`tracing` subscriber.
async fn forward_program_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd for its lifetime, which the AsyncFd owns.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut logger) = registered else {
        return;
    };
    while let Ok(mut ready) = logger.readable_mut().await {
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
