//! [`Guard`]: the handle an agent holds. It owns the probes, the reader and the inotify
//! watcher, keeps the registry of watched containers (`registry.rs`), and answers with exact
//! counters and reconciled reports (`query.rs`).
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use guard_common::{TaskEntry, WatchEntry};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    Tier,
    bpf::{EBPF_OBJECT_ORIGIN, EBPF_OBJECT_SHA256, Programs},
    capability::CapabilityReport,
    cgroup::{CgroupError, EventFiles, Hierarchy},
    container_id::ContainerId,
    events::GuardEvent,
    kmsg::KmsgWatch,
    limits::Limits,
    pipeline::{
        fault::InjectedPanics,
        hub::Hub,
        inotify::FileWatcher,
        lock,
        ring::{self, DrainRequest},
        task,
    },
    sources::perf::{self, PerfSource},
    verdict::report::Report,
};

mod error;
mod live;
mod options;
mod query;
mod registry;
mod subtree;
mod teardown;

pub use error::GuardError;
use live::{AuditReader, live_sources, start_audit, start_taskstats, victims_of_the_log};
pub use options::GuardOptions;
use options::allowed_tier;
use registry::{Registry, Watched};

/// The guard: load it once, watch containers, read their counters and events.
///
/// One per process: a second `Guard` loads its own programs (twice the kernel memory, every
/// event counted twice) and says so in a warning at start. Share one (`Arc<Guard>`) instead.
///
/// Unwatch every container before dropping the guard: [`Guard::unwatch`] returns its final
/// report, which needs the guard's counters. A guard dropped while it still watches
/// containers loses those reports and logs a warning naming them.
pub struct Guard {
    hierarchy: Option<Hierarchy>,
    capabilities: CapabilityReport,
    tier: Tier,
    probes: Option<Arc<Mutex<Programs>>>,
    registry: Mutex<Registry>,
    hub: Arc<Mutex<Hub>>,
    drain_requests: Option<mpsc::Sender<DrainRequest>>,
    file_watcher: FileWatcher,
    /// The kernel log's OOM kills by scope (None: not asked for, unreadable, or tier 0: nothing
    /// names the victims).
    kernel_log: Option<KmsgWatch>,
    /// Tier 1's perf rings per watched container and the task map they keep.
    perf: Option<Arc<Mutex<PerfSource>>>,
    /// Tier 1's audit records of denied forks, where asked for.
    audit: Option<AuditReader>,
    /// Tier 1's taskstats exits (delay accounting), where the kernel has them.
    taskstats: Option<Arc<Mutex<crate::sources::delays::Delays>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    injected_panics: Arc<InjectedPanics>,
    /// Whether the forensic log is whole, as its sink last said (None: whole, or no log).
    log_incomplete: Arc<Mutex<Option<crate::forensic::LogIncomplete>>>,
}

