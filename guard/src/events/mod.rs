//! Events as subscribers receive them: one type, [`GuardEvent`], from the ring buffer to the
//! log. Kernel events are decoded ring-buffer records (each signal decodes its own, in
//! `signals/`); synthetic events are made by guard itself (a kernel event file that changed, a
//! loss tally, a reader fault) and carry no ring position. The hub fills in the container; the
//! log leaves it out of the payload (the record names it).
use guard_common::EventHeader;
use serde::Serialize;

pub use crate::signals::{
    DecodeError,
    fork::Fork,
    fork_denied::ForkDenied,
    oom_victim::{OomRss, OomVictim},
    reclaim::Reclaim,
    throttle::Throttle,
};
mod task;
pub use task::{Exec, Exit};

use crate::{
    cgroup::KeyedCounts,
    counters::Delivered,
    forensic,
    signals::{self, Streamed},
};

/// The table of kinds: every payload once. A streamed payload's kind, decoding and tally are
/// its signal's ([`Streamed`]); a synthetic one names its kind here and is never tallied. The
/// enum, [`EventDetail::kind_name`], the tally and the decoding by kind all follow from it.
macro_rules! event_details {
    (
        streamed { $( $(#[$sdoc:meta])* $streamed:ident, )+ }
        synthetic { $( $(#[$gdoc:meta])* $synthetic:ident = $name:literal, )+ }
    ) => {
        /// What happened, by kind. Serialised with its kind's name as `"kind"`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum EventDetail {
            $( $(#[$sdoc])* $streamed($streamed), )+
            $( $(#[$gdoc])* $synthetic($synthetic), )+
        }

        impl EventDetail {
            /// The kind's stable name (the `kind` of its log record).
            pub fn kind_name(&self) -> &'static str {
                match self {
                    $( EventDetail::$streamed(_) => <$streamed as Streamed>::KIND.name(), )+
                    $( EventDetail::$synthetic(_) => $name, )+
                }
            }

            /// Counts one received event in its container's tallies (synthetic events are not
            /// counted).
            pub(crate) fn tally(&self, delivered: &mut Delivered) {
                match self {
                    $( EventDetail::$streamed(payload) => payload.tally(delivered), )+
                    $( EventDetail::$synthetic(_) => {} )+
                }
            }

            /// Decodes the record of the kind its header names (`raw_kind`).
            fn decode(raw_kind: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
                $(
                    if raw_kind == <$streamed as Streamed>::KIND as u16 {
                        return <$streamed as Streamed>::decode(bytes).map(EventDetail::$streamed);
                    }
                )+
                Err(DecodeError::UnknownKind { kind: raw_kind })
            }
        }

        $(
            impl From<$streamed> for EventDetail {
                fn from(payload: $streamed) -> Self {
                    EventDetail::$streamed(payload)
                }
            }
        )+
        $(
            impl From<$synthetic> for EventDetail {
                fn from(payload: $synthetic) -> Self {
                    EventDetail::$synthetic(payload)
                }
            }
        )+
    };
}

event_details! {
    streamed {
        /// A task of the container forked (rate-bounded).
        Fork,
        /// A fork-family syscall of the container failed with EAGAIN (rate-bounded).
        ForkDenied,
        /// The OOM killer chose a victim, in the container or, with no container, anywhere in
        /// the guest (never rate-bounded).
        OomVictim,
        /// A memcg direct reclaim run of the container's task finished (rate-bounded).
        Reclaim,
        /// Individual events of the container suppressed by the rate bound (counters stay
        /// exact).
        Throttle,
    }
    synthetic {
        /// A task of the container exited (tier 1's perf source; the BPF tiers count exits
        /// without streaming them).
        Exit = "exit",
        /// A task of the container called exec (tier 1's perf source).
        Exec = "exec",
        /// A kernel event file of the container changed (inotify): its new counts.
        KernelFile = "kernel_file",
        /// Records of one kind the programs could not deliver (ring buffer full), from the
        /// kernel's loss counters, so loss is in-band.
        Lost = "lost",
        /// The event reader faulted: live events may have been delayed; kernel counters were
        /// not affected.
        ReaderFault = "reader_fault",
    }
}

/// A kernel event file's counts after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelFile {
    /// The file's name: `memory.events` or `pids.events`.
    pub file: &'static str,
    /// Its counts as read after the change (totals since the cgroup was made, not deltas).
    pub counts: KeyedCounts,
}

/// Ring-buffer reserve failures of one kind since the last tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// The kind's stable name (`fork`, `oom_victim`, …).
    pub event_kind: &'static str,
    /// Records of that kind lost since the last `lost` event for it.
    pub count: u64,
}

impl Lost {
    /// The forensic log's `lost` record of it (docs/LOG-FORMAT.md), as lost at `source`.
    pub fn to_record(&self, source: EventSource) -> forensic::Lost {
        forensic::Lost {
            source: source.lost_at().to_string(),
            event_kind: Some(self.event_kind.to_string()),
            cpu: None,
            count: self.count,
        }
    }
}

/// A fault of the event reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaderFault {
    /// What went wrong: a panic's message or the poll's error.
    pub error: String,
    /// Faults so far, this one included.
    pub faults: u64,
    /// False when the reader gave up: no live events from here on.
    pub restarting: bool,
}

/// Where an event came from: every event and every log record names it (`"source"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventSource {
    /// guard's BPF programs (tiers 2 and 3): a ring-buffer record, or their loss counters.
    #[default]
    Bpf,
    /// perf's task records per CPU and cgroup (tier 1): fork, exec, exit, and the ring's
    /// PERF_RECORD_LOST.
    Perf,
    /// The audit subsystem's syscall records (tier 1): denied forks.
    Audit,
    /// Taskstats' per-task delay accounting at exit (tier 1).
    Taskstats,
    /// The kernel log (`/dev/kmsg`): OOM kills with their scope.
    Kmsg,
    /// The kernel's cgroup event files, read when inotify said they changed.
    CgroupFiles,
    /// guard itself: its event reader's faults.
    Guard,
}

impl EventSource {
    /// Its name, as events and log records carry it.
    pub fn name(self) -> &'static str {
        match self {
            EventSource::Bpf => "bpf",
            EventSource::Perf => "perf",
            EventSource::Audit => "audit",
            EventSource::Taskstats => "taskstats",
            EventSource::Kmsg => "kmsg",
            EventSource::CgroupFiles => "cgroup_files",
            EventSource::Guard => "guard",
        }
    }

    /// Where events of this source are lost, as a `lost` record's `source` names it.
    pub fn lost_at(self) -> &'static str {
        match self {
            EventSource::Bpf => "bpf_ringbuf",
            EventSource::Perf => "perf_ring",
            other => other.name(),
        }
    }
}

/// Where a kernel event was in the ring buffer: its CPU and that CPU's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RingPosition {
    /// The CPU whose program wrote the record.
    pub cpu: u32,
    /// That CPU's sequence number (from 1; a gap is a lost record).
    pub seq: u64,
}

/// An event, from its decoding to the log. Subscribers receive it attributed to its container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GuardEvent {
    /// The container id, or None when the event belongs to no container (or its cgroup was
    /// unregistered before the event was read). Filled in by the hub.
    pub container: Option<String>,
    /// Where the record was in the ring buffer; None for a synthetic event.
    #[serde(flatten)]
    pub ring: Option<RingPosition>,
    /// CLOCK_MONOTONIC: the kernel's timestamp, or when guard made a synthetic event.
    pub ktime_ns: u64,
    /// The cgroup id the event was attributed to (0: no container, or a guard-wide synthetic
    /// event such as `lost` or `reader_fault`).
    pub cgroup_id: u64,
    /// Which source delivered it.
    pub source: EventSource,
    /// What happened, with its `kind`.
    pub detail: EventDetail,
}

