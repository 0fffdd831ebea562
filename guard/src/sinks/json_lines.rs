//! Events as JSON lines (one `GuardEvent` per line) to a file or standard output: the
//! `--events` option of `guard exec` and `guard watch`.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use tokio::sync::{mpsc, oneshot};

use crate::events::GuardEvent;

#[derive(Debug, thiserror::Error)]
pub enum JsonLinesError {
    #[error("creating events file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing events to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
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
