//! Typed events decoded from ring-buffer records.
use guard_common::{
    DenialCause, EventHeader, EventKind, ForkDeniedEvent, ForkEvent, OomVictimEvent, ReclaimEvent,
    ThrottleEvent,
};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ring-buffer record of {len} bytes is shorter than the {needed}-byte {what}")]
    Short {
        len: usize,
        needed: usize,
        what: &'static str,
    },
    #[error("ring-buffer record has unknown kind {kind}")]
    UnknownKind { kind: u16 },
}

/// Why a fork was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// EAGAIN only: pids.max, RLIMIT_NPROC or threads-max; `pids.events` tells which.
    Inferred,
    /// A kretprobe saw the pids controller refuse it.
    PidsMax,
}

/// What happened, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventDetail {
    Fork {
        parent_pid: u32,
        child_pid: u32,
    },
    ForkDenied {
        tgid: u32,
        tid: u32,
        /// The syscall's return value, a negative errno (-11 = EAGAIN).
        ret: i64,
        cause: Cause,
        syscall_nr: u32,
    },
    OomVictim {
        victim_pid: u32,
        comm: String,
        /// Whether the victim was in no registered container (a global OOM kill, or a task
        /// the guard never saw enter a container).
        outside_containers: bool,
        /// cgroup of the task whose allocation triggered the OOM.
        trigger_cgroup_id: u64,
        /// None where the kernel's tracepoint lacks the rss fields.
        rss: Option<OomRss>,
        oom_score_adj: i16,
    },
    Reclaim {
        tid: u32,
        duration_ns: u64,
        nr_reclaimed: u64,
    },
    /// Individual events of the container suppressed by the rate bound (counters stay exact).
    Throttle {
        suppressed: u64,
        window_ns: u64,
    },
    /// A kernel event file of the container changed (inotify): its new counts.
    KernelFile {
        file: &'static str,
        counts: crate::cgroup::KeyedCounts,
    },
    /// Records of one kind the programs could not deliver (ring buffer full). Made by the reader
    /// from the kernel's loss counters, so loss is in-band.
    Lost {
        event_kind: &'static str,
        count: u64,
    },
    /// The event reader faulted (made by the reader itself): live events may have been
    /// delayed; kernel counters were not affected.
    ReaderFault {
        error: String,
        /// Faults so far, this one included.
        faults: u64,
        /// False when the reader gave up: no live events from here on.
        restarting: bool,
    },
}

/// The victim's memory at the time of the kill, in kB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OomRss {
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
}

impl EventDetail {
    pub fn kind_name(&self) -> &'static str {
        match self {
            EventDetail::Fork { .. } => EventKind::Fork.name(),
            EventDetail::ForkDenied { .. } => EventKind::ForkDenied.name(),
            EventDetail::OomVictim { .. } => EventKind::OomVictim.name(),
            EventDetail::Reclaim { .. } => EventKind::Reclaim.name(),
            EventDetail::Throttle { .. } => EventKind::Throttle.name(),
            EventDetail::KernelFile { .. } => "kernel_file",
            EventDetail::Lost { .. } => "lost",
            EventDetail::ReaderFault { .. } => "reader_fault",
        }
    }
}

/// One decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelEvent {
    pub cpu: u32,
    pub seq: u64,
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub detail: EventDetail,
}

/// A kernel event attributed to a registered container, as subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardEvent {
    /// The container id, or None when its cgroup was unregistered before the event was read.
    pub container: Option<String>,
    #[serde(flatten)]
    pub event: KernelEvent,
}

