//! Host-kernel tests of the fork signal: exact per-container counts, attribution by cgroup
//! (and ancestry), subscribers, and the two-sided checks that show the counts come from the
//! probe.
//! The host's cgroup v2 hierarchy lacks memory/pids controllers; these tests need neither.
use guard::{Guard, Tier};
use guard_tests::host::{TestCgroup, root_or_skip, run_stress, unbounded, watched_container};

use crate::STRESS;

const FORKS: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_exactly_the_forks_of_each_registered_cgroup() {
    if !root_or_skip("counts_exactly_the_forks_of_each_registered_cgroup") {
        return;
    }
    let busy = TestCgroup::create("busy");
    let idle = TestCgroup::create("idle");
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("busy", &busy.path).unwrap();
    guard.watch("idle", &idle.path).unwrap();

    let tally = run_stress(STRESS, Some(&busy.path), &["fork", &FORKS.to_string()]);
    assert!(tally.contains(&format!("\"succeeded\":{FORKS}")), "{tally}");
    // Forks outside every registered cgroup must not be counted anywhere.
    run_stress(STRESS, None, &["fork", "300"]);

    let busy_counters = guard.counters("busy").await.unwrap();
    let idle_counters = guard.counters("idle").await.unwrap();
    assert_eq!(busy_counters.bpf.unwrap().forks, FORKS, "{busy_counters:?}");
    assert_eq!(busy_counters.delivered.forks, FORKS, "{busy_counters:?}");
    assert_eq!(idle_counters.bpf.unwrap().forks, 0, "{idle_counters:?}");
    assert_eq!(idle_counters.delivered.forks, 0, "{idle_counters:?}");
    let loss = guard.loss().await.unwrap();
    assert_eq!(loss.kernel_reserve_failures["fork"], 0, "{loss:?}");
    assert_eq!(loss.reader.sequence_gaps, 0, "{loss:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_cgroups_stay_attributed_to_their_container() {
    if !root_or_skip("sub_cgroups_stay_attributed_to_their_container") {
        return;
    }
    let container = TestCgroup::create("nested");
    let inner = container.child("inner");
    let deeper = inner.child("deeper");
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("nested", &container.path).unwrap();

    run_stress(STRESS, Some(&deeper.path), &["fork", "150"]);
    run_stress(STRESS, Some(&container.path), &["fork", "50"]);

    let counters = guard.counters("nested").await.unwrap();
    assert_eq!(counters.bpf.unwrap().forks, 200, "{counters:?}");
    assert_eq!(counters.delivered.forks, 200, "{counters:?}");
    drop((deeper, inner));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_cgroup_is_not_counted() {
    if !root_or_skip("an_unregistered_cgroup_is_not_counted") {
        return;
    }
    // Two-sided: the same workload as the exact-count test, in a cgroup the guard was not told
    // about, leaves the registered container at zero and the other unknown.
    let registered = TestCgroup::create("registered");
    let unregistered = TestCgroup::create("unregistered");
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("registered", &registered.path).unwrap();

    run_stress(STRESS, Some(&unregistered.path), &["fork", "500"]);

    let counters = guard.counters("registered").await.unwrap();
    assert_eq!(counters.bpf.unwrap().forks, 0, "{counters:?}");
    assert_eq!(counters.delivered.forks, 0, "{counters:?}");
    let error = guard.counters("unregistered").await.unwrap_err();
    assert!(error.to_string().contains("not watched"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_programs_nothing_is_counted() {
    if !root_or_skip("without_programs_nothing_is_counted") {
        return;
    }
    // Two-sided: with the programs not attached (tier 0 forced), the same forks yield no BPF
    // counter at all and no events, so the exact-count assertions above would fail.
    let cgroup = TestCgroup::create("unprobed");
    let mut options = unbounded();
    options.max_tier = Tier::CgroupFilesOnly;
    let guard = Guard::start(options).await.unwrap();
    assert_eq!(guard.tier(), Tier::CgroupFilesOnly);
    guard.watch("unprobed", &cgroup.path).unwrap();

    run_stress(STRESS, Some(&cgroup.path), &["fork", "500"]);

    let counters = guard.counters("unprobed").await.unwrap();
    assert_eq!(counters.bpf, None, "{counters:?}");
    assert_eq!(counters.delivered.forks, 0, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_each_fork_with_its_container() {
    if !root_or_skip("subscribers_see_each_fork_with_its_container") {
        return;
    }
    let (cgroup, guard) = watched_container("subscribed").await;
    let mut events = guard.subscribe(1000);

    run_stress(STRESS, Some(&cgroup.path), &["fork", "100"]);
    guard.drain().await.unwrap();

    let mut seen = 0;
    while let Ok(event) = events.try_recv() {
        assert_eq!(event.container.as_deref(), Some("subscribed"));
        assert!(matches!(&event.detail, guard::EventDetail::Fork(fork) if fork.child_pid > 0));
        seen += 1;
    }
    assert_eq!(seen, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_loses_events_counted_without_slowing_counts() {
    if !root_or_skip("a_slow_subscriber_loses_events_counted_without_slowing_counts") {
        return;
    }
    let (cgroup, guard) = watched_container("slow").await;
    // Never read: 10 events fit, the rest are dropped for this subscriber only.
    let _stalled = guard.subscribe(10);
    let mut live = guard.subscribe(10_000);

    run_stress(STRESS, Some(&cgroup.path), &["fork", "500"]);

    let counters = guard.counters("slow").await.unwrap();
    assert_eq!(counters.bpf.unwrap().forks, 500);
    assert_eq!(counters.delivered.forks, 500);
    let loss = guard.loss().await.unwrap();
    assert_eq!(loss.reader.subscriber_drops, 490, "{loss:?}");
    let mut seen = 0;
    while live.try_recv().is_ok() {
        seen += 1;
    }
    assert_eq!(
        seen, 500,
        "the live subscriber is not held back by the stalled one"
    );
}
