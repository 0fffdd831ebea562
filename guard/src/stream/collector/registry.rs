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

    /// Open files the connections not yet cut take.
    fn fds(&self) -> u64 {
        self.live()
            .map(|(_, e)| if e.streaming { FDS_PER_STREAM } else { 1 })
            .sum()
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
    memory_freed: Notify,
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
            memory_freed: Notify::new(),
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

    /// Takes in a new connection of `guest` (None: a peer no table names), making room by
    /// evicting the oldest connections in their handshake; Err (why) when there is none to
    /// evict. Returns the ticket and how many were evicted.
    pub fn admit(self: &Arc<Self>, guest: Option<&str>) -> Result<(Ticket, u64), String> {
        let mut state = lock(&self.state);
        let mut evicted = 0;
        let cap = self.max_connections();
        while state.live().count() >= cap || state.fds() + FDS_PER_STREAM > self.fd_budget {
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
            let freed = registry.memory_freed.notified();
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
        self.registry.memory_freed.notify_waiters();
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
        self.registry.memory_freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, per_guest: usize) -> Limits {
        Limits {
            max_connections,
            max_pending_per_guest: per_guest,
            replace_after: Duration::ZERO,
            line_memory: 100,
            ..Limits::default()
        }
    }

    fn cut_reason(ticket: &Ticket) -> Option<CutReason> {
        lock(&ticket.cut.reason).clone()
    }

    #[test]
    fn the_oldest_handshakes_make_room_and_streams_are_kept() {
        let registry = Registry::new(limits(3, 2), 1_000);
        let (a, _) = registry.admit(Some("a")).unwrap();
        let (b, _) = registry.admit(Some("b")).unwrap();
        assert!(a.become_stream("a").unwrap().is_none());
        let (c, _) = registry.admit(Some("b")).unwrap();
        // The global cap: b is the oldest in its handshake (a is a stream).
        let (d, evicted) = registry.admit(Some("c")).unwrap();
        assert_eq!(evicted, 1);
        assert!(
            matches!(cut_reason(&b), Some(CutReason::Evicted(why)) if why.contains("cap of 3"))
        );
        assert_eq!(
            (cut_reason(&a), cut_reason(&c), cut_reason(&d)),
            (None, None, None)
        );
        // The per-guest cap of 2: a third connection of b evicts the oldest of b's.
        let registry = Registry::new(limits(10, 2), 1_000);
        let (first, _) = registry.admit(Some("b")).unwrap();
        let (second, _) = registry.admit(Some("b")).unwrap();
        let (_other, _) = registry.admit(Some("c")).unwrap();
        let (_third, evicted) = registry.admit(Some("b")).unwrap();
        assert_eq!(evicted, 1);
        assert!(
            matches!(cut_reason(&first), Some(CutReason::Evicted(why)) if why.contains("newer connections of b"))
        );
        assert_eq!(cut_reason(&second), None);
        // All streams: nothing to evict, the new one is refused.
        let registry = Registry::new(limits(1, 8), 1_000);
        let (only, _) = registry.admit(Some("a")).unwrap();
        only.become_stream("a").unwrap();
        let refused = registry.admit(Some("b")).err().expect("refused");
        assert!(refused.contains("all of them streams"), "{refused}");
    }

    #[test]
    fn open_files_lower_the_cap() {
        let registry = Registry::new(limits(4096, 8), 5 * FDS_PER_STREAM);
        assert_eq!(registry.max_connections(), 5);
    }

    #[test]
    fn a_newer_stream_replaces_an_idle_one_only() {
        let registry = Registry::new(limits(10, 8), 1_000);
        let (old, _) = registry.admit(Some("a")).unwrap();
        old.become_stream("a").unwrap();
        let (new, _) = registry.admit(Some("a")).unwrap();
        assert!(new.become_stream("a").unwrap().is_some());
        assert_eq!(cut_reason(&old), Some(CutReason::Replaced));
        let registry = Registry::new(
            Limits {
                replace_after: Duration::from_secs(3600),
                ..limits(10, 8)
            },
            1_000,
        );
        let (old, _) = registry.admit(Some("a")).unwrap();
        old.become_stream("a").unwrap();
        let (new, _) = registry.admit(Some("a")).unwrap();
        assert!(new.become_stream("a").is_err());
        assert_eq!(cut_reason(&old), None);
    }

    #[test]
    fn the_largest_holder_is_cut_when_line_memory_runs_out() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let registry = Registry::new(limits(10, 8), 1_000);
        let (big, _) = registry.admit(Some("a")).unwrap();
        let (small, _) = registry.admit(Some("b")).unwrap();
        let (asking, _) = registry.admit(Some("c")).unwrap();
        runtime.block_on(async {
            assert!(big.reserve(70).await && small.reserve(20).await);
            // Not enough: the largest holder is cut, and its memory awaited.
            let freeing = async {
                while cut_reason(&big).is_none() {
                    tokio::task::yield_now().await;
                }
                big.release(70);
            };
            let (granted, ()) = tokio::join!(asking.reserve(50), freeing);
            assert!(granted);
            assert_eq!(cut_reason(&big), Some(CutReason::LineMemory));
            assert_eq!(cut_reason(&small), None);
            // The one asking is the largest itself: it is told so.
            assert!(!asking.reserve(60).await);
        });
    }
}
