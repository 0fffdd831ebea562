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

use crate::{
    Guard,
    events::{EventDetail, EventSource, GuardEvent, RingPosition},
    forensic::{Head, LogOptions, LogWriter, Lost, StartInfo, WriterError, record::Payload},
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
    /// From `close` after a write error: the first error and everything not written since.
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
    /// Failed writes or syncs (the log stops writing at the first).
    pub write_errors: u64,
    /// Records (events, losses, the agent's own) that are not in the log: accepted ones that
    /// never reached the file, those refused after a failure, and single records refused as
    /// invalid (e.g. too large).
    pub records_not_written: u64,
    /// The error that stopped the log.
    pub failure: Option<String>,
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

enum Command {
    Record {
        kind: String,
        container: Option<String>,
        payload: Value,
        reply: oneshot::Sender<Result<u64, EventLogError>>,
    },
    Close,
}

/// A running log of one guard's events. A write error (e.g. ENOSPC) does not end it: the
/// error is logged at once, every later record is refused and counted ([`EventLog::stats`]),
/// [`EventLog::record`] returns the error, and [`EventLog::close`] returns the first error with
/// the count of records not written.
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
    /// runtime. Events the queue drops become in-band `lost` records (`user_queue`).
    pub fn start(
        guard: &Guard,
        dir: &Path,
        options: LogOptions,
        limits: Value,
    ) -> Result<Self, EventLogError> {
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
        let task = tokio::spawn(run(
            writer,
            events,
            dropped,
            receiver,
            Arc::clone(&stats),
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
                error!(%error, "the forensic log stopped writing; later records are counted as not written");
                self.failure = Some(error.to_string());
            }
        } else {
            error!(%error, "a record was not written to the forensic log");
            self.refused += 1;
        }
        let stats = writer.stats();
        let now = EventLogStats {
            write_errors: stats.write_errors,
            records_not_written: stats.records_not_written + self.refused,
            failure: self.failure.clone(),
        };
        *self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = now;
    }
}

async fn run(
    mut writer: LogWriter,
    mut events: mpsc::Receiver<GuardEvent>,
    dropped: Arc<AtomicU64>,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Mutex<EventLogStats>>,
    next_seq: Arc<AtomicU64>,
) -> Result<Head, EventLogError> {
    let mut reported_drops = 0;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut accounts = Accounts {
        shared,
        failure: None,
        refused: 0,
    };
    // After a failure the loop goes on: events keep being taken (and counted as not
    // written) so that the count is exact, and the agent's records get the error.
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    let result = append_event(&mut writer, &event);
                    accounts.note(&writer, result);
                }
                None => break,
            },
            command = commands.recv() => match command {
                Some(Command::Record { kind, container, payload, reply }) => {
                    let appended = writer
                        .append(&kind, container.as_deref(), &payload)
                        .map_err(EventLogError::from);
                    accounts.note(&writer, appended.as_ref());
                    let _ = reply.send(appended);
                }
                Some(Command::Close) | None => break,
            },
            _ = tick.tick() => {
                let result = append_drops(&mut writer, &dropped, &mut reported_drops)
                    .and_then(|()| writer.flush().map_err(EventLogError::from));
                accounts.note(&writer, result);
                next_seq.store(writer.head().next_seq, Ordering::Relaxed);
            }
        }
    }
    while let Ok(event) = events.try_recv() {
        let result = append_event(&mut writer, &event);
        accounts.note(&writer, result);
    }
    let result = append_drops(&mut writer, &dropped, &mut reported_drops);
    accounts.note(&writer, result);
    if let Some(cause) = accounts.failure.take() {
        // Never swallowed: the agent learns the first error and the full count here.
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

/// An event's log payload: the event without its container (the record names it).
#[derive(Serialize)]
struct EventPayload<'a> {
    #[serde(flatten)]
    ring: Option<RingPosition>,
    ktime_ns: u64,
    cgroup_id: u64,
    source: EventSource,
    #[serde(flatten)]
    detail: &'a EventDetail,
}

impl<'a> EventPayload<'a> {
    fn of(event: &'a GuardEvent) -> Self {
        Self {
            ring: event.ring,
            ktime_ns: event.ktime_ns,
            cgroup_id: event.cgroup_id,
            source: event.source,
            detail: &event.detail,
        }
    }
}

/// The payload as it is logged. The rate-bounded kinds made of integers (fork, reclaim) are
/// written directly: serde's flattening and per-key escaping cost as much as the rest of the
/// line. The bytes are serde_json's for [`EventPayload`] (a test holds every kind to it); the
/// other kinds go through serde.
struct LoggedPayload<'a>(EventPayload<'a>);

impl Payload for LoggedPayload<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let EventPayload {
            ring,
            ktime_ns,
            cgroup_id,
            source,
            detail,
        } = &self.0;
        // The kind's own fields after the common head, each key with its comma.
        let fields: &[(&[u8], u64)] = match detail {
            EventDetail::Fork(fork) => &[
                (
                    b",\"kind\":\"fork\",\"parent_pid\":",
                    u64::from(fork.parent_pid),
                ),
                (b",\"child_pid\":", u64::from(fork.child_pid)),
            ],
            EventDetail::Reclaim(reclaim) => &[
                (b",\"kind\":\"reclaim\",\"tid\":", u64::from(reclaim.tid)),
                (b",\"duration_ns\":", reclaim.duration_ns),
                (b",\"nr_reclaimed\":", reclaim.nr_reclaimed),
            ],
            _ => return serde_json::to_writer(out, &self.0),
        };
        out.push(b'{');
        if let Some(ring) = ring {
            push_field(out, b"\"cpu\":", u64::from(ring.cpu));
            push_field(out, b",\"seq\":", ring.seq);
            out.push(b',');
        }
        push_field(out, b"\"ktime_ns\":", *ktime_ns);
        push_field(out, b",\"cgroup_id\":", *cgroup_id);
        // Source names are plain ASCII identifiers: no escaping needed.
        out.extend_from_slice(b",\"source\":\"");
        out.extend_from_slice(source.name().as_bytes());
        out.push(b'"');
        for (key, value) in fields {
            push_field(out, key, *value);
        }
        out.push(b'}');
        Ok(())
    }
}

/// `key` (its quotes, colon and any comma before it) and an integer, as serde_json writes it.
fn push_field(out: &mut Vec<u8>, key: &[u8], value: u64) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends one streamed event as its log record (`lost` and `throttle` in their own forms,
/// which their payloads give).
pub(crate) fn append_event(
    writer: &mut LogWriter,
    event: &GuardEvent,
) -> Result<(), EventLogError> {
    let container = event.container.as_deref();
    match &event.detail {
        EventDetail::Lost(lost) => {
            writer.append_lost(container, &lost.to_record(event.source()))?;
        }
        EventDetail::Throttle(throttle) => {
            writer.append_throttle(container, &throttle.to_record())?;
        }
        detail => {
            let payload = LoggedPayload(EventPayload::of(event));
            writer.append_payload(detail.kind_name(), container, &payload)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
