//! Buffered output to the current log file that knows exactly which records reached it.
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::num::NonZeroUsize;

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

/// The current file and the bytes not yet handed to it. Our own buffer rather than a
/// `BufWriter`: after a failed write we must know exactly which records reached the file, and a
/// `BufWriter` would try its buffer again when dropped, writing after the failure.
pub(super) struct Output {
    file: ChunkedFile,
    buf: Vec<u8>,
    /// (seq, end offset in the file) of each record not yet completely handed to the kernel.
    pending: VecDeque<(u64, u64)>,
    /// Bytes of the file handed to the kernel.
    written: u64,
    /// Where the last [`start_writeback`](Self::start_writeback) ended.
    writeback_from: u64,
}

impl Output {
    /// Output to `file`, which already holds `written` bytes.
    pub(super) fn new(file: File, split: Option<NonZeroUsize>, written: u64) -> Self {
        Self {
            file: ChunkedFile { file, split },
            buf: Vec::with_capacity(BUFFER_BYTES),
            pending: VecDeque::new(),
            written,
            writeback_from: written,
        }
    }

    /// Queues one complete line, record `seq`.
    pub(super) fn write_line(&mut self, seq: u64, line: &[u8]) -> std::io::Result<()> {
        let end = self.written + (self.buf.len() + line.len()) as u64;
        self.pending.push_back((seq, end));
        if self.buf.len() + line.len() > BUFFER_BYTES {
            self.flush()?;
        }
        if line.len() >= BUFFER_BYTES {
            self.write_through(line)
        } else {
            self.buf.extend_from_slice(line);
            Ok(())
        }
    }

    /// Hands the buffer to the kernel.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_through(&buf);
        self.buf = buf;
        self.buf.clear();
        result
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
                Err(e) => return Err(e),
            }
        }
        while self
            .pending
            .front()
            .is_some_and(|&(_, end)| end <= self.written)
        {
            self.pending.pop_front();
        }
        Ok(())
    }

    /// After a failed write: the records that did not (completely) reach the file. Nothing
    /// buffered is written afterwards.
    pub(super) fn discard_pending(&mut self) -> Option<Unwritten> {
        let written = self.written;
        let unwritten = self
            .pending
            .iter()
            .find(|&&(_, end)| end > written)
            .zip(self.pending.back())
            .map(|(&(first_seq, _), &(last_seq, _))| Unwritten {
                first_seq,
                last_seq,
            });
        self.pending.clear();
        self.buf.clear();
        unwritten
    }
}

/// The log file, with optional torn-write simulation (see `LogOptions::test_split_writes`).
struct ChunkedFile {
    file: File,
    split: Option<NonZeroUsize>,
}

impl Write for ChunkedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
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
