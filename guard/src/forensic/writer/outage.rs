//! A log that cannot write (ENOSPC, EIO, a read-only remount) keeps its seqs: the records it
//! cannot write are counted by kind, the writer tries again at most every [`RETRY_EVERY`] (on
//! the next record or flush after it, never blocking the caller), and its first write that
//! succeeds is a `gap` record naming exactly the missing seqs, chained to the last line the
//! file holds (a torn partial line is cut off first).
use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::output::{Complete, Discarded, Output};
use super::{FsyncPolicy, LogWriter, WriterError, resume};
use crate::forensic::layout::{self, FileError, LogFile};
use crate::forensic::record::{Digest, Gap, kinds};
use crate::forensic::time;

/// How long a writer in an outage waits between attempts to write again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Where the log is not whole, for the health and every report: from which seq, why, and
/// whether it writes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogIncomplete {
    /// The first seq not in the log.
    pub first_missing_seq: u64,
    /// The last seq of the last `gap` written; None while the log still cannot write (the
    /// outage's end is not known yet).
    pub last_missing_seq: Option<u64>,
    /// Records counted but not written, in all outages so far.
    pub missing_records: u64,
    /// The error that began the first outage.
    pub reason: String,
    /// Whether the log writes again (its last outage ended with a `gap` record).
    pub resumed: bool,
    /// `gap` records written.
    pub gaps: u64,
}

impl fmt::Display for LogIncomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log incomplete from seq {}: {}; {} record(s) not written",
            self.first_missing_seq, self.reason, self.missing_records
        )?;
        match (self.resumed, self.last_missing_seq) {
            (true, Some(last)) => write!(
                f,
                ", {} gap record(s) (the last ends at seq {last}); writing again",
                self.gaps
            ),
            _ => write!(f, "; still not writing"),
        }
    }
}

/// An outage in progress.
pub(super) struct Outage {
    first_seq: u64,
    kinds: BTreeMap<String, u64>,
    error: String,
    since_wall: String,
    since_mono_ns: u64,
    retry_at_ns: u64,
    retries: u64,
}

impl Outage {
    fn count(&mut self, kind: &str) {
        match self.kinds.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.kinds.insert(kind.to_owned(), 1);
            }
        }
    }
}

fn now_mono_ns(fallback: u64) -> u64 {
    time::monotonic_ns().unwrap_or(fallback)
}

fn retry_after(now_ns: u64) -> u64 {
    now_ns.saturating_add(RETRY_EVERY.as_nanos() as u64)
}

impl LogWriter {
    /// A failed write: which accepted records did not reach the file, counted, and the
    /// writer in an outage until a retry succeeds.
    pub(super) fn fail_write(&mut self, source: std::io::Error) -> WriterError {
        let discarded = self.out.discard_pending();
        let unwritten = discarded.unwritten;
        self.stats.records_not_written += unwritten.map_or(0, |u| u.count());
        let error = WriterError::Write {
            path: self.file.path.clone(),
            source,
            unwritten,
        };
        self.begin_outage(&error, discarded);
        error
    }

    pub(super) fn poison_sync(&mut self, source: std::io::Error) -> WriterError {
        self.poison(WriterError::Sync {
            path: self.file.path.clone(),
            source,
        })
    }

    /// A failed sync or file creation: nothing buffered is lost, but the log is in an outage
    /// from the next seq on.
    pub(super) fn poison(&mut self, error: WriterError) -> WriterError {
        let discarded = self.out.discard_pending();
        self.stats.records_not_written += discarded.unwritten.map_or(0, |u| u.count());
        self.begin_outage(&error, discarded);
        error
    }

    /// During an outage, tries to write again now, whatever the backoff (a closing log's last
    /// chance); Ok when the log writes.
    pub fn retry(&mut self) -> Result<(), WriterError> {
        self.try_resume()
    }

