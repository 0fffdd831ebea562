//! Host-kernel test of loss accounting: a forced ring-buffer overflow is accounted exactly
//! (delivered + lost = the kernel's count) and in-band, to subscribers and in the forensic log.
use std::time::Duration;

use guard::{EventDetail, Guard, GuardOptions};
use guard_tests::host::{TestCgroup, event_log, root_or_skip, run_stress};

use crate::STRESS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_overflow_is_accounted_exactly_and_in_band() {
    if !root_or_skip("forced_overflow_is_accounted_exactly_and_in_band") {
        return;
    }
    // A one-page ring that is never drained during the storm must overflow.
    let mut options = GuardOptions::default();
    options.ring.ring_bytes = 4096;
    options.ring.wakeup_bytes = u64::MAX;
    options.ring.max_events_per_sec = 0;
    options.poll_interval = Duration::from_secs(3600);
    let cgroup = TestCgroup::create("overflow");
    let guard = Guard::start(options).await.unwrap();
    guard.watch("overflow", &cgroup.path).unwrap();
    let mut events = guard.subscribe(100_000);
    let (log_dir, log) = event_log(&guard, "overflow-log");

    run_stress(STRESS, Some(&cgroup.path), &["fork", "3000"]);

    let counters = guard.counters("overflow").await.unwrap();
    let loss = guard.loss().await.unwrap();
    let bpf = counters.bpf.unwrap();
    let lost = loss.kernel_reserve_failures["fork"];
    assert_eq!(bpf.forks, 3000, "{counters:?}");
    assert!(lost > 0, "a 4 KiB ring must overflow: {loss:?}");
    assert_eq!(
        counters.delivered.forks + lost,
        bpf.forks,
        "{counters:?} {loss:?}"
    );

    let mut in_band_lost = 0;
    let mut in_band_forks = 0;
    while let Ok(event) = events.try_recv() {
        match &event.detail {
            EventDetail::Lost(lost) => {
                assert_eq!(lost.event_kind, "fork");
                assert!(event.ring.is_none(), "a loss tally is synthetic: {event:?}");
                in_band_lost += lost.count;
            }
            EventDetail::Fork(_) => in_band_forks += 1,
            _ => {}
        }
    }
    assert_eq!(in_band_forks, counters.delivered.forks);
    assert_eq!(in_band_lost, lost, "every loss must appear in-band");

    // The forensic log holds the same: every delivered fork, and the losses as `lost` records.
    log.close().await.unwrap();
    let report = guard::forensic::verify(&log_dir).unwrap();
    assert!(
        report.problem.is_none() && report.torn_tail.is_none(),
        "{report:?}"
    );
    let records = guard_tests::log_records(&log_dir);
    let logged_forks = guard_tests::logged_count(&records, "fork", None);
    let logged_lost: u64 = records
        .iter()
        .filter(|record| record["kind"] == "lost")
        .map(|record| record["payload"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(logged_forks, counters.delivered.forks);
    assert_eq!(logged_lost, lost);
    std::fs::remove_dir_all(&log_dir).unwrap();
    // The per-CPU sequence gaps see the same losses, except those after a CPU's last delivered
    // record.
    assert!(loss.reader.sequence_gaps <= lost, "{loss:?}");
}
