//! Events as subscribers receive them. Kernel events are decoded ring-buffer records (each
//! signal decodes its own, in `signals/`); synthetic events are made by guard itself (a kernel
//! event file that changed, a loss tally, a reader fault) and carry no ring position.
use guard_common::{EventHeader, EventKind};
use serde::Serialize;

pub use crate::signals::{
    DecodeError,
    fork::Fork,
    fork_denied::ForkDenied,
    oom_victim::{OomRss, OomVictim},
    reclaim::Reclaim,
    throttle::Throttle,
};
use crate::{cgroup::KeyedCounts, signals};

/// What happened, by kind. Serialised with its kind's name as `"kind"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventDetail {
    /// A task of the container forked (rate-bounded).
    Fork(Fork),
    /// A fork-family syscall of the container failed with EAGAIN (rate-bounded).
    ForkDenied(ForkDenied),
    /// The OOM killer chose a victim, in the container or, with no container, anywhere in the
    /// guest (never rate-bounded).
    OomVictim(OomVictim),
    /// A memcg direct reclaim run of the container's task finished (rate-bounded).
    Reclaim(Reclaim),
    /// Individual events of the container suppressed by the rate bound (counters stay exact).
    Throttle(Throttle),
    /// A kernel event file of the container changed (inotify): its new counts.
    KernelFile(KernelFile),
    /// Records of one kind the programs could not deliver (ring buffer full), from the
    /// kernel's loss counters, so loss is in-band.
    Lost(Lost),
    /// The event reader faulted: live events may have been delayed; kernel counters were not
    /// affected.
    ReaderFault(ReaderFault),
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

impl EventDetail {
    /// The kind's stable name (the `kind` of its log record).
    pub fn kind_name(&self) -> &'static str {
        match self {
            EventDetail::Fork(_) => EventKind::Fork.name(),
            EventDetail::ForkDenied(_) => EventKind::ForkDenied.name(),
            EventDetail::OomVictim(_) => EventKind::OomVictim.name(),
            EventDetail::Reclaim(_) => EventKind::Reclaim.name(),
            EventDetail::Throttle(_) => EventKind::Throttle.name(),
            EventDetail::KernelFile(_) => "kernel_file",
            EventDetail::Lost(_) => "lost",
            EventDetail::ReaderFault(_) => "reader_fault",
        }
    }
}

/// One decoded ring-buffer record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelEvent {
    /// The CPU whose program wrote it.
    pub cpu: u32,
    /// That CPU's sequence number, from 1 with no gaps unless records were lost.
    pub seq: u64,
    /// When it was written: `bpf_ktime_get_ns`, CLOCK_MONOTONIC.
    pub ktime_ns: u64,
    /// The cgroup id of the container it was attributed to (0: no container).
    pub cgroup_id: u64,
    /// The signal's payload.
    pub detail: EventDetail,
}

/// Where a kernel event was in the ring buffer: its CPU and that CPU's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RingPosition {
    /// The CPU whose program wrote the record.
    pub cpu: u32,
    /// That CPU's sequence number (from 1; a gap is a lost record).
    pub seq: u64,
}

/// An event attributed to a registered container, as subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GuardEvent {
    /// The container id, or None when the event belongs to no container (or its cgroup was
    /// unregistered before the event was read).
    pub container: Option<String>,
    /// Where the record was in the ring buffer; None for a synthetic event.
    #[serde(flatten)]
    pub ring: Option<RingPosition>,
    /// CLOCK_MONOTONIC: the kernel's timestamp, or when guard made a synthetic event.
    pub ktime_ns: u64,
    /// The cgroup id the event was attributed to (0: no container, or a guard-wide synthetic
    /// event such as `lost` or `reader_fault`).
    pub cgroup_id: u64,
    /// What happened, with its `kind`.
    pub detail: EventDetail,
}

impl GuardEvent {
    /// A decoded ring-buffer record, attributed to `container` (what the hub publishes).
    pub(crate) fn from_record(container: Option<String>, event: KernelEvent) -> Self {
        Self {
            container,
            ring: Some(RingPosition {
                cpu: event.cpu,
                seq: event.seq,
            }),
            ktime_ns: event.ktime_ns,
            cgroup_id: event.cgroup_id,
            detail: event.detail,
        }
    }

    /// An event guard made itself, now.
    pub(crate) fn synthetic(
        container: Option<String>,
        cgroup_id: u64,
        detail: EventDetail,
    ) -> Self {
        Self {
            container,
            ring: None,
            ktime_ns: monotonic_ns(),
            cgroup_id,
            detail,
        }
    }
}

/// Decodes one ring-buffer record: the header, then the signal its kind names.
pub(crate) fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = signals::read_record(bytes, "event header")?;
    let detail = match EventKind::from_raw(header.kind) {
        Some(EventKind::Fork) => EventDetail::Fork(signals::fork::decode(bytes)?),
        Some(EventKind::ForkDenied) => {
            EventDetail::ForkDenied(signals::fork_denied::decode(bytes)?)
        }
        Some(EventKind::OomVictim) => EventDetail::OomVictim(signals::oom_victim::decode(bytes)?),
        Some(EventKind::Reclaim) => EventDetail::Reclaim(signals::reclaim::decode(bytes)?),
        Some(EventKind::Throttle) => EventDetail::Throttle(signals::throttle::decode(bytes)?),
        None => return Err(DecodeError::UnknownKind { kind: header.kind }),
    };
    Ok(KernelEvent {
        cpu: header.cpu,
        seq: header.seq,
        ktime_ns: header.ktime_ns,
        cgroup_id: header.cgroup_id,
        detail,
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
    use guard_common::ForkEvent;

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
        assert_eq!((event.cpu, event.seq, event.cgroup_id), (1, 7, 1234));
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
        let kernel =
            GuardEvent::from_record(Some("c".into()), decode(&as_bytes(&fork_record())).unwrap());
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
}
