//! `struct taskstats` (linux/taskstats.h) as the kernel sends it at a task's exit, and the
//! attributes around it.
//!
//! The struct only grows: each version appends fields and keeps every earlier offset, so a
//! field is read if the record's `version` has it and its bytes are there. The offsets are
//! the C layout on the 64-bit targets guard builds for (every `__u64` 8-aligned).

/// What a task's exit tells, from its `struct taskstats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    /// The record's `version` (`TASKSTATS_VERSION` of the kernel that sent it).
    pub version: u16,
    /// The task (thread) id.
    pub pid: u32,
    /// `None` before version 12, which added it.
    pub tgid: Option<u32>,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its real uid.
    pub uid: u32,
    /// Its command name.
    pub comm: String,
    /// The exit code as `wait` gives it (`ac_exitcode`).
    pub exit_code: u32,
    /// Direct reclaim: how often the task waited for free pages, and for how long in total.
    pub freepages_count: u64,
    /// Nanoseconds in direct reclaim, in total.
    pub freepages_delay_ns: u64,
    /// Thrashing: waits on refaulting pages of its working set (version 9 on; else 0).
    pub thrashing_count: u64,
    /// Nanoseconds waiting on thrashing pages, in total.
    pub thrashing_delay_ns: u64,
}

/// The oldest `version` guard reads: 9 added the thrashing delay.
pub const MIN_VERSION: u16 = 9;

/// Why a record was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// Fewer bytes than the fields guard reads need.
    #[error("struct taskstats of {len} bytes, too short for version {version} (needs {needs})")]
    Short {
        /// The bytes there are.
        len: usize,
        /// The record's version.
        version: u16,
        /// The bytes needed.
        needs: usize,
    },
    /// A version older than [`MIN_VERSION`].
    #[error("struct taskstats version {0} is older than {MIN_VERSION} (no thrashing delay)")]
    Old(u16),
}

const VERSION: usize = 0;
const AC_EXITCODE: usize = 4;
const AC_COMM: usize = 80;
const TS_COMM_LEN: usize = 32;
const AC_UID: usize = 120;
const AC_PID: usize = 128;
const AC_PPID: usize = 132;
const FREEPAGES_COUNT: usize = 312;
const FREEPAGES_DELAY_TOTAL: usize = 320;
const THRASHING_COUNT: usize = 328;
const THRASHING_DELAY_TOTAL: usize = 336;
const AC_TGID: usize = 368;

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

/// Reads a `TASKSTATS_TYPE_STATS` attribute's value.
pub fn parse(bytes: &[u8]) -> Result<TaskExit, StatsError> {
    let short = |version, needs| StatsError::Short {
        len: bytes.len(),
        version,
        needs,
    };
    if bytes.len() < 2 {
        return Err(short(0, 2));
    }
    let version = u16_at(bytes, VERSION);
    if version < MIN_VERSION {
        return Err(StatsError::Old(version));
    }
    let needs = THRASHING_DELAY_TOTAL + 8;
    if bytes.len() < needs {
        return Err(short(version, needs));
    }
    let comm = &bytes[AC_COMM..AC_COMM + TS_COMM_LEN];
    let comm_len = comm.iter().position(|&b| b == 0).unwrap_or(TS_COMM_LEN);
    let tgid = (version >= 12 && bytes.len() >= AC_TGID + 4).then(|| u32_at(bytes, AC_TGID));
    Ok(TaskExit {
        version,
        pid: u32_at(bytes, AC_PID),
        tgid,
        ppid: u32_at(bytes, AC_PPID),
        uid: u32_at(bytes, AC_UID),
        comm: String::from_utf8_lossy(&comm[..comm_len]).into_owned(),
        exit_code: u32_at(bytes, AC_EXITCODE),
        freepages_count: u64_at(bytes, FREEPAGES_COUNT),
        freepages_delay_ns: u64_at(bytes, FREEPAGES_DELAY_TOTAL),
        thrashing_count: u64_at(bytes, THRASHING_COUNT),
        thrashing_delay_ns: u64_at(bytes, THRASHING_DELAY_TOTAL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u16, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        bytes[..2].copy_from_slice(&version.to_ne_bytes());
        bytes[AC_EXITCODE..AC_EXITCODE + 4].copy_from_slice(&256u32.to_ne_bytes());
        bytes[AC_COMM..AC_COMM + 5].copy_from_slice(b"storm");
        bytes[AC_PID..AC_PID + 4].copy_from_slice(&4242u32.to_ne_bytes());
        bytes[AC_PPID..AC_PPID + 4].copy_from_slice(&1u32.to_ne_bytes());
        bytes[FREEPAGES_COUNT..FREEPAGES_COUNT + 8].copy_from_slice(&3u64.to_ne_bytes());
        bytes[FREEPAGES_DELAY_TOTAL..FREEPAGES_DELAY_TOTAL + 8]
            .copy_from_slice(&9_000u64.to_ne_bytes());
        if len >= AC_TGID + 4 {
            bytes[AC_TGID..AC_TGID + 4].copy_from_slice(&4240u32.to_ne_bytes());
        }
        bytes
    }

    #[test]
    fn reads_the_fields_guard_uses() {
        let exit = parse(&record(14, 432)).unwrap();
        assert_eq!(exit.pid, 4242);
        assert_eq!(exit.tgid, Some(4240));
        assert_eq!(exit.ppid, 1);
        assert_eq!(exit.comm, "storm");
        assert_eq!(exit.exit_code, 256);
        assert_eq!((exit.freepages_count, exit.freepages_delay_ns), (3, 9_000));
    }

    #[test]
    fn old_or_short_records_are_named() {
        assert_eq!(parse(&record(8, 432)), Err(StatsError::Old(8)));
        assert!(matches!(
            parse(&record(14, 432)[..300]),
            Err(StatsError::Short { .. })
        ));
        assert!(matches!(parse(&[1]), Err(StatsError::Short { .. })));
        // Version 11 has no tgid.
        assert_eq!(parse(&record(11, 432)[..368]).unwrap().tgid, None);
    }
}
