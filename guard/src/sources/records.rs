//! perf's side-band records as the ring holds them (`perf_event_open(2)`, "MMAP layout"),
//! with `sample_id_all` and `PERF_SAMPLE_TIME`: every record ends with its time. Only the
//! kinds the dummy event asks for (`task`, `comm`, `comm_exec`) and the ring's own `LOST`.
use perf_event_open_sys::bindings;

/// One record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    /// PERF_RECORD_FORK: a task was created (a process, or a thread of one).
    Fork {
        /// The new task's process and thread ids.
        pid: u32,
        tid: u32,
        /// The creating task's process and thread ids.
        ppid: u32,
        ptid: u32,
        time: u64,
    },
    /// PERF_RECORD_EXIT: a task exited.
    Exit { pid: u32, tid: u32, time: u64 },
    /// PERF_RECORD_COMM with PERF_RECORD_MISC_COMM_EXEC: a task exec'd.
    Exec {
        pid: u32,
        tid: u32,
        comm: String,
        time: u64,
    },
    /// PERF_RECORD_LOST: the ring was full, `lost` records were dropped.
    Lost { lost: u64, time: u64 },
    /// Any other record (a comm change by prctl, a kind not asked for): skipped.
    Other,
}

/// A record too short for its kind: the ring is corrupt (never seen; counted as undecodable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Malformed {
    pub kind: u32,
    pub size: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The record's header: type, misc, size.
pub(super) const HEADER: usize = 8;

/// Decodes one whole record (its 8-byte header included).
pub(super) fn decode(bytes: &[u8]) -> Result<Record, Malformed> {
    let kind = u32_at(bytes, 0).unwrap_or(0);
    if bytes.len() < HEADER {
        return Err(Malformed {
            kind,
            size: bytes.len(),
        });
    }
    let misc = bytes
        .get(4..6)
        .map_or(0, |misc| u16::from_ne_bytes([misc[0], misc[1]]));
    let malformed = || Malformed {
        kind,
        size: bytes.len(),
    };
    // The time sample_id_all appends is the record's last 8 bytes.
    let time = || u64_at(bytes, bytes.len().checked_sub(8)?);
    let body = &bytes[HEADER.min(bytes.len())..];
    let record = match kind {
        bindings::PERF_RECORD_FORK => Record::Fork {
            pid: u32_at(body, 0).ok_or_else(malformed)?,
            ppid: u32_at(body, 4).ok_or_else(malformed)?,
            tid: u32_at(body, 8).ok_or_else(malformed)?,
            ptid: u32_at(body, 12).ok_or_else(malformed)?,
            time: u64_at(body, 16).ok_or_else(malformed)?,
        },
        bindings::PERF_RECORD_EXIT => Record::Exit {
            pid: u32_at(body, 0).ok_or_else(malformed)?,
            tid: u32_at(body, 8).ok_or_else(malformed)?,
            time: u64_at(body, 16).ok_or_else(malformed)?,
        },
        bindings::PERF_RECORD_COMM
            if u32::from(misc) & bindings::PERF_RECORD_MISC_COMM_EXEC != 0 =>
        {
            let name = body
                .get(8..body.len().saturating_sub(8))
                .ok_or_else(malformed)?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            Record::Exec {
                pid: u32_at(body, 0).ok_or_else(malformed)?,
                tid: u32_at(body, 4).ok_or_else(malformed)?,
                comm: String::from_utf8_lossy(&name[..end]).into_owned(),
                time: time().ok_or_else(malformed)?,
            }
        }
        bindings::PERF_RECORD_LOST => Record::Lost {
            lost: u64_at(body, 8).ok_or_else(malformed)?,
            time: time().ok_or_else(malformed)?,
        },
        _ => Record::Other,
    };
    Ok(record)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A record as the kernel writes it: header, body, the sample_id time.
    pub fn record(kind: u32, misc: u16, body: &[u8], time: u64) -> Vec<u8> {
        let size = HEADER + body.len() + 8;
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&misc.to_ne_bytes());
        bytes.extend_from_slice(&(size as u16).to_ne_bytes());
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&time.to_ne_bytes());
        bytes
    }

    pub fn task(kind: u32, pid: u32, ppid: u32, tid: u32, ptid: u32, time: u64) -> Vec<u8> {
        let mut body = Vec::new();
        for value in [pid, ppid, tid, ptid] {
            body.extend_from_slice(&value.to_ne_bytes());
        }
        body.extend_from_slice(&time.to_ne_bytes());
        record(kind, 0, &body, time)
    }

    #[test]
    fn decodes_fork_exit_exec_and_lost() {
        assert_eq!(
            decode(&task(bindings::PERF_RECORD_FORK, 20, 10, 21, 11, 5)),
            Ok(Record::Fork {
                pid: 20,
                tid: 21,
                ppid: 10,
                ptid: 11,
                time: 5
            })
        );
        assert_eq!(
            decode(&task(bindings::PERF_RECORD_EXIT, 20, 10, 20, 10, 6)),
            Ok(Record::Exit {
                pid: 20,
                tid: 20,
                time: 6
            })
        );
        let mut body = Vec::new();
        body.extend_from_slice(&30u32.to_ne_bytes());
        body.extend_from_slice(&31u32.to_ne_bytes());
        body.extend_from_slice(b"stress\0\0");
        let exec = bindings::PERF_RECORD_MISC_COMM_EXEC as u16;
        assert_eq!(
            decode(&record(bindings::PERF_RECORD_COMM, exec, &body, 7)),
            Ok(Record::Exec {
                pid: 30,
                tid: 31,
                comm: "stress".into(),
                time: 7
            })
        );
        // A comm change without exec (prctl PR_SET_NAME) is not an exec.
        assert_eq!(
            decode(&record(bindings::PERF_RECORD_COMM, 0, &body, 7)),
            Ok(Record::Other)
        );
        let mut lost = 99u64.to_ne_bytes().to_vec();
        lost.extend_from_slice(&12u64.to_ne_bytes());
        assert_eq!(
            decode(&record(bindings::PERF_RECORD_LOST, 0, &lost, 8)),
            Ok(Record::Lost { lost: 12, time: 8 })
        );
    }

    #[test]
    fn a_short_record_is_malformed_not_a_panic() {
        let fork = task(bindings::PERF_RECORD_FORK, 1, 2, 3, 4, 5);
        for cut in [0, 5, 8, 12, 20, 30] {
            assert!(decode(&fork[..cut]).is_err(), "{cut}");
        }
    }
}
