//! Buffered output to the current log file that knows exactly which records reached it.
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::num::NonZeroUsize;

use crate::forensic::record::Digest;

/// The write buffer of the current log file (part of the agent's memory budget).
pub const BUFFER_BYTES: usize = 64 << 10;

/// How much written data [`Output::start_writeback`] lets accumulate before it starts the
/// kernel writing it out: large enough that the disk sees big requests, small enough that the
/// next fdatasync finds little left to wait for.
const WRITEBACK_BYTES: u64 = 1 << 20;

/// Records that were accepted but did not reach the file when a write failed. The first of
/// them may have reached it in part: that is the torn tail `guard log verify` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwritten {
    /// The first record's seq.
    pub first_seq: u64,
    /// The last record's seq (inclusive).
    pub last_seq: u64,
}

impl Unwritten {
    /// How many records.
    pub fn count(&self) -> u64 {
        self.last_seq - self.first_seq + 1
    }
}

impl fmt::Display for Unwritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first_seq == self.last_seq {
            write!(f, "record seq {} is not in the log", self.first_seq)
        } else {
            write!(
                f,
                "records seq {}..={} ({}) are not in the log",
                self.first_seq,
                self.last_seq,
                self.count()
            )
        }
    }
}

/// The last record whose line the kernel took whole: where a writer that failed mid-line
/// truncates its file back to, and what the next line chains to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Complete {
    /// The seq after that record's.
    pub next_seq: u64,
    /// The file's length up to the end of its line.
    pub end: u64,
    /// The SHA-256 of its line (the genesis value before the first record).
    pub head: Digest,
    /// Complete records in the file.
    pub records: u64,
}

/// What a failed write left: the records that did not reach the file (whole), and their kinds.
pub(super) struct Discarded {
    pub unwritten: Option<Unwritten>,
    /// The kind of each unwritten record (read back from its encoded line).
    pub kinds: Vec<String>,
}

/// The current file and the bytes not yet handed to it. Our own buffer rather than a
/// `BufWriter`: after a failed write we must know exactly which records reached the file, and a
/// `BufWriter` would try its buffer again when dropped, writing after the failure.
pub(super) struct Output {
    file: ChunkedFile,
    buf: Vec<u8>,
    /// The file offset of `buf`'s first byte (a failed write leaves the buffer whole).
    buf_start: u64,
    /// (seq, end offset in the file, line hash) of each record not yet completely handed to
    /// the kernel.
    pending: VecDeque<(u64, u64, Digest)>,
    /// Bytes of the file handed to the kernel.
    written: u64,
    /// Where the last [`start_writeback`](Self::start_writeback) ended.
    writeback_from: u64,
    complete: Complete,
}

impl Output {
    /// Output to `file`, which already holds `complete.end` bytes in `complete.records`
    /// complete records.
    pub(super) fn new(file: File, split: Option<NonZeroUsize>, complete: Complete) -> Self {
        let written = complete.end;
        Self {
            file: ChunkedFile { file, split },
            buf: Vec::with_capacity(BUFFER_BYTES),
            buf_start: written,
            pending: VecDeque::new(),
            written,
            writeback_from: written,
            complete,
        }
    }

    /// The last record the kernel took whole.
    pub(super) fn complete(&self) -> Complete {
        self.complete
    }

    /// Queues one complete line, record `seq`, whose hash is `digest`.
    pub(super) fn write_line(
        &mut self,
        seq: u64,
        line: &[u8],
        digest: Digest,
    ) -> std::io::Result<()> {
        let end = self.written + (self.buf.len() + line.len()) as u64;
        self.pending.push_back((seq, end, digest));
        if self.buf.len() + line.len() > BUFFER_BYTES
            && let Err(error) = self.flush()
        {
            // The buffer stays whole after a failure: the line joins it, so that every
            // unwritten record's bytes can be read back.
            self.buf.extend_from_slice(line);
            return Err(error);
        }
        if line.len() >= BUFFER_BYTES {
            let result = self.write_through(line);
            if result.is_err() {
                self.buf.extend_from_slice(line);
            }
            result
        } else {
            self.buf.extend_from_slice(line);
            Ok(())
        }
    }

