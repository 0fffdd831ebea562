//! The forensic event log: hash-chained JSON Lines that a reader can verify after the fact,
//! on another machine, with or without guard. The format is specified in docs/LOG-FORMAT.md.
//!
//! - [`LogWriter`] appends records (batching, fsync policy, rotation, checkpoints, resume
//!   after a crash).
//! - [`verify()`]: streaming verification of every line and the chain across files;
//!   [`repair`] truncates a torn final line and nothing else.
//! - [`LogReader`], [`Follower`] and [`stats()`]: tolerant streaming readers for display.
//!
//! All of them read a file through one line scanner (`lines`), so they agree on where a line
//! ends, which line is too long and what is a torn tail.
//!
//! ```
//! use guard::forensic::serde_json::json;
//! use guard::forensic::{FsyncPolicy, LogOptions, LogReader, LogWriter, StartInfo, verify};
//!
//! let dir = std::env::temp_dir().join(format!("guard-doc-log-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let options = LogOptions {
//!     fsync: FsyncPolicy::Never,
//!     boot_id: Some("doc-boot".into()),
//!     ..LogOptions::default()
//! };
//! let start = StartInfo::new(1, json!({"memory_max": 67108864}));
//! let mut log = LogWriter::create(&dir, options, &start)?;
//! let seq = log.append("fork", Some("web"), &json!({"child_pid": 42}))?;
//! assert_eq!(seq, 1); // the start record is seq 0
//! assert!(log.append("start", None, &()).is_err()); // written by the log itself only
//! log.close()?; // a `stop` record
//!
//! let report = verify(&dir)?;
//! assert!(report.is_clean() && report.ended_abruptly().is_none());
//! assert_eq!((report.records, report.last_seq), (3, Some(2)));
//!
//! let kinds: Vec<String> = LogReader::open(&dir)?
//!     .map(|entry| entry.map(|entry| entry.record.kind))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(kinds, ["start", "fork", "stop"]);
//!
//! // One flipped byte breaks the seal of its line.
//! let file = dir.join("guard-000000.jsonl");
//! let text = std::fs::read_to_string(&file)?;
//! std::fs::write(&file, text.replacen("\"child_pid\":42", "\"child_pid\":43", 1))?;
//! let problem = verify(&dir)?.problem.unwrap();
//! assert_eq!(problem.line, 2);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
internal_mod!(layout);
mod lines;
pub(crate) mod reader;
internal_mod!(record);
pub(crate) mod stats;
pub(crate) mod summary;
internal_mod!(time);
pub(crate) mod verified;
pub(crate) mod verify;
pub(crate) mod writer;

pub use layout::{FileError, LayoutError, LogFile};
pub use reader::{Entry, Filter, Follower, LogReader, ReaderError};
pub use record::{
    BudgetExhausted, BudgetSummary, Checkpoint, Dropped, GENESIS, Gap, Lost, Record, Repair,
    Rotate, StartInfo, Throttle, kinds,
};
/// Payloads and `StartInfo::limits` are JSON values: re-exported so callers need no extra dependency.
pub use serde_json;
pub use stats::{Stats, stats};
pub use summary::{SummaryRecord, events_of, summarized};
pub use verified::{ReadVerifiedError, read_verified};
pub use verify::{
    ChainCheck, Defect, DroppedSpan, Problem, RepairOutcome, Session, TornTail, VerifyError,
    VerifyReport, repair, verify, verify_opened, verify_with_chain,
};
pub use writer::{
    Backing, ByteBudget, FILES_PER_BUDGET, FsyncPolicy, Head, KEPT_KINDS, LogIncomplete,
    LogOptions, LogWriter, MIN_BUDGET_BYTES, RETRY_EVERY, Unwritten, WriterError, WriterStats,
    default_budget, ram_reserve, resolve_budget,
};

#[cfg(test)]
mod tests;