/// The decoded ring-buffer record was a type of its own; it is a [`GuardEvent`] with no
/// container yet.
#[deprecated(note = "a decoded record is a `GuardEvent` whose container the hub fills in")]
pub type KernelEvent = GuardEvent;

impl GuardEvent {
    /// A decoded ring-buffer record, attributed to `container`.
    #[deprecated(note = "a decoded record is already a `GuardEvent`: set its `container`")]
    pub fn from_record(container: Option<String>, event: GuardEvent) -> Self {
        Self { container, ..event }
    }

    /// An event guard made itself, now, from what `source` said (a kernel file's change, a
    /// loss count, a fault).
    pub(crate) fn synthetic(
        container: Option<String>,
        cgroup_id: u64,
        source: EventSource,
        detail: EventDetail,
    ) -> Self {
        Self {
            container,
            ..Self::from_source(source, monotonic_ns(), cgroup_id, detail)
        }
    }

    /// A live source's event (no ring position), not yet attributed to a container name.
    pub(crate) fn from_source(
        source: EventSource,
        ktime_ns: u64,
        cgroup_id: u64,
        detail: EventDetail,
    ) -> Self {
        Self {
            container: None,
            ring: None,
            ktime_ns,
            cgroup_id,
            source,
            detail,
        }
    }

