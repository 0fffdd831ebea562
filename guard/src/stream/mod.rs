//! Evidence off the guest as it happens: the forensic log streamed, byte for byte, to a host
//! collector that verifies each guest's chain as records arrive (docs/STREAM.md).
//!
//! - `address.rs`: `unix:PATH` and `vsock:PORT`, connecting and listening.
//! - `wire.rs`: the protocol's control lines and bounded line reading.
//! - `auth.rs`: the per-VM [`StreamKey`] and the proof that a stream comes from the agent.
//! - `sender.rs`: the guest side, [`Sender`]: follows the local log and ships it, resuming where
//!   the host's copy ends; [`LogTail`] hands an agent the same lines for its own channel.
//! - `collector.rs`: the host side, [`Collector`]: guests named by the transport they come on,
//!   event-driven and bounded, one copy per guest (`store`), durable acknowledgements, and a
//!   [`StreamVerdict`] for every stream.
use std::{fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

internal_mod!(address);
internal_mod!(auth);
pub(crate) mod collector;
pub(crate) mod sender;
mod store;
mod tail;
internal_mod!(wire);

pub use address::{Address, Connection, HOST_CID};
pub use auth::{KeyError, StreamKey};
pub use collector::{
    Acks, Auth, CidTable, Collector, CollectorCounters, CollectorOptions, Endpoint, GuestStatus,
    Limits, VmDir,
};
pub use sender::{FailureKind, Sender, SenderOptions, SenderStats, StreamFailure};
pub use store::Quota;
pub use tail::{LogTail, TailLine};
pub use wire::RefusalCode;

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
    /// A listener could not be bound (the socket path's directory is missing, the port is
    /// taken, no vsock on this host).
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
    /// A thread could not be spawned: the sender's ([`Sender::start`]) or, at its start, one
    /// of the collector's fixed set ([`Collector::start`]).
    #[error("starting the stream thread: {0}")]
    Thread(std::io::Error),
    /// A key file ([`StreamKey::read`]) or the random source.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Two listeners with one name, or a name that is not a valid guest name.
    #[error("listener {name:?}: {why}")]
    Endpoint {
        /// The name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// An AF_VSOCK CID table that does not parse ([`CidTable::read`]).
    #[error("CID table {path} line {line}: {why}")]
    CidTable {
        /// The table.
        path: PathBuf,
        /// The line (1-based; 0: the file).
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// How one stream ended, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The host refused the connection before any record: no hello and proof within the
    /// deadline, a line that is not a hello, another protocol version, a name that is not the
    /// transport's, a failed proof, the guest already streaming, a connection cap. The guest
    /// hears the reason.
    Refused {
        /// Why, for machines.
        code: RefusalCode,
        /// Why, in words.
        reason: String,
    },
    /// The host could not store the stream: a disk at its free-space reserve, a write or sync
    /// that failed, or a stored copy that cannot be opened or no longer verifies (the guest
    /// hears that too, as a refusal).
    Failed {
        /// What failed.
        error: String,
    },
    /// The guest's copy reached its quota of bytes or files: this guest's stream ends, no
    /// other's. The copy is kept as it is.
    OverQuota {
        /// Which quota, and the figures.
        quota: String,
    },
    /// A newer authenticated connection of the same guest took over this idle one.
    Replaced {
        /// The last seq the host holds (None: none).
        after_seq: Option<u64>,
    },
    /// The collector cut the stream: nothing arrived for its idle timeout (a live sender sends
    /// a heartbeat), or its partial line was the largest when the line memory budget ran out.
    Cut {
        /// The last seq the host holds (None: none).
        after_seq: Option<u64>,
        /// Why.
        reason: String,
    },
}

impl StreamVerdict {
    /// Only `complete` says the host holds the guest's whole session.
    pub fn is_complete(&self) -> bool {
        matches!(self, StreamVerdict::Complete { .. })
    }

    /// The verdict's name, as in its JSON (`complete`, `guest_died`, …): a metric's label.
    pub fn name(&self) -> &'static str {
        match self {
            StreamVerdict::Complete { .. } => "complete",
            StreamVerdict::GuestDied { .. } => "guest_died",
            StreamVerdict::Gap { .. } => "gap",
            StreamVerdict::Forked { .. } => "forked",
            StreamVerdict::Invalid { .. } => "invalid",
            StreamVerdict::Refused { .. } => "refused",
            StreamVerdict::Failed { .. } => "failed",
            StreamVerdict::OverQuota { .. } => "over_quota",
            StreamVerdict::Replaced { .. } => "replaced",
            StreamVerdict::Cut { .. } => "cut",
        }
    }
}

fn after(seq: Option<u64>) -> String {
    match seq {
        Some(seq) => format!("after seq {seq}"),
        None => "before its first record".to_string(),
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
            StreamVerdict::Refused { reason, .. } => write!(f, "refused: {reason}"),
            StreamVerdict::Failed { error } => write!(f, "failed: {error}"),
            StreamVerdict::OverQuota { quota } => write!(f, "over quota: {quota}"),
            StreamVerdict::Replaced { after_seq } => write!(
                f,
                "replaced by a newer connection of this guest {}",
                after(*after_seq)
            ),
            StreamVerdict::Cut { after_seq, reason } => {
                write!(f, "cut {}: {reason}", after(*after_seq))
            }
        }
    }
}
