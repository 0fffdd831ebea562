//! Where a reopened log continues: the newest file's complete records, its torn tail (refused,
//! or truncated when asked), and the chain's head.
use std::fs::{File, OpenOptions};
use std::path::Path;

use super::WriterError;
use crate::forensic::layout::{self, FileError, LogFile};
use crate::forensic::lines::{Line, LineScanner};
use crate::forensic::record::{self, Digest, GENESIS_DIGEST, MAX_LINE_BYTES, Repair, Rotate};

/// Resume state found in an existing log.
pub(super) struct Resume {
    pub file: LogFile,
    pub file_bytes: u64,
    pub file_records: u64,
    pub next_seq: u64,
    pub head: Digest,
    /// The file is empty and continues an earlier one: it must start with this rotate record.
    pub rotate: Option<Rotate>,
    pub repaired: Option<Repair>,
}

impl Resume {
    /// A new chain from seq 0 in the empty `file`.
    fn fresh(file: LogFile, repaired: Option<Repair>) -> Self {
        Self {
            file,
            file_bytes: 0,
            file_records: 0,
            next_seq: 0,
            head: GENESIS_DIGEST,
            rotate: None,
            repaired,
        }
    }
}

pub(super) fn resume_point(
    dir: &Path,
    files: &[LogFile],
    repair: bool,
) -> Result<Resume, WriterError> {
    let Some(last) = files.last() else {
        let first = LogFile {
            index: 0,
            path: dir.join(layout::file_name(0)),
        };
        return Ok(Resume::fresh(first, None));
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
        return Ok(Resume::fresh(last.clone(), repaired));
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
        rotate: Some(Rotate {
            prev_file: previous.name(),
            prev_records: prev_scan.records,
            prev_bytes: prev_scan.complete_bytes,
        }),
        next_seq,
        head,
        ..Resume::fresh(last.clone(), repaired)
    })
}

/// The seq after the last complete record of the file at `path` (0 when it holds none).
pub(super) fn next_seq_of(path: &Path) -> Result<u64, WriterError> {
    let scan = scan_file(path)?;
    if scan.records == 0 {
        return Ok(0);
    }
    last_record(path, &scan).map(|(next_seq, _)| next_seq)
}

/// Scan of one file: complete lines, the last of them, and any torn tail.
pub(super) struct FileScan {
    pub complete_bytes: u64,
    pub records: u64,
    last_line: Vec<u8>,
    torn_bytes: u64,
}

pub(super) fn scan_file(path: &Path) -> Result<FileScan, WriterError> {
    let read_err = FileError::read(path);
    let mut lines = LineScanner::from_file(File::open(path).map_err(read_err)?);
    let mut scan = FileScan {
        complete_bytes: 0,
        records: 0,
        last_line: Vec::new(),
        torn_bytes: 0,
    };
    loop {
        match lines.next_line().map_err(read_err)? {
            None => return Ok(scan),
            Some(Line::Torn(bytes)) => {
                scan.torn_bytes = bytes;
                return Ok(scan);
            }
            Some(Line::TooLong) => {
                return Err(WriterError::Corrupt {
                    path: path.to_owned(),
                    line: scan.records + 1,
                    reason: format!("line longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            Some(Line::Complete(line)) => {
                scan.last_line.clear();
                scan.last_line.extend_from_slice(line);
            }
        }
        scan.records += 1;
        scan.complete_bytes = lines.consumed();
    }
}

/// The seq that follows a file's last complete line, and that line's hash.
fn last_record(path: &Path, scan: &FileScan) -> Result<(u64, Digest), WriterError> {
    #[derive(serde::Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let line = &scan.last_line;
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

fn truncate(path: &Path, len: u64) -> Result<(), WriterError> {
    let err = |source| WriterError::Truncate {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(err)?;
    file.set_len(len).map_err(err)?;
    file.sync_all().map_err(err)
}
