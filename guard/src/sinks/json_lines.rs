//! Events as JSON lines (one `GuardEvent` per line) to a file or standard output: the
//! `--events` option of `guard exec` and `guard watch`.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{Guard, events::GuardEvent};

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
    /// (`-`: standard output), from a task of its own: call it inside a tokio runtime.
    pub fn start(guard: &Guard, path: &Path) -> Result<Self, JsonLinesError> {
        let out = open(path)?;
        let (stop, stopped) = oneshot::channel();
        let events = guard.subscribe(QUEUE_EVENTS);
        let task = tokio::spawn(write(events, out, path.to_path_buf(), stopped));
        Ok(Self {
            stop,
            task,
            path: path.to_path_buf(),
        })
    }

    /// [`JsonLines::start`] within a byte budget (None: none; standard output has none): the
    /// file never grows past it ([`BudgetedLines`](super::events_budget::BudgetedLines)).
    pub fn start_within(
        guard: &Guard,
        path: &Path,
        budget: Option<u64>,
    ) -> Result<Self, JsonLinesError> {
        let out = match (open(path)?, budget) {
            (out, Some(budget)) if path.as_os_str() != "-" => {
                Box::new(super::events_budget::BudgetedLines::new(out, budget))
            }
            (out, _) => out,
        };
        let (stop, stopped) = oneshot::channel();
        let events = guard.subscribe(QUEUE_EVENTS);
        let task = tokio::spawn(write(events, out, path.to_path_buf(), stopped));
        Ok(Self {
            stop,
            task,
            path: path.to_path_buf(),
        })
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

/// Writes every event until the stream ends or `stop` fires, then what is still queued.
/// Flushes whenever it has caught up: one write per burst, not per event.
pub async fn write(
    mut events: mpsc::Receiver<GuardEvent>,
    mut out: Box<dyn Write + Send>,
    path: PathBuf,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), JsonLinesError> {
    let error = |source| JsonLinesError::Write {
        path: path.clone(),
        source,
    };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    write_line(&mut out, &event).map_err(error)?;
                    if events.is_empty() {
                        out.flush().map_err(error)?;
                    }
                }
                None => break,
            },
            _ = &mut stop => {
                while let Ok(event) = events.try_recv() {
                    write_line(&mut out, &event).map_err(error)?;
                }
                break;
            }
        }
    }
    out.flush().map_err(error)
}

fn write_line(out: &mut dyn Write, event: &GuardEvent) -> std::io::Result<()> {
    let line = serde_json::to_string(event).map_err(std::io::Error::other)?;
    writeln!(out, "{line}")
}
