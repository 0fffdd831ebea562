//! An incident's picture (feature `timeline`): per container over time, the kernel's
//! memory.events and pids.events counts, the probes' fork denials and OOM kills (named), the
//! memcg reclaim stall, losses and the agent's named stretches (selftest waves), from a
//! forensic log that verifies.
//!
//! - [`data`]: the series, pure, from the log's records ([`data::timeline`]).
//! - [`draw`](fn@draw): the picture, SVG or PNG (plotters).
use std::path::{Path, PathBuf};

use crate::forensic::{self, Record};

pub mod data;
mod draw;
#[cfg(test)]
mod tests;

pub use data::{Timeline, timeline};
pub use draw::draw;

/// What can go wrong making a timeline.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// A log that cannot be read, or does not verify.
    #[error("the forensic log in {dir}: {why}")]
    Log {
        /// The log's directory.
        dir: PathBuf,
        /// Why it was refused.
        why: String,
    },
    /// An output file that is neither `.svg` nor `.png`.
    #[error("{path}: the picture is written as .svg or .png (by the file's extension)")]
    Format {
        /// The path given.
        path: PathBuf,
    },
    /// No font to draw text with.
    #[error("{0}")]
    Font(String),
    /// Drawing or writing the picture failed.
    #[error("drawing {path}: {why}")]
    Draw {
        /// The output file.
        path: PathBuf,
        /// The backend's error.
        why: String,
    },
}

/// The verified records of the log in `dir` (up to a torn tail or an abrupt end: the records
/// before it are evidence; a log that does not verify is refused).
pub fn read_log(dir: &Path) -> Result<Vec<Record>, TimelineError> {
    let mut records = Vec::new();
    forensic::read_verified(dir, &mut |record| records.push(record)).map_err(|error| {
        TimelineError::Log {
            dir: dir.to_path_buf(),
            why: match error {
                forensic::ReadVerifiedError::Problem(_) => {
                    format!("{error}; pictures are drawn from verified logs only")
                }
                other => other.to_string(),
            },
        }
    })?;
    Ok(records)
}
