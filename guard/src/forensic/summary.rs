//! The `summary` record as a reader sees it (docs/LOG-FORMAT.md, "Summaries"): under a storm
//! the event sinks fold a container's events of one kind into one record per interval, after
//! the first events of each burst. A reader that counts events counts a summary's `count`:
//! [`events_of`] is that rule, once, for every reader (stats, timeline, tests).
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Record, kinds};

/// A `summary` record's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRecord {
    /// The kind of the events folded (`reclaim`, `oom_victim`, …).
    pub of: String,
    /// For `kernel_file`: the file whose snapshots were folded (`memory.events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Events folded into this record: none of them has a record of its own.
    pub count: u64,
    /// CLOCK_MONOTONIC of the first event folded (the events' own `ktime_ns`).
    pub first_ktime_ns: u64,
    /// CLOCK_MONOTONIC of the last event folded.
    pub last_ktime_ns: u64,
    /// Totals over every event folded, by the kind's key fields (reclaim's `duration_ns` and
    /// `nr_reclaimed`, oom_victim's `outside_containers`, fork_denied's `cause_<cause>`).
    #[serde(default)]
    pub sums: serde_json::Map<String, Value>,
    /// The first events folded, each its own record's payload.
    pub examples: Vec<Value>,
    /// The last event folded, its own record's payload (for `kernel_file`: the counts at the
    /// end of the span).
    pub last: Value,
}

impl SummaryRecord {
    /// The record's payload read as a summary; None for another kind or a malformed payload.
    pub fn of_record(record: &Record) -> Option<Self> {
        if record.kind != kinds::SUMMARY {
            return None;
        }
        serde_json::from_value(record.payload.clone()).ok()
    }
}

/// How many events of `kind` a record stands for: 1 for a record of that kind, a summary's
/// `count` for a summary of that kind, 0 otherwise.
///
/// ```
/// use guard::forensic::{Record, events_of, serde_json::json};
///
/// let record = |kind: &str, payload| Record {
///     seq: 1, boot_id: "b".into(), wall: "w".into(), mono_ns: 1, kind: kind.into(),
///     container: Some("web".into()), payload, prev: String::new(), hash: String::new(),
/// };
/// assert_eq!(events_of(&record("fork", json!({})), "fork"), 1);
/// let summary = record("summary", json!({"of": "fork", "count": 500}));
/// assert_eq!((events_of(&summary, "fork"), events_of(&summary, "reclaim")), (500, 0));
/// ```
pub fn events_of(record: &Record, kind: &str) -> u64 {
    if record.kind == kind {
        return 1;
    }
    summarized(record)
        .filter(|(of, _)| *of == kind)
        .map_or(0, |(_, count)| count)
}

/// A summary record's kind and count (None for any other record): the two fields every
/// counting reader needs, read without the rest of the payload.
pub fn summarized(record: &Record) -> Option<(&str, u64)> {
    if record.kind != kinds::SUMMARY {
        return None;
    }
    let of = record.payload.get("of")?.as_str()?;
    let count = record.payload.get("count")?.as_u64()?;
    Some((of, count))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::forensic::Filter;

    fn record(kind: &str, payload: Value) -> Record {
        Record {
            seq: 1,
            boot_id: "b".into(),
            wall: "2026-12-07T00:00:00Z".into(),
            mono_ns: 1,
            kind: kind.into(),
            container: Some("web".into()),
            payload,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn summaries_count_as_their_events_and_pass_their_kinds_filter() {
        let summary = record(
            "summary",
            json!({"of": "reclaim", "count": 12, "first_ktime_ns": 1, "last_ktime_ns": 2,
                   "sums": {"duration_ns": 5}, "examples": [], "last": {}}),
        );
        assert_eq!(summarized(&summary), Some(("reclaim", 12)));
        assert_eq!(events_of(&summary, "reclaim"), 12);
        assert_eq!(events_of(&record("reclaim", json!({})), "reclaim"), 1);
        assert_eq!(events_of(&record("fork", json!({})), "reclaim"), 0);
        let read = SummaryRecord::of_record(&summary).unwrap();
        assert_eq!(
            (read.count, read.sums["duration_ns"].as_u64()),
            (12, Some(5))
        );
        // A malformed summary counts as nothing rather than failing a reader.
        assert_eq!(summarized(&record("summary", json!({"of": "fork"}))), None);
        let filter = |kind: &str| Filter {
            kind: Some(kind.into()),
            ..Filter::default()
        };
        assert!(filter("reclaim").matches(&summary) && filter("summary").matches(&summary));
        assert!(!filter("fork").matches(&summary));
    }
}
