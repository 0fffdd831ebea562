//! A running guard's snapshot for a scrape: every watched container's report as of now.
use crate::{Guard, sinks::event_log::EventLogGauge};

use super::{LogFigures, Snapshot};

/// The snapshot of `guard` now (and of its log, if it has one). Each report drains the
/// guard's pending events first, as [`Guard::report`] does, so a scrape is as exact as a report.
pub async fn snapshot(guard: &Guard, log: Option<&EventLogGauge>) -> Snapshot {
    let mut reports = Vec::new();
    for id in guard.watched() {
        // A container unwatched since the list was taken is simply not in this scrape.
        if let Ok(report) = guard.report(&id).await
            && let Ok(value) = serde_json::to_value(&report)
        {
            reports.push(value);
        }
    }
    let loss = match guard.loss().await {
        Ok(loss) => serde_json::to_value(loss).ok(),
        Err(_) => None,
    };
    Snapshot {
        reports,
        loss,
        tier: Some(u8::from(guard.tier())),
        log: log.map(|log| {
            let stats = log.stats();
            LogFigures {
                records: log.records(),
                write_errors: Some(stats.write_errors),
                records_not_written: Some(stats.records_not_written),
                incomplete_from_seq: stats.incomplete.map(|log| log.first_missing_seq),
            }
        }),
        streams: Vec::new(),
    }
}
