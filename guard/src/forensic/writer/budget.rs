//! The log directory's byte budget, enforced by the writer (docs/LOG-FORMAT.md, "The byte
//! budget"). Files are a fraction of the budget, so dropping one frees a known share. When a
//! rotation would leave too little room, the oldest files after the head are removed, oldest
//! first (so the host's acknowledged ones go first), and a `dropped` record names them in-band.
//! The head (`guard-000000.jsonl`: the start record, the limits applied) and the current file
//! are never removed. If even that cannot hold the log, individual events stop (a
//! `budget_exhausted` record says so) while reports, verdicts and the log's own records go on
//! out of a reserve; nothing is ever written past the budget.
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{LogWriter, WriterError, resume};
use crate::forensic::layout::{self, FileError, LogFile};
use crate::forensic::lines::{Line, LineScanner};
use crate::forensic::record::{BudgetExhausted, BudgetSummary, Dropped, kinds};

/// Files are at most this share of the budget: dropping one frees about 1/8 of it.
pub const FILES_PER_BUDGET: u64 = 8;
/// The share of the budget kept for reports, verdicts and the log's own records once events
/// stop: 1/8, at least [`RESERVE_MIN`].
pub const RESERVE_SHARE: u64 = 8;
/// The smallest reserve.
pub const RESERVE_MIN: u64 = 8 << 10;
/// Records written out of the reserve: besides the log's own kinds, the agent's evidence that
/// must survive a storm (docs/LOG-FORMAT.md).
pub const KEPT_KINDS: &[&str] = &[
    "report",
    "verdict",
    "limits_applied",
    "removed",
    "budget_applied",
];

/// A writer's budget and what it has cost so far.
pub(super) struct Budget {
    bytes: u64,
    /// Bytes of the log's files other than the current one, by index.
    closed: Vec<(u64, u64)>,
    /// The span removed so far (cumulative), once anything was.
    dropped: Option<Dropped>,
    /// The host holds every record below this seq (the stream's ack), if a stream reports it.
    acked: Option<Arc<AtomicU64>>,
    /// The ack the last attempt to make room at a refusal saw.
    tried_acked: u64,
    exhausted: bool,
    events_refused: u64,
}

impl Budget {
    /// The budget of a log whose files are `files`, continuing in `current`.
    pub(super) fn open(
        bytes: u64,
        files: &[LogFile],
        current: &LogFile,
        acked: Option<Arc<AtomicU64>>,
    ) -> Result<Self, WriterError> {
        let mut closed = Vec::new();
        for file in files.iter().filter(|file| file.index != current.index) {
            let meta = std::fs::metadata(&file.path).map_err(FileError::read(&file.path))?;
            closed.push((file.index, meta.len()));
        }
        let dropped = earlier_drop(files, bytes)?;
        Ok(Self {
            bytes,
            closed,
            dropped,
            acked,
            tried_acked: 0,
            exhausted: false,
            events_refused: 0,
        })
    }

    /// The largest a file may grow before rotating.
    pub(super) fn file_bytes(&self) -> u64 {
        (self.bytes / FILES_PER_BUDGET).max(layout::ROTATE_MIN_FILE_BYTES)
    }

    fn reserve(&self) -> u64 {
        (self.bytes / RESERVE_SHARE).max(RESERVE_MIN)
    }

    fn closed_bytes(&self) -> u64 {
        self.closed.iter().map(|(_, bytes)| bytes).sum()
    }
}

/// Whether a record of `kind` may be written out of the reserve.
fn is_kept(kind: &str) -> bool {
    kinds::RESERVED.contains(&kind) || KEPT_KINDS.contains(&kind)
}

impl LogWriter {
    /// The byte budget in force (None: unbounded).
    pub fn budget_bytes(&self) -> Option<u64> {
        self.budget.as_ref().map(|budget| budget.bytes)
    }

    /// The rotation bound: the configured one, within the budget's file size.
    pub(super) fn rotate_limit(&self) -> Option<u64> {
        match (&self.budget, self.options.rotate_bytes) {
            (Some(budget), Some(limit)) => Some(limit.min(budget.file_bytes())),
            (_, limit) => limit,
        }
    }

