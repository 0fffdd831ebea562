//! The forensic event log: hash-chained JSON Lines that a reader can verify after the fact,
//! on another machine, with or without guard. The format is specified in docs/LOG-FORMAT.md.
//!
//! - [`writer`]: `LogWriter` appends records (batching, fsync policy, rotation, checkpoints,
//!   resume after a crash).
//! - [`verify`]: streaming verification of every line and the chain across files; `repair`
//!   truncates a torn final line and nothing else.
//! - [`reader`] and [`stats`]: tolerant streaming readers for display.
//!
//! All of them read a file through one line scanner (`lines`), so they agree on where a line
//! ends, which line is too long and what is a torn tail.
pub mod layout;
mod lines;
pub mod reader;
pub mod record;
pub mod stats;
pub mod time;
pub mod verify;
pub mod writer;

pub use layout::{LayoutError, LogFile};
pub use reader::{Entry, Filter, Follower, LogReader, ReaderError};
pub use record::{Checkpoint, GENESIS, Lost, Record, Rotate, StartInfo, Throttle, kinds};
/// Payloads and `StartInfo::limits` are JSON values: re-exported so callers need no extra dependency.
pub use serde_json;
pub use stats::{Stats, stats};
pub use verify::{
    ChainCheck, Defect, Problem, RepairOutcome, Session, TornTail, VerifyError, VerifyReport,
    repair, verify, verify_with_chain,
};
pub use writer::{FsyncPolicy, Head, LogOptions, LogWriter, Unwritten, WriterError, WriterStats};

#[cfg(test)]
mod tests;
