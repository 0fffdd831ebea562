//! The lines of a local log from a given seq on, as they are appended: what the
//! [`Sender`](super::Sender) ships, and what an agent with a channel of its own forwards.
use std::path::Path;

use crate::forensic::{Follower, ReaderError};

/// The lines of a local log from a given seq on, as they are appended: what
/// [`Sender`](super::Sender) ships, for an agent that forwards them over a channel of its own.
pub struct LogTail {
    follower: Follower,
    from_seq: u64,
}

/// One line of the log as it is on disk (without its newline).
pub struct TailLine<'a> {
    /// The record's seq.
    pub seq: u64,
    /// The record's kind.
    pub kind: &'a str,
    /// The line's exact bytes: what goes on the wire.
    pub raw: &'a [u8],
}

impl LogTail {
    /// Every record with `seq >= from_seq`, those already written first.
    pub fn from_seq(dir: &Path, from_seq: u64) -> Self {
        Self {
            follower: Follower::from_start(dir),
            from_seq,
        }
    }

    /// Calls `line` for every record appended since the last poll (from `from_seq`). Lines the
    /// log cannot parse are skipped and returned as errors after the poll: the host sees the
    /// gap they leave.
    pub fn poll(&mut self, line: &mut dyn FnMut(TailLine<'_>)) -> Result<(), ReaderError> {
        let from = self.from_seq;
        let mut skipped = None;
        self.follower.poll(&mut |entry| match entry {
            Ok(entry) if entry.record.seq >= from => line(TailLine {
                seq: entry.record.seq,
                kind: &entry.record.kind,
                raw: &entry.raw,
            }),
            Ok(_) => {}
            // A torn tail is a line still being written: it is read again next time.
            Err(ReaderError::TornTail { .. }) => {}
            Err(error) => skipped = skipped.take().or(Some(error)),
        })?;
        match skipped {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