    /// A write or sync failed (`error`): what was buffered is dropped (`discarded`, counted),
    /// the chain goes back to the last complete line, and the writer is in an outage.
    pub(super) fn begin_outage(&mut self, error: &WriterError, discarded: Discarded) {
        if let Some(unwritten) = discarded.unwritten {
            self.next_seq = self.next_seq.max(unwritten.last_seq + 1);
        }
        let complete = self.out.complete();
        self.head = complete.head;
        self.file_bytes = complete.end;
        self.file_records = complete.records;
        let now = now_mono_ns(self.last_mono_ns);
        if self.outage.is_none() {
            tracing::error!(
                %error,
                first_missing_seq = complete.next_seq,
                "the forensic log cannot write: records are counted, and it tries again every \
                 second"
            );
            self.stats.write_errors += 1;
            self.outage = Some(Outage {
                first_seq: complete.next_seq,
                kinds: BTreeMap::new(),
                error: error.to_string(),
                since_wall: time::realtime_ns()
                    .map(time::format_rfc3339_nanos)
                    .unwrap_or_default(),
                since_mono_ns: now,
                retry_at_ns: 0,
                retries: 0,
            });
        }
        let Some(outage) = &mut self.outage else {
            return;
        };
        outage.retry_at_ns = retry_after(now);
        for kind in &discarded.kinds {
            outage.count(kind);
        }
        let first_seq = outage.first_seq;
        let reason = outage.error.clone();
        match &mut self.incomplete {
            Some(incomplete) => {
                incomplete.resumed = false;
                incomplete.last_missing_seq = None;
            }
            None => {
                self.incomplete = Some(LogIncomplete {
                    first_missing_seq: first_seq,
                    last_missing_seq: None,
                    missing_records: 0,
                    reason,
                    resumed: false,
                    gaps: 0,
                });
            }
        }
    }

    /// A record refused during the outage: its seq is spent (it is in the gap's range) and
    /// its kind counted.
    pub(super) fn miss(&mut self, kind: &str) -> WriterError {
        self.next_seq += 1;
        self.stats.records_not_written += 1;
        if let Some(outage) = &mut self.outage {
            outage.count(kind);
        }
        self.still_out()
    }

    /// A rotation failed with `error`: the record that needed it was not written either.
    pub(super) fn missed_by_rotation(&mut self, error: WriterError, kind: &str) -> WriterError {
        if self.outage.is_some() {
            self.miss(kind);
        }
        error
    }

    /// What a call that cannot write during the outage returns.
    pub(super) fn still_out(&self) -> WriterError {
        let (first_seq, cause) = self
            .outage
            .as_ref()
            .map_or((self.next_seq, String::new()), |outage| {
                (outage.first_seq, outage.error.clone())
            });
        WriterError::Outage {
            path: self.file.path.clone(),
            first_seq,
            cause,
        }
    }

    /// Tries to write again if the last attempt is [`RETRY_EVERY`] old; true when the log
    /// writes (again).
    pub(super) fn retry_if_due(&mut self) -> bool {
        let Some(outage) = &self.outage else {
            return true;
        };
        if now_mono_ns(0) < outage.retry_at_ns {
            return false;
        }
        self.try_resume().is_ok()
    }

    /// Ends the outage now if the file takes writes again: cuts a torn line, writes the `gap`
    /// record (and syncs it unless the policy is `never`). On failure the outage goes on and
    /// the next attempt is in [`RETRY_EVERY`].
    pub(super) fn try_resume(&mut self) -> Result<(), WriterError> {
        if self.outage.is_none() {
            return Ok(());
        }
        let result = self.write_gap();
        let now = now_mono_ns(self.last_mono_ns);
        match (&result, &mut self.outage) {
            (Err(error), Some(outage)) => {
                outage.retries += 1;
                outage.retry_at_ns = retry_after(now);
                tracing::debug!(%error, retries = outage.retries, "the forensic log still cannot write");
            }
            (Ok(()), _) => self.outage = None,
            (Err(_), None) => {}
        }
        result
    }

