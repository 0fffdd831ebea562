//! guard: an eBPF-augmented resource guard for the guest side of micro-VM sandboxes.
//!
//! Static cgroup v2 limits keep a fork bomb or a memory bomb from taking a small guest down;
//! guard adds the evidence: which forks `pids.max` denied, which processes the OOM killer took
//! in which container, what memory pressure came first, and that no event was silently lost,
//! all reconciled with the kernel's own counters and written to a hash-chained log.
//!
//! # Where to start
//!
//! - [`Guard::start`] with [`GuardOptions`] (its [`StreamOptions`] size the event stream)
//!   probes the kernel, loads the programs its [`Tier`] allows and starts the event reader.
//!   It needs root and a tokio runtime.
//! - [`Guard::watch`] registers a container's cgroup ([`Guard::watch_limited`] also names the
//!   limits the agent applied, for the report to check); [`Guard::unwatch`] ends it with its
//!   final [`Report`], read before the cgroup is removed.
//! - [`Guard::subscribe`] hands out live, attributed [`GuardEvent`]s through a bounded queue:
//!   what a slow subscriber misses is counted, the reader never waits for it.
//! - [`Guard::counters`] gives a container's exact counters, [`Guard::report`] its reconciled
//!   [`Report`] with a [`Verdict`] per limit, and [`Guard::loss`] everything lost on the way.
//! - [`forensic`] is the hash-chained log: writer, verifier and readers (docs/LOG-FORMAT.md is
//!   its format); [`sinks::event_log::EventLog`] writes a guard's events and the agent's own
//!   records into it.
//! - [`limits`] resolves what an agent asks for (`64M`, `50%`, `max`) against the guest's
//!   memory, within the guest budget every container shares.
#![cfg_attr(
    feature = "runtime",
    doc = " - With the `runtime` feature, [`runtime`] creates containers with libcontainer, and"
)]
#![cfg_attr(
    not(feature = "runtime"),
    doc = " - With the `runtime` feature, `runtime` creates containers with libcontainer, and"
)]
#![cfg_attr(
    feature = "runtime",
    doc = "   [`agent::supervise`] runs a whole container life in the order that makes the"
)]
#![cfg_attr(
    not(feature = "runtime"),
    doc = "   `agent::supervise` runs a whole container life in the order that makes the"
)]
//!   evidence complete: create, watch, log `limits_applied`, start; then stop, report,
//!   delete.
//! - [`stream`] ships the log off the guest as it is written, to a [`stream::Collector`] on
//!   the host that verifies each guest's chain as records arrive (docs/STREAM.md).
//! - With the `timeline` feature, `timeline` draws an incident per container over time from a
//!   forensic log (`guard log timeline`).
//! - With the `metrics` feature, `metrics` renders every counter of the reports as
//!   OpenMetrics text for Prometheus and serves it at `/metrics` (docs/METRICS.md).
//!
//! docs/ARCHITECTURE.md, in the repository, describes the data flow and where each part lives.
//!
//! ```no_run
//! # async fn agent() -> Result<(), guard::GuardError> {
//! use guard::{Guard, GuardOptions, Tier};
//!
//! // As root, inside a tokio runtime; refuse to run without live events.
//! let options = GuardOptions {
//!     min_tier: Tier::Tracepoints,
//!     ..GuardOptions::default()
//! };
//! let guard = Guard::start(options).await?;
//! guard.watch("web", "/sys/fs/cgroup/guard/web")?;
//! let mut events = guard.subscribe(1024);
//! // … the container runs …
//! while let Ok(event) = events.try_recv() {
//!     let container = event.container.as_deref().unwrap_or("-");
//!     println!("{container}: {}", event.detail.kind_name());
//! }
//! let counters = guard.counters("web").await?;
//! println!("forks: {:?}", counters.bpf.map(|bpf| bpf.forks));
//! let report = guard.unwatch("web").await?; // before the cgroup is removed
//! println!("{}", report.to_text());
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! `runtime` (containers: the `runtime`, `spec` and `agent` modules), `config` (the agent's
//! TOML file), `cli` (the `guard` binary); none is on by default, so an agent that only
//! monitors compiles neither libcontainer nor a command line. `internals` and
//! `fault-injection` exist for guard's own tests and fuzzers.

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
#[cfg(feature = "metrics")]
pub mod metrics;
mod pipeline;
pub mod sinks;
pub mod stream;
#[cfg(feature = "timeline")]
pub mod timeline;

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

pub use bpf::{
    EBPF_OBJECT, EBPF_OBJECT_ORIGIN, EBPF_OBJECT_SHA256, EbpfObjectOrigin, StreamOptions,
};
pub use capability::{CapabilityReport, CgroupReport, Privilege, TracepointPresence};
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
