//! Appends records to a log directory: batching, fsync policy, rotation, checkpoints, and
//! resuming an existing log after a restart or crash.
//!
//! `output` is the buffered file output that knows which records reached the file, `resume`
//! finds where an existing log continues, `options` is how a writer is configured.
mod budget;
mod budget_setting;
mod error;
mod options;
mod outage;
mod output;
mod resume;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use budget::{FILES_PER_BUDGET, KEPT_KINDS};
pub use budget_setting::{
    Backing, ByteBudget, MIN_BUDGET_BYTES, default_budget, ram_reserve, resolve as resolve_budget,
};
pub use error::WriterError;
pub use options::{FsyncPolicy, LogOptions};
pub use outage::{LogIncomplete, RETRY_EVERY};
pub use output::{BUFFER_BYTES, Unwritten};
use output::{Complete, Output};

use super::layout::{self, DirLock, FileError, LayoutError, LogFile};
use super::record::{
    self, Checkpoint, Digest, LineHead, Lost, Payload, RecordError, Rotate, Throttle, kinds,
};
use super::time;

/// Where the kernel gives the boot id every record carries.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// What went wrong while writing, counted (one write error per outage: the writer retries
/// quietly until it writes again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    /// Failed write(2) or fdatasync calls that began an outage.
    pub write_errors: u64,
    /// Records accepted (or being written) that never reached the file, plus every record
    /// refused during an outage (their seqs are the gaps' ranges).
    pub records_not_written: u64,
    /// Events not written because the log's byte budget was exhausted (not write errors: the
    /// writer goes on).
    pub records_over_budget: u64,
}

/// Where the next record goes, as of the last record written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The seq the next record gets.
    pub next_seq: u64,
    /// Lowercase hex SHA-256 of the last line: the next record's `prev`.
    pub prev: String,
    /// The file the next record goes to (unless it rotates).
    pub file: PathBuf,
    /// Records removed under the byte budget, and events not written because it was
    /// exhausted ([`LogWriter::budget_counts`]).
    pub budget_counts: (u64, u64),
}

