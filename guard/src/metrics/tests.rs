//! The encoder on reports written by hand: names, labels, units, and no sample for a figure
//! the report does not have.
use super::encode::*;
use serde_json::Value;
use serde_json::json;

fn report() -> Value {
    json!({
        "container": "web-1",
        "applied": {"memory_max": {"value": 1048576}, "pids_max": "max", "memory_peak": 4096},
        "counters": {
            "bpf": {"forks": 7, "exits": 6, "fork_denied": 5, "fork_denied_pids_max": 4,
                    "oom_kills": 1, "reclaim_runs": 2, "reclaim_ns": 1500000000,
                    "reclaim_pages": 9, "events_throttled": 0, "task_map_full": 0},
            "delivered": {"forks": 7, "oom_victims": 1}
        },
        "kernel_since_watch": {"pids_events": {"max": 4}, "memory_events": null},
        "oom": {"memcg_kills": 1, "ancestor_kills": 0, "global_kills": 0},
        "pids": {"verdict": "enforced"}, "memory": {"verdict": "enforced"},
        "verdict": "enforced",
        "loss": {"kernel_reserve_failures": {"fork": 3}, "reader": {"sequence_gaps": 0,
                 "undecodable": 0, "subscriber_drops": 2},
                 "reader_health": {"state": "healthy", "faults": 0, "restarts": 0}}
    })
}

#[test]
fn every_counter_of_the_report_is_named_by_convention() {
    let text = render(&Snapshot {
        reports: vec![report()],
        tier: Some(2),
        ..Snapshot::default()
    })
    .unwrap();
    for line in [
        "# TYPE guard_forks counter",
        "guard_forks_total{container=\"web-1\"} 7",
        "guard_fork_denied_total{container=\"web-1\",cause=\"pids_max\"} 4",
        "guard_fork_denied_total{container=\"web-1\",cause=\"other\"} 1",
        "guard_memcg_reclaim_stall_seconds_total{container=\"web-1\"} 1.5",
        "guard_kernel_events_total{container=\"web-1\",file=\"pids.events\",event=\"max\"} 4",
        "guard_oom_kills_total{container=\"web-1\",scope=\"memcg\"} 1",
        "guard_memory_max_bytes{container=\"web-1\"} 1048576",
        "guard_verdict{container=\"web-1\",limit=\"overall\",verdict=\"enforced\"} 1",
        "guard_events_lost_total{where=\"kernel\",kind=\"fork\"} 3",
        "guard_subscriber_drops_total 2",
        "guard_reader_state{state=\"healthy\"} 1",
        "guard_tier 2",
        "# EOF",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // No limit is no sample, not a made-up number.
    assert!(!text.contains("guard_pids_max{"), "{text}");
}

#[test]
fn tier_zero_has_no_bpf_figures() {
    let mut report = report();
    report["counters"]["bpf"] = Value::Null;
    let text = render(&Snapshot {
        reports: vec![report],
        ..Snapshot::default()
    })
    .unwrap();
    assert!(!text.contains("guard_forks_total{"), "{text}");
    assert!(text.contains("guard_kernel_events_total{"), "{text}");
}