    /// Hands the buffer to the kernel. After a failure the buffer is kept (for
    /// [`discard_pending`](Self::discard_pending)).
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_through(&buf);
        self.buf = buf;
        if result.is_ok() {
            self.buf.clear();
            self.buf_start = self.written;
        }
        result
    }

    /// Cuts the file back to its last complete record (a failed write may have left part of
    /// a line) and forgets anything buffered.
    pub(super) fn truncate_to_complete(&mut self) -> std::io::Result<()> {
        self.file.file.set_len(self.complete.end)?;
        self.written = self.complete.end;
        self.writeback_from = self.writeback_from.min(self.written);
        self.buf.clear();
        self.buf_start = self.written;
        self.pending.clear();
        Ok(())
    }

    /// fdatasync of what was handed to the kernel.
    pub(super) fn sync_data(&self) -> std::io::Result<()> {
        self.file.file.sync_data()
    }

    /// Starts the kernel writing what it was handed since the last call out to the disk,
    /// without waiting for it (sync_file_range WRITE), once there is `WRITEBACK_BYTES` of it.
    /// The next fdatasync then waits only for the rest, instead of for all written since the
    /// last one: with `interval` the disk works while records are encoded. Durability is
    /// unchanged: this promises nothing, the fdatasync still does.
    pub(super) fn start_writeback(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let len = self.written - self.writeback_from;
        if len < WRITEBACK_BYTES {
            return Ok(());
        }
        // Offsets of a file we wrote ourselves: far below i64::MAX.
        let (from, len) = (self.writeback_from as i64, len as i64);
        // SAFETY: a valid open descriptor and a range; the call reads no memory of ours.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.file.as_raw_fd(),
                from,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.writeback_from = self.written;
        Ok(())
    }

    fn write_through(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    self.written += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The records the kernel took whole before the failure are in the file.
                    self.settle();
                    return Err(e);
                }
            }
        }
        self.settle();
        Ok(())
    }

    /// Forgets the pending records the kernel has taken whole: they are complete.
    fn settle(&mut self) {
        while let Some(&(seq, end, head)) = self.pending.front()
            && end <= self.written
        {
            self.pending.pop_front();
            self.complete = Complete {
                next_seq: seq + 1,
                end,
                head,
                records: self.complete.records + 1,
            };
        }
        if self.pending.is_empty() && self.buf.is_empty() {
            self.buf_start = self.written;
        }
    }

    /// After a failed write: the records that did not (completely) reach the file, and their
    /// kinds. Nothing buffered is written afterwards.
    pub(super) fn discard_pending(&mut self) -> Discarded {
        let written = self.written;
        let unwritten = self
            .pending
            .iter()
            .find(|&&(_, end, _)| end > written)
            .zip(self.pending.back())
            .map(|(&(first_seq, ..), &(last_seq, ..))| Unwritten {
                first_seq,
                last_seq,
            });
        let mut kinds = Vec::new();
        let mut start = self.complete.end;
        for &(_, end, _) in &self.pending {
            if end > written {
                let from = start.saturating_sub(self.buf_start) as usize;
                let to = end.saturating_sub(self.buf_start) as usize;
                let line = self.buf.get(from..to).unwrap_or_default();
                kinds.push(kind_of(line).unwrap_or("unknown").to_owned());
            }
            start = end;
        }
        self.pending.clear();
        self.buf.clear();
        self.buf_start = self.written;
        Discarded { unwritten, kinds }
    }
}

/// The kind of an encoded line: the first `,"kind":"` is the record's own (the fields before
/// it are a number, the boot id as an escaped JSON string and the wall clock, so none can hold
/// an unescaped quote).
fn kind_of(line: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b",\"kind\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &line[at..];
    let len = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..len]).ok()
}

/// The log file, with optional torn-write simulation (see `LogOptions::test_split_writes`).
struct ChunkedFile {
    file: File,
    split: Option<NonZeroUsize>,
}

/// Unit tests' stand-in for a full disk: the writes of this thread fail, at once or after
/// some bytes (a torn line).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteFault {
    None,
    /// Every write fails with ENOSPC.
    Fail,
    /// The next write takes at most this many bytes, every later one fails.
    ShortThenFail(usize),
}

#[cfg(test)]
thread_local! {
    pub(super) static WRITE_FAULT: std::cell::Cell<WriteFault> =
        const { std::cell::Cell::new(WriteFault::None) };
}

impl Write for ChunkedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        #[cfg(test)]
        match WRITE_FAULT.get() {
            WriteFault::None => {}
            WriteFault::Fail => return Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            WriteFault::ShortThenFail(n) => {
                WRITE_FAULT.set(WriteFault::Fail);
                return self.file.write(&buf[..buf.len().min(n)]);
            }
        }
        let Some(split) = self.split else {
            return self.file.write(buf);
        };
        let written = self.file.write(&buf[..buf.len().min(split.get())])?;
        self.file.sync_data()?;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
