//! The one repair `verify` allows: truncating a torn final line.
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::{TornTail, VerifyError, VerifyReport, verify};
use crate::forensic::layout;

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Nothing to repair: no problem and no torn tail (the report may still show a session
    /// that ended abruptly).
    Clean(VerifyReport),
    /// The torn tail was removed; `report` is the verification afterwards.
    Repaired {
        /// The torn tail removed.
        torn: TornTail,
        /// The removed bytes (at most one partial record).
        removed: Vec<u8>,
        /// The verification after the truncation.
        report: VerifyReport,
    },
    /// The log has a defect other than a torn tail: nothing was changed.
    Refused(VerifyReport),
}

/// Truncates a torn final line, and only that: any other defect leaves the log untouched.
/// Takes the writer lock so it never truncates under a live writer.
pub fn repair(dir: &Path) -> Result<RepairOutcome, VerifyError> {
    let _lock = layout::lock_dir(dir)?;
    let report = verify(dir)?;
    if report.problem.is_some() {
        return Ok(RepairOutcome::Refused(report));
    }
    let Some(torn) = report.torn_tail.clone() else {
        return Ok(RepairOutcome::Clean(report));
    };
    let err = |source| VerifyError::Truncate {
        path: torn.path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&torn.path)
        .map_err(err)?;
    let mut removed = Vec::new();
    file.seek(SeekFrom::Start(torn.offset)).map_err(err)?;
    (&mut file)
        .take(torn.bytes)
        .read_to_end(&mut removed)
        .map_err(err)?;
    file.set_len(torn.offset).map_err(err)?;
    file.sync_all().map_err(err)?;
    tracing::warn!(path = %torn.path.display(), line = torn.line, bytes = torn.bytes, "truncated torn final line");
    let report = verify(dir)?;
    Ok(RepairOutcome::Repaired {
        torn,
        removed,
        report,
    })
}
