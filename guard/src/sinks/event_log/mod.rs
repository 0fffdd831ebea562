//! The pipeline's end: every event a [`Guard`] streams, plus the agent's own records (limits
//! applied, reports), appended to the hash-chained forensic log, with losses in-band.
use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::error;

use super::summary::{Summarizer, SummaryPolicy};
use crate::{
    Guard,
    events::{GuardEvent, monotonic_ns},
    forensic::{Head, LogIncomplete, LogOptions, LogWriter, Lost, StartInfo, WriterError},
};

/// Events the log may fall behind by before it loses some (counted in-band). At the writer's
/// measured 1.4 M events/s this is ~12 ms of backlog; it is the largest item of the agent's
/// memory budget ([`crate::budget`]), so it is sized for a 128 MiB guest.
pub const QUEUE_EVENTS: usize = 16_384;
/// How often buffered records are flushed (and the fsync policy applied).
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What the event log can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The writer's error: opening the log at [`EventLog::start`], appending one of the
    /// agent's records in [`EventLog::record`] (a bad kind, a write error, a writer stopped by
    /// an earlier one), or writing the `stop` record in [`EventLog::close`].
    #[error("forensic log: {0}")]
    Writer(#[from] WriterError),
    /// [`EventLog::record`]'s payload does not serialize to JSON; nothing was sent.
    #[error("forensic log: encoding a {kind} record: {source}")]
    Encode {
        /// The record's kind.
        kind: String,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// The log's task is gone: it ended because the guard's event stream ended (the
    /// [`Guard`] was dropped), or it panicked.
    #[error("the forensic log task stopped")]
    Stopped,
    /// From `close` when the log still cannot write: the first error and everything not
    /// written since.
    #[error("{cause}; {not_written} record(s) were not written in all")]
    Incomplete {
        /// The error that stopped the writer.
        cause: String,
        /// Records not in the log, in all ([`EventLogStats::records_not_written`]).
        not_written: u64,
    },
}

/// What the log could not write, for an agent that watches its own health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventLogStats {
    /// Failed writes or syncs that began an outage (the log retries every second, and writes
    /// a `gap` record naming the missing seqs when it can).
    pub write_errors: u64,
    /// Records (events, losses, the agent's own) that are not in the log: accepted ones that
    /// never reached the file, those refused after a failure, and single records refused as
    /// invalid (e.g. too large).
    pub records_not_written: u64,
    /// The error that began the first outage.
    pub failure: Option<String>,
    /// From which seq the log is incomplete, why, and whether it writes again (None: whole).
    pub incomplete: Option<LogIncomplete>,
}

/// Reads a running log's figures (see [`EventLog::gauge`]).
#[derive(Clone)]
pub struct EventLogGauge {
    stats: Arc<Mutex<EventLogStats>>,
    next_seq: Arc<AtomicU64>,
}

