//! Guest test of the tier-0 fallback, on every guest kernel: with no probes the guard still
//! gives a pids verdict, from the kernel's own files, streamed via inotify as they change.
//!
//! The scenario runs in the probe suites' one boot per kernel (`guard_tests::guest::probes`).
use guard_tests::{
    guest::probes::{results, scenario},
    per_kernel,
};

fn tier_0_still_gives_a_verdict(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let bomb = scenario(done, "pids-tier0");
    assert_eq!(bomb.report()["tier"], 0);
    assert!(bomb.report()["counters"]["bpf"].is_null());
    assert_eq!(bomb.kernel("pids_events", "max"), bomb.tally("eagain"));
    assert_eq!(bomb.verdict("pids"), "enforced");
    let flags = bomb.report()["flags"].to_string();
    assert!(flags.contains("tier 0"), "{flags}");
    // Live evidence at tier 0 is the kernel's own file, streamed via inotify as it changes.
    // Under the bomb's storm of changes, later snapshots are in summaries: their last one.
    let snapshots = bomb.events_of("kernel_file");
    let summarized = bomb.events_of("summary");
    let last_snapshots = summarized
        .iter()
        .filter(|s| s["detail"]["of"] == "kernel_file")
        .map(|s| &s["detail"]["last"]);
    assert!(
        snapshots
            .iter()
            .map(|e| &e["detail"])
            .chain(last_snapshots)
            .any(|detail| detail["file"] == "pids.events"
                && detail["counts"]["max"].as_u64() > Some(0)),
        "{:?}",
        bomb.events
    );
}

per_kernel!(tier_0_still_gives_a_verdict);
