//! Host-kernel test of the throttle signal: the rate bound suppresses events, never counts,
//! and says how many it suppressed.
use guard::{Guard, GuardOptions};
use guard_tests::host::{TestCgroup, root_or_skip, run_stress};

use crate::STRESS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_bound_keeps_counters_exact() {
    if !root_or_skip("rate_bound_keeps_counters_exact") {
        return;
    }
    let mut options = GuardOptions::default();
    options.ring.max_events_per_sec = 100;
    let cgroup = TestCgroup::create("throttled");
    let guard = Guard::start(options).await.unwrap();
    guard.watch("throttled", &cgroup.path).unwrap();

    run_stress(STRESS, Some(&cgroup.path), &["fork", "1000"]);

    let counters = guard.counters("throttled").await.unwrap();
    let bpf = counters.bpf.unwrap();
    assert_eq!(bpf.forks, 1000, "{counters:?}");
    assert!(bpf.events_throttled > 0, "{counters:?}");
    assert_eq!(
        counters.delivered.forks + bpf.events_throttled,
        1000,
        "{counters:?}"
    );
}
