//! cgroup v2: the hierarchy (mount, ids, levels), the kernel's own files per cgroup (event
//! counters, limits), and every read and write guard makes there. Each controller guard sets
//! limits with has a module of its own, as youki's libcgroups has: [`memory`] and [`pids`]
//! name their files and write their limits; nothing outside this module names a controller's
//! file. Errors name the file (and the value, for a write).
mod events;
internal_mod!(files);
mod hierarchy;
mod limits;
pub mod memory;
pub mod pids;
mod procs;

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use events::{EventFiles, KeyedCounts};
#[allow(unused_imports, reason = "the runtime feature's and the binary's")]
pub(crate) use files::{read, read_ids, write};
pub use hierarchy::{CgroupIdentity, Hierarchy};
pub use limits::{HeldLimits, LimitValue};
pub use procs::command_inside;

/// A read or write of a cgroup (or of the mount table) that failed; every variant names the
/// path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// A file that exists could not be read (a missing file is not an error: it reads as
    /// absent).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `/proc/self/mountinfo` lists no cgroup2 filesystem ([`Hierarchy::find`]).
    #[error("no cgroup2 filesystem is mounted (looked in {mountinfo})")]
    NotMounted {
        /// The mount table read.
        mountinfo: PathBuf,
    },
    /// A path outside the cgroup2 mount, or one with `.` or `..` in it
    /// ([`Hierarchy::identify`]).
    #[error("{path} is not a cgroup directory under the cgroup2 mount {mount}")]
    NotUnderMount {
        /// The path given.
        path: PathBuf,
        /// The cgroup2 mount.
        mount: PathBuf,
    },
    /// A line of a cgroup file that does not parse (a keyed count, a limit).
    #[error("{path}, line {line}: cannot parse {text:?}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The line's text.
        text: String,
    },
    /// A cgroup deeper than the programs can attribute to ([`Hierarchy::identify`]).
    #[error("{path} is {level} levels deep; at most {max} are supported")]
    TooDeep {
        /// The cgroup.
        path: PathBuf,
        /// Its depth below the root.
        level: u32,
        /// The deepest level supported.
        max: u32,
    },
    /// No cgroup directory at the path ([`Hierarchy::identify`]).
    #[error("cgroup directory {path} does not exist")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The path is under the mount but on another filesystem, e.g. a tmpfs mounted there.
    #[error("{path} is not on a cgroup2 filesystem (it is on {filesystem})")]
    NotCgroup2 {
        /// The path given.
        path: PathBuf,
        /// The filesystem it is on, by name where guard knows it, else by magic number.
        filesystem: String,
    },
    /// The path is on cgroupfs but is a file, not a cgroup directory.
    #[error("{path} is not a directory: a cgroup is a directory under the cgroup2 mount {mount}")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
        /// The cgroup2 mount.
        mount: PathBuf,
    },
    /// A controller's file is missing from an existing cgroup because the parent does not
    /// enable the controller for its children (`cgroup::files::write`).
    #[error("{0}")]
    ControllerOff(Box<ControllerOff>),
    /// A write the kernel refused, or a file that does not exist (`cgroup::files::write`).
    #[error("writing {value} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The I/O error (EINVAL for a value the kernel rejects, NotFound for a missing file).
        source: std::io::Error,
    },
    /// A cgroup directory could not be created ([`create()`]).
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The I/O error (AlreadyExists if it exists).
        source: std::io::Error,
    },
    /// A cgroup directory could not be removed ([`remove()`]), e.g. still busy after 10 s.
    #[error("removing cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A controller's file missing because the parent does not pass the controller on.
#[derive(Debug, thiserror::Error)]
#[error(
    "writing {value} to {path}: the file does not exist because the parent cgroup {parent} \
     does not enable the {controller} controller for its children (its cgroup.subtree_control \
     holds {enabled:?}, its cgroup.controllers {available:?}): where the controller is \
     available, enable it there (echo +{controller} > {parent}/cgroup.subtree_control, with no \
     process of its own in {parent}) or choose another parent"
)]
pub struct ControllerOff {
    /// The file that was to be written (`…/memory.max`).
    pub path: PathBuf,
    /// The value that was to be written.
    pub value: String,
    /// The controller the file belongs to (`memory`).
    pub controller: String,
    /// The parent cgroup that does not pass the controller on.
    pub parent: PathBuf,
    /// The parent's `cgroup.subtree_control`: the controllers it does enable.
    pub enabled: String,
    /// The parent's `cgroup.controllers`: the controllers it could enable.
    pub available: String,
}

/// A cgroup file's text; None when it does not exist (the controller is not enabled for this
/// cgroup, or the kernel lacks the file).
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The limit file `name` of `cgroup` (None: no such file).
fn read_limit(cgroup: &Path, name: &str) -> Result<Option<LimitValue>, CgroupError> {
    let path = cgroup.join(name);
    read_optional(&path)?
        .map(|text| LimitValue::parse(&path, &text))
        .transpose()
}

/// Writes a limit file: `value`, or `max` for None. The controllers' `apply_*` functions
/// are the only callers.
fn write_limit(cgroup: &Path, name: &str, value: Option<u64>) -> Result<(), CgroupError> {
    let text = value.map_or("max".to_string(), |value| value.to_string());
    write(cgroup, name, &text)
}

/// Writes `value` to the limit file `name` unless it already holds a smaller number, which is
/// kept (an operator's tighter limit wins) and returned.
fn write_limit_unless_smaller(
    cgroup: &Path,
    name: &str,
    value: u64,
) -> Result<Option<u64>, CgroupError> {
    if let Some(LimitValue::Value(held)) = read_limit(cgroup, name)?
        && held < value
    {
        return Ok(Some(held));
    }
    write_limit(cgroup, name, Some(value))?;
    Ok(None)
}

/// Creates the cgroup directory `path` (which must not exist yet).
pub fn create(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(|source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the cgroup directory `path`, retrying briefly while it is busy: a cgroup whose last
/// task is still being torn down cannot be removed yet.
pub fn remove(path: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fs::remove_dir(path) {
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => {
                return result.map_err(|source| CgroupError::Remove {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}
