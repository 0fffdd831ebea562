//! Streaming verification of a whole log (every file, in order, constant memory) and the one
//! repair it allows: truncating a torn final line.
mod dropped;
mod gap;
mod repair;
mod report;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;
use thiserror::Error;

pub use dropped::DroppedSpan;
pub use repair::{RepairOutcome, repair};
pub use report::{Defect, Problem, Session, TornTail, VerifyReport};

use super::layout::{self, FileError, LayoutError, LogFile};
use super::lines::{Line, LineScanner};
use super::record::{self, Checkpoint, Digest, Dropped, GENESIS_DIGEST, Rotate, Seal, kinds};
use super::time;

/// The log could not be read (or, for [`repair`], changed). A defect in its content is not an
/// error: it is the report's [`problem`](VerifyReport::problem).
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The directory cannot be listed, holds two files with one index, or (for [`repair`]) is
    /// locked by a writer.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A log file could not be opened or read.
    #[error(transparent)]
    File(#[from] FileError),
    /// [`repair`] could not truncate the torn tail.
    #[error("cannot truncate {path}: {source}")]
    Truncate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Record fields the verifier checks; the payload is parsed only for structural kinds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // fields are parsed for schema checking, not all read
struct Fields {
    seq: u64,
    boot_id: String,
    wall: String,
    mono_ns: u64,
    kind: String,
    // Required even though nullable: a missing key is a schema error, not `null`.
    #[serde(deserialize_with = "Option::deserialize")]
    container: Option<String>,
    payload: IgnoredAny,
    prev: String,
    hash: String,
}

#[derive(Deserialize)]
struct PayloadOf<T> {
    payload: T,
}

/// Chain state carried from line to line and file to file: what [`verify`] checks a whole log
/// with, and what a reader of a live copy (the stream collector) checks it with line by line.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    next_seq: u64,
    prev: Digest,
    prev_line: Option<(String, u64)>,
    boot_mono: Option<(String, u64)>,
    /// The previous file's name, complete records and bytes, for the next rotate record.
    finished_file: Option<(String, u64, u64)>,
    /// The seqs the last `gap` checked names.
    last_gap_count: u64,
    /// File ends and the one gap `dropped` records may account for.
    drops: dropped::Drops,
}

/// Verifies the log in `dir` end to end. I/O errors are errors; everything about the content
/// is in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify_with_chain(dir).map(|(report, _)| report)
}

/// Like [`verify`], also returning the chain as it stands after the last good line, for a
/// caller that goes on appending to (or receiving) the same log.
pub fn verify_with_chain(dir: &Path) -> Result<(VerifyReport, ChainCheck), VerifyError> {
    let files = layout::list_files(dir)?;
    verify_opened(
        dir,
        &files,
        &mut |file| File::open(&file.path),
        &mut |_, _, _, _| {},
    )
}

/// Like [`verify_with_chain`] over `files` (the log's, in index order) as `open` opens them (a
/// collector's store opens every path without following links), telling `file_done` each
/// file's complete records and bytes, and the seq after its last record (a `gap` makes seqs
/// and records differ), as it is checked.
pub fn verify_opened(
    dir: &Path,
    files: &[LogFile],
    open: &mut dyn FnMut(&LogFile) -> std::io::Result<File>,
    file_done: &mut dyn FnMut(&LogFile, u64, u64, u64),
) -> Result<(VerifyReport, ChainCheck), VerifyError> {
    let mut report = VerifyReport::default();
    if files.is_empty() {
        report.problem = Some(Problem {
            path: dir.to_owned(),
            line: 0,
            defect: Defect::NoFiles,
        });
        return Ok((report, ChainCheck::new()));
    }
    let mut chain = ChainCheck::new();
    let mut expected = 0;
    for (position, file) in files.iter().enumerate() {
        // Files after the head may be missing, removed under the byte budget: the `dropped`
        // records must then account for them (checked at the end).
        // (The files are sorted, without duplicates: an index is never below `expected`.)
        if file.index > expected
            && let Err(defect) = chain.drops.skip(expected, file.index - 1)
        {
            report.problem = Some(Problem {
                path: dir.join(layout::file_name(expected)),
                line: 0,
                defect,
            });
            return Ok((report, chain));
        }
        expected = file.index + 1;
        report.files += 1;
        let is_newest = position + 1 == files.len();
        let handle = open(file).map_err(FileError::open(&file.path))?;
        if let Err(problem) = verify_file(file, handle, is_newest, &mut chain, &mut report)? {
            report.problem = Some(problem);
            return Ok((report, chain));
        }
        if let Some((_, records, bytes)) = chain.last_file() {
            file_done(file, records, bytes, chain.next_seq());
        }
    }
    match chain.drops.finish(dir) {
        Ok(dropped) => report.dropped = dropped,
        Err(problem) => report.problem = Some(problem),
    }
    Ok((report, chain))
}

