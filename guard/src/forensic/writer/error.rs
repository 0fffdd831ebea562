//! The writer's one error type: every part of writing a log (opening, resuming, appending)
//! fails with it, naming the path.
use std::path::PathBuf;

use thiserror::Error;

use super::Unwritten;
use crate::forensic::layout::{FileError, LayoutError};
use crate::forensic::record::RecordError;
use crate::forensic::time::TimeError;

/// What opening or appending to a log can fail with.
#[derive(Debug, Error)]
pub enum WriterError {
    /// The log directory could not be created ([`LogWriter::create`](super::LogWriter::create)).
    #[error("cannot create log directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The directory is a file, cannot be listed, holds two files with one index, or is
    /// locked by another writer.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// No [`LogOptions::boot_id`](super::LogOptions::boot_id) was given and the kernel's could
    /// not be read.
    #[error("cannot read the boot id from {path}: {source}")]
    BootId {
        /// The file read (`/proc/sys/kernel/random/boot_id`).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A log file could not be opened or read.
    #[error(transparent)]
    File(#[from] FileError),
    /// On reopening, the newest file ends with a torn line and
    /// [`LogOptions::repair_torn_tail`](super::LogOptions::repair_torn_tail) is off.
    #[error(
        "{path}:{line}: torn final line ({bytes} bytes without a newline, from an interrupted \
         write); refusing to append: run `guard log verify --repair` or open with repair_torn_tail"
    )]
    TornTail {
        /// The file.
        path: PathBuf,
        /// The torn line's number (from 1).
        line: u64,
        /// Its length, in bytes.
        bytes: u64,
    },
    /// Truncating a torn tail (with `repair_torn_tail`) failed.
    #[error("cannot truncate the torn tail of {path}: {source}")]
    Truncate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The log cannot be continued: a line over the length limit, a last record without a
    /// readable `seq`, an empty newest file whose predecessor is missing or does not end with
    /// a complete record.
    #[error("{path}:{line}: cannot resume the log: {reason}; run `guard log verify`")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (from 1; 0 for the file as a whole).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A write(2) failed: the writer is in an outage (every later append, and a flush that
    /// cannot write yet, fails with [`WriterError::Outage`] until a retry writes the `gap`).
    #[error(
        "cannot write to {path}: {source}{}",
        .unwritten.map_or(String::new(), |unwritten| format!("; {unwritten}"))
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error (ENOSPC, EIO, …).
        source: std::io::Error,
        /// Records already accepted (their `append` returned) or being written that did not
        /// reach the file; None when none were pending.
        unwritten: Option<Unwritten>,
    },
    /// An fdatasync of the file, or an fsync of the directory, failed: the writer is in an
    /// outage.
    #[error("cannot fsync {path}: {source}")]
    Sync {
        /// The file (or directory).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Any call that writes during an outage (after a write or sync error, until a retry
    /// writes the `gap` record): the record's seq is in the gap's range.
    #[error(
        "the log cannot write to {path} since seq {first_seq} ({cause}); records are counted and \
         it tries again every second"
    )]
    Outage {
        /// The file.
        path: PathBuf,
        /// The first seq not in the log.
        first_seq: u64,
        /// The error that began the outage.
        cause: String,
    },
    /// The record cannot be encoded (a bad kind, a payload that does not serialize, a line
    /// over 4 MiB); nothing was written and the writer goes on.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// `append` of a kind only the writer writes (`start`, `rotate`, `checkpoint`, `stop`,
    /// `repair`).
    #[error("kind {kind:?} is written by the log itself and cannot be appended")]
    ReservedKind {
        /// The kind given.
        kind: String,
    },
    /// `append` with `Some("")` as the container id.
    #[error("container id must not be empty")]
    EmptyContainer,
    /// A clock could not be read for the record's time stamps.
    #[error(transparent)]
    Clock(#[from] TimeError),
    /// A byte budget that does not parse, or is below
    /// [`MIN_BUDGET_BYTES`](crate::forensic::MIN_BUDGET_BYTES)
    /// ([`ByteBudget`](crate::forensic::ByteBudget)'s `FromStr`).
    #[error(
        "invalid log budget {input:?}: expected auto, none, or bytes (e.g. 4194304, 4096K, 4M) \
         of at least 64K"
    )]
    BadBudget {
        /// The text given.
        input: String,
    },
    /// The record does not fit the log's byte budget; nothing was written and the writer goes
    /// on. An event is refused once the budget less its reserve is used (counted in
    /// [`WriterStats::records_over_budget`](super::WriterStats::records_over_budget)); a
    /// report or verdict only when even the reserve is used up.
    #[error("the forensic log's byte budget ({budget} bytes) has no room for a {kind} record")]
    OverBudget {
        /// The record's kind.
        kind: String,
        /// The budget, in bytes.
        budget: u64,
    },
    /// statfs(2) of the log directory failed (for its default budget).
    #[error("cannot statfs {path} (for the log's default budget): {source}")]
    Statfs {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// MemTotal could not be read (for a RAM-backed log's default budget).
    #[error("cannot read MemTotal from {path} (for the log's default budget): {source}")]
    MemTotal {
        /// The file read (`/proc/meminfo`).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be removed under the byte budget.
    #[error("cannot remove {path} (to stay within the log's byte budget): {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An fsync policy that does not parse ([`FsyncPolicy`](super::FsyncPolicy)'s `FromStr`).
    #[error("invalid fsync policy {input:?}: expected always, never or interval=<ms>")]
    BadFsyncPolicy {
        /// The text given.
        input: String,
    },
}
