//! The evidence a command keeps beside its report: the forensic log, its stream to a host
//! collector, and the metrics server. Every command that runs a guard (exec, watch, run,
//! selftest) starts them in one order and finishes them in one order, through [`Evidence`].
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use guard::{
    Guard, Report,
    forensic::{Head, LogIncomplete, LogOptions},
    metrics::MetricsListener,
    sinks::{
        event_log::{EventLog, EventLogError, EventLogOptions},
        summary::SummaryPolicy,
    },
    stream::Sender,
};

mod log_flags;
mod metrics_flags;

pub use log_flags::{BudgetFlag, LogFlags, StreamFlags, SummaryFlags};
pub use metrics_flags::MetricsFlags;

/// How long a finishing stream waits for the host to acknowledge the log's last records.
const STREAM_FINISH: Duration = Duration::from_secs(10);
/// The exit status of a command whose own work succeeded but whose log stream did not deliver
/// the whole log to the host (docs/ERRORS.md).
pub const STREAM_NOT_DELIVERED: u8 = 5;
/// The exit status of a command whose own work succeeded but whose forensic log (or events
/// file) misses records it could not write; it wins over [`STREAM_NOT_DELIVERED`]
/// (docs/ERRORS.md).
pub const LOG_INCOMPLETE: u8 = 6;

/// The log a command writes: where (None: no log), how, and whether it is streamed.
pub struct LogPlan {
    pub dir: Option<PathBuf>,
    pub options: LogOptions,
    /// When storms become `summary` records.
    pub summaries: SummaryPolicy,
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
        let mut options = EventLogOptions::from(plan.options);
        options.summaries = plan.summaries;
        let log = match &plan.dir {
            Some(dir) => Some(
                EventLog::start(guard, dir, options, limits)
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
    /// ended ([`Closed`]). A log that cannot write never costs the reports: its failure is in
    /// [`Closed`] (and said on stderr), not an error.
    pub async fn close(mut self, reports: &[Report]) -> Result<Closed, EventLogError> {
        self.stop_metrics();
        let mut closed = Closed {
            head: None,
            incomplete: None,
            log_error: None,
            stream: self.stream,
        };
        if let Some(log) = self.log {
            let gauge = log.gauge();
            // A log in an outage gets one more chance before the reports.
            log.retry().await;
            for report in reports {
                if let Err(error) = log.record("report", Some(&report.container), report).await {
                    eprintln!(
                        "guard: the report of {} is not in the forensic log: {error}",
                        report.container
                    );
                }
            }
            match log.close().await {
                Ok(head) => closed.head = Some(head),
                Err(error) => {
                    eprintln!("guard: error: closing the forensic log: {error}");
                    closed.log_error = Some(error.to_string());
                }
            }
            closed.incomplete = gauge.stats().incomplete;
        }
        Ok(closed)
    }
}

/// A closed log and its stream, still open until the host has the log's last records.
pub struct Closed {
    /// The log's head (None: no log, or it could not be closed).
    pub head: Option<Head>,
    /// From which seq the log misses records, and why (None: whole, or no log).
    pub incomplete: Option<LogIncomplete>,
    /// Why the log could not be closed with its `stop` record (it still could not write).
    pub log_error: Option<String>,
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
        let mut why_incomplete = self
            .incomplete
            .as_ref()
            .map(|log| format!("forensic {log}"));
        if let Some(error) = &self.log_error {
            why_incomplete = Some(match why_incomplete {
                Some(why) => format!("{why}; not closed: {error}"),
                None => format!("forensic log not closed: {error}"),
            });
        }
        Ended {
            head: self.head,
            delivered,
            incomplete: self.incomplete,
            why_incomplete,
        }
    }
}

/// A closed log whose stream has ended.
pub struct Ended {
    /// The log's head (None: no log).
    pub head: Option<Head>,
    /// False: the stream did not deliver the whole log to the host.
    pub delivered: bool,
    /// From which seq the log misses records (for every report printed).
    pub incomplete: Option<LogIncomplete>,
    /// Why the evidence is incomplete (the log, the events file): the last stderr line.
    why_incomplete: Option<String>,
}

impl Ended {
    /// Flags `reports` with the log's final state (their copies in the log carry the state
    /// when they were recorded).
    pub fn flag(&self, reports: &mut [Report]) {
        if let Some(incomplete) = &self.incomplete {
            for report in reports {
                report.loss.log_incomplete = Some(incomplete.clone());
            }
        }
    }

    /// An events file (`--events`) that failed: the evidence is incomplete too.
    pub fn events_failed(&mut self, error: &dyn std::fmt::Display) {
        eprintln!("guard: {error}");
        let why = format!("events file incomplete: {error}");
        self.why_incomplete = Some(match self.why_incomplete.take() {
            Some(earlier) => format!("{earlier}; {why}"),
            None => why,
        });
    }

    /// A command's exit status once its stream ended, said last on stderr when it is not its
    /// own: a success whose log (or events file) misses records becomes [`LOG_INCOMPLETE`],
    /// else one whose log did not reach the host [`STREAM_NOT_DELIVERED`]; a failure keeps its
    /// own status.
    pub fn exit_code(&self, code: ExitCode) -> ExitCode {
        if let Some(why) = &self.why_incomplete {
            if code == ExitCode::SUCCESS {
                eprintln!("guard: {why} (exit status {LOG_INCOMPLETE})");
                return ExitCode::from(LOG_INCOMPLETE);
            }
            eprintln!("guard: {why}");
        }
        if !self.delivered && code == ExitCode::SUCCESS {
            ExitCode::from(STREAM_NOT_DELIVERED)
        } else {
            code
        }
    }
}
