//! One guest's copy on the host: the streamed lines stored byte for byte in the log's own
//! layout (so `guard log verify` reads it), each checked against the chain as it arrives,
//! within the guest's quota of bytes and files and the filesystem's free-space reserve. The
//! copy's verified tail stays in memory between connections ([`load::Tail`]); every path is
//! opened without following links ([`nofollow`]).
use std::{fs::File, io::Write as _, os::fd::OwnedFd, sync::Arc};

use serde::Deserialize;

use super::StreamVerdict;
use crate::forensic::{layout, record::kinds};

mod load;
pub(crate) mod nofollow;
mod resend;

use load::{FileSpan, Tail};
use nofollow::{DirFd, error};
use resend::ResendCursor;

/// How much of the host one guest's copy may take, and how much of the store's filesystem
/// every copy leaves free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes in all of one guest's files (default 1 GiB).
    pub guest_bytes: u64,
    /// Files in one guest's copy (default 4096).
    pub guest_files: u64,
    /// Free bytes the store's filesystem keeps: a write that would go below fails its stream
    /// (default 256 MiB).
    pub reserve_bytes: u64,
    /// Free inodes the store's filesystem keeps: a new file that would go below fails its
    /// stream (default 4096).
    pub reserve_inodes: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            guest_bytes: 1 << 30,
            guest_files: 4096,
            reserve_bytes: 256 << 20,
            reserve_inodes: 4096,
        }
    }
}

/// What one received line did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// A new record, stored (not yet synced).
    Stored,
    /// A resent record, identical to the one the host holds.
    Matched,
}

/// What must reach stable storage before the lines stored so far are acknowledged.
pub(crate) struct Durable {
    /// The file written to.
    pub file: Arc<File>,
    /// The guest's directory, when a file was created in it since the last sync.
    pub dir: Option<Arc<OwnedFd>>,
}

/// The fields a store needs before the full check.
#[derive(Deserialize)]
struct Position {
    seq: u64,
    kind: String,
}

/// The copy's descriptors while a stream writes to it.
struct Open {
    dir: DirFd,
    dir_fd: Arc<OwnedFd>,
    _lock: OwnedFd,
    file: Option<Arc<File>>,
    /// Lines checked but not yet written to `file`.
    pending: Vec<u8>,
    /// Lines were written since the last [`GuestStore::durable`].
    written: bool,
    created_file: bool,
    resend: Option<ResendCursor>,
}

/// One guest's copy, from the collector's first connection of that guest to its end.
#[derive(Default)]
pub(crate) struct GuestStore {
    tail: Option<Tail>,
    open: Option<Open>,
    /// Full verifications of the copy on disk (1 for a collector's whole life, unless the copy
    /// changed under it).
    pub loads: u64,
}

impl GuestStore {
    /// Opens the copy `name` under `root` for a stream: its directory and lock, and its tail,
    /// read and verified from disk the first time (or when the disk no longer matches it).
    pub fn begin(&mut self, root: &DirFd, name: &str) -> Result<(), StreamVerdict> {
        let failed = |error: String| StreamVerdict::Failed { error };
        self.open = None;
        let dir = root.subdir(name).map_err(failed)?;
        let lock = dir.lock().map_err(failed)?;
        let fresh = match &self.tail {
            Some(tail) => !tail.matches_disk(&dir),
            None => true,
        };
        if fresh {
            self.tail = None;
            self.loads += 1;
            self.tail = Some(load::load(&dir).map_err(failed)?);
        }
        let tail = self.tail.as_ref().expect("loaded above");
        let file = match tail.files.len().checked_sub(1) {
            Some(index) => {
                let name = layout::file_name(index as u64);
                let file = dir
                    .append(&name)
                    .map_err(|e| failed(error(&dir.path.join(&name), e)))?;
                Some(Arc::new(file))
            }
            None => None,
        };
        let dir_fd = Arc::new(
            dir.fd
                .try_clone()
                .map_err(|e| failed(error(&dir.path, e)))?,
        );
        self.open = Some(Open {
            dir,
            dir_fd,
            _lock: lock,
            file,
            pending: Vec::new(),
            written: false,
            created_file: false,
            resend: None,
        });
        Ok(())
    }

