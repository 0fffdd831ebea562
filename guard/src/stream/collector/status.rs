//! What the collector tells its observer and its operator: one status per stream change, and
//! counters of what it turned away.
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::stream::StreamVerdict;

/// One connection as the collector last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestStatus {
    /// The guest's name, as the transport gave it (None: a vsock peer not in the CID table).
    pub guest: Option<String>,
    /// The connection's number, from 1, in the order they were accepted.
    pub connection: u64,
    /// The boot id the guest's hello gave.
    pub boot_id: Option<String>,
    /// The connection proved the guest's key (false on a listener without one, and for a
    /// connection refused before its proof).
    pub authenticated: bool,
    /// Records the host holds for this guest.
    pub records: u64,
    /// Records this connection added.
    pub received: u64,
    /// Records this connection resent that matched the copy held.
    pub matched: u64,
    /// None while the stream is open.
    pub verdict: Option<StreamVerdict>,
}

impl GuestStatus {
    /// The connection got past its handshake: a stream of the guest, not a connection turned
    /// away.
    pub fn is_stream(&self) -> bool {
        !matches!(self.verdict, Some(StreamVerdict::Refused { .. }))
    }
}

impl std::fmt::Display for GuestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guest = self.guest.as_deref().unwrap_or("?");
        write!(f, "{guest} (connection {}", self.connection)?;
        if !self.authenticated && self.is_stream() {
            write!(f, ", unauthenticated")?;
        }
        write!(
            f,
            "): {} record(s) held, {} received",
            self.records, self.received
        )?;
        if self.matched > 0 {
            write!(f, ", {} resent and matched", self.matched)?;
        }
        match &self.verdict {
            Some(verdict) => write!(f, ": {verdict}"),
            None => write!(f, ": streaming"),
        }
    }
}

/// What the collector did with the connections it got, since its start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CollectorCounters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused in their handshake (a bad hello, a failed proof, a missed
    /// deadline, a name not the transport's, the guest already streaming, a cap).
    pub refused: u64,
    /// Connections dropped in their handshake to make room (a per-guest or the global cap).
    pub evicted: u64,
    /// Streams cut (idle, replaced, over the line memory budget).
    pub cut: u64,
    /// accept(2) failures (the open-file limit, a vanished client); each cost one connection.
    pub accept_errors: u64,
    /// Full verifications of a stored copy (once per guest, not per connection).
    pub copies_loaded: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub evicted: AtomicU64,
    pub cut: AtomicU64,
    pub accept_errors: AtomicU64,
    pub copies_loaded: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CollectorCounters {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CollectorCounters {
            accepted: read(&self.accepted),
            refused: read(&self.refused),
            evicted: read(&self.evicted),
            cut: read(&self.cut),
            accept_errors: read(&self.accept_errors),
            copies_loaded: read(&self.copies_loaded),
        }
    }
}