impl EventLogGauge {
    /// Records in the log's files, as of the last flush.
    pub fn records(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Write errors and records not written so far.
    pub fn stats(&self) -> EventLogStats {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// How the event log writes: the log's own options and its summary policy. `From<LogOptions>`
/// gives the default policy, so [`EventLog::start`] takes either.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EventLogOptions {
    /// The log file's options (fsync, rotation, checkpoints, …).
    pub log: LogOptions,
    /// When a container's repetitive events become `summary` records
    /// ([`SummaryPolicy::off`]: one record per event).
    pub summaries: SummaryPolicy,
}

impl From<LogOptions> for EventLogOptions {
    fn from(log: LogOptions) -> Self {
        Self {
            log,
            summaries: SummaryPolicy::default(),
        }
    }
}

enum Command {
    Record {
        kind: String,
        container: Option<String>,
        payload: Value,
        reply: oneshot::Sender<Result<u64, EventLogError>>,
    },
    Retry,
    Close,
}

/// A running log of one guard's events. A write error (e.g. ENOSPC) does not end it: the
/// error is logged at once, records are refused and counted ([`EventLog::stats`]) while the
/// writer retries every second, [`EventLog::record`] returns the error, and when a write
/// succeeds again a `gap` record names the missing seqs. The guard's health and reports say
/// from which seq the log is incomplete. [`EventLog::close`] returns the first error with the
/// count of records not written only if the log still cannot write at the end.
pub struct EventLog {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<Result<Head, EventLogError>>,
    stats: Arc<Mutex<EventLogStats>>,
    /// The log's next seq as of the last flush: its record count, for metrics.
    next_seq: Arc<AtomicU64>,
}

impl EventLog {
    /// Creates (or continues) the log in `dir`; its first record states the guard's version,
    /// the kernel, the tier, the capability report and `limits`. Subscribes to `guard` with a
    /// queue of [`QUEUE_EVENTS`] and writes from a task of its own: call it inside a tokio
    /// runtime. Events the queue drops become in-band `lost` records (`user_queue`). Storms
    /// become `summary` records as `options` say (a bare [`LogOptions`] takes the default
    /// [`SummaryPolicy`]).
    pub fn start(
        guard: &Guard,
        dir: &Path,
        options: impl Into<EventLogOptions>,
        limits: Value,
    ) -> Result<Self, EventLogError> {
        let EventLogOptions {
            log: options,
            summaries,
        } = options.into();
        let mut start = StartInfo::new(u8::from(guard.tier()), limits);
        start.extra.insert(
            "capabilities".to_string(),
            serde_json::to_value(guard.capabilities()).unwrap_or(Value::Null),
        );
        // The live sources this guard runs: where its records come from.
        start
            .extra
            .insert("sources".to_string(), serde_json::json!(guard.sources()));
        let writer = LogWriter::create(dir, options, &start)?;
        let (events, dropped) = guard.subscribe_counted(QUEUE_EVENTS);
        let (commands, receiver) = mpsc::channel(64);
        let stats = Arc::new(Mutex::new(EventLogStats::default()));
        let next_seq = Arc::new(AtomicU64::new(writer.head().next_seq));
        let accounts = Accounts {
            shared: Arc::clone(&stats),
            guard: guard.log_incomplete_slot(),
            failure: None,
            refused: 0,
        };
        let task = tokio::spawn(run(
            writer,
            Summarizer::new(summaries),
            events,
            dropped,
            receiver,
            accounts,
            Arc::clone(&next_seq),
        ));
        Ok(Self {
            commands,
            task,
            stats,
            next_seq,
        })
    }

    /// Records in the log's files (its next seq), as of the last flush (every 100 ms).
    pub fn records(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// A handle that reads [`EventLog::records`] and [`EventLog::stats`] from elsewhere (a
    /// metrics server) without holding the log.
    pub fn gauge(&self) -> EventLogGauge {
        EventLogGauge {
            stats: Arc::clone(&self.stats),
            next_seq: Arc::clone(&self.next_seq),
        }
    }

    /// Write errors and records not written so far.
    pub fn stats(&self) -> EventLogStats {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Appends one record of the agent's own (e.g. `limits_applied`, `report`).
    pub async fn record(
        &self,
        kind: &str,
        container: Option<&str>,
        payload: &impl Serialize,
    ) -> Result<u64, EventLogError> {
        let payload = serde_json::to_value(payload).map_err(|source| EventLogError::Encode {
            kind: kind.to_string(),
            source,
        })?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Record {
                kind: kind.to_string(),
                container: container.map(str::to_string),
                payload,
                reply,
            })
            .await
            .map_err(|_| EventLogError::Stopped)?;
        answer.await.map_err(|_| EventLogError::Stopped)?
    }

    /// During an outage, asks the writer to try again now, whatever its backoff (before the
    /// records that matter most, such as the final reports).
    pub async fn retry(&self) {
        let _ = self.commands.send(Command::Retry).await;
    }

    /// Writes what is queued (call after [`Guard::drain`] to include every event), closes the
    /// log with its `stop` record and returns its head.
    pub async fn close(self) -> Result<Head, EventLogError> {
        let _ = self.commands.send(Command::Close).await;
        self.task.await.map_err(|_| EventLogError::Stopped)?
    }
}

/// The log's task: keeps its accounts of what could not be written.
struct Accounts {
    shared: Arc<Mutex<EventLogStats>>,
    /// Where the guard's health and reports read whether the log is whole.
    guard: Arc<Mutex<Option<LogIncomplete>>>,
    /// The error that stopped the writer (its Display: the error itself is not Clone).
    failure: Option<String>,
    /// Records refused one by one while the writer still worked.
    refused: u64,
}

impl Accounts {
    /// Notes the outcome of one writer call; a write error is reported once, at once. The
    /// writer's counts change only with an error, so a success costs nothing here (this runs
    /// once per event).
    fn note<T, E: std::fmt::Display>(&mut self, writer: &LogWriter, result: Result<T, E>) {
        let Err(error) = result else {
            return;
        };
        if writer.is_failed() {
            if self.failure.is_none() {
                error!(%error, "the forensic log cannot write; records are counted, it retries every second and writes a gap record when it can");
                self.failure = Some(error.to_string());
            }
        } else {
            error!(%error, "a record was not written to the forensic log");
            self.refused += 1;
        }
        self.publish(writer);
    }

    /// Shares the writer's figures and whether the log is whole (after every error, and on
    /// every flush, which is when an outage can end).
    fn publish(&self, writer: &LogWriter) {
        let stats = writer.stats();
        let incomplete = writer.incomplete().cloned();
        let now = EventLogStats {
            write_errors: stats.write_errors,
            records_not_written: stats.records_not_written + self.refused,
            failure: self.failure.clone(),
            incomplete: incomplete.clone(),
        };
        *self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = now;
        *self
            .guard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = incomplete;
    }
}

async fn run(
    mut writer: LogWriter,
    mut summaries: Summarizer,
    mut events: mpsc::Receiver<GuardEvent>,
    dropped: Arc<AtomicU64>,
    mut commands: mpsc::Receiver<Command>,
    mut accounts: Accounts,
    next_seq: Arc<AtomicU64>,
) -> Result<Head, EventLogError> {
    let mut reported_drops = 0;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    // After a failure the loop goes on: events keep being taken (and counted as not
    // written) so that the count is exact, and the agent's records get the error.
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => summaries.offer(event, &mut |step| {
                    let result = append_step(&mut writer, step);
                    accounts.note(&writer, result);
                }),
                None => break,
            },
            command = commands.recv() => match command {
                Some(Command::Record { kind, container, payload, reply }) => {
                    // The events queued so far, and the container's pending summaries, come
                    // before the agent's record (a report written after `Guard::drain`
                    // follows every event it counts).
                    let mut write = |step| {
                        let result = append_step(&mut writer, step);
                        accounts.note(&writer, result);
                    };
                    while let Ok(event) = events.try_recv() {
                        summaries.offer(event, &mut write);
                    }
                    summaries.flush_container(container.as_deref(), &mut write);
                    let appended = writer
                        .append(&kind, container.as_deref(), &payload)
                        .map_err(EventLogError::from);
                    accounts.note(&writer, appended.as_ref());
                    let _ = reply.send(appended);
                }
                Some(Command::Retry) => {
                    let _ = writer.retry();
                    accounts.publish(&writer);
                }
                Some(Command::Close) | None => break,
            },
            _ = tick.tick() => {
                summaries.tick(monotonic_ns(), &mut |step| {
                    let result = append_step(&mut writer, step);
                    accounts.note(&writer, result);
                });
                let result = append_drops(&mut writer, &dropped, &mut reported_drops)
                    .and_then(|()| writer.flush().map_err(EventLogError::from));
                accounts.note(&writer, result);
                if accounts.failure.is_some() {
                    accounts.publish(&writer);
                }
                next_seq.store(writer.head().next_seq, Ordering::Relaxed);
            }
        }
    }
    let mut write = |step| {
        let result = append_step(&mut writer, step);
        accounts.note(&writer, result);
    };
    while let Ok(event) = events.try_recv() {
        summaries.offer(event, &mut write);
    }
    // Nothing is held back at the end.
    summaries.flush_all(&mut write);
    let result = append_drops(&mut writer, &dropped, &mut reported_drops);
    accounts.note(&writer, result);
    // One last attempt, whatever the backoff: the gap before the `stop`.
    let _ = writer.retry();
    accounts.publish(&writer);
    if writer.is_failed() {
        // Never swallowed: the agent learns the first error and the full count here.
        let cause = accounts.failure.take().unwrap_or_default();
        let not_written = writer.stats().records_not_written + accounts.refused;
        return Err(EventLogError::Incomplete { cause, not_written });
    }
    let head = writer.head();
    next_seq.store(head.next_seq, Ordering::Relaxed);
    writer.close()?;
    Ok(head)
}

/// Events this log's own queue dropped since the last check, as an in-band `lost` record.
fn append_drops(
    writer: &mut LogWriter,
    dropped: &AtomicU64,
    reported: &mut u64,
) -> Result<(), EventLogError> {
    let total = dropped.load(Ordering::Relaxed);
    if total > *reported {
        let lost = Lost {
            source: "user_queue".to_string(),
            event_kind: None,
            cpu: None,
            count: total - *reported,
        };
        writer.append_lost(None, &lost)?;
        *reported = total;
    }
    Ok(())
}

mod append;

#[cfg(test)]
use append::LoggedPayload;
#[cfg(feature = "internals")]
pub(crate) use append::append_event;
use append::append_step;

#[cfg(test)]
mod tests;
