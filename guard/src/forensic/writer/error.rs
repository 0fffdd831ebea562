//! The writer's one error type: every part of writing a log (opening, resuming, appending)
//! fails with it, naming the path.
use std::path::PathBuf;

use thiserror::Error;

use super::Unwritten;
use crate::forensic::layout::LayoutError;
use crate::forensic::record::RecordError;
use crate::forensic::time::TimeError;

#[derive(Debug, Error)]
pub enum WriterError {
    #[error("cannot create log directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("cannot read the boot id from {path}: {source}")]
    BootId {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: torn final line ({bytes} bytes without a newline, from an interrupted \
         write); refusing to append: run `guard log verify --repair` or open with repair_torn_tail"
    )]
    TornTail {
        path: PathBuf,
        line: u64,
        bytes: u64,
    },
    #[error("cannot truncate the torn tail of {path}: {source}")]
    Truncate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: cannot resume the log: {reason}; run `guard log verify`")]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error(
        "cannot write to {path}: {source}{}",
        .unwritten.map_or(String::new(), |unwritten| format!("; {unwritten}"))
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
        /// Records already accepted (their `append` returned) or being written that did not
        /// reach the file; None when none were pending.
        unwritten: Option<Unwritten>,
    },
    #[error("cannot fsync {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("log writer for {path} stopped after an earlier error ({cause}); reopen the log")]
    Poisoned { path: PathBuf, cause: String },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("kind {kind:?} is written by the log itself and cannot be appended")]
    ReservedKind { kind: String },
    #[error("container id must not be empty")]
    EmptyContainer,
    #[error(transparent)]
    Clock(#[from] TimeError),
    #[error("invalid fsync policy {input:?}: expected always, never or interval=<ms>")]
    BadFsyncPolicy { input: String },
}