    /// Where it came from.
    pub fn source(&self) -> EventSource {
        self.source
    }
}

/// Decodes one ring-buffer record: the header, then the payload of the signal its kind names.
/// The event has no container yet: the hub attributes it.
pub(crate) fn decode(bytes: &[u8]) -> Result<GuardEvent, DecodeError> {
    let header: EventHeader = signals::read_record(bytes, "event header")?;
    Ok(GuardEvent {
        container: None,
        ring: Some(RingPosition {
            cpu: header.cpu,
            seq: header.seq,
        }),
        ktime_ns: header.ktime_ns,
        cgroup_id: header.cgroup_id,
        source: EventSource::Bpf,
        detail: EventDetail::decode(header.kind, bytes)?,
    })
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` uses, so events order across sources.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use guard_common::{EventKind, ForkEvent};

    use super::*;
    use crate::signals::fixtures::as_bytes;

    fn fork_record() -> ForkEvent {
        ForkEvent {
            header: EventHeader {
                kind: EventKind::Fork as u16,
                cpu: 1,
                seq: 7,
                ktime_ns: 99,
                cgroup_id: 1234,
                ..Default::default()
            },
            parent_pid: 10,
            child_pid: 11,
        }
    }

    #[test]
    fn decodes_the_header_and_the_signal() {
        let event = decode(&as_bytes(&fork_record())).unwrap();
        assert_eq!(event.ring, Some(RingPosition { cpu: 1, seq: 7 }));
        assert_eq!((event.cgroup_id, event.container), (1234, None));
        assert_eq!(
            event.detail,
            EventDetail::Fork(Fork {
                parent_pid: 10,
                child_pid: 11
            })
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let bytes = as_bytes(&fork_record());
        assert!(matches!(
            decode(&bytes[..20]),
            Err(DecodeError::Short { needed: 32, .. })
        ));
        let mut unknown = fork_record();
        unknown.header.kind = 999;
        assert_eq!(
            decode(&as_bytes(&unknown)),
            Err(DecodeError::UnknownKind { kind: 999 })
        );
    }

    /// The serialised `kind` is the kind's name, and a synthetic event has no ring position.
    #[test]
    fn serialises_kind_names_and_ring_positions() {
        let kernel = GuardEvent {
            container: Some("c".into()),
            ..decode(&as_bytes(&fork_record())).unwrap()
        };
        let json = serde_json::to_value(&kernel).unwrap();
        assert_eq!(json["detail"]["kind"], kernel.detail.kind_name());
        assert_eq!(
            (json["cpu"].as_u64(), json["seq"].as_u64()),
            (Some(1), Some(7))
        );
        assert_eq!(json["detail"]["parent_pid"], 10);
        let lost = GuardEvent::synthetic(
            None,
            0,
            EventSource::Bpf,
            EventDetail::Lost(Lost {
                event_kind: "fork",
                count: 3,
            }),
        );
        let json = serde_json::to_value(&lost).unwrap();
        assert_eq!(json["detail"]["kind"], "lost");
        assert!(
            json.get("cpu").is_none() && json.get("seq").is_none(),
            "{json}"
        );
        assert!(json["ktime_ns"].as_u64().unwrap() > 0);
    }

    /// Every kind of the one list (guard-common's `kind.rs`) has its payload in the table, and
    /// each is serialised and logged under its kind's name: a kind added without its table
    /// line, or named differently there, fails here.
    #[test]
    fn every_kind_decodes_to_its_own_payload() {
        for &kind in EventKind::ALL {
            let mut record = vec![0u8; 256];
            record[..2].copy_from_slice(&(kind as u16).to_ne_bytes());
            let event = decode(&record).unwrap_or_else(|error| panic!("{}: {error}", kind.name()));
            assert_eq!(event.detail.kind_name(), kind.name());
            let json = serde_json::to_value(&event.detail).unwrap();
            assert_eq!(json["kind"], kind.name());
        }
    }

    /// The synthetic kinds' names in the table are the ones they serialise with.
    #[test]
    fn synthetic_kinds_are_named_as_serialised() {
        let details = [
            EventDetail::KernelFile(KernelFile {
                file: "pids.events",
                counts: KeyedCounts::default(),
            }),
            EventDetail::Lost(Lost {
                event_kind: "fork",
                count: 1,
            }),
            EventDetail::ReaderFault(ReaderFault {
                error: "x".into(),
                faults: 1,
                restarting: true,
            }),
        ];
        for detail in details {
            let json = serde_json::to_value(&detail).unwrap();
            assert_eq!(json["kind"], detail.kind_name());
        }
    }
}