fn read_record<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
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

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read_record(bytes, "event header")?;
    let detail = match EventKind::from_raw(header.kind) {
        Some(EventKind::Fork) => {
            let fork: ForkEvent = read_record(bytes, "fork event")?;
            EventDetail::Fork {
                parent_pid: fork.parent_pid,
                child_pid: fork.child_pid,
            }
        }
        Some(EventKind::ForkDenied) => {
            let denied: ForkDeniedEvent = read_record(bytes, "fork-denied event")?;
            EventDetail::ForkDenied {
                tgid: denied.tgid,
                tid: denied.tid,
                ret: denied.ret,
                cause: if denied.cause == DenialCause::PidsMax as u32 {
                    Cause::PidsMax
                } else {
                    Cause::Inferred
                },
                syscall_nr: denied.syscall_nr,
            }
        }
        Some(EventKind::OomVictim) => {
            let oom: OomVictimEvent = read_record(bytes, "OOM victim event")?;
            let comm_len = oom
                .comm
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(oom.comm.len());
            EventDetail::OomVictim {
                victim_pid: oom.victim_pid,
                comm: String::from_utf8_lossy(&oom.comm[..comm_len]).into_owned(),
                outside_containers: oom.header.cgroup_id == 0,
                trigger_cgroup_id: oom.trigger_cgroup_id,
                rss: (oom.has_rss != 0).then_some(OomRss {
                    total_vm_kb: oom.total_vm_kb,
                    anon_rss_kb: oom.anon_rss_kb,
                    file_rss_kb: oom.file_rss_kb,
                    shmem_rss_kb: oom.shmem_rss_kb,
                }),
                oom_score_adj: oom.oom_score_adj,
            }
        }
        Some(EventKind::Reclaim) => {
            let reclaim: ReclaimEvent = read_record(bytes, "reclaim event")?;
            EventDetail::Reclaim {
                tid: reclaim.tid,
                duration_ns: reclaim.duration_ns,
                nr_reclaimed: reclaim.nr_reclaimed,
            }
        }
        Some(EventKind::Throttle) => {
            let throttle: ThrottleEvent = read_record(bytes, "throttle event")?;
            EventDetail::Throttle {
                suppressed: throttle.suppressed,
                window_ns: throttle.window_ns,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) integer struct.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

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
    fn decodes_fork() {
        let event = decode(&as_bytes(&fork_record())).unwrap();
        assert_eq!(event.cgroup_id, 1234);
        assert_eq!(event.seq, 7);
        assert_eq!(
            event.detail,
            EventDetail::Fork {
                parent_pid: 10,
                child_pid: 11
            }
        );
    }

    #[test]
    fn decodes_oom_victim_with_comm_and_scope() {
        let mut oom = OomVictimEvent {
            header: EventHeader {
                kind: EventKind::OomVictim as u16,
                cgroup_id: 0,
                ..Default::default()
            },
            victim_pid: 42,
            anon_rss_kb: 1024,
            has_rss: 1,
            oom_score_adj: 0,
            ..Default::default()
        };
        oom.comm[..4].copy_from_slice(b"hog\0");
        let event = decode(&as_bytes(&oom)).unwrap();
        match event.detail {
            EventDetail::OomVictim {
                victim_pid,
                comm,
                outside_containers,
                rss,
                ..
            } => {
                assert_eq!(victim_pid, 42);
                assert_eq!(comm, "hog");
                assert!(outside_containers);
                assert_eq!(rss.unwrap().anon_rss_kb, 1024);
            }
            other => panic!("decoded {other:?}"),
        }
        // Without the rss fields the event says so instead of reporting zeros.
        oom.has_rss = 0;
        oom.header.cgroup_id = 7;
        match decode(&as_bytes(&oom)).unwrap().detail {
            EventDetail::OomVictim {
                rss,
                outside_containers,
                ..
            } => assert!(rss.is_none() && !outside_containers),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn decodes_fork_denied_cause() {
        let denied = ForkDeniedEvent {
            header: EventHeader {
                kind: EventKind::ForkDenied as u16,
                ..Default::default()
            },
            ret: -11,
            cause: DenialCause::PidsMax as u32,
            ..Default::default()
        };
        match decode(&as_bytes(&denied)).unwrap().detail {
            EventDetail::ForkDenied { ret, cause, .. } => {
                assert_eq!((ret, cause), (-11, Cause::PidsMax))
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let bytes = as_bytes(&fork_record());
        assert!(matches!(
            decode(&bytes[..20]),
            Err(DecodeError::Short { needed: 32, .. })
        ));
        assert!(matches!(
            decode(&bytes[..36]),
            Err(DecodeError::Short { needed: 40, .. })
        ));
        let mut unknown = fork_record();
        unknown.header.kind = 999;
        assert_eq!(
            decode(&as_bytes(&unknown)),
            Err(DecodeError::UnknownKind { kind: 999 })
        );
    }
}
