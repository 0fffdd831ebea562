//! Appends records to a log directory: batching, fsync policy, rotation, checkpoints, and
//! resuming an existing log after a restart or crash.
use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use super::layout::{self, DirLock, LayoutError, LogFile};
use super::record::{
    self, Checkpoint, Digest, GENESIS_DIGEST, LineHead, Lost, MAX_LINE_BYTES, RecordError, Repair,
    Rotate, Throttle, kinds,
};
use super::time::{self, TimeError};

pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// The write buffer of the current log file (part of the agent's memory budget).
pub const BUFFER_BYTES: usize = 64 << 10;

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

/// Records that were accepted but did not reach the file when a write failed. The first of
/// them may have reached it in part: that is the torn tail `guard log verify` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwritten {
    pub first_seq: u64,
    pub last_seq: u64,
}

impl Unwritten {
    pub fn count(&self) -> u64 {
        self.last_seq - self.first_seq + 1
    }
}

impl fmt::Display for Unwritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first_seq == self.last_seq {
            write!(f, "record seq {} is not in the log", self.first_seq)
        } else {
            write!(
                f,
                "records seq {}..={} ({}) are not in the log",
                self.first_seq,
                self.last_seq,
                self.count()
            )
        }
    }
}

/// What went wrong while writing, counted (the writer stops at its first write error, so
/// `write_errors` is 0 or 1 per writer; callers sum over sessions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    /// Failed write(2) or fdatasync calls.
    pub write_errors: u64,
    /// Records accepted (or being written) that never reached the file, plus every record
    /// refused after the failure.
    pub records_not_written: u64,
}

/// When appended records are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Write and fdatasync every record before `append` returns.
    Always,
    /// Write and fdatasync on the first append after the interval has passed, and on `flush`.
    Interval(Duration),
    /// Write when the buffer fills and on `flush`; leave syncing to the kernel.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = WriterError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = || WriterError::BadFsyncPolicy {
            input: input.to_owned(),
        };
        match input {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let ms = input.strip_prefix("interval=").ok_or_else(bad)?;
                let ms: u64 = ms.parse().map_err(|_| bad())?;
                Ok(Self::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogOptions {
    pub fsync: FsyncPolicy,
    /// Start a new file before a record would take the current one past this size.
    pub rotate_bytes: Option<u64>,
    /// Write a `checkpoint` after this many records (0: never).
    pub checkpoint_every: u64,
    /// None: read from /proc/sys/kernel/random/boot_id.
    pub boot_id: Option<String>,
    /// On reopen, truncate a torn final line (and record that in-band) instead of refusing.
    pub repair_torn_tail: bool,
    /// For crash tests only: split every write(2) into chunks of at most this many bytes, each
    /// fdatasync'ed, as a disk that persists part of a line before power loss would. A kill
    /// then often lands mid-line and leaves a torn tail. None in production.
    pub test_split_writes: Option<NonZeroUsize>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            rotate_bytes: Some(64 << 20),
            checkpoint_every: 10_000,
            boot_id: None,
            repair_torn_tail: false,
            test_split_writes: None,
        }
    }
}

/// Where the next record goes, as of the last record written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub next_seq: u64,
    /// Lowercase hex SHA-256 of the last line: the next record's `prev`.
    pub prev: String,
    pub file: PathBuf,
}

/// The single writer of a log directory. Not thread-safe by design: the pipeline funnels
/// records through one task.
pub struct LogWriter {
    dir: PathBuf,
    _lock: DirLock,
    options: LogOptions,
    boot_id: String,
    file: LogFile,
    out: Output,
    file_bytes: u64,
    file_records: u64,
    next_seq: u64,
    head: Digest,
    since_checkpoint: u64,
    last_sync: Instant,
    line: Vec<u8>,
    failed: Option<String>,
    stats: WriterStats,
    closed: bool,
}

/// Resume state found in an existing log.
struct Resume {
    file: LogFile,
    file_bytes: u64,
    file_records: u64,
    next_seq: u64,
    head: Digest,
    /// The file is empty and continues an earlier one: it must start with this rotate record.
    rotate: Option<Rotate>,
    repaired: Option<Repair>,
}

