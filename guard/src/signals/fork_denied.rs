//! The fork_denied signal: `syscalls:sys_exit_{clone,clone3,fork,vfork}` returning EAGAIN in a
//! watched container, plus (tier 2) a kretprobe on `pids_can_fork` that names pids.max as the
//! exact cause. EAGAIN alone is ambiguous (RLIMIT_NPROC and threads-max give it too): without
//! the kretprobe the cause is `inferred` and the verdict reconciles with `pids.events`.
use guard_common::{DenialCause, EventKind, ForkDeniedEvent, ProbeConfig, TracepointOffsets};
use serde::Serialize;

use super::{
    DecodeError, Formats, Hook, Program, Signal, SignalError, Streamed, read_record, required,
};
use crate::counters::Delivered;

const SYSCALL_EXITS: [&str; 4] = [
    "sys_exit_clone",
    "sys_exit_clone3",
    "sys_exit_fork",
    "sys_exit_vfork",
];

pub(crate) static SIGNAL: Signal = Signal {
    name: "fork_denied",
    programs: &[
        Program::tracepoint("syscalls", SYSCALL_EXITS[0]),
        Program::tracepoint("syscalls", SYSCALL_EXITS[1]),
        Program::tracepoint("syscalls", SYSCALL_EXITS[2]),
        Program::tracepoint("syscalls", SYSCALL_EXITS[3]),
        Program {
            name: "pids_can_fork_exit",
            hook: Hook::KRetProbe {
                function: "pids_can_fork",
                armed: arm_kprobe,
            },
        },
    ],
    read_offsets,
};

/// The syscall-exit programs trust the kretprobe's marks only once it is attached.
fn arm_kprobe(config: &mut ProbeConfig) {
    config.pids_kprobe = 1;
}

fn read_offsets(formats: &Formats<'_>, offsets: &mut TracepointOffsets) -> Result<(), SignalError> {
    // One program serves all four exits, so they must share one layout: check, not assume.
    let first = formats.read("syscalls", SYSCALL_EXITS[0])?;
    for name in &SYSCALL_EXITS[1..] {
        let other = formats.read("syscalls", name)?;
        if other.offset_of("ret", 8)? != first.offset_of("ret", 8)?
            || other.offset_of("__syscall_nr", 4)? != first.offset_of("__syscall_nr", 4)?
        {
            return Err(SignalError::Layout {
                tracepoint: format!("syscalls:{name}"),
                reason: "its ret/__syscall_nr offsets differ from sys_exit_clone's",
            });
        }
    }
    offsets.syscall_ret = required(&first, "ret", 8)?;
    offsets.syscall_nr = required(&first, "__syscall_nr", 4)?;
    Ok(())
}

/// A fork/clone in a watched container failed with EAGAIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForkDenied {
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// The syscall's return value, a negative errno (-11 = EAGAIN).
    pub ret: i64,
    /// `pids_max` where the tier-2 kretprobe saw `pids_can_fork` refuse the fork; `inferred`
    /// otherwise (EAGAIN alone: pids.max, RLIMIT_NPROC or threads-max).
    pub cause: DenialCause,
    /// The syscall's number (the architecture's: clone, clone3, fork or vfork).
    pub syscall_nr: u32,
    /// The caller's own cgroup id.
    pub task_cgroup_id: u64,
    /// The sub-cgroup of the container the caller was in (its path), when it was not in the
    /// container's own cgroup: whose pids.max refused. Filled in by the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_cgroup: Option<String>,
}

impl Streamed for ForkDenied {
    const KIND: EventKind = EventKind::ForkDenied;

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let denied: ForkDeniedEvent = read_record(bytes, "fork-denied event")?;
        Ok(ForkDenied {
            tgid: denied.tgid,
            tid: denied.tid,
            ret: denied.ret,
            cause: DenialCause::from_raw(denied.cause),
            syscall_nr: denied.syscall_nr,
            task_cgroup_id: denied.task_cgroup_id,
            sub_cgroup: None,
        })
    }

    fn tally(&self, delivered: &mut Delivered) {
        delivered.fork_denied += 1;
    }
}

#[cfg(test)]
mod tests {
    use guard_common::{EventHeader, EventKind};

    use super::*;
    use crate::signals::fixtures::{FakeTracefs, KERNELS, as_bytes};

    #[test]
    fn reads_the_shared_syscall_exit_layout() {
        for kernel in KERNELS {
            let offsets = FakeTracefs::new(kernel, "fork_denied").offsets();
            assert_eq!(
                (offsets.syscall_nr, offsets.syscall_ret),
                (8, 16),
                "{kernel}"
            );
        }
    }

    #[test]
    fn decodes_the_cause() {
        let mut denied = ForkDeniedEvent {
            header: EventHeader {
                kind: EventKind::ForkDenied as u16,
                ..Default::default()
            },
            ret: -11,
            cause: DenialCause::PidsMax as u32,
            ..Default::default()
        };
        let decoded = ForkDenied::decode(&as_bytes(&denied)).unwrap();
        assert_eq!((decoded.ret, decoded.cause), (-11, DenialCause::PidsMax));
        denied.cause = 77;
        assert_eq!(
            ForkDenied::decode(&as_bytes(&denied)).unwrap().cause,
            DenialCause::Inferred
        );
    }
}
