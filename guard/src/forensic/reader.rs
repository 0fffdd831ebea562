//! Reading records back for display: a streaming iterator over all files, filters, and a
//! follower that polls for appended lines across rotations. Readers are tolerant (a bad line is
//! reported and skipped); judging the log is `verify`'s job.
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::layout::{self, FileError, LayoutError, LogFile};
use super::lines::{Line, LineScanner};
use super::record::{MAX_LINE_BYTES, Record};
use super::time;

/// What reading a log can meet: I/O errors, which end reading, and errors of one line
/// ([`ReaderError::is_line_error`]), after which reading goes on.
#[derive(Debug, Error)]
pub enum ReaderError {
    /// The directory cannot be listed, or holds two files with one index.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A log file could not be opened or read.
    #[error(transparent)]
    File(#[from] FileError),
    /// A line that is not a record (not JSON, wrong fields, over 4 MiB); reading goes on.
    #[error("{path}:{line}: unreadable record: {reason}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: u64,
        /// Why it cannot be read.
        reason: String,
    },
    /// A partial line at the end of a file (for a [`Follower`], reported once the writer has
    /// moved on to the next file).
    #[error("{path}:{line}: torn final line ({bytes} bytes without a newline)")]
    TornTail {
        /// The file.
        path: PathBuf,
        /// The partial line's number (1-based).
        line: u64,
        /// Its length, in bytes.
        bytes: u64,
    },
}

impl ReaderError {
    /// Whether reading can go on after this error (it concerns one line only).
    pub fn is_line_error(&self) -> bool {
        matches!(self, Self::BadLine { .. } | Self::TornTail { .. })
    }
}

/// A record and where it was read.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file it was read from.
    pub file: Arc<Path>,
    /// Its line in that file (1-based).
    pub line: u64,
    /// The record.
    pub record: Record,
    /// The line's exact bytes (without the newline).
    pub raw: Vec<u8>,
}

/// Which records to show; the default shows all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only records about this container.
    pub container: Option<String>,
    /// Only records of this kind, and the `summary` records that fold events of it.
    pub kind: Option<String>,
    /// Only records whose wall time is at or after this (Unix nanoseconds).
    pub since_ns: Option<i64>,
}

impl Filter {
    /// Whether `record` passes every condition set (a record whose `wall` does not parse
    /// passes `since_ns`: shown rather than hidden).
    pub fn matches(&self, record: &Record) -> bool {
        if let Some(kind) = &self.kind
            && *kind != record.kind
            && super::summarized(record).is_none_or(|(of, _)| of != kind)
        {
            return false;
        }
        if let Some(container) = &self.container
            && record.container.as_ref() != Some(container)
        {
            return false;
        }
        if let Some(since) = self.since_ns {
            // A record whose time cannot be read is shown rather than hidden.
            return time::parse_rfc3339(&record.wall).map_or(true, |t| t >= since);
        }
        true
    }
}

/// Streams every record of a log, file after file.
pub struct LogReader {
    files: std::vec::IntoIter<LogFile>,
    current: Option<OpenFile>,
    failed: bool,
}

struct OpenFile {
    path: Arc<Path>,
    lines: LineScanner<BufReader<File>>,
    line: u64,
}

impl LogReader {
    /// Reads the log in `dir`, from its first file.
    pub fn open(dir: &Path) -> Result<Self, ReaderError> {
        Ok(Self::from_files(layout::list_files(dir)?))
    }

    /// Reads `files`, in the order given.
    pub fn from_files(files: Vec<LogFile>) -> Self {
        Self {
            files: files.into_iter(),
            current: None,
            failed: false,
        }
    }

    fn next_entry(&mut self) -> Option<Result<Entry, ReaderError>> {
        loop {
            if self.current.is_none() {
                let file = self.files.next()?;
                let handle = match File::open(&file.path) {
                    Ok(handle) => handle,
                    Err(source) => {
                        return Some(Err(FileError::open(&file.path)(source).into()));
                    }
                };
                self.current = Some(OpenFile {
                    path: file.path.into(),
                    lines: LineScanner::from_file(handle),
                    line: 0,
                });
            }
            let current = self.current.as_mut()?;
            let line = match current.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.current = None;
                    continue;
                }
                Err(source) => {
                    return Some(Err(FileError::read(&current.path)(source).into()));
                }
            };
            current.line += 1;
            return Some(match line {
                Line::Complete(bytes) => parse_entry(&current.path, current.line, bytes),
                Line::Torn(bytes) => Err(ReaderError::TornTail {
                    path: current.path.to_path_buf(),
                    line: current.line,
                    bytes,
                }),
                Line::TooLong => {
                    // Reading resumes at the next line. A failed skip is not reported here: a
                    // disk error recurs on the next read, which reports it.
                    let _ = current.lines.skip_rest();
                    Err(too_long(&current.path, current.line))
                }
            });
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<Entry, ReaderError>;

