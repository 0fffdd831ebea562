//! guard: an eBPF-augmented resource guard for the guest side of micro-VM sandboxes.
//!
//! Static cgroup v2 limits keep a fork bomb or a memory bomb from taking a small guest down;
//! guard adds the evidence: which forks `pids.max` denied, which processes the OOM killer took
//! in which container, what memory pressure came first, and that no event was silently lost,
//! all reconciled with the kernel's own counters and written to a hash-chained log.
//!
//! # Where to start
//!
//! - [`Guard::start`] with [`GuardOptions`] (its [`RingOptions`] size the events' ring buffer)
//!   probes the kernel, loads the programs its [`Tier`] allows and starts the event reader.
//!   It needs a tokio runtime with its IO and time drivers, and root (or the capabilities
//!   [`Privilege`] names: without them the guard runs at tier 0 and says what to grant).
//! - [`Guard::watch`] registers a container's cgroup ([`Guard::watch_limited`] also names the
//!   limits the agent applied, for the report to check); [`Guard::unwatch`] ends it with its
//!   final [`Report`], read before the cgroup is removed.
//! - [`Guard::subscribe_container`] hands out a container's live [`GuardEvent`]s through a
//!   bounded queue that ends when the container is unwatched ([`Guard::subscribe`]: every
//!   container's): what a slow subscriber misses is counted, the reader never waits for it.
//! - [`cgroup::create`] and [`cgroup::command_inside`] make a cgroup and start a command in it
//!   (a monitoring agent without a container runtime: `examples/monitor.rs`).
//! - [`Guard::shutdown`] ends the guard off the runtime's threads (a drop does the same work
//!   on a thread of its own).
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
//! let mut options = GuardOptions::default();
//! options.min_tier = Tier::Tracepoints;
//! let guard = Guard::start(options).await?;
//! guard.watch("web", "/sys/fs/cgroup/guard/web")?;
//! let mut events = guard.subscribe_container("web", 1024)?;
//! let printer = tokio::spawn(async move {
//!     while let Some(event) = events.recv().await {
//!         println!("web: {}", event.detail.kind_name());
//!     }
//! });
//! // … the container runs …
//! let counters = guard.counters("web").await?;
//! println!("forks: {:?}", counters.bpf.map(|bpf| bpf.forks));
//! let report = guard.unwatch("web").await?; // before the cgroup is removed
//! printer.await.ok(); // the subscription ended with the unwatch
//! println!("{}", report.to_text());
//! guard.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! `runtime` (containers: the `runtime`, `spec` and `agent` modules), `config` (the agent's
//! TOML file), `cli` (the `guard` binary); none is on by default, so an agent that only
//! monitors compiles neither libcontainer nor a command line. `internals` and
//! `fault-injection` exist for guard's own binary, tests and fuzzers, and are no stable API:
//! `internals` opens the parsers and decoders of untrusted input (`guard::internals`), the
//! kernel log's reader (`kmsg`), the forensic log's layout, record and time helpers
//! (`forensic::{layout, record, time}`), the stream's wire (`stream::wire`) and the raw cgroup
//! file access (`cgroup::files`); `fault-injection` adds `Guard::inject_reader_panic`.

#![deny(missing_docs)]

/// Declares a module public with the feature `internals` (guard's own binary, tests and
/// fuzzers use it) and crate-private without it: not part of the API agents build on.
macro_rules! internal_mod {
    ($(#[$attr:meta])* $name:ident) => {
        #[cfg(feature = "internals")]
        $(#[$attr])*
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        #[allow(dead_code, unused_imports, reason = "parts serve only guard's binary, tests and fuzzers")]
        $(#[$attr])*
        pub(crate) mod $name;
    };
}

// The plain data every layer shares.
pub mod counters;
mod tier;

// What the guard observes: one room per signal, the eBPF side, the kernel's own files.
mod bpf;
mod capability;
pub mod cgroup;
pub mod events;
internal_mod!(kmsg);
internal_mod!(sources);
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
mod container_id;
pub mod footprint;
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

pub use bpf::{EBPF_OBJECT, EBPF_OBJECT_ORIGIN, EBPF_OBJECT_SHA256, EbpfObjectOrigin, RingOptions};
pub use capability::{CapabilityReport, CgroupReport, Privilege, TracepointPresence};
pub use container_id::{ContainerId, ContainerIdError, MAX_ID_LEN};
pub use counters::{
    BpfCounters, ContainerCounters, Delivered, GlobalCounters, HealthState, LossReport,
    ReaderHealth, ReaderLoss, SourceCounters,
};
pub use events::{EventDetail, GuardEvent};
pub use guard::{Guard, GuardError, GuardOptions};
#[cfg(feature = "fault-injection")]
pub use pipeline::fault::FaultPoint;
pub use tier::{Tier, TierError};
pub use verdict::{Report, Verdict};

/// The ring buffer's options, under their old name (a stream is the log's, to a host).
#[deprecated(
    note = "renamed `RingOptions` (`guard::stream` ships the log; this sizes the ring buffer)"
)]
pub type StreamOptions = RingOptions;

/// The agent's own memory, under its old name.
#[deprecated(
    note = "renamed `footprint` (the guest budget the containers share is `limits::GuestBudget`)"
)]
pub mod budget {
    /// The agent's own memory bound, under its old name.
    #[deprecated(note = "renamed `footprint::Footprint`")]
    pub type MemoryBudget = crate::footprint::Footprint;
}

/// Parsers and decoders of untrusted input, exposed for guard's own fuzzing and bad-input tests
/// (feature `internals`); not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    use std::path::Path;

    pub use crate::{
        events::GuardEvent,
        signals::{DecodeError, SignalError},
        tracefs::{Field, Format, TracefsError},
    };

    /// Appends one streamed event to a forensic log as the event log does (the pipeline
    /// benchmark's path).
    pub fn append_event(
        writer: &mut crate::forensic::LogWriter,
        event: &GuardEvent,
    ) -> Result<(), crate::sinks::event_log::EventLogError> {
        crate::sinks::event_log::append_event(writer, event)
    }

    /// A decoded record as the hub publishes it, attributed to `container`.
    pub fn attributed(container: Option<String>, event: GuardEvent) -> GuardEvent {
        GuardEvent { container, ..event }
    }

    /// Decodes one ring-buffer record (into an event with no container yet).
    pub fn decode(bytes: &[u8]) -> Result<GuardEvent, DecodeError> {
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
