//! The registry's bounds: caps and eviction, open files, replacement, line memory.
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
    assert!(matches!(cut_reason(&b), Some(CutReason::Evicted(why)) if why.contains("cap of 3")));
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
