//! A container's subscription: that container's events only, every one of them up to its
//! final report, and then its end, at `unwatch`; the other subscriptions go on.
use std::time::Duration;

use guard::{EventDetail, Guard, GuardEvent};
use guard_tests::host::{TestCgroup, root_or_skip, run_stress, unbounded};
use tokio::sync::mpsc::{self, error::TryRecvError};

use crate::STRESS;

/// Reads `events` to their end: the forks of `container`, and any event of another.
async fn read_to_end(
    mut events: mpsc::Receiver<GuardEvent>,
    container: &str,
) -> (u64, Vec<GuardEvent>) {
    let mut forks = 0;
    let mut strangers = Vec::new();
    while let Some(event) = events.recv().await {
        match (&event.container, &event.detail) {
            (Some(id), EventDetail::Fork(_)) if id == container => forks += 1,
            (Some(id), _) if id == container => {}
            _ => strangers.push(event),
        }
    }
    (forks, strangers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_subscription_ends_at_unwatch_with_every_event() {
    if !root_or_skip("a_containers_subscription_ends_at_unwatch_with_every_event") {
        return;
    }
    let (web, db) = (TestCgroup::create("sub-web"), TestCgroup::create("sub-db"));
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("sub-web", &web.path).unwrap();
    guard.watch("sub-db", &db.path).unwrap();
    let mut all = guard.subscribe(10_000);
    let reader = tokio::spawn(read_to_end(
        guard.subscribe_container("sub-web", 10_000).unwrap(),
        "sub-web",
    ));
    let db_events = guard.subscribe_container("sub-db", 10_000).unwrap();

    run_stress(STRESS, Some(&web.path), &["fork", "120"]);
    run_stress(STRESS, Some(&db.path), &["fork", "80"]);
    let report = guard.unwatch("sub-web").await.unwrap();
    let (forks, strangers) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the container's subscription did not end at unwatch")
        .unwrap();
    assert_eq!(report.counters.delivered.forks, 120, "{report:?}");
    assert_eq!(forks, 120, "every event up to the final report");
    assert!(
        strangers.is_empty(),
        "another container's events: {strangers:?}"
    );

    // Unwatched: no new subscription to it; the others go on.
    assert_eq!(
        guard
            .subscribe_container("sub-web", 8)
            .unwrap_err()
            .to_string(),
        "container sub-web is not watched"
    );
    assert!(matches!(all.try_recv(), Ok(_) | Err(TryRecvError::Empty)));
    let db_reader = tokio::spawn(read_to_end(db_events, "sub-db"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !db_reader.is_finished(),
        "sub-db's subscription ended with sub-web's"
    );
    guard.unwatch("sub-db").await.unwrap();
    let (forks, strangers) = tokio::time::timeout(Duration::from_secs(60), db_reader)
        .await
        .expect("sub-db's subscription did not end at its unwatch")
        .unwrap();
    assert_eq!(forks, 80);
    assert!(strangers.is_empty(), "{strangers:?}");
    assert!(matches!(all.try_recv(), Ok(_) | Err(TryRecvError::Empty)));
}
