//! The guest side: follows the local forensic log and ships every line to the host, byte for
//! byte. It never slows the guard: it reads the log's files, so the writer never waits for
//! it, and a stalled or broken link only delays the copy; the local log is the queue, and on
//! reconnect the host says where its copy ends and the sender resends from there.
//!
//! It believes only what it can check: records count as acknowledged only on a stream whose
//! resume point matched this log's own record, and a stream the host refused or ended as a
//! failure is the sender's [`StreamFailure`] (its health, the guest command's exit status),
//! followed by an exponential backoff instead of a reconnection loop.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::debug;

use crate::pipeline::lock;

use super::{Address, Connection, StreamError, StreamKey, StreamVerdict, wire};

mod session;

/// How often an idle sender tells the host it is alive (`{"heartbeat":{}}`). The collector's
/// idle timeout ([`Limits::idle_timeout`](super::Limits::idle_timeout), 30 s by default) must
/// stay well above it.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// The first wait after a failed attempt; each failure doubles it up to a cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Where and how a [`Sender`] ships the log. [`SenderOptions::new`] gives the defaults: no key,
/// a poll every 50 ms, a heartbeat every 5 s, reconnection backoff doubling from 100 ms up to
/// 2 s after a transport failure and up to 30 s after the host refused or failed a stream, a
/// 5 s write timeout.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// The collector's address.
    pub address: Address,
    /// The name the host stores this guest's copy under: the name the host gave this guest's
    /// transport (the host refuses any other).
    pub guest: String,
    /// The guest's stream key, for the host's challenge (None: only a listener the host runs
    /// with `--no-auth` takes the stream). Read it with [`StreamKey::read`] from a file only
    /// the guest's root can read, outside every container.
    pub key: Option<StreamKey>,
    /// How often the local log is looked at for new lines.
    pub poll_interval: Duration,
    /// How long the sender may send nothing before it sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// The longest wait between attempts after a transport failure (no connection, a broken
    /// one).
    pub max_backoff: Duration,
    /// The longest wait between attempts after the host refused the stream or ended it as a
    /// failure (authentication, forked, over quota, already streaming).
    pub max_refused_backoff: Duration,
    /// A write that waits longer than this ends the connection (then: reconnect, resume).
    pub write_timeout: Duration,
    /// Where the host's acknowledgement is published as it comes (the next seq the host holds
    /// durably), for the log's byte budget: the writer removes only files the host holds
    /// ([`LogOptions::acked`](crate::forensic::LogOptions::acked)).
    pub acked: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl SenderOptions {
    /// Options for `address` and `guest`, with the defaults.
    pub fn new(address: Address, guest: impl Into<String>) -> Self {
        Self {
            address,
            guest: guest.into(),
            key: None,
            poll_interval: Duration::from_millis(50),
            heartbeat_interval: HEARTBEAT_INTERVAL,
            max_backoff: Duration::from_secs(2),
            max_refused_backoff: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            acked: None,
        }
    }

    /// The same options with the guest's key.
    pub fn with_key(mut self, key: StreamKey) -> Self {
        self.key = Some(key);
        self
    }
}

/// Why the host does not hold (or will not take) this guest's log: what an operator must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The collector could not be reached, or the connection broke before the resume point.
    Unreachable,
    /// The host's challenge was not met: a wrong key, or none given to a listener that has one.
    AuthenticationFailed,
    /// Another connection under this guest's name is streaming (and the host did not count it
    /// as idle).
    AlreadyStreaming,
    /// The collector was at a connection cap, or the handshake missed its deadline.
    Busy,
    /// The host refused the hello itself: another name than the transport's, an unknown peer,
    /// another protocol version.
    Refused,
    /// The host's copy is not this log's history: its resume point did not match this log, or
    /// a resent record differed (the host keeps its copy).
    Forked,
    /// The guest's copy on the host reached its quota of bytes or files.
    OverQuota,
    /// The host found a gap or an invalid record in what was sent.
    Rejected,
    /// The host could not store or open the copy (its disk, its store).
    HostFailed,
}

impl FailureKind {
    /// Its name, as in JSON (`authentication_failed`, …): a metric's label.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::AuthenticationFailed => "authentication_failed",
            FailureKind::AlreadyStreaming => "already_streaming",
            FailureKind::Busy => "busy",
            FailureKind::Refused => "refused",
            FailureKind::Forked => "forked",
            FailureKind::OverQuota => "over_quota",
            FailureKind::Rejected => "rejected",
            FailureKind::HostFailed => "host_failed",
        }
    }

    /// A failure that waiting a few seconds does not cure: a finishing sender stops at once.
    pub fn is_lasting(self) -> bool {
        !matches!(
            self,
            FailureKind::Unreachable | FailureKind::AlreadyStreaming | FailureKind::Busy
        )
    }

    fn backoff_cap(self, options: &SenderOptions) -> Duration {
        if self == FailureKind::Unreachable {
            options.max_backoff
        } else {
            options.max_refused_backoff
        }
    }
}

