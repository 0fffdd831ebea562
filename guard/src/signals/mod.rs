//! One room per signal. A signal is one thing guard observes in a container (a fork, an exit, a
//! move between cgroups, a denied fork, an OOM kill, a memcg reclaim, a throttled stream). Its
//! eBPF hook is `guard-ebpf/src/<signal>.rs`, its ring-buffer record (when it streams one)
//! `guard-common/src/events/<signal>.rs`, and here, `<signal>.rs`, is the userspace side: where
//! its programs attach, which tracepoint fields they read, and, for a signal that streams, its
//! payload: the kind its records carry, how they decode and what each adds to its container's
//! tallies ([`Streamed`]).
//!
//! The loader and the capability probe iterate [`ALL`]; no other place lists tracepoints.
//! `events::EventDetail` lists each streamed payload once; no other place lists kinds.
use std::path::Path;

use guard_common::{ABSENT, EventKind, ProbeConfig, TracepointOffsets};

use crate::{
    counters::Delivered,
    tracefs::{Format, TracefsError},
};

pub(crate) mod attach;
pub(crate) mod exit;
pub(crate) mod fork;
pub(crate) mod fork_denied;
pub(crate) mod oom_victim;
pub(crate) mod reclaim;
pub(crate) mod throttle;

/// Every signal, in the order the loader attaches them.
pub(crate) static ALL: [&Signal; 7] = [
    &fork::SIGNAL,
    &exit::SIGNAL,
    &attach::SIGNAL,
    &fork_denied::SIGNAL,
    &oom_victim::SIGNAL,
    &reclaim::SIGNAL,
    &throttle::SIGNAL,
];

/// What the loader needs to know about one signal.
pub(crate) struct Signal {
    /// The signal's name (its event kind's name where it streams).
    pub name: &'static str,
    /// Its eBPF programs, by name in the object.
    pub programs: &'static [Program],
    /// Fills in the tracepoint field offsets its programs read.
    pub read_offsets: fn(&Formats<'_>, &mut TracepointOffsets) -> Result<(), SignalError>,
}

/// The payload of a signal that streams records: what the ring buffer's reader needs to turn a
/// record into an event, and what the event adds to its container's tallies. A signal owns
/// all three, in its own file; `events::EventDetail` names the payload once.
pub(crate) trait Streamed: Sized {
    /// The kind its records carry in their header.
    const KIND: EventKind;
    /// Decodes a whole record (its header first) into the payload.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
    /// Counts one delivered event in its container's tallies.
    fn tally(&self, delivered: &mut Delivered);
}

/// One eBPF program and where it attaches.
pub(crate) struct Program {
    pub name: &'static str,
    pub hook: Hook,
}

impl Program {
    /// A program named after the tracepoint it attaches to (guard's convention).
    pub const fn tracepoint(category: &'static str, name: &'static str) -> Self {
        Self {
            name,
            hook: Hook::Tracepoint { category, name },
        }
    }
}

pub(crate) enum Hook {
    /// A tracepoint (tier 1: every kernel with BPF_EVENTS has it).
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A kretprobe on a kernel function (tier 2: kernels with kprobes); `armed` tells the
    /// programs it runs.
    KRetProbe {
        function: &'static str,
        armed: fn(&mut ProbeConfig),
    },
}

impl Hook {
    /// How errors name the hook: `tracepoint sched:sched_process_fork`, `kretprobe pids_can_fork`.
    pub fn describe(&self) -> String {
        match self {
            Hook::Tracepoint { category, name } => format!("tracepoint {category}:{name}"),
            Hook::KRetProbe { function, .. } => format!("kretprobe {function}"),
        }
    }
}

/// Every tracepoint the programs attach to, as (category, name).
pub(crate) fn tracepoints() -> impl Iterator<Item = (&'static str, &'static str)> {
    programs().filter_map(|program| match program.hook {
        Hook::Tracepoint { category, name } => Some((category, name)),
        Hook::KRetProbe { .. } => None,
    })
}

/// Every kernel function a tier-2 kretprobe attaches to.
pub(crate) fn kprobe_functions() -> impl Iterator<Item = &'static str> {
    programs().filter_map(|program| match program.hook {
        Hook::KRetProbe { function, .. } => Some(function),
        Hook::Tracepoint { .. } => None,
    })
}

fn programs() -> impl Iterator<Item = &'static Program> {
    ALL.iter().flat_map(|signal| signal.programs.iter())
}

/// A tracepoint layout the programs cannot use.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// A `format` file is missing, unreadable or malformed, or lacks a required field.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The fields are there but do not fit the programs (offsets that differ between the
    /// syscall exits one program serves, an offset beyond 64 KiB).
    #[error("tracepoint layout of {tracepoint}: {reason}")]
    Layout {
        /// The tracepoint (and field) refused.
        tracepoint: String,
        /// Why.
        reason: &'static str,
    },
}

