//! guard: an eBPF-augmented resource guard for the guest side of micro-VM sandboxes.
//!
//! An agent starts a [`Guard`], registers each container's cgroup with [`Guard::watch`] (or
//! [`Guard::watch_limited`], naming the limits it applied), reads exact per-container counters
//! ([`Guard::counters`]), subscribes to live events ([`Guard::subscribe`]) and ends each
//! container with a reconciled [`Report`] ([`Guard::unwatch`]). With the `runtime` feature,
//! [`agent::supervise`] runs a whole container life (libcontainer) in the order that makes the
//! evidence complete. docs/ARCHITECTURE.md describes the data flow and where each part lives.
//!
//! Features: `runtime` (containers: [`runtime`], [`spec`], [`agent`]), `config` (the agent's
//! TOML file), `cli` (the `guard` binary); none is on by default, so an agent that only
//! monitors compiles neither libcontainer nor a command line.

#![deny(missing_docs)]

// The plain data every layer shares.
pub mod counters;
mod tier;

// What the guard observes: one room per signal, the eBPF side, the kernel's own files.
mod bpf;
mod capability;
pub mod cgroup;
pub mod events;
pub mod kmsg;
mod signals;
mod tracefs;

// From the kernel to the subscribers and sinks.
mod pipeline;
pub mod sinks;
pub mod stream;

// Judgement and evidence.
pub mod forensic;
pub mod verdict;

// What agents ask for and run.
pub mod budget;
mod container_id;
pub mod limits;

// The façade.
mod guard;

#[cfg(feature = "runtime")]
pub mod agent;
#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "runtime")]
pub mod spec;

pub use bpf::{EBPF_OBJECT, StreamOptions};
pub use capability::{CapabilityReport, CgroupReport, TracepointPresence};
pub use container_id::{ContainerId, ContainerIdError, MAX_ID_LEN};
pub use counters::{
    BpfCounters, ContainerCounters, Delivered, GlobalCounters, HealthState, LossReport,
    ReaderHealth, ReaderLoss,
};
pub use events::{EventDetail, GuardEvent};
pub use guard::{Guard, GuardError, GuardOptions};
#[cfg(feature = "fault-injection")]
pub use pipeline::fault::FaultPoint;
pub use tier::{Tier, TierError};
pub use verdict::{Verdict, report::Report};

/// Parsers and decoders of untrusted input, exposed for guard's own fuzzing and bad-input tests
/// (feature `internals`); not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    use std::path::Path;

    pub use crate::{
        events::KernelEvent,
        signals::{DecodeError, SignalError},
        tracefs::{Field, Format, TracefsError},
    };

    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
        crate::events::decode(bytes)
    }

    /// Reads every field offset the programs need from a tracefs root's `format` files.
    pub fn read_offsets(
        tracefs_root: &Path,
    ) -> Result<guard_common::TracepointOffsets, SignalError> {
        crate::signals::read_offsets(tracefs_root)
    }

    /// Every tracepoint the programs attach to, as (category, name).
    pub fn tracepoints() -> Vec<(&'static str, &'static str)> {
        crate::signals::tracepoints().collect()
    }
}
