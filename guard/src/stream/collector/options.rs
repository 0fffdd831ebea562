//! What a collector is told: where copies go, its bounds, and the endpoints guests come on,
//! each named by the host (the name is the guest's identity, never what the hello says).
use std::{path::PathBuf, time::Duration};

use crate::stream::{Quota, StreamKey};

/// How a listener's guests prove they are the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The host challenges every connection; the proof must verify under this key.
    Key(StreamKey),
    /// No proof (`--no-auth`): only for a transport nothing but the guest's agent can reach.
    /// The guest's status says `unauthenticated`.
    None,
}

impl Auth {
    /// Whether the listener checks a key.
    pub fn has_key(&self) -> bool {
        matches!(self, Auth::Key(_))
    }
}

/// One guest's Unix socket: the path its VMM connects to for the stream's port, and the name
/// the host gives that guest.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The guest's name: its copy lives under `DIR/<name>/`, and a hello with another name is
    /// refused.
    pub name: String,
    /// The socket path (created; an existing socket file there is replaced).
    pub path: PathBuf,
    /// The guest's key, or none.
    pub auth: Auth,
}

/// A directory of VMs coming and going: each subdirectory `DIR/<name>/` holding a key file
/// `key` gets a listener at `DIR/<name>/vsock_<port>` (a VMM's `uds_path` of `DIR/<name>/vsock`),
/// removed when the subdirectory goes.
#[derive(Debug, Clone)]
pub struct VmDir {
    /// The directory.
    pub dir: PathBuf,
    /// The guests' stream port.
    pub port: u32,
    /// Listen for subdirectories without a key too, unauthenticated (`--no-auth`).
    pub no_auth: bool,
    /// How often the directory is read again besides inotify's news (default 1 s).
    pub rescan: Duration,
}

impl VmDir {
    /// The VMs under `dir`, streaming to `port`, each with its key.
    pub fn new(dir: impl Into<PathBuf>, port: u32) -> Self {
        Self {
            dir: dir.into(),
            port,
            no_auth: false,
            rescan: Duration::from_secs(1),
        }
    }

    /// Where the socket of VM `name` is.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(format!("vsock_{}", self.port))
    }
}

/// The bounds on everything a guest, or anything that can reach a listener, can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections in all (default 4096; lowered at start to what the open-file limit
    /// allows). At the cap, the oldest connection still in its handshake is dropped for a new
    /// one; with none in a handshake, the new one is refused.
    pub max_connections: usize,
    /// Connections of one guest still in their handshake (default 8). At the cap the oldest of
    /// them is dropped: connections that never prove anything cannot lock the agent out.
    pub max_pending_per_guest: usize,
    /// From accept to the proof checked (hello, challenge, proof), at most this (default
    /// 10 s): a deadline for the whole handshake, not per read.
    pub handshake_deadline: Duration,
    /// After the handshake, a stream that sends no complete line (a record or a heartbeat) for
    /// this long is cut (default 30 s; the sender's heartbeat comes every 5 s).
    pub idle_timeout: Duration,
    /// An authenticated stream silent for this long gives way to a newer authenticated
    /// connection of the same guest (default 2 s); a livelier one makes the newer one refused.
    pub replace_after: Duration,
    /// Bytes of unfinished lines held across all connections (default 64 MiB). When a read
    /// needs more, the connection holding the most is cut.
    pub line_memory: usize,
    /// Open files kept free for the store, the listeners and the process (default 64).
    pub fd_reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_pending_per_guest: 8,
            handshake_deadline: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            replace_after: Duration::from_secs(2),
            line_memory: 64 << 20,
            fd_reserve: 64,
        }
    }
}

/// When a stored record is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Once it is on stable storage: group commit, a round (one fdatasync per file written
    /// since the last round) at most every `interval`, acknowledging every record the round
    /// covered.
    Durable {
        /// The shortest time between two rounds' starts (default 5 ms).
        interval: Duration,
    },
    /// Once it is written to the file, before it reaches the disk (for a store on tmpfs, and
    /// as the bench's baseline).
    Written,
}

/// Everything a collector is told at start.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// Where the copies go, one directory per guest (created if missing).
    pub dir: PathBuf,
    /// The bounds on connections, time and memory.
    pub limits: Limits,
    /// The bounds on disk.
    pub quota: Quota,
    /// When records are acknowledged.
    pub acks: Acks,
    /// Threads that check and write the copies (default 2).
    pub store_threads: usize,
    /// Threads that serve the connections (default 2).
    pub io_threads: usize,
}

impl CollectorOptions {
    /// The defaults, storing under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            limits: Limits::default(),
            quota: Quota::default(),
            acks: Acks::Durable {
                interval: Duration::from_millis(5),
            },
            store_threads: 2,
            io_threads: 2,
        }
    }
}