/// Reads every field offset the programs need from the tracepoints' `format` files.
pub(crate) fn read_offsets(tracefs_root: &Path) -> Result<TracepointOffsets, SignalError> {
    let formats = Formats { root: tracefs_root };
    let mut offsets = TracepointOffsets::default();
    for signal in ALL {
        (signal.read_offsets)(&formats, &mut offsets)?;
    }
    Ok(offsets)
}

/// The tracepoint `format` files under one tracefs root.
pub(crate) struct Formats<'a> {
    root: &'a Path,
}

impl Formats<'_> {
    pub fn read(&self, category: &str, name: &str) -> Result<Format, SignalError> {
        Ok(Format::read(self.root, category, name)?)
    }
}

/// For signals that read no tracepoint field.
pub(crate) fn no_offsets(_: &Formats<'_>, _: &mut TracepointOffsets) -> Result<(), SignalError> {
    Ok(())
}

/// The offset of a field that must exist with exactly `size` bytes, as the programs take it.
pub(crate) fn required(format: &Format, field: &str, size: u32) -> Result<u16, SignalError> {
    narrow(format, field, format.offset_of(field, size)?)
}

/// Like [`required`], but [`ABSENT`] where the kernel lacks the field (older layouts).
pub(crate) fn optional(format: &Format, field: &str, size: u32) -> Result<u16, SignalError> {
    match format.field(field) {
        None => Ok(ABSENT),
        Some(_) => required(format, field, size),
    }
}

/// Offsets travel as u16 (the config map stays small); a larger one is a layout we refuse.
pub(crate) fn narrow(format: &Format, field: &str, offset: u32) -> Result<u16, SignalError> {
    u16::try_from(offset).map_err(|_| SignalError::Layout {
        tracepoint: format!("{} field {field}", format.tracepoint),
        reason: "offset beyond 64 KiB",
    })
}

/// A ring-buffer record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is shorter than its header or its kind's record.
    #[error("ring-buffer record of {len} bytes is shorter than the {needed}-byte {what}")]
    Short {
        /// The record's length, in bytes.
        len: usize,
        /// The length its header or kind needs, in bytes.
        needed: usize,
        /// What was being read (`event header`, `fork event`, …).
        what: &'static str,
    },
    /// The header names a kind this guard does not know.
    #[error("ring-buffer record has unknown kind {kind}")]
    UnknownKind {
        /// The raw kind.
        kind: u16,
    },
}

/// Reads a `T` from the start of `bytes`, which must be long enough.
pub(crate) fn read_record<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let needed = size_of::<T>();
    if bytes.len() < needed {
        return Err(DecodeError::Short {
            len: bytes.len(),
            needed,
            what,
        });
    }
    // SAFETY: the length is checked above; `T` is a repr(C) plain-integer struct from
    // guard-common, valid for any bit pattern; read_unaligned needs no alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! The captured `format` files of the 6.1, 6.12 and 6.18 kernels, laid out as tracefs does.
    use std::path::{Path, PathBuf};

    /// A scratch tracefs of `kernel`'s formats, removed on drop.
    pub struct FakeTracefs(pub PathBuf);

    impl FakeTracefs {
        pub fn new(kernel: &str, test: &str) -> Self {
            let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/format")
                .join(kernel);
            let root = std::env::temp_dir().join(format!(
                "guard-tracefs-{kernel}-{test}-{}",
                std::process::id()
            ));
            for (category, name) in super::tracepoints() {
                let dir = root.join("events").join(category).join(name);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(fixtures.join(format!("{name}.format")), dir.join("format")).unwrap();
            }
            Self(root)
        }

        pub fn offsets(&self) -> guard_common::TracepointOffsets {
            super::read_offsets(&self.0).unwrap()
        }
    }

    impl Drop for FakeTracefs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The bytes of a repr(C) record.
    pub fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) integer struct.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    pub const KERNELS: [&str; 3] = ["6.1", "6.12", "6.18"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_ten_tracepoints_and_one_kprobe_once_each() {
        let tracepoints: Vec<_> = tracepoints().collect();
        assert_eq!(tracepoints.len(), 10, "{tracepoints:?}");
        let mut unique = tracepoints.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), tracepoints.len());
        assert_eq!(kprobe_functions().collect::<Vec<_>>(), ["pids_can_fork"]);
        let names: Vec<_> = ALL.iter().map(|signal| signal.name).collect();
        assert_eq!(
            names,
            [
                "fork",
                "exit",
                "attach",
                "fork_denied",
                "oom_victim",
                "reclaim",
                "throttle"
            ]
        );
    }

    #[test]
    fn a_missing_field_is_an_error_naming_the_tracepoint() {
        let root = fixtures::FakeTracefs::new("6.12", "missing");
        let format = root.0.join("events/sched/sched_process_fork/format");
        let text = std::fs::read_to_string(&format).unwrap();
        std::fs::write(&format, text.replace("child_pid", "kid_pid")).unwrap();
        let error = read_offsets(&root.0).unwrap_err().to_string();
        assert!(
            error.contains("sched_process_fork") && error.contains("child_pid"),
            "{error}"
        );
    }
}
