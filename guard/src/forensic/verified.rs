//! A log's records, only as far as they verify: what a reader that draws conclusions (the
//! metrics of a log, its timeline) reads, so that none of them draws from a broken chain.
use std::path::Path;

use super::verify::VerifyReport;
use super::{LogReader, ReaderError, Record, verify::Problem, verify::VerifyError, verify::verify};

/// Why [`read_verified`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadVerifiedError {
    /// The log could not be verified at all (not there, unreadable).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The log does not verify: the defect, where it is.
    #[error("it does not verify ({0})")]
    Problem(Box<Problem>),
    /// A file that verified could not be read a second time.
    #[error(transparent)]
    Read(#[from] ReaderError),
}

/// Verifies the log in `dir`, then hands every record up to the last verified one to `each`,
/// in order, one at a time (constant memory). A torn tail or an abrupt end is fine: the
/// records before it are evidence. A log that does not verify is refused with its defect.
pub fn read_verified(
    dir: &Path,
    each: &mut dyn FnMut(Record),
) -> Result<VerifyReport, ReadVerifiedError> {
    let report = verify(dir)?;
    if let Some(problem) = &report.problem {
        return Err(ReadVerifiedError::Problem(Box::new(problem.clone())));
    }
    for entry in LogReader::open(dir)? {
        // Past the verified records (a torn tail) there is nothing more to read.
        let Ok(entry) = entry else { break };
        if report.last_seq.is_some_and(|last| entry.record.seq > last) {
            break;
        }
        each(entry.record);
    }
    Ok(report)
}
