//! Every open connection, and the bounds they share: the global and per-guest caps (a new
//! connection evicts the oldest one still in its handshake), the open files they take, one
//! authenticated stream per guest (a newer one replaces an idle older one), and one budget of
//! memory for unfinished lines across all of them (the largest holder is cut when it runs out).
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

use super::options::Limits;
use crate::pipeline::lock;

/// Open files a streaming connection takes: its socket, the copy's directory (twice: one for
/// the store, one for syncs), its lock and its current file.
pub(super) const FDS_PER_STREAM: u64 = 5;

/// Why the collector ends a connection from outside its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CutReason {
    /// Dropped in its handshake to make room for a newer connection.
    Evicted(String),
    /// A newer authenticated connection of the same guest took over.
    Replaced,
    /// It held the most unfinished-line memory when the budget ran out.
    LineMemory,
    /// The collector is shutting down.
    Shutdown,
}

/// How a connection's task hears that it is cut.
#[derive(Default)]
pub(super) struct CutSignal {
    notify: Notify,
    reason: Mutex<Option<CutReason>>,
}

impl CutSignal {
    fn cut(&self, reason: CutReason) {
        lock(&self.reason).get_or_insert(reason);
        self.notify.notify_one();
    }

    /// Waits until the connection is cut, and says why.
    pub async fn wait(&self) -> CutReason {
        loop {
            if let Some(reason) = lock(&self.reason).clone() {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

struct Entry {
    guest: Option<String>,
    accepted: Instant,
    streaming: bool,
    /// Cut already: no longer counted against a cap (its task is closing it).
    leaving: bool,
    held: usize,
    activity: Arc<AtomicU64>,
    cut: Arc<CutSignal>,
    /// Dropped with the entry: what a replacing connection waits on.
    _gone: watch::Sender<()>,
    gone: watch::Receiver<()>,
}

#[derive(Default)]
struct State {
    next: u64,
    entries: HashMap<u64, Entry>,
    streaming: HashMap<String, u64>,
    line_bytes: usize,
    /// Open files held for connections about to be accepted ([`Room`]).
    reserved: u64,
}

impl State {
    fn live(&self) -> impl Iterator<Item = (&u64, &Entry)> {
        self.entries.iter().filter(|(_, entry)| !entry.leaving)
    }

    /// The oldest connection still in its handshake (of `guest`, when given).
    fn oldest_pending(&self, guest: Option<&str>) -> Option<u64> {
        self.live()
            .filter(|(_, e)| !e.streaming && guest.is_none_or(|g| e.guest.as_deref() == Some(g)))
            .min_by_key(|(_, e)| e.accepted)
            .map(|(id, _)| *id)
    }

    /// Open files the connections take: `live` ones only, or also those cut and closing.
    fn fds(&self, live_only: bool) -> u64 {
        self.reserved
            + self
                .entries
                .values()
                .filter(|e| !(live_only && e.leaving))
                .map(|e| if e.streaming { FDS_PER_STREAM } else { 1 })
                .sum::<u64>()
    }

    fn evict(&mut self, id: u64, why: String) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.leaving = true;
            entry.cut.cut(CutReason::Evicted(why));
        }
    }
}

/// The connections of one collector.
pub(super) struct Registry {
    limits: Limits,
    /// Open files the connections may take in all.
    fd_budget: u64,
    epoch: Instant,
    state: Mutex<State>,
    freed: Notify,
}

/// A connection's place in the registry; leaving it (drop) frees the place.
pub(super) struct Ticket {
    registry: Arc<Registry>,
    pub id: u64,
    pub cut: Arc<CutSignal>,
    activity: Arc<AtomicU64>,
}

impl Registry {
    pub fn new(limits: Limits, fd_budget: u64) -> Arc<Self> {
        Arc::new(Self {
            limits,
            fd_budget,
            epoch: Instant::now(),
            state: Mutex::default(),
            freed: Notify::new(),
        })
    }

    /// The connections allowed at once: the configured cap, or fewer when open files are
    /// short (every one may become a stream).
    pub fn max_connections(&self) -> usize {
        self.limits
            .max_connections
            .min((self.fd_budget / FDS_PER_STREAM) as usize)
            .max(1)
    }

    /// [`Room::admit`] without a room held first (the unit tests').
    #[cfg(test)]
    pub fn admit(self: &Arc<Self>, guest: Option<&str>) -> Result<(Ticket, u64), String> {
        let mut state = lock(&self.state);
        self.admit_in(&mut state, guest)
    }

    /// Takes in a new connection of `guest` (None: a peer no table names), making room by
    /// evicting the oldest connections in their handshake; Err (why) when there is none to
    /// evict. Returns the ticket and how many were evicted.
    fn admit_in(
        self: &Arc<Self>,
        state: &mut State,
        guest: Option<&str>,
    ) -> Result<(Ticket, u64), String> {
        let mut evicted = 0;
        let cap = self.max_connections();
        while state.live().count() >= cap || state.fds(true) + FDS_PER_STREAM > self.fd_budget {
            let Some(oldest) = state.oldest_pending(None) else {
                return Err(format!(
                    "the collector is at its cap of {cap} connections, all of them streams"
                ));
            };
            state.evict(
                oldest,
                format!("the collector is at its cap of {cap} connections"),
            );
            evicted += 1;
        }
        if let Some(guest) = guest {
            let per_guest = self.limits.max_pending_per_guest.max(1);
            while state
                .live()
                .filter(|(_, e)| !e.streaming && e.guest.as_deref() == Some(guest))
                .count()
                >= per_guest
            {
                let oldest = state.oldest_pending(Some(guest)).expect("counted above");
                state.evict(
                    oldest,
                    format!("{per_guest} newer connections of {guest} are in their handshake"),
                );
                evicted += 1;
            }
        }
        state.next += 1;
        let id = state.next;
        let cut = Arc::new(CutSignal::default());
        let activity = Arc::new(AtomicU64::new(self.now()));
        let (gone_tx, gone) = watch::channel(());
        state.entries.insert(
            id,
            Entry {
                guest: guest.map(str::to_string),
                accepted: Instant::now(),
                streaming: false,
                leaving: false,
                held: 0,
                activity: activity.clone(),
                cut: cut.clone(),
                _gone: gone_tx,
                gone,
            },
        );
        Ok((
            Ticket {
                registry: self.clone(),
                id,
                cut,
                activity,
            },
            evicted,
        ))
    }

    /// Waits until another connection fits in the open files (its accept must not fail nor
    /// starve the copies of files), making room as admission would: the oldest connection in
    /// its handshake is cut when even the ones closing already would not leave enough. Until
    /// then the kernel holds the connection in the listener's backlog.
    pub async fn room(self: &Arc<Self>) -> Room {
        loop {
            let freed = self.freed.notified();
            {
                let mut state = lock(&self.state);
                if state.fds(false) + FDS_PER_STREAM <= self.fd_budget {
                    state.reserved += 1;
                    return Room {
                        registry: self.clone(),
                        held: true,
                    };
                }
                if state.fds(true) + FDS_PER_STREAM > self.fd_budget
                    && let Some(oldest) = state.oldest_pending(None)
                {
                    let why = "the collector is at its open-file limit".to_string();
                    state.evict(oldest, why);
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Everything is cut (the collector is shutting down).
    pub fn cut_all(&self) {
        for entry in lock(&self.state).entries.values() {
            entry.cut.cut(CutReason::Shutdown);
        }
    }
}

/// An open file held for a connection about to be accepted: every listener's accept counts
/// against the open files before it happens, so no burst of accepts can exhaust them.
pub(super) struct Room {
    registry: Arc<Registry>,
    held: bool,
}

impl Room {
    /// The accepted connection takes the file held for it ([`Registry::admit`]).
    pub fn admit(mut self, guest: Option<&str>) -> Result<(Ticket, u64), String> {
        let registry = self.registry.clone();
        let mut state = lock(&registry.state);
        state.reserved -= 1;
        self.held = false;
        registry.admit_in(&mut state, guest)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.held {
            lock(&self.registry.state).reserved -= 1;
            self.registry.freed.notify_waiters();
        }
    }
}

impl Ticket {
    /// A complete line arrived: the connection is not idle.
    pub fn touch(&self) {
        self.activity.store(self.registry.now(), Ordering::Relaxed);
    }

    /// The connection proved it is `guest`'s agent: it becomes the guest's stream, replacing
    /// an older one silent for the limit's `replace_after` (the receiver says when that one
    /// is gone). Err: an older stream that is not idle (how long it has been silent).
    pub fn become_stream(&self, guest: &str) -> Result<Option<watch::Receiver<()>>, Duration> {
        let registry = &self.registry;
        let mut state = lock(&registry.state);
        let now = registry.now();
        let mut replaced = None;
        if let Some(old) = state
            .streaming
            .get(guest)
            .copied()
            .filter(|old| *old != self.id)
            && let Some(entry) = state.entries.get_mut(&old)
        {
            let silent = Duration::from_nanos(now - entry.activity.load(Ordering::Relaxed));
            if silent < registry.limits.replace_after {
                return Err(silent);
            }
            entry.leaving = true;
            entry.cut.cut(CutReason::Replaced);
            replaced = Some(entry.gone.clone());
        }
        if let Some(entry) = state.entries.get_mut(&self.id) {
            entry.streaming = true;
        }
        state.streaming.insert(guest.to_string(), self.id);
        Ok(replaced)
    }

    /// Takes `bytes` of the line memory budget; when it is short, the connection holding the
    /// most is cut and its memory awaited. False: this connection holds the most itself.
    pub async fn reserve(&self, bytes: usize) -> bool {
        let registry = &self.registry;
        loop {
            let freed = registry.freed.notified();
            {
                let mut state = lock(&registry.state);
                if state.line_bytes + bytes <= registry.limits.line_memory {
                    state.line_bytes += bytes;
                    if let Some(entry) = state.entries.get_mut(&self.id) {
                        entry.held += bytes;
                    }
                    return true;
                }
                let own = state.entries.get(&self.id).map_or(0, |e| e.held);
                let largest = state
                    .live()
                    .filter(|(id, _)| **id != self.id)
                    .max_by_key(|(_, e)| e.held)
                    .map(|(id, e)| (*id, e.held));
                match largest {
                    Some((victim, held)) if held > own && held > 0 => {
                        let entry = state.entries.get_mut(&victim).expect("found above");
                        entry.leaving = true;
                        entry.cut.cut(CutReason::LineMemory);
                    }
                    // Everything held is cut already and on its way out: wait for it.
                    _ if state.line_bytes > state.live().map(|(_, e)| e.held).sum::<usize>() => {}
                    _ => return false,
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), freed).await;
        }
    }

    /// Gives back `bytes` of the line memory budget.
    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut state = lock(&self.registry.state);
        state.line_bytes -= bytes;
        if let Some(entry) = state.entries.get_mut(&self.id) {
            entry.held -= bytes;
        }
        drop(state);
        self.registry.freed.notify_waiters();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = lock(&self.registry.state);
        if let Some(entry) = state.entries.remove(&self.id) {
            state.line_bytes -= entry.held;
            if let Some(guest) = &entry.guest
                && state.streaming.get(guest) == Some(&self.id)
            {
                state.streaming.remove(guest);
            }
        }
        drop(state);
        self.registry.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