/// The single writer of a log directory. Not thread-safe by design: the pipeline funnels
/// records through one task.
pub struct LogWriter {
    dir: PathBuf,
    _lock: DirLock,
    options: LogOptions,
    /// The boot id as a JSON string, as every record carries it.
    boot_id_json: Vec<u8>,
    /// Formats each record's `wall`, reusing the date within a second.
    wall: time::WallText,
    file: LogFile,
    out: Output,
    file_bytes: u64,
    file_records: u64,
    next_seq: u64,
    head: Digest,
    since_checkpoint: u64,
    /// CLOCK_MONOTONIC of the last record encoded: it also times the interval policy, so
    /// each record reads the clock once for both.
    last_mono_ns: u64,
    /// `last_mono_ns` at the last sync.
    last_sync_ns: u64,
    line: Vec<u8>,
    /// Set while writes fail: what is missing since, and when to try again.
    outage: Option<outage::Outage>,
    /// Since the first failure: the log is not whole.
    incomplete: Option<LogIncomplete>,
    stats: WriterStats,
    budget: Option<budget::Budget>,
    closed: bool,
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
        let resume = resume::resume_point(&dir, &files, options.repair_torn_tail)?;
        let created = !resume.file.path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&resume.file.path)
            .map_err(FileError::open(&resume.file.path))?;
        let complete = Complete {
            next_seq: resume.next_seq,
            end: resume.file_bytes,
            head: resume.head,
            records: resume.file_records,
        };
        let out = Output::new(file, options.test_split_writes, complete);
        let budget = budget_setting::resolve(options.budget, &dir)?
            .map(|bytes| budget::Budget::open(bytes, &files, &resume.file, options.acked.clone()))
            .transpose()?;
        let mut boot_id_json = Vec::new();
        record::push_json_str(&mut boot_id_json, &boot_id);
        let mut writer = Self {
            dir,
            _lock: lock,
            boot_id_json,
            wall: time::WallText::new(),
            file: resume.file,
            out,
            file_bytes: resume.file_bytes,
            file_records: resume.file_records,
            next_seq: resume.next_seq,
            head: resume.head,
            since_checkpoint: 0,
            last_mono_ns: 0,
            last_sync_ns: 0,
            line: Vec::with_capacity(1024),
            outage: None,
            incomplete: None,
            stats: WriterStats::default(),
            budget,
            closed: false,
            options,
        };
        if created {
            writer.sync_dir_unless_never()?;
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
        self.append_payload(kind, container, payload)
    }

    /// [`append`](Self::append) of a payload that may write its JSON itself (the event sink's,
    /// once per event).
    pub(crate) fn append_payload<P: Payload + ?Sized>(
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
            FsyncPolicy::Interval(every)
                if Duration::from_nanos(self.last_mono_ns.saturating_sub(self.last_sync_ns))
                    >= every =>
            {
                self.sync()?
            }
            // Between syncs, what was written goes on to the disk in the background, so the
            // next sync waits less (a failure to start it is a sync error: the log's data may
            // not reach the disk).
            FsyncPolicy::Interval(_) => {
                let started = self.out.start_writeback();
                started.map_err(|e| self.poison_sync(e))?;
            }
            FsyncPolicy::Never => {}
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

    /// Writes a `stop` record, flushes and (unless `never`) fsyncs. A writer in an outage
    /// tries once more first (its `gap`, then the `stop`).
    pub fn close(mut self) -> Result<(), WriterError> {
        if self.outage.is_some() {
            self.try_resume()?;
        }
        self.write_budget_summary()?;
        self.write_checkpoint(kinds::STOP)?;
        self.sync_unless_never()?;
        self.closed = true;
        Ok(())
    }

    /// Where the chain stands: the next seq and the last line's hash. Shipped off the machine,
    /// it exposes a log later cut short or rewritten.
    pub fn head(&self) -> Head {
        Head {
            next_seq: self.next_seq,
            prev: record::to_hex(&self.head),
            file: self.file.path.clone(),
            budget_counts: self.budget_counts(),
        }
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write errors and records that did not reach the file.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Whether the log cannot write now: appends are refused (and counted, their seqs kept
    /// for the `gap` record written when a retry succeeds).
    pub fn is_failed(&self) -> bool {
        self.outage.is_some()
    }

    /// Since the first write error: from which seq the log is incomplete, why, and whether it
    /// writes again. None while the log is whole.
    pub fn incomplete(&self) -> Option<&LogIncomplete> {
        self.incomplete.as_ref()
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
            && self.file_bytes >= layout::ROTATE_MIN_FILE_BYTES
            && self
                .rotate_limit()
                .is_some_and(|limit| self.file_bytes + line_len as u64 > limit)
    }

    fn write_record<P: Payload + ?Sized>(
        &mut self,
        kind: &str,
        container: Option<&str>,
        payload: &P,
        may_rotate: bool,
    ) -> Result<u64, WriterError> {
        if self.outage.is_some() && !self.retry_if_due() {
            return Err(self.miss(kind));
        }
        let mut line = std::mem::take(&mut self.line);
        let result = self.encode_and_write(&mut line, kind, container, payload, may_rotate);
        self.line = line;
        result
    }

    fn encode_and_write<P: Payload + ?Sized>(
        &mut self,
        line: &mut Vec<u8>,
        kind: &str,
        container: Option<&str>,
        payload: &P,
        may_rotate: bool,
    ) -> Result<u64, WriterError> {
        let mut digest = self.encode(line, kind, container, payload)?;
        if may_rotate && self.exceeds_rotate_bound(line.len()) {
            // A rotation that fails begins an outage: this record is its first missing one.
            self.rotate()
                .map_err(|e| self.missed_by_rotation(e, kind))?;
            digest = self.encode(line, kind, container, payload)?;
        }
        if self.admit(kind, line.len())? {
            digest = self.encode(line, kind, container, payload)?;
        }
        let seq = self.next_seq;
        if let Err(source) = self.out.write_line(seq, line, digest) {
            return Err(self.fail_write(source));
        }
        self.next_seq += 1;
        self.head = digest;
        self.file_bytes += line.len() as u64;
        self.file_records += 1;
        Ok(seq)
    }

    fn encode<P: Payload + ?Sized>(
        &mut self,
        line: &mut Vec<u8>,
        kind: &str,
        container: Option<&str>,
        payload: &P,
    ) -> Result<Digest, WriterError> {
        let wall_ns = time::realtime_ns()?;
        let mono_ns = time::monotonic_ns()?;
        self.last_mono_ns = mono_ns;
        let head = LineHead {
            seq: self.next_seq,
            boot_id_json: &self.boot_id_json,
            wall: self.wall.format(wall_ns),
            mono_ns,
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
            .map_err(|source| self.poison(FileError::open(&next.path)(source).into()))?;
        let rotate = Rotate {
            prev_file: self.file.name(),
            prev_records: self.file_records,
            prev_bytes: self.file_bytes,
        };
        let old = (self.file.index, self.file_bytes);
        // The old output was flushed and synced above: dropping it only closes the descriptor.
        let complete = Complete {
            next_seq: self.next_seq,
            end: 0,
            head: self.head,
            records: 0,
        };
        self.out = Output::new(file, self.options.test_split_writes, complete);
        tracing::debug!(from = %self.file.path.display(), to = %next.path.display(), "log rotated");
        self.file = next;
        self.file_bytes = 0;
        self.file_records = 0;
        self.sync_dir_unless_never()?;
        self.write_record(kinds::ROTATE, None, &rotate, false)?;
        self.drop_for_budget(old.0, old.1)
    }

    fn sync_unless_never(&mut self) -> Result<(), WriterError> {
        if self.options.fsync == FsyncPolicy::Never {
            self.flush_buffer()
        } else {
            self.sync()
        }
    }

    /// Makes the current file's directory entry durable, unless the policy is `never`.
    fn sync_dir_unless_never(&mut self) -> Result<(), WriterError> {
        if self.options.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        layout::sync_dir(&self.dir).map_err(|e| self.poison_sync(e))
    }

    fn flush_buffer(&mut self) -> Result<(), WriterError> {
        // Nothing is buffered during an outage: a flush is an occasion to retry.
        if self.outage.is_some() && !self.retry_if_due() {
            return Err(self.still_out());
        }
        self.out.flush().map_err(|source| self.fail_write(source))
    }

    fn sync(&mut self) -> Result<(), WriterError> {
        self.flush_buffer()?;
        self.out.sync_data().map_err(|e| self.poison_sync(e))?;
        self.last_sync_ns = self.last_mono_ns;
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.closed || self.outage.is_some() {
            return;
        }
        // Drop cannot return errors; close() is the way to see them. Still never swallow one.
        if let Err(error) = self.out.flush() {
            tracing::error!(path = %self.file.path.display(), %error, "forensic log flush on drop failed");
        }
    }
}