impl LogWriter {
    /// Opens (or creates) the log in `dir` and writes a `start` record with `start` as payload.
    /// An existing log is continued: same chain, next seq.
    pub fn create<S: Serialize + ?Sized>(
        dir: impl AsRef<Path>,
        options: LogOptions,
        start: &S,
    ) -> Result<Self, WriterError> {
        let dir = dir.as_ref().to_owned();
        if dir.exists() && !dir.is_dir() {
            return Err(LayoutError::NotADirectory { path: dir }.into());
        }
        std::fs::create_dir_all(&dir).map_err(|source| WriterError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let lock = layout::lock_dir(&dir)?;
        let boot_id = match &options.boot_id {
            Some(id) => id.clone(),
            None => std::fs::read_to_string(BOOT_ID_PATH)
                .map(|s| s.trim().to_owned())
                .map_err(|source| WriterError::BootId {
                    path: BOOT_ID_PATH.into(),
                    source,
                })?,
        };
        let files = layout::list_files(&dir)?;
        let resume = resume_point(&dir, &files, options.repair_torn_tail)?;
        let created = !resume.file.path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&resume.file.path)
            .map_err(|source| WriterError::Open {
                path: resume.file.path.clone(),
                source,
            })?;
        let out = Output::new(
            ChunkedFile {
                file,
                split: options.test_split_writes,
            },
            resume.file_bytes,
        );
        let mut writer = Self {
            dir,
            _lock: lock,
            boot_id,
            file: resume.file,
            out,
            file_bytes: resume.file_bytes,
            file_records: resume.file_records,
            next_seq: resume.next_seq,
            head: resume.head,
            since_checkpoint: 0,
            last_sync: Instant::now(),
            line: Vec::with_capacity(1024),
            failed: None,
            stats: WriterStats::default(),
            closed: false,
            options,
        };
        if created && writer.options.fsync != FsyncPolicy::Never {
            let dir = writer.dir.clone();
            layout::sync_dir(&dir).map_err(|e| writer.poison_sync(e))?;
        }
        if let Some(rotate) = &resume.rotate {
            writer.write_record(kinds::ROTATE, None, rotate, false)?;
        }
        writer.write_record(kinds::START, None, start, true)?;
        if let Some(repair) = &resume.repaired {
            writer.write_record(kinds::REPAIR, None, repair, true)?;
        }
        tracing::info!(
            dir = %writer.dir.display(),
            file = %writer.file.path.display(),
            seq = writer.next_seq - 1,
            "forensic log opened"
        );
        writer.sync_unless_never()?;
        Ok(writer)
    }

