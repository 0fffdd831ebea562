//! Typed events decoded from ring-buffer records.
use guard_common::{EventHeader, EventKind, ForkEvent};
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

/// What happened, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventDetail {
    Fork { parent_pid: u32, child_pid: u32 },
}

impl EventDetail {
    pub fn kind_name(&self) -> &'static str {
        match self {
            EventDetail::Fork { .. } => "fork",
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