    /// Closes the copy's descriptors; its tail stays for the next connection.
    pub fn end(&mut self) {
        if self.flush().is_err() {
            self.tail = None;
        }
        self.open = None;
    }

    /// Records the host holds (the next seq it expects; 0 before the copy was read).
    pub fn next_seq(&self) -> u64 {
        self.tail.as_ref().map_or(0, |tail| tail.chain.next_seq())
    }

    /// The hash of the last line held (the genesis value when none).
    pub fn head(&self) -> String {
        self.tail.as_ref().map_or_else(
            || crate::forensic::GENESIS.to_string(),
            |tail| tail.chain.head(),
        )
    }

    /// The last record held is a `stop`: the guest's session ended cleanly.
    pub fn stopped(&self) -> bool {
        self.tail.as_ref().is_some_and(|tail| tail.stopped)
    }

    /// Whether the store's filesystem can take `incoming` more bytes above its reserve.
    pub fn check_space(&self, incoming: u64, quota: &Quota) -> Result<(), StreamVerdict> {
        let open = self.open.as_ref().expect("begun");
        let (bytes, inodes) = open.dir.free().map_err(|e| StreamVerdict::Failed {
            error: error(&open.dir.path, e),
        })?;
        if bytes < quota.reserve_bytes.saturating_add(incoming) || inodes < quota.reserve_inodes {
            return Err(StreamVerdict::Failed {
                error: format!(
                    "the store's filesystem has {bytes} bytes and {inodes} inodes free: too few \
                     to write {incoming} more bytes and keep the collector's reserve ({} bytes, \
                     {} inodes)",
                    quota.reserve_bytes, quota.reserve_inodes
                ),
            });
        }
        Ok(())
    }

    /// Takes one line from the guest: a new record is checked and stored; a record the host
    /// already holds must be the same bytes. Anything else ends the stream with its verdict.
    pub fn receive(&mut self, line: &[u8], quota: &Quota) -> Result<Received, StreamVerdict> {
        let position: Position =
            serde_json::from_slice(line).map_err(|error| StreamVerdict::Invalid {
                seq: None,
                defect: format!("not a log record: {error}"),
            })?;
        let tail = self.tail.as_mut().expect("begun");
        let open = self.open.as_mut().expect("begun");
        let next = tail.chain.next_seq();
        if position.seq < next {
            return match ResendCursor::same(
                &mut open.resend,
                &open.dir,
                &tail.files,
                position.seq,
                line,
            ) {
                Ok(true) => Ok(Received::Matched),
                Ok(false) => Err(StreamVerdict::Forked {
                    at_seq: position.seq,
                }),
                Err(error) => Err(StreamVerdict::Failed { error }),
            };
        }
        // A jump is a writer's outage only when a `gap` record names it: the chain checks it.
        if position.seq > next && position.kind != kinds::GAP {
            return Err(StreamVerdict::Gap {
                from: next,
                to: position.seq - 1,
            });
        }
        open.resend = None;
        let bytes = line.len() as u64 + 1;
        if tail.total_bytes + bytes > quota.guest_bytes {
            return Err(StreamVerdict::OverQuota {
                quota: format!(
                    "the copy holds {} bytes; record {} would take it past the guest's {} \
                     bytes",
                    tail.total_bytes, position.seq, quota.guest_bytes
                ),
            });
        }
        let new_file = match tail.files.last() {
            None => true,
            Some(current) if position.kind == kinds::ROTATE => {
                if current.bytes < layout::ROTATE_MIN_FILE_BYTES {
                    return Err(StreamVerdict::Invalid {
                        seq: Some(position.seq),
                        defect: format!(
                            "a rotate after only {} bytes in {} (a file is rotated only once it \
                             holds {} bytes)",
                            current.bytes,
                            layout::file_name(tail.files.len() as u64 - 1),
                            layout::ROTATE_MIN_FILE_BYTES
                        ),
                    });
                }
                true
            }
            Some(_) => false,
        };
        if new_file && tail.files.len() as u64 >= quota.guest_files {
            return Err(StreamVerdict::OverQuota {
                quota: format!(
                    "the copy holds {} files, the guest's quota (record {} starts another)",
                    tail.files.len(),
                    position.seq
                ),
            });
        }
        if new_file && let Some(current) = tail.files.last() {
            let name = layout::file_name(tail.files.len() as u64 - 1);
            tail.chain.end_file(name, current.records, current.bytes);
        }
        let index = tail.files.len() - usize::from(!new_file);
        let line_no = if new_file {
            1
        } else {
            tail.files[index].records + 1
        };
        tail.chain
            .check(line, line_no, &layout::file_name(index as u64))
            .map_err(|defect| StreamVerdict::Invalid {
                seq: Some(position.seq),
                defect: defect.to_string(),
            })?;
        if new_file {
            self.start_file(index as u64)?;
        }
        let tail = self.tail.as_mut().expect("begun");
        let open = self.open.as_mut().expect("begun");
        open.pending.extend_from_slice(line);
        open.pending.push(b'\n');
        if new_file {
            tail.files.push(FileSpan {
                first_seq: position.seq,
                end_seq: position.seq,
                records: 0,
                bytes: 0,
            });
        }
        let span = tail.files.last_mut().expect("a file");
        span.records += 1;
        span.end_seq = position.seq + 1;
        span.bytes += bytes;
        tail.total_bytes += bytes;
        tail.stopped = position.kind == kinds::STOP;
        Ok(Received::Stored)
    }