impl Guard {
    /// Probes the kernel, loads and attaches the programs the tier allows, and starts the
    /// reader. Must be called inside a tokio runtime with its IO and time drivers
    /// (`enable_all()`); a runtime without them is [`GuardError::CannotRun`] (tokio panics
    /// where a driver is missing: the panic is caught, and printed by the default hook).
    pub async fn start(options: GuardOptions) -> Result<Self, GuardError> {
        task::check_runtime().map_err(|reason| GuardError::CannotRun { reason })?;
        let mut capabilities = CapabilityReport::probe_for_start();
        let mut tier = allowed_tier(&capabilities, &options)?;
        if tier < options.max_tier
            && let Some(note) = capabilities.privilege.note()
        {
            // Tier 0 for want of privilege is the agent's to fix, never silent.
            warn!("guard runs at tier {tier}: {note}");
        }
        let hierarchy = match Hierarchy::find() {
            Ok(hierarchy) => Some(hierarchy),
            Err(error) => {
                warn!(%error, "no cgroup v2 hierarchy: containers cannot be watched");
                None
            }
        };
        let hub = Arc::new(Mutex::new(Hub::default()));
        let mut tasks = Vec::new();
        let mut drain_requests = None;
        let injected_panics = Arc::new(InjectedPanics::default());
        let probes = if tier >= Tier::Tracepoints {
            let others = LOADED_GUARDS.load(Ordering::Relaxed);
            if others > 0 {
                warn!(
                    others,
                    "another Guard in this process already has its programs loaded: this one \
                     loads its own (twice the kernel memory, every event counted twice); share \
                     one Guard"
                );
            }
            let kprobes = tier >= Tier::TracepointsAndKprobes;
            let mut probes = Programs::load(options.ring, kprobes)?;
            if kprobes && !probes.kretprobe_armed() {
                capabilities.kretprobe_attached(false);
                tier = allowed_tier(&capabilities, &options)?;
            }
            if let (Some(ring), Some(lost)) = (probes.take_ring(), probes.take_lost()) {
                let ring = ring::pollable(ring).map_err(|error| GuardError::CannotRun {
                    reason: format!("the event reader cannot poll the ring buffer: {error}"),
                })?;
                let (sender, receiver) = mpsc::channel(16);
                drain_requests = Some(sender);
                tasks.push(task::spawn(
                    "the event reader",
                    Arc::clone(&hub),
                    ring::run(
                        ring,
                        lost,
                        Arc::clone(&hub),
                        receiver,
                        options.poll_interval,
                        Arc::clone(&injected_panics),
                    ),
                ));
            }
            if let Some(logger) = probes.take_logger() {
                tasks.push(tokio::spawn(crate::bpf::forward_program_logs(logger)));
            }
            Some(Arc::new(Mutex::new(probes)))
        } else {
            None
        };
        let perf = if tier == Tier::KernelSources {
            match PerfSource::new(perf::RING_PAGES) {
                Ok(source) => {
                    let source = Arc::new(Mutex::new(source));
                    let deliver = {
                        let hub = Arc::clone(&hub);
                        move |events: Vec<GuardEvent>| {
                            lock(&hub).absorb(events.into_iter().map(Ok).collect());
                        }
                    };
                    tasks.push(task::spawn(
                        "the perf reader",
                        Arc::clone(&hub),
                        perf::run(Arc::clone(&source), deliver, options.poll_interval),
                    ));
                    Some(source)
                }
                Err(error) => {
                    warn!(%error, "perf's task records cannot be read: guard runs at tier 0");
                    tier = Tier::CgroupFilesOnly;
                    None
                }
            }
        } else {
            None
        };
        let (file_watcher, file_task, created_cgroups) = FileWatcher::start(Arc::clone(&hub))?;
        tasks.push(file_task);
        if let (Some(probes), Some(hierarchy)) = (&probes, &hierarchy) {
            tasks.push(task::spawn(
                "the sub-cgroup adopter",
                Arc::clone(&hub),
                subtree::adopt_created(
                    created_cgroups,
                    Arc::downgrade(probes),
                    Arc::clone(&hub),
                    hierarchy.clone(),
                    file_watcher.clone(),
                ),
            ));
        }
        let kernel_log = match (options.read_kernel_log, tier) {
            (true, tier) if tier >= Tier::KernelSources => {
                let on_kill = perf.as_ref().map(|perf| {
                    victims_of_the_log(Arc::clone(perf), Arc::clone(&hub), hierarchy.clone())
                });
                KmsgWatch::start_with(on_kill)
                    .inspect_err(
                        |error| warn!(%error, "OOM kills are split by scope on memory.events alone"),
                    )
                    .ok()
            }
            _ => None,
        };
        let audit = match &perf {
            Some(perf) if options.audit_fork_denials => start_audit(
                perf,
                &hub,
                hierarchy.clone(),
                options.poll_interval,
                &mut tasks,
            ),
            _ => None,
        };
        let taskstats = perf
            .as_ref()
            .and_then(|perf| start_taskstats(perf, &hub, options.poll_interval, &mut tasks));
        let sources = live_sources(
            tier,
            kernel_log.is_some(),
            audit.is_some(),
            taskstats.is_some(),
        );
        // The object's hash says which programs run (a prebuilt one's, or the source build's).
        info!(%tier, sources = %sources.join(" "), kernel = %capabilities.kernel_release, notes = %capabilities.notes.join("; "), kernel_log = kernel_log.is_some(), ebpf_object = EBPF_OBJECT_SHA256, ebpf_origin = %EBPF_OBJECT_ORIGIN, "guard started");
        if probes.is_some() {
            LOADED_GUARDS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Self {
            hierarchy,
            capabilities,
            tier,
            probes,
            registry: Mutex::new(Registry::default()),
            hub,
            drain_requests,
            file_watcher,
            kernel_log,
            perf,
            audit,
            taskstats,
            tasks,
            injected_panics,
            log_incomplete: Arc::default(),
        })
    }

