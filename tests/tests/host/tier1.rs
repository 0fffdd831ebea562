//! Host-kernel tests of tier 1 (the kernel's own live sources, no BPF program): perf's task
//! records per watched cgroup give exact fork counts per container, sub-cgroups included, and
//! nothing of other cgroups. Two-sided: the same workload at tier 0 gives no record at all.
use guard::{EventDetail, Guard, Tier};
use guard_tests::host::{TestCgroup, root_or_skip, run_stress, unbounded};

use crate::STRESS;

const FORKS: u64 = 2000;

async fn tier_1() -> Guard {
    let mut options = unbounded();
    options.max_tier = Tier::KernelSources;
    let guard = Guard::start(options).await.unwrap();
    assert_eq!(guard.tier(), Tier::KernelSources);
    // The host kernel has delay accounting (/proc/sys/kernel/task_delayacct).
    assert_eq!(
        guard.sources(),
        ["perf", "kmsg", "taskstats", "cgroup_files"]
    );
    guard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_counts_exactly_the_forks_of_each_container() {
    if !root_or_skip("perf_counts_exactly_the_forks_of_each_container") {
        return;
    }
    let busy = TestCgroup::create("t1-busy");
    let nested = TestCgroup::create("t1-nested");
    let deeper = nested.child("inner").child("deeper");
    let idle = TestCgroup::create("t1-idle");
    let guard = tier_1().await;
    let mut events = guard.subscribe(10_000);
    for (id, cgroup) in [("busy", &busy), ("nested", &nested), ("idle", &idle)] {
        guard.watch(id, &cgroup.path).unwrap();
    }

    let tally = run_stress(STRESS, Some(&busy.path), &["fork", &FORKS.to_string()]);
    assert!(tally.contains(&format!("\"succeeded\":{FORKS}")), "{tally}");
    // A sub-cgroup's forks are its container's: perf's cgroup filter covers descendants.
    run_stress(STRESS, Some(&deeper.path), &["fork", "150"]);
    // Forks outside every watched cgroup are nobody's.
    run_stress(STRESS, None, &["fork", "300"]);

    let busy_counters = guard.counters("busy").await.unwrap();
    assert_eq!(busy_counters.bpf, None, "{busy_counters:?}");
    let sources = busy_counters.sources.expect("tier 1 has a sources row");
    assert_eq!(sources.forks, FORKS, "{busy_counters:?}");
    assert_eq!(busy_counters.delivered.forks, FORKS, "{busy_counters:?}");
    // Every child and guard-stress itself.
    assert_eq!(sources.exits, FORKS + 1, "{busy_counters:?}");
    assert_eq!(sources.lost, 0, "{busy_counters:?}");
    // taskstats: each of those exits' statistics, attributed through the task map.
    assert_eq!(sources.tasks_accounted, FORKS + 1, "{busy_counters:?}");
    let nested_counters = guard.counters("nested").await.unwrap();
    let nested_sources = nested_counters.sources.unwrap();
    assert_eq!(nested_sources.forks, 150, "{nested_counters:?}");
    assert_eq!(nested_sources.tasks_accounted, 151, "{nested_counters:?}");
    let idle_counters = guard.counters("idle").await.unwrap();
    let idle_sources = idle_counters.sources.unwrap();
    assert_eq!(
        (idle_sources.forks, idle_sources.tasks_accounted),
        (0, 0),
        "{idle_counters:?}"
    );

    let mut forks = 0;
    while let Ok(event) = events.try_recv() {
        if let EventDetail::Fork(fork) = &event.detail {
            assert_eq!(event.source(), guard::events::EventSource::Perf);
            assert!(fork.child_pid > 0);
            if event.container.as_deref() == Some("busy") {
                forks += 1;
            }
        }
    }
    assert_eq!(forks, FORKS);
    let report = guard.unwatch("busy").await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tier"], 1);
    assert_eq!(json["counters"]["sources"]["forks"], FORKS);
    assert!(json["counters"]["bpf"].is_null());
    drop(deeper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_0_has_no_source_records() {
    if !root_or_skip("tier_0_has_no_source_records") {
        return;
    }
    // Two-sided: the same forks with the sources off (tier 0 forced) give no row and no
    // record, so the exact counts above come from perf.
    let cgroup = TestCgroup::create("t1-off");
    let mut options = unbounded();
    options.max_tier = Tier::CgroupFilesOnly;
    let guard = Guard::start(options).await.unwrap();
    guard.watch("off", &cgroup.path).unwrap();
    run_stress(STRESS, Some(&cgroup.path), &["fork", "500"]);
    let counters = guard.counters("off").await.unwrap();
    assert_eq!(
        (counters.bpf, counters.sources),
        (None, None),
        "{counters:?}"
    );
    assert_eq!(counters.delivered.forks, 0, "{counters:?}");
}
