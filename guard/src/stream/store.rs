//! One guest's copy on the host: the streamed lines stored byte for byte in the log's own
//! layout (so `guard log verify` reads it), each checked against the chain as it arrives.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::StreamVerdict;
use crate::forensic::{
    self, ChainCheck, LogReader, RepairOutcome,
    layout::{self, DirLock},
    record::kinds,
};

/// What one received line did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Received {
    /// A new record, stored.
    Stored { seq: u64, kind: String },
    /// A resent record, identical to the one the host holds.
    Matched,
}

/// The fields a store needs before the full check.
#[derive(Deserialize)]
struct Position {
    seq: u64,
    kind: String,
}

pub(super) struct GuestStore {
    dir: PathBuf,
    _lock: DirLock,
    chain: ChainCheck,
    file: Option<File>,
    file_index: u64,
    file_records: u64,
    file_bytes: u64,
    /// The last stored record is a `stop`.
    stopped: bool,
    /// While the guest resends records the host holds: the host's copy, read alongside.
    resent: Option<LogReader>,
}

impl GuestStore {
    /// Opens (or creates) the copy in `dir`: a torn final line (the collector died mid-write)
    /// is cut, and the copy must verify before anything is added to it.
    pub fn open(dir: &Path) -> Result<Self, StreamVerdict> {
        let failed = |what: String| StreamVerdict::Failed { error: what };
        std::fs::create_dir_all(dir)
            .map_err(|error| failed(format!("creating {}: {error}", dir.display())))?;
        let files = layout::list_files(dir).map_err(|error| failed(error.to_string()))?;
        // An empty newest file: the collector died between creating it and writing to it.
        if let Some(newest) = files.last().filter(|file| {
            file.index > 0 && std::fs::metadata(&file.path).is_ok_and(|meta| meta.len() == 0)
        }) {
            std::fs::remove_file(&newest.path)
                .map_err(|error| failed(format!("removing {}: {error}", newest.path.display())))?;
        }
        let held = !layout::list_files(dir)
            .map_err(|error| failed(error.to_string()))?
            .is_empty();
        let (chain, stopped, file_index, file_records, file_bytes) = if held {
            match forensic::repair(dir).map_err(|error| failed(error.to_string()))? {
                RepairOutcome::Refused(report) => {
                    return Err(failed(format!(
                        "the stored copy in {} does not verify: {}",
                        dir.display(),
                        report
                            .problem
                            .map_or_else(String::new, |problem| problem.to_string())
                    )));
                }
                RepairOutcome::Clean(_) | RepairOutcome::Repaired { .. } => {}
            }
            let (report, chain) =
                forensic::verify_with_chain(dir).map_err(|error| failed(error.to_string()))?;
            let (name, records, bytes) = chain
                .last_file()
                .map(|(name, records, bytes)| (name.to_string(), records, bytes))
                .unwrap_or_default();
            let index = layout::parse_file_name(&name).unwrap_or(0);
            let stopped = report.last_session.is_some_and(|session| session.stopped);
            (chain, stopped, index, records, bytes)
        } else {
            (ChainCheck::new(), false, 0, 0, 0)
        };
        let lock = layout::lock_dir(dir).map_err(|error| failed(error.to_string()))?;
        let file = if held {
            let path = dir.join(layout::file_name(file_index));
            Some(
                OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|error| failed(format!("opening {}: {error}", path.display())))?,
            )
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            chain,
            file,
            file_index,
            file_records,
            file_bytes,
            stopped,
            resent: None,
        })
    }

    /// Records the host holds (the next seq it expects).
    pub fn next_seq(&self) -> u64 {
        self.chain.next_seq()
    }

    /// The hash of the last line held (the genesis value when none).
    pub fn head(&self) -> String {
        self.chain.head()
    }

    /// The last record held is a `stop`: the guest's session ended cleanly.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes one line from the guest: a new record is checked and stored; a record the host
    /// already holds must be the same bytes. Anything else ends the stream with its verdict.
    pub fn receive(&mut self, line: &[u8]) -> Result<Received, StreamVerdict> {
        let position: Position =
            serde_json::from_slice(line).map_err(|error| StreamVerdict::Invalid {
                seq: None,
                defect: format!("not a log record: {error}"),
            })?;
        let next = self.chain.next_seq();
        if position.seq < next {
            return self.compare(position.seq, line);
        }
        if position.seq > next {
            return Err(StreamVerdict::Gap {
                from: next,
                to: position.seq - 1,
            });
        }
        self.resent = None;
        if position.kind == kinds::ROTATE && self.file.is_some() {
            self.chain.end_file(
                layout::file_name(self.file_index),
                self.file_records,
                self.file_bytes,
            );
            self.file_index += 1;
            self.file = None;
            self.file_records = 0;
            self.file_bytes = 0;
        }
        let name = layout::file_name(self.file_index);
        self.chain
            .check(line, self.file_records + 1, &name)
            .map_err(|defect| StreamVerdict::Invalid {
                seq: Some(position.seq),
                defect: defect.to_string(),
            })?;
        let path = self.dir.join(&name);
        let write_failed = |error: std::io::Error| StreamVerdict::Failed {
            error: format!("writing {}: {error}", path.display()),
        };
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(write_failed)?,
            );
        }
        let file = self.file.as_mut().expect("opened above");
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        file.write_all(&bytes).map_err(write_failed)?;
        self.file_records += 1;
        self.file_bytes += bytes.len() as u64;
        self.stopped = position.kind == kinds::STOP;
        Ok(Received::Stored {
            seq: position.seq,
            kind: position.kind,
        })
    }

    /// A resent record must be byte for byte the one the host holds at that seq.
    fn compare(&mut self, seq: u64, line: &[u8]) -> Result<Received, StreamVerdict> {
        let failed = |error: String| StreamVerdict::Failed { error };
        if self.resent.is_none() {
            self.resent =
                Some(LogReader::open(&self.dir).map_err(|error| failed(error.to_string()))?);
        }
        let reader = self.resent.as_mut().expect("opened above");
        for entry in reader.by_ref() {
            let entry = entry.map_err(|error| failed(error.to_string()))?;
            if entry.record.seq < seq {
                continue;
            }
            if entry.record.seq == seq && entry.raw == line {
                return Ok(Received::Matched);
            }
            break;
        }
        Err(StreamVerdict::Forked { at_seq: seq })
    }
}