    /// Appends one event record and returns its seq. With `FsyncPolicy::Always` the record is
    /// on stable storage when this returns.
    pub fn append<P: Serialize + ?Sized>(
        &mut self,
        kind: &str,
        container: Option<&str>,
        payload: &P,
    ) -> Result<u64, WriterError> {
        if kinds::RESERVED.contains(&kind) {
            return Err(WriterError::ReservedKind {
                kind: kind.to_owned(),
            });
        }
        if !record::is_valid_kind(kind) {
            return Err(RecordError::BadKind {
                kind: kind.to_owned(),
            }
            .into());
        }
        if container == Some("") {
            return Err(WriterError::EmptyContainer);
        }
        let seq = self.write_record(kind, container, payload, true)?;
        self.since_checkpoint += 1;
        if self.options.checkpoint_every > 0
            && self.since_checkpoint >= self.options.checkpoint_every
        {
            self.write_checkpoint(kinds::CHECKPOINT)?;
        }
        match self.options.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync()?,
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {}
        }
        Ok(seq)
    }

    /// Records events that were dropped before reaching the log.
    pub fn append_lost(
        &mut self,
        container: Option<&str>,
        lost: &Lost,
    ) -> Result<u64, WriterError> {
        self.append(kinds::LOST, container, lost)
    }

    /// Records events suppressed by throttling.
    pub fn append_throttle(
        &mut self,
        container: Option<&str>,
        throttle: &Throttle,
    ) -> Result<u64, WriterError> {
        self.append(kinds::THROTTLE, container, throttle)
    }

    /// Writes an explicit checkpoint now.
    pub fn checkpoint(&mut self) -> Result<u64, WriterError> {
        self.write_checkpoint(kinds::CHECKPOINT)
    }

    /// Hands buffered records to the kernel, and fsyncs unless the policy is `never`.
    pub fn flush(&mut self) -> Result<(), WriterError> {
        self.sync_unless_never()
    }

    /// Writes a `stop` record, flushes and (unless `never`) fsyncs.
    pub fn close(mut self) -> Result<(), WriterError> {
        self.write_checkpoint(kinds::STOP)?;
        self.sync_unless_never()?;
        self.closed = true;
        Ok(())
    }

    pub fn head(&self) -> Head {
        Head {
            next_seq: self.next_seq,
            prev: record::to_hex(&self.head),
            file: self.file.path.clone(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write errors and records that did not reach the file.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Whether a write or sync failed: every later append is refused (and counted).
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Checkpoint and stop payloads describe the chain right before them, so any rotation must
    /// happen before the payload is built, not in the middle of writing it.
    fn write_checkpoint(&mut self, kind: &str) -> Result<u64, WriterError> {
        let payload = |w: &Self| Checkpoint {
            count: w.next_seq,
            head: record::to_hex(&w.head),
        };
        let mut line = std::mem::take(&mut self.line);
        let encoded = self.encode(&mut line, kind, None, &payload(self));
        self.line = line;
        encoded?;
        if self.exceeds_rotate_bound(self.line.len()) {
            self.rotate()?;
        }
        self.since_checkpoint = 0;
        self.write_record(kind, None, &payload(self), false)
    }

    fn exceeds_rotate_bound(&self, line_len: usize) -> bool {
        self.file_records > 0
            && self
                .options
                .rotate_bytes
                .is_some_and(|limit| self.file_bytes + line_len as u64 > limit)
    }

    fn write_record<P: Serialize + ?Sized>(
        &mut self,
        kind: &str,
        container: Option<&str>,
        payload: &P,
        may_rotate: bool,
    ) -> Result<u64, WriterError> {
        if let Some(cause) = &self.failed {
            self.stats.records_not_written += 1;
            return Err(WriterError::Poisoned {
                path: self.file.path.clone(),
                cause: cause.clone(),
            });
        }
        let mut line = std::mem::take(&mut self.line);
        let result = self.encode_and_write(&mut line, kind, container, payload, may_rotate);
        self.line = line;
        result
    }

    fn encode_and_write<P: Serialize + ?Sized>(
        &mut self,
        line: &mut Vec<u8>,
        kind: &str,
        container: Option<&str>,
        payload: &P,
        may_rotate: bool,
    ) -> Result<u64, WriterError> {
        let mut digest = self.encode(line, kind, container, payload)?;
        if may_rotate && self.exceeds_rotate_bound(line.len()) {
            self.rotate()?;
            digest = self.encode(line, kind, container, payload)?;
        }
        let seq = self.next_seq;
        let end = self.file_bytes + line.len() as u64;
        if let Err(source) = self.out.write_line(seq, end, line) {
            return Err(self.fail_write(source));
        }
        self.next_seq += 1;
        self.head = digest;
        self.file_bytes += line.len() as u64;
        self.file_records += 1;
        Ok(seq)
    }

    fn encode<P: Serialize + ?Sized>(
        &self,
        line: &mut Vec<u8>,
        kind: &str,
        container: Option<&str>,
        payload: &P,
    ) -> Result<Digest, WriterError> {
        let wall = time::format_rfc3339_nanos(time::realtime_ns()?);
        let head = LineHead {
            seq: self.next_seq,
            boot_id: &self.boot_id,
            wall: &wall,
            mono_ns: time::monotonic_ns()?,
            kind,
            container,
            prev: &self.head,
        };
        Ok(record::encode_line(line, &head, payload)?)
    }

    /// Finishes the current file (durably, unless `never`) and continues in the next one.
    fn rotate(&mut self) -> Result<(), WriterError> {
        self.sync_unless_never()?;
        let next = LogFile {
            index: self.file.index + 1,
            path: self.dir.join(layout::file_name(self.file.index + 1)),
        };
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&next.path)
            .map_err(|source| {
                self.poison(WriterError::Open {
                    path: next.path.clone(),
                    source,
                })
            })?;
        let rotate = Rotate {
            prev_file: self.file.name(),
            prev_records: self.file_records,
            prev_bytes: self.file_bytes,
        };
        let old = std::mem::replace(
            &mut self.out,
            Output::new(
                ChunkedFile {
                    file,
                    split: self.options.test_split_writes,
                },
                0,
            ),
        );
        // Already flushed and synced above; dropping only closes the descriptor.
        drop(old);
        tracing::debug!(from = %self.file.path.display(), to = %next.path.display(), "log rotated");
        self.file = next;
        self.file_bytes = 0;
        self.file_records = 0;
        if self.options.fsync != FsyncPolicy::Never {
            let dir = self.dir.clone();
            layout::sync_dir(&dir).map_err(|e| self.poison_sync(e))?;
        }
        self.write_record(kinds::ROTATE, None, &rotate, false)?;
        Ok(())
    }

    fn sync_unless_never(&mut self) -> Result<(), WriterError> {
        if self.options.fsync == FsyncPolicy::Never {
            self.flush_buffer()
        } else {
            self.sync()
        }
    }

    fn flush_buffer(&mut self) -> Result<(), WriterError> {
        if let Some(cause) = &self.failed {
            return Err(WriterError::Poisoned {
                path: self.file.path.clone(),
                cause: cause.clone(),
            });
        }
        self.out.flush().map_err(|source| self.fail_write(source))
    }

    fn sync(&mut self) -> Result<(), WriterError> {
        self.flush_buffer()?;
        self.out
            .file
            .file
            .sync_data()
            .map_err(|e| self.poison_sync(e))?;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// A failed write: which accepted records did not reach the file, counted, and the
    /// writer stopped.
    fn fail_write(&mut self, source: std::io::Error) -> WriterError {
        let unwritten = self.out.discard_pending();
        self.stats.records_not_written += unwritten.map_or(0, |u| u.count());
        self.poison(WriterError::Write {
            path: self.file.path.clone(),
            source,
            unwritten,
        })
    }

    fn poison_sync(&mut self, source: std::io::Error) -> WriterError {
        self.poison(WriterError::Sync {
            path: self.file.path.clone(),
            source,
        })
    }

    /// After a failed write the file may end in a partial line: refuse further appends so the
    /// damage stays a torn tail that verify reports, instead of garbage mid-log.
    fn poison(&mut self, error: WriterError) -> WriterError {
        tracing::error!(%error, "forensic log write failed");
        self.stats.write_errors += 1;
        self.failed = Some(error.to_string());
        error
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.closed || self.failed.is_some() {
            return;
        }
        // Drop cannot return errors; close() is the way to see them. Still never swallow one.
        if let Err(error) = self.out.flush() {
            tracing::error!(path = %self.file.path.display(), %error, "forensic log flush on drop failed");
        }
    }
}

/// The current file and the bytes not yet handed to it. Our own buffer rather than a
/// `BufWriter`: after a failed write we must know exactly which records reached the file, and a
/// `BufWriter` would try its buffer again when dropped, writing after the failure.
struct Output {
    file: ChunkedFile,
    buf: Vec<u8>,
    /// (seq, end offset in the file) of each record not yet completely handed to the kernel.
    pending: VecDeque<(u64, u64)>,
    /// Bytes of the file handed to the kernel.
    written: u64,
}

impl Output {
    fn new(file: ChunkedFile, written: u64) -> Self {
        Self {
            file,
            buf: Vec::with_capacity(BUFFER_BYTES),
            pending: VecDeque::new(),
            written,
        }
    }

    /// Queues one complete line (record `seq`, ending at file offset `end`).
    fn write_line(&mut self, seq: u64, end: u64, line: &[u8]) -> std::io::Result<()> {
        self.pending.push_back((seq, end));
        if self.buf.len() + line.len() > BUFFER_BYTES {
            self.flush()?;
        }
        if line.len() >= BUFFER_BYTES {
            self.write_through(line)
        } else {
            self.buf.extend_from_slice(line);
            Ok(())
        }
    }

    /// Hands the buffer to the kernel.
    fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_through(&buf);
        self.buf = buf;
        self.buf.clear();
        result
    }

    fn write_through(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    self.written += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while self
            .pending
            .front()
            .is_some_and(|&(_, end)| end <= self.written)
        {
            self.pending.pop_front();
        }
        Ok(())
    }

    /// After a failed write: the records that did not (completely) reach the file. Nothing
    /// buffered is written afterwards.
    fn discard_pending(&mut self) -> Option<Unwritten> {
        let written = self.written;
        let unwritten = self
            .pending
            .iter()
            .find(|&&(_, end)| end > written)
            .zip(self.pending.back())
            .map(|(&(first_seq, _), &(last_seq, _))| Unwritten {
                first_seq,
                last_seq,
            });
        self.pending.clear();
        self.buf.clear();
        unwritten
    }
}

/// The log file, with optional torn-write simulation (see `LogOptions::test_split_writes`).
struct ChunkedFile {
    file: File,
    split: Option<NonZeroUsize>,
}

impl Write for ChunkedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(split) = self.split else {
            return self.file.write(buf);
        };
        let written = self.file.write(&buf[..buf.len().min(split.get())])?;
        self.file.sync_data()?;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Scan of one file: complete lines, the last of them, and any torn tail.
struct FileScan {
    complete_bytes: u64,
    records: u64,
    last_line: Option<Vec<u8>>,
    torn_bytes: u64,
}

fn scan_file(path: &Path) -> Result<FileScan, WriterError> {
    let read_err = |source| WriterError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut scan = FileScan {
        complete_bytes: 0,
        records: 0,
        last_line: None,
        torn_bytes: 0,
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(read_err)?;
        if n == 0 {
            return Ok(scan);
        }
        if buf.last() != Some(&b'\n') {
            if n > MAX_LINE_BYTES {
                return Err(WriterError::Corrupt {
                    path: path.to_owned(),
                    line: scan.records + 1,
                    reason: format!("line longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            scan.torn_bytes = n as u64;
            return Ok(scan);
        }
        scan.complete_bytes += n as u64;
        scan.records += 1;
        buf.pop();
        // Keep the previous allocation for the next line.
        let last = scan.last_line.get_or_insert_with(Vec::new);
        std::mem::swap(last, &mut buf);
    }
}

/// The seq that follows a file's last complete line, and that line's hash.
fn last_record(path: &Path, scan: &FileScan) -> Result<(u64, Digest), WriterError> {
    #[derive(serde::Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let line = scan.last_line.as_deref().unwrap_or_default();
    let corrupt = |reason| WriterError::Corrupt {
        path: path.to_owned(),
        line: scan.records,
        reason,
    };
    let seq = serde_json::from_slice::<SeqOnly>(line)
        .map_err(|e| corrupt(format!("last record is not readable: {e}")))?
        .seq;
    // Only a damaged log gets there (seq counts records), but it must not wrap to 0.
    let next_seq = seq
        .checked_add(1)
        .ok_or_else(|| corrupt(format!("last record has seq {seq}, no seq can follow it")))?;
    Ok((next_seq, record::sha256(line)))
}

fn resume_point(dir: &Path, files: &[LogFile], repair: bool) -> Result<Resume, WriterError> {
    let Some(last) = files.last() else {
        return Ok(Resume {
            file: LogFile {
                index: 0,
                path: dir.join(layout::file_name(0)),
            },
            file_bytes: 0,
            file_records: 0,
            next_seq: 0,
            head: GENESIS_DIGEST,
            rotate: None,
            repaired: None,
        });
    };
    let mut scan = scan_file(&last.path)?;
    let mut repaired = None;
    if scan.torn_bytes > 0 {
        if !repair {
            return Err(WriterError::TornTail {
                path: last.path.clone(),
                line: scan.records + 1,
                bytes: scan.torn_bytes,
            });
        }
        truncate(&last.path, scan.complete_bytes)?;
        tracing::warn!(
            path = %last.path.display(),
            line = scan.records + 1,
            bytes = scan.torn_bytes,
            "removed a torn final line before resuming the log"
        );
        repaired = Some(Repair {
            file: last.name(),
            line: scan.records + 1,
            removed_bytes: scan.torn_bytes,
        });
        scan.torn_bytes = 0;
    }
    if scan.records > 0 {
        let (next_seq, head) = last_record(&last.path, &scan)?;
        return Ok(Resume {
            file: last.clone(),
            file_bytes: scan.complete_bytes,
            file_records: scan.records,
            next_seq,
            head,
            rotate: None,
            repaired,
        });
    }
    if last.index == 0 {
        // Nothing complete was ever written: start the chain afresh in this file.
        return Ok(Resume {
            file: last.clone(),
            file_bytes: 0,
            file_records: 0,
            next_seq: 0,
            head: GENESIS_DIGEST,
            rotate: None,
            repaired,
        });
    }
    // An empty newest file (a crash right after rotation): continue the previous file's chain.
    let previous = files
        .iter()
        .find(|f| f.index == last.index - 1)
        .ok_or_else(|| WriterError::Corrupt {
            path: last.path.clone(),
            line: 0,
            reason: format!("{} is missing", layout::file_name(last.index - 1)),
        })?;
    let prev_scan = scan_file(&previous.path)?;
    if prev_scan.torn_bytes > 0 || prev_scan.records == 0 {
        return Err(WriterError::Corrupt {
            path: previous.path.clone(),
            line: prev_scan.records + 1,
            reason: "a rotated file must end with a complete record".to_owned(),
        });
    }
    let (next_seq, head) = last_record(&previous.path, &prev_scan)?;
    Ok(Resume {
        file: last.clone(),
        file_bytes: 0,
        file_records: 0,
        next_seq,
        head,
        rotate: Some(Rotate {
            prev_file: previous.name(),
            prev_records: prev_scan.records,
            prev_bytes: prev_scan.complete_bytes,
        }),
        repaired,
    })
}

pub(crate) fn truncate(path: &Path, len: u64) -> Result<(), WriterError> {
    let err = |source| WriterError::Truncate {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(err)?;
    file.set_len(len).map_err(err)?;
    file.sync_all().map_err(err)
}
