//! The runtime's errors: each names the container, file or value it is about.
use std::{io, path::PathBuf};

use crate::{
    cgroup::CgroupError, container_id::ContainerIdError, limits::LimitsError, spec::SpecError,
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    ContainerId(#[from] ContainerIdError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("loading the OCI spec {path}: {source}")]
    LoadSpec {
        path: PathBuf,
        source: oci_spec::OciSpecError,
    },
    #[error("writing the OCI spec {path}: {source}")]
    SaveSpec {
        path: PathBuf,
        source: oci_spec::OciSpecError,
    },
    #[error(
        "libcontainer could not {operation} container {id}: {source} (its detailed errors are \
         logged through tracing)"
    )]
    Libcontainer {
        operation: &'static str,
        id: String,
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error("container {id} has no init process")]
    NoInit { id: String },
    #[error("container {id}'s init {pid} is in cgroup {actual}, not the requested {expected}")]
    CgroupMismatch {
        id: String,
        pid: i32,
        expected: PathBuf,
        actual: PathBuf,
    },
    #[error("container {id}: {file} is {found}, but {asked} was asked for")]
    LimitMismatch {
        id: String,
        file: &'static str,
        asked: String,
        found: String,
    },
    #[error(
        "container {id}: this kernel has no {file} but the guest has swap: the container could \
         dodge its memory limit by swapping"
    )]
    NoSwapControl { id: String, file: PathBuf },
    #[error("container {id}: its processes have oom_score_adj {found}, not the configured {asked}")]
    ContainerScore { id: String, asked: i32, found: i32 },
    #[error("the caller's oom_score_adj is {found} after a libcontainer call, not {expected}")]
    CallerScore { expected: i32, found: i32 },
    #[error("container {id}: its cgroup {cgroup} still exists after delete")]
    CgroupLeft { id: String, cgroup: PathBuf },
    #[error("signal {signal} is not valid: {message}")]
    Signal { signal: i32, message: String },
    #[error(
        "container {id}: the exec's libcontainer helpers were stuck for {seconds} s (the OOM \
         killer likely took one of them) and {killed} were killed: {source}"
    )]
    ExecStuck {
        id: String,
        killed: u32,
        seconds: u64,
        source: Box<RuntimeError>,
    },
    #[error("container {id}: the exec helper {program}: {message}")]
    ExecHelper {
        id: String,
        program: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error(
        "the guest budget needs a parent cgroup of its own: the cgroup root \"/\" cannot hold \
         one (choose a cgroup root such as /guard, or run without the budget)"
    )]
    BudgetOnRoot,
    #[error(
        "{file} offers {found:?}: the guest budget needs the {missing} controller(s), which this \
         kernel or its cgroup hierarchy does not provide"
    )]
    NoControllers {
        file: PathBuf,
        missing: String,
        found: String,
    },
    #[error(
        "enabling +memory +pids in {path}: {source} (a cgroup with processes of its own cannot \
         pass controllers to its children: move them out, or choose another cgroup root)"
    )]
    SubtreeControl { path: PathBuf, source: io::Error },
    #[error(
        "container {id}: {file} of {asked} is above the guest budget of {budget} that every \
         container shares"
    )]
    LimitAboveBudget {
        id: String,
        file: &'static str,
        asked: u64,
        budget: u64,
    },
}
