//! guard: an eBPF-augmented resource guard for the guest side of micro-VM sandboxes.
//!
//! An agent starts a [`Guard`], registers each container's cgroup with [`Guard::watch`], and
//! reads exact per-container counters ([`Guard::counters`]) or subscribes to live events
//! ([`Guard::subscribe`]). See DESIGN.md for the architecture.
pub mod budget;
pub mod capability;
pub mod cgroup;
pub mod config;
pub mod container_id;
pub mod event_log;
pub mod events;
pub mod file_watch;
pub mod forensic;
mod guard;
pub mod limits;
pub mod probes;
pub mod reader;
pub mod reconcile;
pub mod report;
pub mod runtime;
pub mod spec;
pub mod tracefs;

pub use capability::{CapabilityReport, Tier};
pub use container_id::ContainerId;
pub use events::{EventDetail, GuardEvent, KernelEvent};
pub use guard::{
    BpfCounters, ContainerCounters, GlobalCounters, Guard, GuardError, GuardOptions, LossReport,
};
pub use probes::StreamOptions;
pub use reader::{Delivered, FaultPoint, HealthState, ReaderHealth};
pub use reconcile::Verdict;
pub use report::{Report, RequestedLimits};