    fn write_gap(&mut self) -> Result<(), WriterError> {
        if self.out.complete().records == 0 && self.file.index > 0 {
            self.back_to_previous_file()?;
        }
        let truncated = self.out.truncate_to_complete();
        truncated.map_err(|source| WriterError::Truncate {
            path: self.file.path.clone(),
            source,
        })?;
        let Some(outage) = &self.outage else {
            return Ok(());
        };
        let seq = self.next_seq;
        if seq == outage.first_seq {
            // Nothing went missing (a sync failed, or a file could not be created, and no
            // record came since): no gap to name.
            tracing::warn!("the forensic log writes again; no record was lost");
            if self.incomplete.as_ref().is_some_and(|i| i.gaps == 0) {
                self.incomplete = None;
            } else if let Some(incomplete) = &mut self.incomplete {
                incomplete.resumed = true;
            }
            return Ok(());
        }
        let gap = Gap {
            first_seq: outage.first_seq,
            last_seq: seq - 1,
            kinds: outage.kinds.clone(),
            error: outage.error.clone(),
            since_wall: outage.since_wall.clone(),
            since_mono_ns: outage.since_mono_ns,
            retries: outage.retries,
        };
        let mut line = std::mem::take(&mut self.line);
        let written = self.write_gap_line(&mut line, &gap);
        self.line = line;
        let (digest, len) = match written {
            Ok(done) => done,
            Err(error) => {
                // The attempt's own bytes are cut off again; its seq is not spent.
                self.out.discard_pending();
                let _ = self.out.truncate_to_complete();
                return Err(error);
            }
        };
        self.next_seq = seq + 1;
        self.head = digest;
        self.file_bytes += len;
        self.file_records += 1;
        tracing::warn!(
            first_seq = gap.first_seq,
            last_seq = gap.last_seq,
            "the forensic log writes again; a gap record names the seqs it could not write"
        );
        if let Some(incomplete) = &mut self.incomplete {
            incomplete.resumed = true;
            incomplete.last_missing_seq = Some(gap.last_seq);
            incomplete.missing_records += gap.count();
            incomplete.gaps += 1;
        }
        Ok(())
    }

    fn write_gap_line(
        &mut self,
        line: &mut Vec<u8>,
        gap: &Gap,
    ) -> Result<(Digest, u64), WriterError> {
        let digest = self.encode(line, kinds::GAP, None, gap)?;
        let seq = self.next_seq;
        let io = |source| WriterError::Write {
            path: self.file.path.clone(),
            source,
            unwritten: None,
        };
        self.out.write_line(seq, line, digest).map_err(io)?;
        self.out.flush().map_err(io)?;
        if self.options.fsync != FsyncPolicy::Never {
            self.out.sync_data().map_err(|source| WriterError::Sync {
                path: self.file.path.clone(),
                source,
            })?;
        }
        Ok((digest, line.len() as u64))
    }

    /// The file the outage began in is empty (its `rotate` record was not written): remove
    /// it and go on in the previous one, whose records were complete and synced before the
    /// rotation, so that the `gap` follows the line it chains to.
    fn back_to_previous_file(&mut self) -> Result<(), WriterError> {
        let index = self.file.index - 1;
        let previous = LogFile {
            index,
            path: self.dir.join(layout::file_name(index)),
        };
        let scan = resume::scan_file(&previous.path)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&previous.path)
            .map_err(FileError::open(&previous.path))?;
        std::fs::remove_file(&self.file.path).map_err(|source| WriterError::Truncate {
            path: self.file.path.clone(),
            source,
        })?;
        let complete = Complete {
            end: scan.complete_bytes,
            records: scan.records,
            ..self.out.complete()
        };
        self.out = Output::new(file, self.options.test_split_writes, complete);
        self.file = previous;
        self.file_bytes = complete.end;
        self.file_records = complete.records;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
