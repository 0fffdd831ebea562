use crate::EventHeader;

/// Why a fork was denied, as far as the programs could tell.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum DenialCause {
    /// EAGAIN alone: pids.max, RLIMIT_NPROC or threads-max; reconcile with `pids.events`.
    Inferred = 0,
    /// A kretprobe saw `pids_can_fork` refuse it: pids.max, exactly.
    PidsMax = 1,
}

impl DenialCause {
    /// The cause a record's raw value names (anything unknown is only inferred).
    pub const fn from_raw(raw: u32) -> Self {
        if raw == Self::PidsMax as u32 {
            Self::PidsMax
        } else {
            Self::Inferred
        }
    }
}

/// A fork/clone that returned an error in a watched container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkDeniedEvent {
    pub header: EventHeader,
    /// Thread group id (process id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// The syscall's return value (a negative errno).
    pub ret: i64,
    /// A [`DenialCause`] value.
    pub cause: u32,
    /// The syscall number (clone, clone3, fork or vfork).
    pub syscall_nr: u32,
    /// The caller's own cgroup (`bpf_get_current_cgroup_id`): the container's cgroup or one of
    /// its sub-cgroups, so userspace can name the sub-cgroup whose pids.max refused.
    pub task_cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<ForkDeniedEvent>() == 64);
