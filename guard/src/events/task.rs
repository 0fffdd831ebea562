//! The task records of the live sources without tracing (tier 1): exits and execs, which the
//! BPF tiers count in the kernel without streaming them. A fork is the fork signal's payload
//! (`signals/fork.rs`) whichever source saw it.
use serde::Serialize;

/// A task of the container exited (perf's `PERF_RECORD_EXIT`: threads too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// The process (thread group) id.
    pub pid: u32,
    /// The thread id (equal to `pid` for a process's main thread).
    pub tid: u32,
}

/// A task of the container called exec (perf's `PERF_RECORD_COMM` with the exec flag): its
/// new command name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exec {
    /// The process id.
    pub pid: u32,
    /// The thread id.
    pub tid: u32,
    /// The command name after the exec (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
}
