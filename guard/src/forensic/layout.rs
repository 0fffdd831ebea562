//! Where a log lives: a directory of numbered files `guard-NNNNNN.jsonl` (index from 0, at
//! least six digits, never renamed) plus the writer's lock file.
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What every log file's name starts with.
pub const FILE_PREFIX: &str = "guard-";
/// What every log file's name ends with.
pub const FILE_SUFFIX: &str = ".jsonl";
/// A file is rotated only once it holds at least this many bytes, whatever `rotate_bytes`
/// says: a stream collector refuses a `rotate` that comes sooner (docs/STREAM.md), so that a
/// guest cannot spend a host's inodes one record per file.
pub const ROTATE_MIN_FILE_BYTES: u64 = 1024;
/// Held (flock) by the one writer; `verify --repair` takes it too so it never races a writer.
pub const LOCK_FILE: &str = "guard.lock";

/// A log file that could not be opened or read: the I/O error reading, verifying and writing
/// a log share ([`ReaderError::File`](super::ReaderError::File),
/// [`VerifyError::File`](super::VerifyError::File),
/// [`WriterError::File`](super::WriterError::File)).
#[derive(Debug, Error)]
pub enum FileError {
    /// A log file could not be opened (or, at rotation, created: it must not exist yet).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A log file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl FileError {
    /// Opening `path` failed with the error it is given.
    pub(crate) fn open(path: &Path) -> impl Fn(std::io::Error) -> Self + Copy + '_ {
        move |source| FileError::Open {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Reading `path` failed with the error it is given.
    pub(crate) fn read(path: &Path) -> impl Fn(std::io::Error) -> Self + Copy + '_ {
        move |source| FileError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The log directory cannot be listed or locked.
#[derive(Debug, Error)]
pub enum LayoutError {
    /// The directory (or an entry of it) could not be read.
    #[error("cannot read log directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file was given where the log directory was expected.
    #[error(
        "{path} is not a directory: pass the log directory (the one holding guard-NNNNNN.jsonl)"
    )]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Two names with the same index (`guard-000003.jsonl` and `guard-0000003.jsonl`).
    #[error("log directory {dir} holds two files with index {index}: {first} and {second}")]
    DuplicateIndex {
        /// The directory.
        dir: PathBuf,
        /// The index.
        index: u64,
        /// One file's name.
        first: String,
        /// The other's.
        second: String,
    },
    /// The lock file could not be created, opened or locked.
    #[error("cannot open lock file {path}: {source}")]
    LockOpen {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process holds the lock: a running writer, or a repair.
    #[error("log directory {dir} is locked by another process (a running writer?)")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
}

/// One file of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// Its index: 0 for the first file.
    pub index: u64,
    /// Its path.
    pub path: PathBuf,
}

impl LogFile {
    /// Its canonical name (`guard-000003.jsonl`).
    pub fn name(&self) -> String {
        file_name(self.index)
    }
}

/// The name of the file with `index`: at least six digits, zero-padded.
///
/// ```
/// # #[cfg(feature = "internals")] {
/// use guard::forensic::layout::{file_name, parse_file_name};
///
/// assert_eq!(file_name(3), "guard-000003.jsonl");
/// assert_eq!(parse_file_name("guard-1234567.jsonl"), Some(1_234_567));
/// assert_eq!(parse_file_name("guard-03.jsonl"), None);
/// assert_eq!(parse_file_name("guard.lock"), None);
/// # }
/// ```
pub fn file_name(index: u64) -> String {
    format!("{FILE_PREFIX}{index:06}{FILE_SUFFIX}")
}

/// The index of a log file name, or None for any other file.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log's files in index order. Gaps are left for the verifier to report.
pub fn list_files(dir: &Path) -> Result<Vec<LogFile>, LayoutError> {
    let read_err = |source| LayoutError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    if dir.is_file() {
        return Err(LayoutError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        if let Some(index) = name.to_str().and_then(parse_file_name) {
            files.push(LogFile {
                index,
                path: entry.path(),
            });
        }
    }
    files.sort_by_key(|f| f.index);
    if let Some(pair) = files.windows(2).find(|w| w[0].index == w[1].index) {
        let name = |f: &LogFile| {
            f.path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        return Err(LayoutError::DuplicateIndex {
            dir: dir.to_owned(),
            index: pair[0].index,
            first: name(&pair[0]),
            second: name(&pair[1]),
        });
    }
    Ok(files)
}

/// An exclusive advisory lock on the log directory, released on drop.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the exclusive lock on `dir` (creating `guard.lock`), without waiting:
/// [`LayoutError::Locked`] when another process holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LayoutError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LayoutError::LockOpen {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            LayoutError::Locked {
                dir: dir.to_owned(),
            }
        } else {
            LayoutError::LockOpen { path, source: err }
        });
    }
    Ok(DirLock { _file: file })
}

/// Makes a new directory entry durable (after creating a file in `dir`).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(3), "guard-000003.jsonl");
        assert_eq!(parse_file_name("guard-000003.jsonl"), Some(3));
        assert_eq!(parse_file_name("guard-1234567.jsonl"), Some(1_234_567));
        assert_eq!(parse_file_name("guard-03.jsonl"), None);
        assert_eq!(parse_file_name("guard.lock"), None);
        assert_eq!(parse_file_name("guard-00000a.jsonl"), None);
    }
}
