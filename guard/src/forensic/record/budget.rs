//! Payloads of the records a log with a byte budget writes: `dropped` (files removed to stay
//! within the budget, checked by every verifier), `budget_exhausted` (individual events stop)
//! and `log_budget` (what the budget cost, before `stop`).
use serde::{Deserialize, Serialize};

/// Files removed from the log directory to keep it within its byte budget: always the oldest
/// files after the head (`guard-000000.jsonl`), so the removed files are one span from
/// `first_file` on. Cumulative: each `dropped` record covers everything removed so far, so the
/// newest one alone accounts for the whole gap. Verifiers accept a missing span only when a
/// `dropped` record names it exactly: its files, its seqs and the hash of its last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// The first file removed (the one after the head).
    pub first_file: String,
    /// The last file removed.
    pub last_file: String,
    /// The first record removed.
    pub first_seq: u64,
    /// The last record removed.
    pub last_seq: u64,
    /// Lowercase hex SHA-256 of the last removed line: the `prev` of the `rotate` record that
    /// begins the file after `last_file`.
    pub head: String,
    /// `last_seq - first_seq + 1`.
    pub records: u64,
    /// Bytes of the files this drop removed.
    pub bytes: u64,
    /// Files removed by this drop (the others were removed by earlier ones).
    pub files_now: u64,
    /// The host acknowledged a durable copy of every removed record (the stream's ack).
    pub acked: bool,
    /// The budget, in bytes.
    pub budget_bytes: u64,
}

/// From here on individual events are not written: even after dropping files, the budget
/// cannot hold them. Reports, verdicts and the log's own records still are (out of a reserve).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetExhausted {
    /// The budget, in bytes.
    pub budget_bytes: u64,
    /// Bytes of the log's files when the first event was refused.
    pub dir_bytes: u64,
    /// Bytes kept for reports, verdicts and the log's own records.
    pub reserve_bytes: u64,
}

/// What the budget cost the log, written before `stop` when it cost anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSummary {
    /// The budget, in bytes.
    pub budget_bytes: u64,
    /// Records removed with their files (cumulative over the log, as the last `dropped` says).
    pub records_dropped: u64,
    /// Files removed.
    pub files_dropped: u64,
    /// Events this session did not write because the budget was exhausted.
    pub events_not_written: u64,
}