/// The sender's current failure: what kind, and the host's words or the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamFailure {
    /// What kind.
    pub kind: FailureKind,
    /// The detail: the host's reason or verdict, or the I/O error.
    pub detail: String,
}

impl std::fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

/// What the sender did, for the agent's health, the guest command's exit status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SenderStats {
    /// Connections that reached the resume point.
    pub connections: u64,
    /// Connection attempts that failed before a connection existed.
    pub connect_failures: u64,
    /// Lines handed to a connection, over every connection (resent ones included).
    pub lines_sent: u64,
    /// Heartbeats sent while there was nothing else to send.
    pub heartbeats_sent: u64,
    /// The host holds every record below this seq on stable storage. Counted only from
    /// streams whose resume point matched this log's own record: a host copy that is not this
    /// log's history never counts.
    pub acked_next_seq: u64,
    /// Resume points whose head did not match the local log: everything was resent from 0, so
    /// the host could find where the two part.
    pub resends_from_start: u64,
    /// Local lines that could not be read (the host sees the gap they leave).
    pub unreadable_lines: u64,
    /// The last stream that reached the resume point answered the host's challenge with this
    /// guest's key (false: none yet, or the listener runs without a key).
    pub authenticated: bool,
    /// Streams the host refused or ended as a failure, over the sender's life.
    pub failures: u64,
    /// The current failure (None: healthy, or nothing tried yet); cleared once a stream's
    /// resume point matches this log again.
    pub failure: Option<StreamFailure>,
    /// Why the last connection (or attempt) ended, or the last unreadable line.
    pub last_error: Option<String>,
    /// Set by [`Sender::finish`]: the host acknowledged every record of the log, its `stop`
    /// included. A guest command exits with a failure status when it is false.
    pub delivered: bool,
}

impl SenderStats {
    /// No current failure.
    pub fn healthy(&self) -> bool {
        self.failure.is_none()
    }

    fn fail(&mut self, kind: FailureKind, detail: String) {
        self.failures += u64::from(kind != FailureKind::Unreachable);
        self.last_error = Some(format!("{}: {detail}", kind.name()));
        self.failure = Some(StreamFailure { kind, detail });
    }
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
    /// `timeout` for the host to acknowledge all of it (less when the host refuses the stream
    /// for a lasting reason), and ends the stream. [`SenderStats::delivered`] says whether
    /// the host holds the whole log.
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

/// How a connection ended.
enum Ended {
    /// Everything was sent and acknowledged after `finish` (or the sender was dropped): done.
    Finished,
    /// The stream made progress (acknowledgements past its resume point) before it broke:
    /// reconnect soon.
    Progressed(String),
    /// A failure (recorded in the stats): back off up to its kind's cap.
    Failed(FailureKind),
}

impl Worker {
    fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        while !self.should_stop() {
            let ended = match Connection::connect(&self.options.address) {
                Ok(connection) => self.stream(connection),
                Err(error) => {
                    let mut stats = lock(&self.stats);
                    stats.connect_failures += 1;
                    stats.fail(
                        FailureKind::Unreachable,
                        format!("connecting to {}: {error}", self.options.address),
                    );
                    Ended::Failed(FailureKind::Unreachable)
                }
            };
            let cap = match ended {
                Ended::Finished => return,
                Ended::Progressed(error) => {
                    debug!(%error, "stream connection ended");
                    lock(&self.stats).last_error = Some(error);
                    backoff = FIRST_BACKOFF;
                    self.options.max_backoff
                }
                Ended::Failed(kind) => {
                    if self.finishing_past_hope(kind) {
                        return;
                    }
                    kind.backoff_cap(&self.options)
                }
            };
            self.sleep(backoff.min(cap));
            backoff = (backoff * 2).min(cap);
        }
    }

    /// Finishing, and the host said no for a reason waiting does not cure.
    fn finishing_past_hope(&self, kind: FailureKind) -> bool {
        kind.is_lasting() && lock(&self.finishing).is_some()
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

    /// The failure a host verdict stands for (None: the connection merely ended, resume).
    fn failure_of(verdict: &StreamVerdict) -> Option<FailureKind> {
        Some(match verdict {
            StreamVerdict::Forked { .. } => FailureKind::Forked,
            StreamVerdict::OverQuota { .. } => FailureKind::OverQuota,
            StreamVerdict::Gap { .. } | StreamVerdict::Invalid { .. } => FailureKind::Rejected,
            StreamVerdict::Failed { .. } => FailureKind::HostFailed,
            StreamVerdict::Refused { code, .. } => session::refusal_kind(*code),
            StreamVerdict::Complete { .. }
            | StreamVerdict::GuestDied { .. }
            | StreamVerdict::Replaced { .. }
            | StreamVerdict::Cut { .. } => return None,
        })
    }
}
