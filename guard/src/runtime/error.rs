//! The runtime's errors: each names the container, file or value it is about.
use std::{io, path::PathBuf};

use crate::{
    cgroup::CgroupError, container_id::ContainerIdError, limits::LimitsError, spec::SpecError,
};

/// What the runtime can fail with. A failure after libcontainer created the container (in
/// [`Runtime::create`](super::Runtime::create)'s checks) removes the container again.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container id is not valid.
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    /// The spec options are invalid ([`Runtime::new`](super::Runtime::new)), or the spec
    /// cannot be built or adjusted.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A cgroup file could not be read or written, or no cgroup v2 hierarchy is mounted
    /// ([`Runtime::new`](super::Runtime::new)).
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Any other system call: the state and bundle folders, `/proc/<pid>/cgroup`,
    /// `/proc/filesystems`, an `oom_score_adj`, `kernel.threads-max`, waiting for a process.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A bundle's `config.json` could not be loaded, or its rootfs made absolute.
    #[error("loading the OCI spec {path}: {source}")]
    LoadSpec {
        /// The file (or the bundle).
        path: PathBuf,
        /// oci-spec's error.
        source: oci_spec::OciSpecError,
    },
    /// The adjusted `config.json` could not be written to the runtime's bundle folder.
    #[error("writing the OCI spec {path}: {source}")]
    SaveSpec {
        /// The file.
        path: PathBuf,
        /// oci-spec's error.
        source: oci_spec::OciSpecError,
    },
    /// A libcontainer call failed; its detailed errors went to `tracing`.
    #[error(
        "libcontainer could not {operation} container {id}: {source} (its detailed errors are \
         logged through tracing)"
    )]
    Libcontainer {
        /// The operation: `create`, `load`, `start`, `exec into`, `kill`, `delete`.
        operation: &'static str,
        /// The container.
        id: String,
        /// libcontainer's error.
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// libcontainer created the container but reports no init process.
    #[error("container {id} has no init process")]
    NoInit {
        /// The container.
        id: String,
    },
    /// The init is not in the cgroup the spec asked for (`<root>/<id>`).
    #[error("container {id}'s init {pid} is in cgroup {actual}, not the requested {expected}")]
    CgroupMismatch {
        /// The container.
        id: String,
        /// The init's pid.
        pid: i32,
        /// The cgroup asked for.
        expected: PathBuf,
        /// The cgroup `/proc/<pid>/cgroup` names.
        actual: PathBuf,
    },
    /// The kernel holds another limit than was asked ([`check_read_back`](super::check_read_back)).
    #[error("container {id}: {file} is {found}, but {asked} was asked for")]
    LimitMismatch {
        /// The container.
        id: String,
        /// The cgroup file.
        file: &'static str,
        /// The value asked for.
        asked: String,
        /// The value read back (`missing`: no such file).
        found: String,
    },
    /// The kernel has no `memory.swap.max` but the guest has swap.
    #[error(
        "container {id}: this kernel has no {file} but the guest has swap: the container could \
         dodge its memory limit by swapping"
    )]
    NoSwapControl {
        /// The container.
        id: String,
        /// The missing file.
        file: PathBuf,
    },
    /// The init's `oom_score_adj` reads back other than configured after it was set.
    #[error("container {id}: its processes have oom_score_adj {found}, not the configured {asked}")]
    ContainerScore {
        /// The container.
        id: String,
        /// The score configured.
        asked: i32,
        /// The score read back.
        found: i32,
    },
    /// The agent's own `oom_score_adj` is not what it was: a libcontainer call changed it and it
    /// could not be put back ([`preserving_caller`](super::oom_score::preserving_caller)), or it
    /// changed across [`Container::start`](super::Container::start). Its OOM protection is not
    /// confirmed.
    #[error("the caller's oom_score_adj is {found} after a libcontainer call, not {expected}")]
    CallerScore {
        /// The score before the call.
        expected: i32,
        /// The score after.
        found: i32,
    },
    /// The cgroup directory is still there after [`Container::delete`](super::Container::delete).
    #[error("container {id}: its cgroup {cgroup} still exists after delete")]
    CgroupLeft {
        /// The container.
        id: String,
        /// The cgroup.
        cgroup: PathBuf,
    },
    /// [`Container::kill`](super::Container::kill) with a number that is not a signal.
    #[error("signal {signal} is not valid: {message}")]
    Signal {
        /// The number given.
        signal: i32,
        /// libcontainer's reason.
        message: String,
    },
    /// An exec (or create, through a helper) did not finish its handshake within the deadline
    /// (60 s): the stuck helpers were killed.
    #[error(
        "container {id}: the exec's libcontainer helpers were stuck for {seconds} s (the OOM \
         killer likely took one of them) and {killed} were killed: {source}"
    )]
    ExecStuck {
        /// The container.
        id: String,
        /// Processes killed.
        killed: u32,
        /// The deadline, in seconds.
        seconds: u64,
        /// The error the stuck call ended with.
        source: Box<RuntimeError>,
    },
    /// An [`ExecHelper`](super::ExecHelper) could not be started, gave no valid answer, or
    /// reported that its clone failed.
    #[error("container {id}: the exec helper {program}: {message}")]
    ExecHelper {
        /// The container.
        id: String,
        /// The helper's program.
        program: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Limits that do not resolve, a meminfo that cannot be read, or a guest budget the guest
    /// cannot give.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// A guest budget with the cgroup root `/` as the containers' parent.
    #[error(
        "the guest budget needs a parent cgroup of its own: the cgroup root \"/\" cannot hold \
         one (choose a cgroup root such as /guard, or run without the budget)"
    )]
    BudgetOnRoot,
    /// The hierarchy's root does not offer the `memory` and `pids` controllers a budget needs.
    #[error(
        "{file} offers {found:?}: the guest budget needs the {missing} controller(s), which this \
         kernel or its cgroup hierarchy does not provide"
    )]
    NoControllers {
        /// The root's `cgroup.controllers`.
        file: PathBuf,
        /// The controllers missing.
        missing: String,
        /// The controllers offered.
        found: String,
    },
    /// Enabling `+memory +pids` in a `cgroup.subtree_control` on the way to the budget's
    /// parent failed (typically: that cgroup has processes of its own).
    #[error(
        "enabling +memory +pids in {path}: {source} (a cgroup with processes of its own cannot \
         pass controllers to its children: move them out, or choose another cgroup root)"
    )]
    SubtreeControl {
        /// The `cgroup.subtree_control` file.
        path: PathBuf,
        /// The kernel's refusal.
        source: io::Error,
    },
    /// [`Runtime::create`](super::Runtime::create) with a limit above the guest budget (limits
    /// resolved without [`Runtime::resolve`](super::Runtime::resolve)).
    #[error(
        "container {id}: {file} of {asked} is above the guest budget of {budget} that every \
         container shares"
    )]
    LimitAboveBudget {
        /// The container.
        id: String,
        /// The cgroup file (`memory.max`, `pids.max`).
        file: &'static str,
        /// The limit asked for.
        asked: u64,
        /// The budget's limit.
        budget: u64,
    },
}