fn verify_file(
    file: &LogFile,
    handle: File,
    is_newest: bool,
    chain: &mut ChainCheck,
    report: &mut VerifyReport,
) -> Result<Result<(), Problem>, VerifyError> {
    let path = &file.path;
    let read_err = FileError::read(path);
    let mut lines = LineScanner::from_file(handle);
    let name = file.name();
    let mut line_no = 0u64;
    // Where the line being read starts; at the end, the bytes of the file's complete lines.
    let mut offset;
    loop {
        offset = lines.consumed();
        let Some(line) = lines.next_line().map_err(read_err)? else {
            break;
        };
        line_no += 1;
        let problem = |defect| Problem {
            path: path.clone(),
            line: line_no,
            defect,
        };
        let bytes = match line {
            Line::Complete(bytes) => bytes,
            Line::TooLong => return Ok(Err(problem(Defect::LineTooLong))),
            Line::Torn(bytes) if !is_newest => {
                return Ok(Err(problem(Defect::TornInnerFile { bytes })));
            }
            Line::Torn(bytes) => {
                report.torn_tail = Some(TornTail {
                    path: path.clone(),
                    line: line_no,
                    offset,
                    bytes,
                });
                break;
            }
        };
        let kind = match chain.check(bytes, line_no, &name) {
            Ok(kind) => kind,
            Err(defect) => return Ok(Err(problem(defect))),
        };
        track_session(report, &kind, chain.next_seq - 1);
        if kind == kinds::GAP {
            report.gaps += 1;
            report.missing_records += chain.last_gap_count;
        }
        report.records += 1;
        report.last_seq = Some(chain.next_seq - 1);
        report.head = Some(record::to_hex(&chain.prev));
    }
    if line_no == 0 && !is_newest {
        return Ok(Err(Problem {
            path: path.clone(),
            line: 0,
            defect: Defect::EmptyInnerFile,
        }));
    }
    chain.end_file(
        name,
        line_no - u64::from(report.torn_tail.is_some()),
        offset,
    );
    Ok(Ok(()))
}

