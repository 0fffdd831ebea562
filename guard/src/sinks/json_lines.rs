//! Events as JSON lines (one `GuardEvent` per line) to a file or standard output: the
//! `--events` option of `guard exec` and `guard watch`. Storms become summary lines as in the
//! forensic log ([`super::summary`]): the file obeys the same bounds.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::summary::{EventPayload, Step, Summarizer, Summary, SummaryPolicy};
use crate::{Guard, events::GuardEvent};

/// How often summaries whose interval has passed are written.
const TICK: Duration = Duration::from_millis(100);

/// How the JSON-lines sink writes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct JsonLinesOptions {
    /// When a container's repetitive events become summary lines ([`SummaryPolicy::off`]:
    /// one line per event).
    pub summaries: SummaryPolicy,
    /// The file's byte budget (None: none; standard output has none): the file never grows
    /// past it ([`BudgetedLines`](super::events_budget::BudgetedLines)).
    pub budget: Option<u64>,
}

/// Events a JSON-lines file may fall behind by before it loses some (counted by the guard).
pub const QUEUE_EVENTS: usize = 65_536;

/// What the JSON-lines sink can fail with; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum JsonLinesError {
    /// The file could not be created ([`JsonLines::start`], [`open`]).
    #[error("creating events file {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A write or flush failed: the sink stops there ([`write()`], [`JsonLines::finish`]).
    #[error("writing events to {path}: {source}")]
    Write {
        /// The file (`-` for standard output).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The writing task panicked or was cancelled ([`JsonLines::finish`]).
    #[error("the events writer for {path} stopped: {message}")]
    Stopped {
        /// The file.
        path: PathBuf,
        /// The task's join error.
        message: String,
    },
}

/// A running JSON-lines sink: a subscriber of the guard writing to a file.
pub struct JsonLines {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), JsonLinesError>>,
    path: PathBuf,
}

impl JsonLines {
    /// Subscribes to `guard` (a queue of [`QUEUE_EVENTS`]) and writes every event to `path`
    /// (`-`: standard output), from a task of its own: call it inside a tokio runtime. Storms
    /// become summaries with the default [`SummaryPolicy`].
    pub fn start(guard: &Guard, path: &Path) -> Result<Self, JsonLinesError> {
        Self::start_with(guard, path, JsonLinesOptions::default())
    }

    /// [`JsonLines::start`] with `options`.
    pub fn start_with(
        guard: &Guard,
        path: &Path,
        options: JsonLinesOptions,
    ) -> Result<Self, JsonLinesError> {
        let out = match (open(path)?, options.budget) {
            (out, Some(budget)) if path.as_os_str() != "-" => {
                Box::new(super::events_budget::BudgetedLines::new(out, budget))
            }
            (out, _) => out,
        };
        let (stop, stopped) = oneshot::channel();
        let events = guard.subscribe(QUEUE_EVENTS);
        let task = tokio::spawn(write_with(
            events,
            out,
            path.to_path_buf(),
            stopped,
            options,
        ));
        Ok(Self {
            stop,
            task,
            path: path.to_path_buf(),
        })
    }

    /// [`JsonLines::start`] within a byte budget (None: none; standard output has none).
    pub fn start_within(
        guard: &Guard,
        path: &Path,
        budget: Option<u64>,
    ) -> Result<Self, JsonLinesError> {
        let options = JsonLinesOptions {
            budget,
            ..JsonLinesOptions::default()
        };
        Self::start_with(guard, path, options)
    }

    /// Writes what is queued and ends (call after `Guard::drain` to include every event).
    pub async fn finish(self) -> Result<(), JsonLinesError> {
        let _ = self.stop.send(());
        self.task.await.map_err(|join| JsonLinesError::Stopped {
            path: self.path,
            message: join.to_string(),
        })?
    }
}

/// Where the lines go: `-` is standard output.
pub fn open(path: &Path) -> Result<Box<dyn Write + Send>, JsonLinesError> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::File::create(path).map_err(|source| JsonLinesError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

/// Writes every event until the stream ends or `stop` fires, then what is still queued, with
/// the default [`SummaryPolicy`].
pub async fn write(
    events: mpsc::Receiver<GuardEvent>,
    out: Box<dyn Write + Send>,
    path: PathBuf,
    stop: oneshot::Receiver<()>,
) -> Result<(), JsonLinesError> {
    write_with(events, out, path, stop, JsonLinesOptions::default()).await
}

/// [`write()`] with `options`. Flushes whenever it has caught up: one write per burst, not
/// per event.
pub async fn write_with(
    mut events: mpsc::Receiver<GuardEvent>,
    out: Box<dyn Write + Send>,
    path: PathBuf,
    mut stop: oneshot::Receiver<()>,
    options: JsonLinesOptions,
) -> Result<(), JsonLinesError> {
    let error = |source| JsonLinesError::Write {
        path: path.clone(),
        source,
    };
    let mut summaries = Summarizer::new(options.summaries);
    let mut tick = tokio::time::interval(TICK);
    let mut sink = Lines { out, failed: None };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    summaries.offer(event, &mut |step| sink.write(&step));
                    if events.is_empty() {
                        sink.out.flush().map_err(error)?;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                let now = crate::events::monotonic_ns();
                summaries.tick(now, &mut |step| sink.write(&step));
            }
            _ = &mut stop => {
                while let Ok(event) = events.try_recv() {
                    summaries.offer(event, &mut |step| sink.write(&step));
                }
                break;
            }
        }
        if sink.failed.is_some() {
            break;
        }
    }
    summaries.flush_all(&mut |step| sink.write(&step));
    if let Some(e) = sink.failed {
        return Err(error(e));
    }
    sink.out.flush().map_err(error)
}

/// The file and its first write error: the summarizer's callback cannot return one, so the
/// loop checks it after each step and stops there.
struct Lines {
    out: Box<dyn Write + Send>,
    failed: Option<std::io::Error>,
}

impl Lines {
    fn write(&mut self, step: &Step) {
        if self.failed.is_none()
            && let Err(e) = write_step(&mut self.out, step)
        {
            self.failed = Some(e);
        }
    }
}

fn write_step(out: &mut dyn Write, step: &Step) -> std::io::Result<()> {
    let line = match step {
        Step::Event(event) => serde_json::to_string(event),
        Step::Summary(summary) => serde_json::to_string(&SummaryLine::of(summary)),
    }
    .map_err(std::io::Error::other)?;
    writeln!(out, "{line}")
}

/// A summary as an events-file line: shaped as an event's (`container`, `ktime_ns`,
/// `cgroup_id`, `detail` with its `kind`), the `summary` record's payload in `detail`.
#[derive(serde::Serialize)]
struct SummaryLine<'a> {
    container: Option<&'a str>,
    ktime_ns: u64,
    cgroup_id: u64,
    detail: SummaryDetail<'a>,
}

#[derive(serde::Serialize)]
struct SummaryDetail<'a> {
    kind: &'static str,
    #[serde(flatten)]
    summary: &'a Summary,
}

impl<'a> SummaryLine<'a> {
    fn of(summary: &'a Summary) -> Self {
        let last = summary.last_event();
        Self {
            container: summary.container.as_deref(),
            ktime_ns: summary.last_ktime_ns,
            cgroup_id: last.map_or(0, |e| EventPayload::of(e).cgroup_id),
            detail: SummaryDetail {
                kind: crate::forensic::kinds::SUMMARY,
                summary,
            },
        }
    }
}
