//! What a [`Guard`](super::Guard) call can fail with.
use std::path::PathBuf;

use guard_common::MAX_CONTAINERS;

#[allow(unused_imports, reason = "the doc links name them")]
use super::{Guard, GuardOptions};
#[allow(unused_imports, reason = "the doc links name them")]
use crate::{CapabilityReport, ContainerId};
use crate::{
    Tier, bpf::BpfError, cgroup::CgroupError, container_id::ContainerIdError,
    pipeline::inotify::FileWatchError, sources::SourceError,
};

/// What a [`Guard`] call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The eBPF side failed: at [`Guard::start`], loading the object, reading the tracepoint
    /// layouts or attaching a program; later, an update or read of one of the programs' maps
    /// (registering a container in [`Guard::watch`], forgetting it in [`Guard::unwatch`],
    /// reading counters). The message names the map or program.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// A live source of tier 1 could not follow a container ([`Guard::watch`]): perf refused
    /// an event or a ring for its cgroup on a CPU. The message names the cgroup and the CPU.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A cgroup could not be used or read. From [`Guard::watch`]: no cgroup v2 hierarchy is
    /// mounted, or the path is not a cgroup directory under it (missing, outside the mount,
    /// too deep, a file, another filesystem), or its event files do not parse. From
    /// [`Guard::report`] and [`Guard::unwatch`]: its limit or event files could not be read
    /// (a removed cgroup is not an error: its files read as absent).
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The container id is not valid (see [`ContainerId::parse`]); from every call that takes
    /// one.
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    /// [`Guard::watch`] with an id that is already watched.
    #[error("container {id} is already watched (cgroup {cgroup})")]
    AlreadyWatched {
        /// The id.
        id: String,
        /// The cgroup it is watched at.
        cgroup: PathBuf,
    },
    /// [`Guard::watch`] with a cgroup that is already watched under another id.
    #[error("cgroup {cgroup} is already watched as container {id}")]
    CgroupTaken {
        /// The id it is watched as.
        id: String,
        /// The cgroup.
        cgroup: PathBuf,
    },
    /// [`Guard::counters`], [`Guard::report`] or [`Guard::unwatch`] with an id that is not
    /// watched (never was, or already unwatched).
    #[error("container {id} is not watched")]
    NotWatched {
        /// The id.
        id: String,
    },
    /// [`Guard::watch`] while 1024 containers (every counter slot) are watched; unwatching one
    /// frees its slot.
    #[error("all {MAX_CONTAINERS} container slots are in use")]
    SlotsExhausted,
    /// inotify failed: creating the instance at [`Guard::start`], or watching a container's
    /// event files in [`Guard::watch`] (e.g. the inotify watch limit).
    #[error(transparent)]
    FileWatch(#[from] FileWatchError),
    /// The event reader is gone: it gave up after repeated faults, its task died, or the
    /// tokio runtime shut down ([`Guard::health`] says which, as `Stopped`). Only
    /// [`Guard::drain`] returns it: the calls that drain first ([`Guard::counters`],
    /// [`Guard::report`], [`Guard::loss`], [`Guard::unwatch`], …) read the kernel's exact
    /// counters anyway, and a report then says the stream stopped (verdict `incomplete`).
    #[error("the event reader has stopped")]
    ReaderStopped,
    /// [`Guard::start`] found it could not run here: a tokio runtime without the IO or time
    /// driver (tokio would panic in every one of the guard's tasks), or an event reader that
    /// cannot poll the ring buffer.
    #[error("guard cannot run here: {reason}")]
    CannotRun {
        /// What is missing, and what to change.
        reason: String,
    },
    /// [`Guard::watch`] with the root cgroup, which holds the agent and the whole guest.
    #[error(
        "{cgroup} is the root cgroup: it holds the agent and every process of the guest, not a \
         container; watch the container's own cgroup"
    )]
    RootCgroup {
        /// The path given.
        cgroup: PathBuf,
    },
    /// [`Guard::start`] when the tier the kernel and this process's privilege allow, capped
    /// by [`GuardOptions::max_tier`], is below [`GuardOptions::min_tier`]. `missing` names
    /// only what keeps that tier away: the capabilities to grant first (or root), then what
    /// the kernel lacks ([`CapabilityReport::blockers`]).
    #[error("guard would run at tier {got} ({why}), below the required tier {wanted}: {missing}")]
    TierTooLow {
        /// [`GuardOptions::min_tier`].
        wanted: Tier,
        /// The tier the guard would run at.
        got: Tier,
        /// What set the tier: the process's privilege, the kernel, or `max_tier`.
        why: String,
        /// What keeps the tier away, from the capability report (or the options to change).
        missing: String,
    },
}