/// Follows the writer sessions: each begins with `start` and, closed cleanly, ends with `stop`.
fn track_session(report: &mut VerifyReport, kind: &str, seq: u64) {
    if kind == kinds::START {
        if report.last_session.is_some_and(|session| !session.stopped) {
            report.abrupt_earlier_sessions += 1;
        }
        report.sessions += 1;
        report.last_session = Some(Session {
            started_at: seq,
            last_seq: seq,
            stopped: false,
        });
    } else if let Some(session) = &mut report.last_session {
        session.last_seq = seq;
        session.stopped = kind == kinds::STOP;
    }
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainCheck {
    /// The state before the first line of a log.
    pub fn new() -> Self {
        Self {
            next_seq: 0,
            prev: GENESIS_DIGEST,
            prev_line: None,
            boot_mono: None,
            finished_file: None,
            last_gap_count: 0,
            drops: dropped::Drops::default(),
        }
    }

    /// The seq the next record must have (the number of records checked).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Lowercase hex SHA-256 of the last line checked (the genesis value before any).
    pub fn head(&self) -> String {
        record::to_hex(&self.prev)
    }

    /// The last file [`ChainCheck::end_file`] announced: its name, records and bytes.
    pub fn last_file(&self) -> Option<(&str, u64, u64)> {
        self.finished_file
            .as_ref()
            .map(|(name, records, bytes)| (name.as_str(), *records, *bytes))
    }

    /// The file the lines so far belong to is complete, with `records` lines in `bytes`: the
    /// next file's first line, a `rotate`, must say exactly that.
    pub fn end_file(&mut self, name: String, records: u64, bytes: u64) {
        if records > 0 {
            self.drops.end_file(&name, self.next_seq - 1, self.prev);
        }
        self.finished_file = Some((name, records, bytes));
    }

    /// Checks `line` (without its newline), line `line_no` (1-based) of file `file_name`,
    /// against the chain, and advances the chain past it. Returns the record's kind.
    pub fn check(&mut self, line: &[u8], line_no: u64, file_name: &str) -> Result<String, Defect> {
        check_line(line, line_no, file_name, self)
    }
}

fn check_line(
    line: &[u8],
    line_no: u64,
    file_name: &str,
    chain: &mut ChainCheck,
) -> Result<String, Defect> {
    if line.is_empty() {
        return Err(Defect::EmptyLine);
    }
    // Parsing from bytes would skip the payload's strings without checking their UTF-8, and
    // readers then fail on a line verify accepted.
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => {
            return Err(Defect::NotJson {
                error: format!("not UTF-8: {e}"),
            });
        }
    };
    let fields: Fields = match serde_json::from_str(text) {
        Ok(fields) => fields,
        // Tell "not JSON at all" from "JSON, wrong shape".
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(Defect::NotJson {
                error: e.to_string(),
            });
        }
        Err(e) => {
            return Err(Defect::Schema {
                error: e.to_string(),
            });
        }
    };
    let digest = record::digest_line(line);
    match digest.seal {
        Seal::Valid => {}
        Seal::Mismatch => return Err(Defect::SealMismatch),
        Seal::Missing => return Err(Defect::Unsealed),
    }
    if line_no == 1 && chain.drops.is_pending() {
        let rotate = payload_of::<Rotate>(line).ok();
        let continues = rotate.as_ref().map(|rotate| rotate.prev_file.as_str());
        let bridge = chain.drops.bridge(
            chain.next_seq,
            &fields.kind,
            fields.seq,
            &fields.prev,
            continues,
        )?;
        if let Some((seq, head)) = bridge {
            (chain.next_seq, chain.prev) = (seq, head);
        }
    } else if line_no == 1 {
        check_file_start(line, &fields, chain)?;
    } else if fields.kind == kinds::ROTATE {
        return Err(Defect::RotateInsideFile);
    }
    if fields.seq != chain.next_seq || fields.kind == kinds::GAP {
        gap::check(line, &fields.kind, fields.seq, chain.next_seq)?;
    }
    if fields.prev != record::to_hex(&chain.prev) {
        return Err(Defect::PrevMismatch {
            previous: chain.prev_line.clone(),
        });
    }
    if fields.kind == kinds::DROPPED {
        let current = layout::parse_file_name(file_name).unwrap_or(u64::MAX);
        chain.drops.claim(&payload_of::<Dropped>(line)?, current)?;
    }
    if fields.kind == kinds::CHECKPOINT || fields.kind == kinds::STOP {
        let checkpoint = payload_of::<Checkpoint>(line)?;
        if checkpoint.count != fields.seq || checkpoint.head != fields.prev {
            return Err(Defect::CheckpointMismatch {
                detail: format!(
                    "count {} / head {} where the log has {} records / head {}",
                    checkpoint.count, checkpoint.head, fields.seq, fields.prev
                ),
            });
        }
    }
    if time::parse_rfc3339(&fields.wall).is_err() {
        return Err(Defect::BadWallClock { wall: fields.wall });
    }
    if let Some((boot, mono)) = &chain.boot_mono
        && *boot == fields.boot_id
        && fields.mono_ns < *mono
    {
        return Err(Defect::MonotonicBackwards {
            previous: *mono,
            found: fields.mono_ns,
        });
    }
    if fields.kind == kinds::GAP {
        chain.last_gap_count = fields.seq - chain.next_seq;
    }
    chain.next_seq = fields.seq.saturating_add(1);
    chain.prev = digest.line;
    chain.prev_line = Some((file_name.to_owned(), line_no));
    chain.boot_mono = Some((fields.boot_id, fields.mono_ns));
    Ok(fields.kind)
}

/// The first line of the log is `start`; the first line of every later file is a `rotate`
/// that must describe the previous file exactly (this is what exposes a truncated file).
fn check_file_start(line: &[u8], fields: &Fields, chain: &ChainCheck) -> Result<(), Defect> {
    let Some((prev_name, prev_records, prev_bytes)) = &chain.finished_file else {
        return if fields.kind == kinds::START {
            Ok(())
        } else {
            Err(Defect::FirstNotStart {
                kind: fields.kind.clone(),
            })
        };
    };
    if fields.kind != kinds::ROTATE {
        return Err(Defect::FileNotStartingWithRotate {
            kind: fields.kind.clone(),
        });
    }
    let rotate = payload_of::<Rotate>(line)?;
    let mut detail = Vec::new();
    if rotate.prev_file != *prev_name {
        detail.push(format!(
            "it continues {}, not {prev_name}",
            rotate.prev_file
        ));
    }
    if rotate.prev_records != *prev_records || rotate.prev_bytes != *prev_bytes {
        let verb = if rotate.prev_bytes > *prev_bytes {
            "was truncated"
        } else {
            "was changed"
        };
        detail.push(format!(
            "{prev_name} {verb}: it has {prev_records} records ({prev_bytes} bytes), the rotate \
             record says {} ({} bytes)",
            rotate.prev_records, rotate.prev_bytes
        ));
    }
    if detail.is_empty() {
        Ok(())
    } else {
        Err(Defect::RotateMismatch {
            detail: detail.join("; "),
        })
    }
}

fn payload_of<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, Defect> {
    serde_json::from_slice::<PayloadOf<T>>(line)
        .map(|p| p.payload)
        .map_err(|e| Defect::Schema {
            error: format!("payload: {e}"),
        })
}
