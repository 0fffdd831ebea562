//! Evidence off the guest as it happens: the forensic log streamed, byte for byte, to a host
//! collector that verifies each guest's chain as records arrive (docs/STREAM.md).
//!
//! - [`Address`]: `unix:PATH` and `vsock:PORT`, connecting and listening (`address.rs`).
//! - `wire.rs`: the protocol's control lines and bounded line reading.
//! - The guest side, [`Sender`]: follows the local log and ships it, resuming where the host's
//!   copy ends; [`LogTail`] hands an agent the same lines for its own channel (`sender.rs`).
//! - The host side, [`Collector`]: one thread per connection, one copy per guest (`store.rs`),
//!   and a [`StreamVerdict`] for every stream (`collector.rs`).
use std::{fmt, path::PathBuf};

use serde::Serialize;

pub(crate) mod address;
pub(crate) mod collector;
pub(crate) mod sender;
mod store;
internal_mod!(wire);

pub use address::{Address, Connection, HOST_CID, Listener};
pub use collector::{Collector, GuestStatus, HELLO_TIMEOUT};
pub use sender::{LogTail, Sender, SenderOptions, SenderStats};

/// What setting up a stream can fail with. Once a stream runs, its failures are not errors:
/// the sender counts them ([`SenderStats`]) and reconnects, the collector ends the stream with
/// a [`StreamVerdict`].
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A stream address that does not parse ([`Address`]'s `FromStr`).
    #[error("stream address {address:?}: {why}")]
    Address {
        /// The text given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// [`Listener::bind`] failed (the socket path's directory is missing, the port is taken,
    /// no vsock on this host).
    #[error("listening on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// [`Collector::new`] could not create its directory.
    #[error("collector directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// [`Sender::start`] with a guest name the host would refuse (the wire protocol's rule,
    /// docs/STREAM.md).
    #[error("guest name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot")]
    GuestName {
        /// The name given.
        name: String,
    },
    /// A thread could not be spawned: the sender's ([`Sender::start`]) or a connection's
    /// ([`Collector::serve`]).
    #[error("starting the stream thread: {0}")]
    Thread(std::io::Error),
}

/// How one stream ended, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum StreamVerdict {
    /// The guest's session ended with its `stop` record and the stream closed after it.
    Complete {
        /// The seq of the `stop` record: the host holds seq 0 to this.
        last_seq: u64,
    },
    /// The stream ended without a `stop`: the guest died, was destroyed, or lost its link.
    /// Also when the resume point could not be sent. The guest resumes on reconnect.
    GuestDied {
        /// The last seq the host holds (None: none).
        after_seq: Option<u64>,
    },
    /// A record arrived whose predecessors never did.
    Gap {
        /// The first seq missing: the next one the host expected.
        from: u64,
        /// The last seq missing: the one before the record that arrived.
        to: u64,
    },
    /// A resent record differs from the one the host holds at that seq: the guest rewrote its
    /// history from there. The host keeps what it had.
    Forked {
        /// The first seq that differs.
        at_seq: u64,
    },
    /// A line that is not a valid next record of the chain.
    Invalid {
        /// The record's seq, when the line had one (None: not a record, or over 4 MiB).
        seq: Option<u64>,
        /// What is wrong with it (the verifier's [`Defect`](crate::forensic::Defect) text).
        defect: String,
    },
    /// The host refused the connection before any record: no hello within the timeout, a
    /// line that is not a hello, another protocol version, an invalid guest name, a guest
    /// already streaming under that name. The guest hears the reason.
    Refused {
        /// Why.
        reason: String,
    },
    /// The host could not store the stream: a full disk, or a stored copy that cannot be
    /// opened or no longer verifies (the guest hears that too, as a refusal).
    Failed {
        /// What failed.
        error: String,
    },
}

impl StreamVerdict {
    /// Only `complete` says the host holds the guest's whole session.
    pub fn is_complete(&self) -> bool {
        matches!(self, StreamVerdict::Complete { .. })
    }
}

impl fmt::Display for StreamVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamVerdict::Complete { last_seq } => write!(f, "complete (seq 0..={last_seq})"),
            StreamVerdict::GuestDied {
                after_seq: Some(seq),
            } => write!(f, "guest died after seq {seq}"),
            StreamVerdict::GuestDied { after_seq: None } => {
                write!(f, "guest died before its first record")
            }
            StreamVerdict::Gap { from, to } => write!(f, "gap: seq {from}..={to} missing"),
            StreamVerdict::Forked { at_seq } => write!(
                f,
                "forked at seq {at_seq}: the guest's log differs from the copy held here; the \
                 copy is kept"
            ),
            StreamVerdict::Invalid {
                seq: Some(seq),
                defect,
            } => write!(f, "invalid record at seq {seq}: {defect}"),
            StreamVerdict::Invalid { seq: None, defect } => write!(f, "invalid line: {defect}"),
            StreamVerdict::Refused { reason } => write!(f, "refused: {reason}"),
            StreamVerdict::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}