    /// Writes what is pending to the current file, then creates file `index`.
    fn start_file(&mut self, index: u64) -> Result<(), StreamVerdict> {
        self.flush()?;
        let open = self.open.as_mut().expect("begun");
        let name = layout::file_name(index);
        match open.dir.create(&name) {
            Ok(file) => {
                open.file = Some(Arc::new(file));
                open.created_file = true;
                Ok(())
            }
            Err(e) => {
                // The chain took the record already: read the copy afresh next time.
                self.tail = None;
                Err(StreamVerdict::Failed {
                    error: format!("creating {}", error(&open.dir.path.join(&name), e)),
                })
            }
        }
    }

    /// Writes the lines checked so far to the current file. On failure the file is cut back
    /// to its last complete line and the tail forgotten (read afresh on the next connection).
    pub fn flush(&mut self) -> Result<(), StreamVerdict> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if open.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut open.pending);
        let file = open.file.as_ref().expect("a file before its lines");
        open.written = true;
        let Err(e) = (&**file).write_all(&pending) else {
            return Ok(());
        };
        let tail = self.tail.take().expect("begun");
        let index = tail.files.len() as u64 - 1;
        let held = tail.files.last().map_or(0, |span| span.bytes) - pending.len() as u64;
        let _ = file.set_len(held);
        Err(StreamVerdict::Failed {
            error: format!(
                "writing {}",
                error(&open.dir.path.join(layout::file_name(index)), e)
            ),
        })
    }

    /// Flushes, and says what must be synced before the records stored so far are
    /// acknowledged (None: nothing was stored).
    pub fn durable(&mut self) -> Result<Option<Durable>, StreamVerdict> {
        self.flush()?;
        let open = self.open.as_mut().expect("begun");
        let Some(file) = &open.file else {
            return Ok(None);
        };
        if !std::mem::take(&mut open.written) && !open.created_file {
            return Ok(None);
        }
        let dir = std::mem::take(&mut open.created_file).then(|| open.dir_fd.clone());
        Ok(Some(Durable {
            file: file.clone(),
            dir,
        }))
    }
}
