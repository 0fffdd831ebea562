//! The pipeline's end: every event a [`Guard`] streams, plus the agent's own records (limits
//! applied, reports), appended to the hash-chained forensic log, with losses in-band.
use std::{
    path::Path,
    sync::{
        Arc,
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
    events::{EventDetail, GuardEvent},
    forensic::{Head, LogOptions, LogWriter, Lost, StartInfo, Throttle, WriterError},
};

/// Events the log may fall behind by before it loses some (counted in-band). At the writer's
/// measured 0.6 M events/s this is ~25 ms of backlog; it is the largest item of the agent's
/// memory budget ([`crate::budget`]), so it is sized for a 128 MiB guest.
pub const QUEUE_EVENTS: usize = 16_384;
/// How often buffered records are flushed (and the fsync policy applied).
const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("forensic log: {0}")]
    Writer(#[from] WriterError),
    #[error("forensic log: encoding a {kind} record: {source}")]
    Encode {
        kind: String,
        source: serde_json::Error,
    },
    #[error("the forensic log task stopped")]
    Stopped,
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

/// A running log of one guard's events.
pub struct EventLog {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<Result<Head, EventLogError>>,
}

impl EventLog {
    /// Creates (or continues) the log in `dir`; its first record states the guard's version,
    /// the kernel, the tier and `limits`.
    pub fn start(
        guard: &Guard,
        dir: &Path,
        options: LogOptions,
        limits: Value,
    ) -> Result<Self, EventLogError> {
        let mut start = StartInfo::new(guard.tier() as u8, limits);
        start.extra.insert(
            "capabilities".to_string(),
            serde_json::to_value(guard.capabilities()).unwrap_or(Value::Null),
        );
        let writer = LogWriter::create(dir, options, &start)?;
        let (events, dropped) = guard.subscribe_counted(QUEUE_EVENTS);
        let (commands, receiver) = mpsc::channel(64);
        let task = tokio::spawn(run(writer, events, dropped, receiver));
        Ok(Self { commands, task })
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

async fn run(
    mut writer: LogWriter,
    mut events: mpsc::Receiver<GuardEvent>,
    dropped: Arc<AtomicU64>,
    mut commands: mpsc::Receiver<Command>,
) -> Result<Head, EventLogError> {
    let mut reported_drops = 0;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let result: Result<(), EventLogError> = async {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => append_event(&mut writer, &event)?,
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(Command::Record { kind, container, payload, reply }) => {
                        let appended = writer
                            .append(&kind, container.as_deref(), &payload)
                            .map_err(EventLogError::from);
                        if let Err(failure) = &appended {
                            // The caller gets this error; the log cannot go on after it.
                            error!(error = %failure, "the forensic log stopped");
                            let _ = reply.send(appended);
                            return Err(EventLogError::Stopped);
                        }
                        let _ = reply.send(appended);
                    }
                    Some(Command::Close) | None => break,
                },
                _ = tick.tick() => {
                    append_drops(&mut writer, &dropped, &mut reported_drops)?;
                    writer.flush()?;
                }
            }
        }
        while let Ok(event) = events.try_recv() {
            append_event(&mut writer, &event)?;
        }
        append_drops(&mut writer, &dropped, &mut reported_drops)
    }
    .await;
    if let Err(failure) = result {
        // Reported here at once (the agent learns it again from close()), never swallowed.
        error!(error = %failure, "the forensic log stopped");
        return Err(failure);
    }
    let head = writer.head();
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

#[derive(Serialize)]
struct EventPayload<'a> {
    cpu: u32,
    seq: u64,
    ktime_ns: u64,
    cgroup_id: u64,
    #[serde(flatten)]
    detail: &'a EventDetail,
}

/// Appends one streamed event as its log record (`lost` and `throttle` in their own forms).
pub fn append_event(writer: &mut LogWriter, event: &GuardEvent) -> Result<(), EventLogError> {
    let container = event.container.as_deref();
    match &event.event.detail {
        EventDetail::Lost { event_kind, count } => {
            let lost = Lost {
                source: "bpf_ringbuf".to_string(),
                event_kind: Some(event_kind.to_string()),
                cpu: None,
                count: *count,
            };
            writer.append_lost(container, &lost)?;
        }
        EventDetail::Throttle {
            suppressed,
            window_ns,
        } => {
            let throttle = Throttle {
                event_kind: "any".to_string(),
                suppressed: *suppressed,
                window_ms: window_ns / 1_000_000,
            };
            writer.append_throttle(container, &throttle)?;
        }
        detail => {
            let payload = EventPayload {
                cpu: event.event.cpu,
                seq: event.event.seq,
                ktime_ns: event.event.ktime_ns,
                cgroup_id: event.event.cgroup_id,
                detail,
            };
            writer.append(detail.kind_name(), container, &payload)?;
        }
    }
    Ok(())
}
