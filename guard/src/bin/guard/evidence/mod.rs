//! The evidence a command keeps beside its report: the forensic log, its stream to a host
//! collector, and the metrics server. Every command that runs a guard (exec, watch, run,
//! selftest) starts them in one order and finishes them in one order, through [`Evidence`].
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use guard::{
    Guard, Report,
    forensic::{Head, LogOptions},
    metrics::MetricsListener,
    sinks::event_log::{EventLog, EventLogError},
    stream::Sender,
};

mod log_flags;
mod metrics_flags;

pub use log_flags::{BudgetFlag, LogFlags, StreamFlags};
pub use metrics_flags::MetricsFlags;

/// How long a finishing stream waits for the host to acknowledge the log's last records.
const STREAM_FINISH: Duration = Duration::from_secs(10);
/// The exit status of a command whose own work succeeded but whose log stream did not deliver
/// the whole log to the host (docs/ERRORS.md).
pub const STREAM_NOT_DELIVERED: u8 = 5;

/// The log a command writes: where (None: no log), how, and whether it is streamed.
pub struct LogPlan {
    pub dir: Option<PathBuf>,
    pub options: LogOptions,
    pub stream: StreamFlags,
}

/// A command's running evidence.
pub struct Evidence {
    log: Option<EventLog>,
    stream: Option<Sender>,
    served: Option<metrics_flags::Served>,
}

impl Evidence {
    /// Starts, in this order: the log (its first record states `limits`), its stream, and the
    /// metrics server on `metrics` (bound before the guard started, so a taken port fails the
    /// command at once).
    pub fn start(
        guard: &Arc<Guard>,
        plan: LogPlan,
        limits: serde_json::Value,
        metrics: Option<MetricsListener>,
    ) -> anyhow::Result<Self> {
        let acked = plan.options.acked.clone();
        let log = match &plan.dir {
            Some(dir) => Some(
                EventLog::start(guard, dir, plan.options, limits)
                    .with_context(|| format!("starting the forensic log in {}", dir.display()))?,
            ),
            None => None,
        };
        let stream = match &plan.dir {
            Some(dir) => plan.stream.start(dir, acked)?,
            None => None,
        };
        let served = metrics_flags::serve_guard(metrics, guard, log.as_ref().map(EventLog::gauge));
        Ok(Self {
            log,
            stream,
            served,
        })
    }

    /// The log, for the command's own records.
    pub fn log(&self) -> Option<&EventLog> {
        self.log.as_ref()
    }

    /// Stops serving metrics, before the final reports are taken.
    pub fn stop_metrics(&mut self) {
        self.served = None;
    }

    /// Records `reports`, closes the log and says where it is and its head; then ends the
    /// stream, saying what the host acknowledged.
    pub async fn finish(self, reports: &[Report]) -> anyhow::Result<Ended> {
        Ok(self.close(reports).await?.announce())
    }

    /// Stops serving metrics, records `reports` and closes the log; the stream is still to be
    /// ended ([`Closed`]).
    pub async fn close(mut self, reports: &[Report]) -> Result<Closed, EventLogError> {
        self.stop_metrics();
        let head = match self.log {
            Some(log) => {
                for report in reports {
                    log.record("report", Some(&report.container), report)
                        .await?;
                }
                Some(log.close().await?)
            }
            None => None,
        };
        Ok(Closed {
            head,
            stream: self.stream,
        })
    }
}

/// A closed log and its stream, still open until the host has the log's last records.
pub struct Closed {
    /// The log's head (None: no log).
    pub head: Option<Head>,
    stream: Option<Sender>,
}

impl Closed {
    /// Says where the log is and its head, then ends the stream.
    pub fn announce(self) -> Ended {
        if let Some(head) = &self.head {
            eprintln!(
                "guard: forensic log in {}: {} records, head {}",
                head.file.display(),
                head.next_seq,
                head.prev
            );
            if let (dropped, refused @ 1..) | (dropped @ 1.., refused) = head.budget_counts {
                eprintln!(
                    "guard: forensic log: its byte budget removed {dropped} record(s) and kept \
                     {refused} event(s) out (recorded in the log: dropped, log_budget)"
                );
            }
        }
        self.end_stream()
    }

    /// Ends the stream: its `stop` goes out, and what the host acknowledged, or why it holds
    /// less, is said.
    pub fn end_stream(self) -> Ended {
        let delivered = match self.stream {
            Some(sender) => {
                let stats = sender.finish(STREAM_FINISH);
                let how = match (&stats.failure, stats.delivered) {
                    (_, true) => "the host holds the whole log".to_string(),
                    (Some(failure), false) => format!("NOT DELIVERED: {failure}"),
                    (None, false) => format!(
                        "NOT DELIVERED: no acknowledgement of the log's end within \
                         {STREAM_FINISH:?}{}",
                        stats
                            .last_error
                            .as_ref()
                            .map(|error| format!(" (last error: {error})"))
                            .unwrap_or_default()
                    ),
                };
                eprintln!(
                    "guard: log stream: {} line(s) sent over {} connection(s), {} record(s) \
                     acknowledged; {how}",
                    stats.lines_sent, stats.connections, stats.acked_next_seq,
                );
                stats.delivered
            }
            None => true,
        };
        Ended {
            head: self.head,
            delivered,
        }
    }
}

/// A closed log whose stream has ended.
pub struct Ended {
    /// The log's head (None: no log).
    pub head: Option<Head>,
    /// False: the stream did not deliver the whole log to the host.
    pub delivered: bool,
}

impl Ended {
    /// A command's exit status once its stream ended: a success whose log did not reach the
    /// host becomes [`STREAM_NOT_DELIVERED`]; a failure keeps its own status.
    pub fn exit_code(&self, code: ExitCode) -> ExitCode {
        if !self.delivered && code == ExitCode::SUCCESS {
            ExitCode::from(STREAM_NOT_DELIVERED)
        } else {
            code
        }
    }
}
