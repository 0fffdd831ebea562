//! Guest tests of the fork_denied signal, on every guest kernel: a pids.max bomb in a guarded
//! container, its denials counted by the probe, named pids.max by the kretprobe (tier 3) and
//! reconciled with the kernel's own `pids.events` and the workload's tally; the guest's
//! forensic log holds every denial and verifies independently. On a kernel without tracing
//! (tiers 0 and 1) the verdict comes from `pids.events` alone, and neither the report nor the log
//! shows a BPF figure or a denial event it cannot have. Two-sided: without pids.max the same
//! bomb is never denied and nothing is "enforced".
//!
//! The scenario runs in the probe suites' one boot per kernel (`guard_tests::guest::probes`).
use guard_tests::{
    guest::{
        assert_log_verifies, facts,
        probes::{results, scenario},
        unpack_log,
    },
    log_records, logged_count, per_kernel,
};

fn pids_bomb_is_denied_and_reconciled(kernel: &'static str) {
    let Some(done) = results(kernel) else { return };
    let bomb = scenario(done, "pids");
    let denied = bomb.tally("eagain");
    assert!(denied > 0, "{:?}", bomb.tally);
    assert!(bomb.tally("succeeded") < 64, "{:?}", bomb.tally);
    let tier = facts(kernel).tier;
    assert_eq!(bomb.report()["tier"], tier, "{}", bomb.report());
    assert_eq!(bomb.kernel("pids_events", "max"), denied);
    let events = bomb.events_of("fork_denied");
    // The storm's denials past the first of its burst are in summary lines.
    let summaries: Vec<&serde_json::Value> = bomb
        .events_of("summary")
        .into_iter()
        .filter(|s| s["detail"]["of"] == "fork_denied")
        .collect();
    if tier >= 2 {
        // Probe, kernel and workload agree exactly.
        assert_eq!(bomb.bpf("fork_denied"), denied);
        assert_eq!(bomb.bpf("forks"), bomb.tally("succeeded"));
        assert_eq!(logged_count(&bomb.events, "fork_denied", None), denied);
        assert_eq!(
            logged_count(&bomb.events, "fork_denied", Some("pids")),
            denied
        );
        assert!(!events.is_empty());
    } else {
        // The kernel's own file is the evidence; a BPF figure here would be made up.
        assert!(
            bomb.report()["counters"]["bpf"].is_null(),
            "{}",
            bomb.report()
        );
        assert!(events.is_empty() && summaries.is_empty(), "{events:?}");
    }
    if tier == 3 {
        // The kretprobe names pids.max as the cause of every denial, those summarized too.
        assert_eq!(bomb.bpf("fork_denied_pids_max"), denied);
        assert!(events.iter().all(|e| e["detail"]["cause"] == "pids_max"));
        assert!(
            summaries
                .iter()
                .all(|s| s["detail"]["sums"]["cause_pids_max"] == s["detail"]["count"]),
            "{summaries:?}"
        );
    }
    assert_eq!(bomb.verdict("pids"), "enforced");

    // The guest's forensic log comes back verifiable by the independent verifier, and holds
    // every denial the counters saw.
    let log = unpack_log(done, "pids-log", kernel);
    assert_log_verifies(&log);
    let logged = std::fs::read_to_string(log.join("guard-000000.jsonl")).unwrap();
    let records = log_records(&log);
    let logged_denials = logged_count(&records, "fork_denied", Some("pids"));
    assert_eq!(logged_denials, if tier >= 2 { denied } else { 0 });
    assert!(
        logged
            .lines()
            .next()
            .unwrap()
            .contains(&format!(r#""tier":{tier}"#)),
        "the log's start record says the tier"
    );
    assert!(
        logged
            .lines()
            .any(|line| line.contains(r#""kind":"report""#))
    );

    // Two-sided: without pids.max the same bomb is never denied and nothing is "enforced".
    let unlimited = scenario(done, "pids-unlimited");
    assert_eq!(unlimited.tally("eagain"), 0);
    assert_eq!(unlimited.kernel("pids_events", "max"), 0);
    if tier >= 2 {
        assert_eq!(unlimited.bpf("fork_denied"), 0);
    }
    assert_ne!(unlimited.verdict("pids"), "enforced");
}

per_kernel!(pids_bomb_is_denied_and_reconciled);
