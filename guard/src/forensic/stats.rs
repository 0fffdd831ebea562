//! Counts per kind and per container, in one streaming pass.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::reader::{LogReader, ReaderError};

/// What a log holds, counted (`guard log stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Log files.
    pub files: u64,
    /// Records read.
    pub records: u64,
    /// `wall` of the first record read.
    pub first_wall: Option<String>,
    /// `wall` of the last record read.
    pub last_wall: Option<String>,
    /// Kind → count.
    pub per_kind: BTreeMap<String, u64>,
    /// Container id → kind → count (records without a container are not listed here).
    pub per_container: BTreeMap<String, BTreeMap<String, u64>>,
    /// Kind → events folded into `summary` records (none of them has a record of its own):
    /// events of a kind = its records + this.
    pub summarized: BTreeMap<String, u64>,
    /// Container id → kind → events folded into that container's `summary` records.
    pub per_container_summarized: BTreeMap<String, BTreeMap<String, u64>>,
    /// Lines that could not be read as records (see `guard log verify`).
    pub unreadable_lines: u64,
    /// Whether a file ends with a partial line.
    pub torn_tail: bool,
}

/// Counts the records of the log in `dir` in one streaming pass; tolerant like
/// [`LogReader`] (a bad line is counted, not an error). Judging the log is
/// [`verify`](super::verify())'s job.
pub fn stats(dir: &Path) -> Result<Stats, ReaderError> {
    let files = super::layout::list_files(dir)?;
    let mut stats = Stats {
        files: files.len() as u64,
        ..Stats::default()
    };
    for item in LogReader::from_files(files) {
        let entry = match item {
            Ok(entry) => entry,
            Err(ReaderError::TornTail { .. }) => {
                stats.torn_tail = true;
                continue;
            }
            Err(e) if e.is_line_error() => {
                stats.unreadable_lines += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let record = entry.record;
        stats.records += 1;
        if stats.first_wall.is_none() {
            stats.first_wall = Some(record.wall.clone());
        }
        *stats.per_kind.entry(record.kind.clone()).or_default() += 1;
        if let Some((of, count)) = super::summarized(&record) {
            *stats.summarized.entry(of.to_string()).or_default() += count;
            if let Some(container) = &record.container {
                *stats
                    .per_container_summarized
                    .entry(container.clone())
                    .or_default()
                    .entry(of.to_string())
                    .or_default() += count;
            }
        }
        if let Some(container) = record.container {
            *stats
                .per_container
                .entry(container)
                .or_default()
                .entry(record.kind)
                .or_default() += 1;
        }
        stats.last_wall = Some(record.wall);
    }
    Ok(stats)
}
