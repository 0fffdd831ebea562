//! The guest side: follows the local forensic log and ships every line to the host, byte for
//! byte. It never slows the guard: it reads the log's files, so the writer never waits for
//! it, and a stalled or broken link only delays the copy; the local log is the queue, and on
//! reconnect the host says where its copy ends and the sender resends from there.
use std::{
    io::{BufReader, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::{debug, warn};

use crate::pipeline::lock;

use super::{
    Address, Connection, StreamError,
    wire::{self, Control, Hello, ReadLine},
};
use crate::forensic::{Follower, GENESIS, ReaderError, record};

/// The lines of a local log from a given seq on, as they are appended: what [`Sender`] ships,
/// for an agent that forwards them over a channel of its own.
pub struct LogTail {
    follower: Follower,
    from_seq: u64,
}

/// One line of the log as it is on disk (without its newline).
pub struct TailLine<'a> {
    /// The record's seq.
    pub seq: u64,
    /// The record's kind.
    pub kind: &'a str,
    /// The line's exact bytes: what goes on the wire.
    pub raw: &'a [u8],
}

impl LogTail {
    /// Every record with `seq >= from_seq`, those already written first.
    pub fn from_seq(dir: &Path, from_seq: u64) -> Self {
        Self {
            follower: Follower::from_start(dir),
            from_seq,
        }
    }

    /// Calls `line` for every record appended since the last poll (from `from_seq`). Lines the
    /// log cannot parse are skipped and returned as errors after the poll: the host sees the
    /// gap they leave.
    pub fn poll(&mut self, line: &mut dyn FnMut(TailLine<'_>)) -> Result<(), ReaderError> {
        let from = self.from_seq;
        let mut skipped = None;
        self.follower.poll(&mut |entry| match entry {
            Ok(entry) if entry.record.seq >= from => line(TailLine {
                seq: entry.record.seq,
                kind: &entry.record.kind,
                raw: &entry.raw,
            }),
            Ok(_) => {}
            // A torn tail is a line still being written: it is read again next time.
            Err(ReaderError::TornTail { .. }) => {}
            Err(error) => skipped = skipped.take().or(Some(error)),
        })?;
        match skipped {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Where and how a [`Sender`] ships the log. [`SenderOptions::new`] gives the defaults: a poll
/// every 50 ms, reconnection backoff up to 2 s, a 5 s write timeout.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// The collector's address.
    pub address: Address,
    /// The name the host stores this guest's copy under.
    pub guest: String,
    /// How often the local log is looked at for new lines.
    pub poll_interval: Duration,
    /// The longest wait between reconnection attempts (the first is 100 ms, doubling).
    pub max_backoff: Duration,
    /// A write that waits longer than this ends the connection (then: reconnect, resume).
    pub write_timeout: Duration,
}

impl SenderOptions {
    /// Options for `address` and `guest`, with the defaults.
    pub fn new(address: Address, guest: impl Into<String>) -> Self {
        Self {
            address,
            guest: guest.into(),
            poll_interval: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// What the sender did, for the agent's health and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SenderStats {
    /// Connections that reached the streaming stage.
    pub connections: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Lines handed to a connection, over every connection (resent ones included).
    pub lines_sent: u64,
    /// The host's latest acknowledgement: it has stored every record below this seq.
    pub acked_next_seq: u64,
    /// Resume points whose head did not match the local log: everything was resent from 0.
    pub resends_from_start: u64,
    /// Local lines that could not be read (the host sees the gap they leave).
    pub unreadable_lines: u64,
    /// Why the last connection (or attempt) ended, or the last unreadable line.
    pub last_error: Option<String>,
}

/// Ships a local log to a collector, in a thread of its own, until [`Sender::finish`].
pub struct Sender {
    stats: Arc<Mutex<SenderStats>>,
    finishing: Arc<Mutex<Option<Instant>>>,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Starts shipping the log in `dir` (it may not exist yet) to `options.address`. Fails
    /// only on a guest name the host would refuse or a thread that cannot start; an
    /// unreachable host is retried, with backoff, until [`Sender::finish`] or drop.
    pub fn start(dir: &Path, options: SenderOptions) -> Result<Self, StreamError> {
        if !wire::valid_guest_name(&options.guest) {
            return Err(StreamError::GuestName {
                name: options.guest,
            });
        }
        let stats = Arc::new(Mutex::new(SenderStats::default()));
        let finishing = Arc::new(Mutex::new(None));
        let stopped = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            dir: dir.to_path_buf(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|id| id.trim().to_string())
                .unwrap_or_default(),
            options,
            stats: stats.clone(),
            finishing: finishing.clone(),
            stopped: stopped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("guard-stream".into())
            .spawn(move || worker.run())
            .map_err(StreamError::Thread)?;
        Ok(Self {
            stats,
            finishing,
            stopped,
            thread: Some(thread),
        })
    }

    /// What the sender did so far.
    pub fn stats(&self) -> SenderStats {
        lock(&self.stats).clone()
    }

    /// Sends what is left (the log's `stop` included, once it is written), waits up to
    /// `timeout` for the host to acknowledge all of it, and ends the stream.
    pub fn finish(mut self, timeout: Duration) -> SenderStats {
        *lock(&self.finishing) = Some(Instant::now() + timeout);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.stats()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Worker {
    dir: PathBuf,
    boot_id: String,
    options: SenderOptions,
    stats: Arc<Mutex<SenderStats>>,
    finishing: Arc<Mutex<Option<Instant>>>,
    stopped: Arc<AtomicBool>,
}

/// Why a connection ended.
enum Ended {
    /// Everything was sent and acknowledged after `finish`: done.
    Finished,
    /// Try again.
    Broken(String),
}

impl Worker {
    fn run(self) {
        let mut backoff = Duration::from_millis(100);
        while !self.should_stop() {
            match Connection::connect(&self.options.address) {
                Ok(connection) => {
                    backoff = Duration::from_millis(100);
                    match self.stream(connection) {
                        Ended::Finished => return,
                        Ended::Broken(error) => {
                            debug!(%error, "stream connection ended");
                            lock(&self.stats).last_error = Some(error);
                        }
                    }
                }
                Err(error) => {
                    let mut stats = lock(&self.stats);
                    stats.connect_failures += 1;
                    stats.last_error =
                        Some(format!("connecting to {}: {error}", self.options.address));
                }
            }
            self.sleep(backoff);
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Stop for good: dropped, or finishing and past the deadline.
    fn should_stop(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
            || lock(&self.finishing).is_some_and(|deadline| Instant::now() >= deadline)
    }

    fn sleep(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until && !self.should_stop() {
            std::thread::sleep(Duration::from_millis(10).min(duration));
        }
    }

    fn stream(&self, connection: Connection) -> Ended {
        let broken =
            |what: &str, error: &dyn std::fmt::Display| Ended::Broken(format!("{what}: {error}"));
        let _ = connection.set_write_timeout(Some(self.options.write_timeout));
        let _ = connection.set_read_timeout(Some(Duration::from_secs(30)));
        let Ok(reading) = connection.try_clone() else {
            return Ended::Broken("cannot read the connection".into());
        };
        let mut writer = connection;
        let hello = Control::Hello(Hello {
            version: wire::VERSION,
            guest: self.options.guest.clone(),
            boot_id: self.boot_id.clone(),
        });
        if let Err(error) = writer.write_all(&hello.to_line()) {
            return broken("sending the hello", &error);
        }
        let mut reader = BufReader::new(reading);
        let resume = match wire::read_line(&mut reader, wire::MAX_CONTROL_BYTES) {
            Ok(ReadLine::Line(line)) => match serde_json::from_slice::<Control>(&line) {
                Ok(Control::Resume(resume)) => resume,
                Ok(Control::Refused { reason }) => {
                    return Ended::Broken(format!("the host refused the stream: {reason}"));
                }
                _ => {
                    return Ended::Broken(format!(
                        "the host's answer is not a resume point: {}",
                        String::from_utf8_lossy(&line)
                    ));
                }
            },
            Ok(other) => return Ended::Broken(format!("no resume point from the host: {other:?}")),
            Err(error) => return broken("waiting for the resume point", &error),
        };
        let from = if self.local_head_matches(resume.next_seq, &resume.head) {
            resume.next_seq
        } else {
            // The host holds a history this log does not have at that point: resend it all,
            // so the host finds where the two part.
            warn!(
                host_next_seq = resume.next_seq,
                "the host's copy does not end where this log has it: resending from seq 0"
            );
            lock(&self.stats).resends_from_start += 1;
            0
        };
        {
            let mut stats = lock(&self.stats);
            stats.connections += 1;
            // The host holds (has acknowledged) what it says it holds.
            stats.acked_next_seq = resume.next_seq;
        }
        let acks = self.read_acks(reader);
        let mut tail = LogTail::from_seq(&self.dir, from);
        let mut last_sent: Option<(u64, bool)> = None;
        let mut batch = Vec::new();
        loop {
            if self.stopped.load(Ordering::Relaxed) {
                writer.shutdown();
                return Ended::Finished;
            }
            batch.clear();
            let mut lines = 0;
            let polled = tail.poll(&mut |line| {
                batch.extend_from_slice(line.raw);
                batch.push(b'\n');
                last_sent = Some((line.seq, line.kind == record::kinds::STOP));
                lines += 1;
            });
            lock(&self.stats).lines_sent += lines;
            if let Err(error) = polled {
                let mut stats = lock(&self.stats);
                stats.unreadable_lines += 1;
                stats.last_error = Some(error.to_string());
            }
            if !batch.is_empty() {
                if let Err(error) = writer.write_all(&batch) {
                    writer.shutdown();
                    return broken("sending records", &error);
                }
                continue;
            }
            let finishing = lock(&self.finishing).is_some();
            let stopped_and_acked =
                last_sent.is_some_and(|(seq, stop)| stop && lock(&self.stats).acked_next_seq > seq);
            if finishing && (stopped_and_acked || self.should_stop()) {
                writer.shutdown();
                let _ = acks.join();
                return Ended::Finished;
            }
            if acks.is_finished() {
                return Ended::Broken("the host closed the stream".into());
            }
            std::thread::sleep(self.options.poll_interval);
        }
    }

    /// Whether this log's record `next_seq - 1` hashes to `head` (0 records: the genesis).
    fn local_head_matches(&self, next_seq: u64, head: &str) -> bool {
        let Some(last) = next_seq.checked_sub(1) else {
            return head == GENESIS;
        };
        let mut tail = LogTail::from_seq(&self.dir, last);
        let mut found = None;
        let _ = tail.poll(&mut |line| {
            if found.is_none() && line.seq == last {
                found = Some(record::to_hex(&record::digest_line(line.raw).line));
            }
        });
        found.as_deref() == Some(head)
    }

    /// Reads the host's acknowledgements until the connection ends.
    fn read_acks(&self, mut reader: BufReader<Connection>) -> JoinHandle<()> {
        let stats = self.stats.clone();
        let _ = reader.get_ref().set_read_timeout(None);
        std::thread::spawn(move || {
            while let Ok(ReadLine::Line(line)) =
                wire::read_line(&mut reader, wire::MAX_CONTROL_BYTES)
            {
                if let Ok(Control::Ack(ack)) = serde_json::from_slice::<Control>(&line) {
                    let mut stats = lock(&stats);
                    stats.acked_next_seq = stats.acked_next_seq.max(ack.next_seq);
                }
            }
        })
    }
}
