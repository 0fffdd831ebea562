//! A forensic log's metrics, read after the fact: the last `report` record of each container,
//! the tier of the last session, the log's record count. The same text a live `/metrics`
//! showed at the end, from evidence anyone can verify.
use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

use super::{LogFigures, MetricsError, Snapshot};
use crate::forensic::{self, kinds};

/// The snapshot a log in `dir` holds. The log must verify (a torn tail or an abrupt end is
/// fine: the records before it are evidence); a log that does not is refused, naming the
/// defect.
pub fn snapshot_of_log(dir: &Path) -> Result<Snapshot, MetricsError> {
    let mut reports: BTreeMap<String, Value> = BTreeMap::new();
    let mut tier = None;
    let verified = forensic::read_verified(dir, &mut |record| match record.kind.as_str() {
        "report" => {
            if let Some(container) = record.payload.get("container").and_then(Value::as_str) {
                reports.insert(container.to_string(), record.payload);
            }
        }
        kinds::START => {
            tier = record
                .payload
                .get("tier")
                .and_then(Value::as_u64)
                .and_then(|t| u8::try_from(t).ok());
        }
        _ => {}
    })
    .map_err(|error| MetricsError::Log {
        dir: dir.to_path_buf(),
        why: match error {
            forensic::ReadVerifiedError::Problem(_) => {
                format!("{error}; metrics are read from verified logs only")
            }
            other => other.to_string(),
        },
    })?;
    Ok(Snapshot {
        reports: reports.into_values().collect(),
        loss: None,
        tier,
        log: Some(LogFigures {
            records: verified.records,
            write_errors: None,
            records_not_written: None,
            incomplete_from_seq: None,
        }),
        streams: Vec::new(),
    })
}