    /// Line errors are yielded and reading goes on; an I/O error ends the iteration.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_entry();
        if matches!(&item, Some(Err(e)) if !e.is_line_error()) {
            self.failed = true;
        }
        item
    }
}

fn line_error(path: &Path, line: u64, reason: String) -> ReaderError {
    ReaderError::BadLine {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

fn too_long(path: &Path, line: u64) -> ReaderError {
    line_error(path, line, format!("longer than {MAX_LINE_BYTES} bytes"))
}

fn parse_entry(path: &Arc<Path>, line: u64, bytes: &[u8]) -> Result<Entry, ReaderError> {
    match serde_json::from_slice::<Record>(bytes) {
        Ok(record) => Ok(Entry {
            file: Arc::clone(path),
            line,
            record,
            raw: bytes.to_vec(),
        }),
        Err(e) => Err(line_error(path, line, e.to_string())),
    }
}

/// Follows a log like `tail -f`: each `poll` returns what was appended since the last one,
/// moving on to the next file when the writer rotates.
pub struct Follower {
    dir: PathBuf,
    index: u64,
    path: Arc<Path>,
    /// Bytes of the file read: complete lines, and the start of an over-long one being skipped.
    offset: u64,
    line: u64,
    /// Bytes after `offset` without a newline yet, as of the last read (read again next time).
    torn: u64,
    /// The last read ended inside an over-long line (already reported): skip to its end.
    in_long_line: bool,
}

impl Follower {
    /// Starts at the beginning of the newest file (the caller keeps the tail it wants).
    pub fn newest_file(dir: &Path) -> Result<Self, ReaderError> {
        let index = layout::list_files(dir)?.last().map_or(0, |f| f.index);
        Ok(Self::at(dir, index))
    }

    /// Starts at the beginning of the oldest file: every record, then whatever is appended.
    pub fn from_start(dir: &Path) -> Self {
        Self::at(dir, 0)
    }

    fn at(dir: &Path, index: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            index,
            path: dir.join(layout::file_name(index)).into(),
            offset: 0,
            line: 0,
            torn: 0,
            in_long_line: false,
        }
    }

    /// Calls `sink` for every line completed since the last poll. Line errors go to `sink` too;
    /// I/O errors end the poll.
    pub fn poll(
        &mut self,
        sink: &mut dyn FnMut(Result<Entry, ReaderError>),
    ) -> Result<(), ReaderError> {
        loop {
            self.read_new(sink)?;
            let next = self.dir.join(layout::file_name(self.index + 1));
            if !next.exists() {
                return Ok(());
            }
            // The writer finishes a file before creating the next: read what is left once more.
            self.read_new(sink)?;
            if self.torn > 0 {
                sink(Err(ReaderError::TornTail {
                    path: self.path.to_path_buf(),
                    line: self.line + 1,
                    bytes: self.torn,
                }));
            }
            *self = Self::at(&self.dir, self.index + 1);
        }
    }

    fn read_new(
        &mut self,
        sink: &mut dyn FnMut(Result<Entry, ReaderError>),
    ) -> Result<(), ReaderError> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            // Not created yet (empty log directory): nothing to read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(FileError::open(&self.path)(source).into()),
        };
        let read_err = FileError::read(&self.path);
        let len = file.metadata().map_err(read_err)?.len();
        if len < self.offset + self.torn {
            // Truncated under us (verify --repair removed a torn tail): resume at the new end.
            tracing::warn!(path = %self.path.display(), "log file shrank; following from its new end");
            self.offset = len;
            self.torn = 0;
            self.in_long_line = false;
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(read_err)?;
        let start = self.offset;
        let mut lines = LineScanner::from_file(file);
        if self.in_long_line {
            self.in_long_line = !lines.skip_rest().map_err(read_err)?;
            self.offset = start + lines.consumed();
        }
        // Stop inside an over-long line: what follows in the file is the rest of it.
        while !self.in_long_line {
            self.torn = 0;
            match lines.next_line().map_err(read_err)? {
                None => return Ok(()),
                Some(Line::Torn(bytes)) => {
                    self.torn = bytes;
                    return Ok(());
                }
                Some(Line::Complete(bytes)) => {
                    self.line += 1;
                    sink(parse_entry(&self.path, self.line, bytes));
                }
                Some(Line::TooLong) => {
                    self.line += 1;
                    sink(Err(too_long(&self.path, self.line)));
                    self.in_long_line = !lines.skip_rest().map_err(read_err)?;
                }
            }
            self.offset = start + lines.consumed();
        }
        Ok(())
    }
}
