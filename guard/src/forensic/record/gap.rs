//! The `gap` record: the first line a log writes after an outage (a full or failing
//! filesystem), naming exactly the seqs it could not write. docs/LOG-FORMAT.md is normative.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Payload of `gap`: the records the writer counted but could not write. Its own seq is
/// `last_seq + 1` and its `prev` is the hash of the last line before the outage, so the chain
/// stays whole around the missing seqs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    /// The first seq not in the log: the record before the gap's seq + 1.
    pub first_seq: u64,
    /// The last seq not in the log (inclusive): the gap record's own seq - 1.
    pub last_seq: u64,
    /// The missing records by kind (`unknown` for a record whose bytes were lost before its
    /// kind could be read back); the counts add up to `last_seq - first_seq + 1`.
    pub kinds: BTreeMap<String, u64>,
    /// The error that began the outage.
    pub error: String,
    /// When it began (RFC 3339 UTC); the gap record's own `wall` is when it ended.
    pub since_wall: String,
    /// When it began, CLOCK_MONOTONIC nanoseconds; the gap's own `mono_ns` is when it ended.
    pub since_mono_ns: u64,
    /// Attempts to write again that failed before this one.
    pub retries: u64,
}

impl Gap {
    /// How many seqs it names.
    pub fn count(&self) -> u64 {
        self.last_seq.saturating_sub(self.first_seq).saturating_add(1)
    }

    /// Why this gap cannot follow a record whose seq was `expected - 1` when its own seq is
    /// `seq`; None when it names exactly the seqs missing between them.
    pub fn mismatch(&self, expected: u64, seq: u64) -> Option<String> {
        let mut detail = Vec::new();
        if seq <= expected {
            detail.push(format!(
                "a gap at seq {seq} where seq {expected} was next: no seq is missing"
            ));
        } else if self.first_seq != expected || self.last_seq != seq - 1 {
            detail.push(format!(
                "it names seqs {}..={} but {}..={} are missing",
                self.first_seq,
                self.last_seq,
                expected,
                seq - 1
            ));
        }
        let by_kind: u64 = self.kinds.values().fold(0u64, |sum, n| sum.saturating_add(*n));
        if self.first_seq <= self.last_seq && by_kind != self.count() {
            detail.push(format!(
                "its kinds add up to {by_kind}, not the {} seqs it names",
                self.count()
            ));
        }
        (!detail.is_empty()).then(|| detail.join("; "))
    }
}
