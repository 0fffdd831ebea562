//! Reading a guest's copy from disk once: verified end to end through descriptors that never
//! follow a link, a torn final line cut (the collector died mid-write), and what the stream
//! needs kept in memory from then on (the [`Tail`]), so a reconnect costs no re-verification.
use std::path::Path;

use crate::forensic::{self, ChainCheck, layout};

use super::nofollow::{DirFd, error};

/// One file of the copy: where its records start and end, how many, how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileSpan {
    pub first_seq: u64,
    /// The seq after its last record (more than `first_seq + records` after a `gap`).
    pub end_seq: u64,
    pub records: u64,
    pub bytes: u64,
}

/// A guest's copy as verified, kept in memory between its connections.
#[derive(Debug, Clone)]
pub(super) struct Tail {
    pub chain: ChainCheck,
    /// The last record held is a `stop`.
    pub stopped: bool,
    /// Every file of the copy, by index.
    pub files: Vec<FileSpan>,
    /// Bytes in all of them.
    pub total_bytes: u64,
}

impl Tail {
    pub fn empty() -> Self {
        Self {
            chain: ChainCheck::new(),
            stopped: false,
            files: Vec::new(),
            total_bytes: 0,
        }
    }

    /// The copy on disk still is what this tail says (nobody else wrote under the store).
    pub fn matches_disk(&self, dir: &DirFd) -> bool {
        let Ok(files) = dir.log_files() else {
            return false;
        };
        if files.len() != self.files.len() {
            return false;
        }
        match (files.last(), self.files.last()) {
            (Some(file), Some(span)) => dir.size(&file.name()).is_ok_and(|size| size == span.bytes),
            _ => true,
        }
    }
}

/// Reads and verifies the copy in `dir`: the tail to continue from, or why it cannot be used.
pub(super) fn load(dir: &DirFd) -> Result<Tail, String> {
    let mut files = dir.log_files()?;
    // An empty newest file: the collector died between creating it and writing to it.
    if let Some(newest) = files.last().filter(|file| file.index > 0)
        && dir.size(&newest.name()).is_ok_and(|size| size == 0)
    {
        dir.remove(&newest.name())
            .map_err(|e| error(&newest.path, e))?;
        files.pop();
    }
    if files.is_empty() {
        return Ok(Tail::empty());
    }
    let mut spans = Vec::with_capacity(files.len());
    let mut next_first = 0;
    let (report, chain) = forensic::verify_opened(
        &dir.path,
        &files,
        &mut |file| {
            dir.read(&file.name())
                .map_err(|e| std::io::Error::new(e.kind(), error(&file.path, e)))
        },
        &mut |_, records, bytes, end_seq| {
            spans.push(FileSpan {
                first_seq: next_first,
                end_seq,
                records,
                bytes,
            });
            next_first = end_seq;
        },
    )
    .map_err(|e| e.to_string())?;
    if let Some(problem) = report.problem {
        return Err(format!(
            "the stored copy in {} does not verify: {problem}",
            dir.path.display()
        ));
    }
    if let Some(torn) = &report.torn_tail {
        cut_torn_tail(dir, &torn.path, torn.offset)?;
    }
    let total_bytes = spans.iter().map(|span| span.bytes).sum();
    Ok(Tail {
        chain,
        stopped: report.last_session.is_some_and(|session| session.stopped),
        files: spans,
        total_bytes,
    })
}

fn cut_torn_tail(dir: &DirFd, path: &Path, offset: u64) -> Result<(), String> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|name| layout::parse_file_name(name).is_some())
        .ok_or_else(|| format!("{}: not a log file", path.display()))?;
    let file = dir.append(name).map_err(|e| error(path, e))?;
    file.set_len(offset)
        .and_then(|()| file.sync_all())
        .map_err(|e| error(path, e))?;
    tracing::warn!(path = %path.display(), offset, "cut a torn final line from a stored copy");
    Ok(())
}