    /// Whether a line of `len` bytes of `kind` fits the budget; a refused event is counted,
    /// and the first one of a stretch says in-band that events stop. True: room was made by
    /// writing a `dropped` record first, so the line must be encoded again (its seq and prev).
    pub(super) fn admit(&mut self, kind: &str, len: usize) -> Result<bool, WriterError> {
        let Some(budget) = &mut self.budget else {
            return Ok(false);
        };
        let kept = is_kept(kind);
        let reserve = if kept { 0 } else { budget.reserve() };
        let mut total = budget.closed_bytes() + self.file_bytes + len as u64;
        if total + reserve <= budget.bytes {
            return Ok(false);
        }
        // The host may have acknowledged more since the last rotation: room to make now.
        let acked = budget
            .acked
            .as_ref()
            .map(|acked| acked.load(Ordering::Relaxed));
        if acked.is_some_and(|acked| acked > budget.tried_acked) {
            budget.tried_acked = acked.unwrap_or(0);
            // A few bytes more: the line, encoded again, may carry a longer seq.
            self.make_room(len as u64 + reserve + 64)?;
            total = self.budget_total() + len as u64;
        }
        let budget = self.budget.as_mut().expect("checked above");
        if total + reserve + 64 <= budget.bytes {
            budget.exhausted = false;
            return Ok(true);
        }
        let refused = WriterError::OverBudget {
            kind: kind.to_owned(),
            budget: budget.bytes,
        };
        if kept {
            return Err(refused);
        }
        budget.events_refused += 1;
        self.stats.records_over_budget += 1;
        if !budget.exhausted {
            budget.exhausted = true;
            let note = BudgetExhausted {
                budget_bytes: budget.bytes,
                dir_bytes: total - len as u64,
                reserve_bytes: budget.reserve(),
            };
            tracing::warn!(
                budget = note.budget_bytes,
                "the forensic log reached its byte budget: individual events stop, reports go on"
            );
            self.write_record(kinds::BUDGET_EXHAUSTED, None, &note, false)?;
        }
        Err(refused)
    }

    fn budget_total(&self) -> u64 {
        self.budget
            .as_ref()
            .map_or(0, |budget| budget.closed_bytes() + self.file_bytes)
    }

    /// After a rotation from file `old` of `old_bytes`: makes room for the new file and the
    /// reserve.
    pub(super) fn drop_for_budget(&mut self, old: u64, old_bytes: u64) -> Result<(), WriterError> {
        let Some(budget) = &mut self.budget else {
            return Ok(());
        };
        budget.closed.push((old, old_bytes));
        let need = budget.file_bytes() + budget.reserve();
        self.make_room(need)
    }