    /// The live sources this guard runs (`bpf` or `perf`, `kmsg` where the kernel log is read,
    /// `cgroup_files`), by the names its events carry.
    pub fn sources(&self) -> Vec<&'static str> {
        live_sources(
            self.tier,
            self.kernel_log.is_some(),
            self.audit.is_some(),
            self.taskstats.is_some(),
        )
    }

    /// The tier the guard runs at: what the kernel allows, capped by
    /// [`GuardOptions::max_tier`].
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// What the kernel offered at start and why the tier is what it is.
    pub fn capabilities(&self) -> &CapabilityReport {
        &self.capabilities
    }

    /// Starts attributing everything that happens in `cgroup` (and its sub-cgroups) to `id`.
    pub fn watch(&self, id: &str, cgroup: impl AsRef<Path>) -> Result<(), GuardError> {
        self.register(id, cgroup.as_ref(), None)
    }

    /// Like [`Guard::watch`], remembering the limits the agent applied: the report then checks
    /// the kernel holds exactly those.
    pub fn watch_limited(
        &self,
        id: &str,
        cgroup: impl AsRef<Path>,
        limits: Limits,
    ) -> Result<(), GuardError> {
        self.register(id, cgroup.as_ref(), Some(limits))
    }

    fn register(
        &self,
        id: &str,
        cgroup: &Path,
        requested: Option<Limits>,
    ) -> Result<(), GuardError> {
        let id = ContainerId::parse(id)?;
        let hierarchy = self.hierarchy.as_ref().ok_or(CgroupError::NotMounted {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        })?;
        let identity = hierarchy.identify(cgroup)?;
        if identity.level == 0 {
            // The root holds the agent itself and every other process of the guest.
            return Err(GuardError::RootCgroup {
                cgroup: cgroup.to_path_buf(),
            });
        }
        let baseline = EventFiles::read(cgroup)?;
        let ancestor_ooms = registry::ancestor_ooms(cgroup, &hierarchy.mount);
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
        lock(&self.hub).name(identity.id, id.to_string());
        if let Some(perf) = &self.perf {
            let mut source = perf::lock(perf);
            match source.watch(identity.id, cgroup) {
                // The rings' memory: every watched container's, every CPU's.
                Ok(seeded) => {
                    info!(container = %id, seeded, cpus = source.cpus(), rings_bytes = source.mapped_bytes(), "perf rings open, task map seeded")
                }
                Err(error) => {
                    lock(&self.hub).forget(identity.id);
                    registry.free_slots.insert(slot);
                    return Err(error.into());
                }
            }
        }
        registry.by_id.insert(
            id.clone(),
            Watched {
                cgroup: cgroup.to_path_buf(),
                identity,
                slot,
                requested,
                baseline,
                ancestor_ooms,
            },
        );
        if let Some(probes) = &self.probes {
            let mut probes = lock(probes);
            probes.set_watched_levels(registry.watched_levels())?;
            let container = TaskEntry {
                cgroup_id: identity.id,
                slot,
                level: identity.level,
            };
            let adopted = subtree::adopt(
                &mut probes,
                hierarchy,
                &self.file_watcher,
                container,
                cgroup,
                true,
            )?;
            adopted.name_in(&self.hub, container);
            debug!(container = %id, ?adopted, "adopted the cgroup's subtree");
        }
        self.file_watcher.add(identity.id, cgroup)?;
        info!(container = %id, cgroup = %cgroup.display(), cgroup_id = identity.id, level = identity.level, slot, "watching");
        Ok(())
    }

    /// Stops watching `id`, returning its final report (read after a full drain). Call it
    /// before the cgroup is removed: removal erases the kernel's event files.
    ///
    /// The container is forgotten whatever happens: a report that cannot be read (its
    /// cgroup's files unreadable) is the error returned, and where the event reader is gone
    /// the report is still made from the kernel's exact counters, flagged `incomplete`.
    pub async fn unwatch(&self, id: &str) -> Result<Report, GuardError> {
        let parsed = ContainerId::parse(id)?;
        if !lock(&self.registry).by_id.contains_key(&parsed) {
            return Err(GuardError::NotWatched { id: id.to_string() });
        }
        let report = self.report(id).await;
        self.forget(&parsed)?;
        report
    }

    /// Removes `id` from the registry, the programs' maps, inotify and the hub. Every step
    /// runs even if one fails (the first error is returned): the container is never left
    /// half-watched.
    fn forget(&self, id: &ContainerId) -> Result<(), GuardError> {
        let mut registry = lock(&self.registry);
        let watched = registry
            .by_id
            .remove(id)
            .ok_or_else(|| GuardError::NotWatched { id: id.to_string() })?;
        let mut result = Ok(());
        if let Some(probes) = &self.probes {
            let mut probes = lock(probes);
            result = probes
                .unwatch(watched.identity.id)
                .map_err(GuardError::from);
            subtree::forget(&mut probes, watched.identity.id);
            let levels = probes.set_watched_levels(registry.watched_levels());
            result = result.and(levels.map_err(GuardError::from));
        }
        if let Some(perf) = &self.perf {
            perf::lock(perf).unwatch(watched.identity.id);
        }
        registry.free_slots.insert(watched.slot);
        self.file_watcher.remove(watched.identity.id);
        lock(&self.hub).forget(watched.identity.id);
        result
    }

    /// Makes the event reader panic on its next drain, as a bug in it would (feature
    /// `fault-injection`, for tests of an agent's fault handling).
    #[cfg(feature = "fault-injection")]
    pub fn inject_reader_panic(&self, point: crate::FaultPoint) {
        self.injected_panics.add(point);
    }

    /// A live stream of attributed events, from now on (nothing is replayed), of every
    /// container ([`Guard::subscribe_container`] takes one's). The queue holds
    /// `capacity` events, at least one: `subscribe(0)` gets a queue of one event, neither an
    /// unbounded nor a closed one. A subscriber that falls further behind loses the excess,
    /// counted in [`LossReport`](crate::LossReport)'s `reader.subscriber_drops`; it never
    /// slows the reader. Dropping the receiver ends the subscription; the guard's end
    /// ([`Guard::shutdown`], or dropping it) ends it too.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<GuardEvent> {
        self.subscribe_counted(capacity).0
    }

    /// A live stream of one container's events, from now on: its own, and the guard-wide
    /// ones that say its stream is incomplete (`lost`, `reader_fault`). Bounded like
    /// [`Guard::subscribe`]'s. It ends (`recv` gives `None`) when the container is unwatched,
    /// once every event up to its final report has been queued: a subscriber knows its
    /// container's stream is over.
    ///
    /// ```no_run
    /// # async fn demo(guard: &guard::Guard) -> Result<(), guard::GuardError> {
    /// let mut events = guard.subscribe_container("web-1", 1024)?;
    /// let printer = tokio::spawn(async move {
    ///     while let Some(event) = events.recv().await {
    ///         println!("{}", event.detail.kind_name());
    ///     }
    ///     // web-1 was unwatched: nothing more will come.
    /// });
    /// // … the container runs …
    /// let report = guard.unwatch("web-1").await?;
    /// printer.await.ok();
    /// # Ok(()) }
    /// ```
    pub fn subscribe_container(
        &self,
        id: &str,
        capacity: usize,
    ) -> Result<mpsc::Receiver<GuardEvent>, GuardError> {
        let id = ContainerId::parse(id)?;
        // The registry stays locked while the hub subscribes: an unwatch cannot come between
        // and leave a subscription that never ends.
        let registry = lock(&self.registry);
        let watched = registry
            .by_id
            .get(&id)
            .ok_or_else(|| GuardError::NotWatched { id: id.to_string() })?;
        Ok(lock(&self.hub).subscribe_container(capacity, watched.identity.id))
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
        lock(&self.hub).subscribe(capacity)
    }
}

/// Guards alive in this process with programs loaded: a second one is almost always a
/// mistake (see [`Guard::start`]'s warning).
static LOADED_GUARDS: AtomicUsize = AtomicUsize::new(0);