    /// Removes the oldest files after the head until `need` more bytes fit, recording it
    /// first. With a stream, only files the host holds wholly (acknowledged) are removed.
    fn make_room(&mut self, need: u64) -> Result<(), WriterError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let mut total = self.budget_total();
        let candidates: Vec<(u64, u64)> = budget
            .closed
            .iter()
            .copied()
            .filter(|&(index, _)| index != 0)
            .collect();
        if total + need <= budget.bytes || candidates.is_empty() {
            return Ok(());
        }
        let (limit, acked) = (
            budget.bytes,
            budget.acked.as_ref().map(|a| a.load(Ordering::Relaxed)),
        );
        // A file's end is where the next file's `rotate` says; they must be on disk.
        self.flush_buffer()?;
        let mut victims = Vec::new();
        let mut end = None;
        for (position, &(index, bytes)) in candidates.iter().enumerate() {
            if total + need <= limit {
                break;
            }
            let next = candidates
                .get(position + 1)
                .map_or(self.file.index, |c| c.0);
            let (seq, prev) = first_line(&self.dir.join(layout::file_name(next)))?;
            if acked.is_some_and(|acked| acked < seq) {
                break;
            }
            victims.push((index, bytes));
            total -= bytes;
            end = Some((seq - 1, prev));
        }
        let Some((end_seq, end_head)) = end else {
            return Ok(());
        };
        let budget = self.budget.as_mut().expect("checked above");
        let first_seq = match &budget.dropped {
            Some(earlier) => earlier.first_seq,
            None => first_line(&self.dir.join(layout::file_name(victims[0].0)))?.0,
        };
        let first_file = budget.dropped.as_ref().map_or_else(
            || layout::file_name(victims[0].0),
            |earlier| earlier.first_file.clone(),
        );
        let dropped = Dropped {
            first_file,
            last_file: layout::file_name(victims[victims.len() - 1].0),
            first_seq,
            last_seq: end_seq,
            head: end_head,
            records: end_seq - first_seq + 1,
            bytes: victims.iter().map(|(_, bytes)| bytes).sum(),
            files_now: victims.len() as u64,
            acked: acked.is_some_and(|acked| acked > end_seq),
            budget_bytes: budget.bytes,
        };
        budget
            .closed
            .retain(|(index, _)| !victims.iter().any(|v| v.0 == *index));
        budget.dropped = Some(dropped.clone());
        tracing::info!(
            first = %dropped.first_file,
            last = %dropped.last_file,
            acked = dropped.acked,
            "forensic log: removed the oldest files to stay within the byte budget"
        );
        // The record goes first: a crash before the files are gone leaves a claim the files
        // still present bear out; the reverse would leave a gap nothing accounts for.
        self.write_record(kinds::DROPPED, None, &dropped, false)?;
        self.sync_unless_never()?;
        for (index, _) in victims {
            let path = self.dir.join(layout::file_name(index));
            std::fs::remove_file(&path).map_err(|source| WriterError::Remove { path, source })?;
        }
        self.sync_dir_unless_never()
    }

    /// Before `stop`: what the budget cost, when it cost anything.
    pub(super) fn write_budget_summary(&mut self) -> Result<(), WriterError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if budget.dropped.is_none() && budget.events_refused == 0 {
            return Ok(());
        }
        let summary = BudgetSummary {
            budget_bytes: budget.bytes,
            records_dropped: budget.dropped.as_ref().map_or(0, |d| d.records),
            files_dropped: budget.dropped.as_ref().map_or(0, |d| {
                let index = |name: &str| layout::parse_file_name(name).unwrap_or(0);
                index(&d.last_file) - index(&d.first_file) + 1
            }),
            events_not_written: budget.events_refused,
        };
        self.write_record(kinds::LOG_BUDGET, None, &summary, false)
            .map(|_| ())
    }

    /// Records removed with their files under the byte budget (as the last `dropped` record
    /// says), and events this session did not write because the budget was exhausted.
    pub fn budget_counts(&self) -> (u64, u64) {
        self.budget.as_ref().map_or((0, 0), |budget| {
            (
                budget.dropped.as_ref().map_or(0, |d| d.records),
                budget.events_refused,
            )
        })
    }
}

/// The seq and `prev` of a file's first line.
fn first_line(path: &Path) -> Result<(u64, String), WriterError> {
    #[derive(serde::Deserialize)]
    struct Head {
        seq: u64,
        prev: String,
    }
    let corrupt = |reason: String| WriterError::Corrupt {
        path: path.to_owned(),
        line: 1,
        reason,
    };
    let file = File::open(path).map_err(FileError::open(path))?;
    let mut lines = LineScanner::new(BufReader::with_capacity(4096, file));
    match lines.next_line().map_err(FileError::read(path))? {
        Some(Line::Complete(line)) => serde_json::from_slice::<Head>(line)
            .map(|head| (head.seq, head.prev))
            .map_err(|e| corrupt(format!("first record is not readable: {e}"))),
        _ => Err(corrupt("no complete first record".into())),
    }
}

/// A log reopened after files were removed: the span removed so far, from the head's last
/// record to the first file after the gap.
fn earlier_drop(files: &[LogFile], budget: u64) -> Result<Option<Dropped>, WriterError> {
    let [head, next, ..] = files else {
        return Ok(None);
    };
    if head.index != 0 || next.index <= 1 {
        return Ok(None);
    }
    let first_seq = resume::next_seq_of(&head.path)?;
    let (seq, prev) = first_line(&next.path)?;
    Ok(Some(Dropped {
        first_file: layout::file_name(1),
        last_file: layout::file_name(next.index - 1),
        first_seq,
        last_seq: seq.saturating_sub(1),
        head: prev,
        records: seq.saturating_sub(first_seq),
        bytes: 0,
        files_now: 0,
        acked: false,
        budget_bytes: budget,
    }))
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
