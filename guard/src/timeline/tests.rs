//! The timeline's data from records written by hand: every series a panel plots, with its
//! values and times.
use serde_json::json;

use super::data::{Point, timeline, totals};
use crate::forensic::Record;

fn record(
    seq: u64,
    ms: u64,
    kind: &str,
    container: Option<&str>,
    payload: serde_json::Value,
) -> Record {
    Record {
        seq,
        boot_id: "boot".into(),
        wall: "2026-12-05T12:00:00Z".into(),
        mono_ns: 1_000_000_000 + ms * 1_000_000,
        kind: kind.into(),
        container: container.map(String::from),
        payload,
        prev: String::new(),
        hash: String::new(),
    }
}

#[test]
fn every_series_is_taken_from_its_records() {
    let c = Some("web");
    let records = vec![
        record(0, 0, "start", None, json!({"tier": 2})),
        record(1, 100, "fork_denied", c, json!({})),
        record(2, 150, "fork_denied", c, json!({})),
        record(
            3,
            200,
            "kernel_file",
            c,
            json!({"file": "pids.events", "counts": {"max": 2}}),
        ),
        record(4, 300, "reclaim", c, json!({"duration_ns": 4_000_000})),
        record(
            5,
            400,
            "oom_victim",
            c,
            json!({"victim_pid": 42, "comm": "bomb"}),
        ),
        record(
            6,
            410,
            "kernel_file",
            c,
            json!({"file": "memory.events", "counts": {"oom": 1, "oom_kill": 1}}),
        ),
        // A snapshot where only another key changed: no new oom_kill step.
        record(
            7,
            420,
            "kernel_file",
            c,
            json!({"file": "memory.events", "counts": {"oom": 2, "oom_kill": 1}}),
        ),
        record(8, 500, "throttle", c, json!({"suppressed": 30})),
        record(9, 600, "lost", None, json!({"count": 5})),
        record(
            10,
            900,
            "wave",
            c,
            json!({"wave": "memory_bomb", "elapsed_ms": 800}),
        ),
        record(11, 950, "fork", Some("other"), json!({})),
        record(
            12,
            1000,
            "wave",
            None,
            json!({"wave": "tenants", "elapsed_ms": 500}),
        ),
    ];
    let plotted = timeline(&records, None);
    assert_eq!(plotted.duration_s, 1.0);
    assert_eq!(plotted.records, 13);
    let web = &plotted.containers["web"];
    assert_eq!(
        web.fork_denials,
        [
            Point { t: 0.1, value: 1.0 },
            Point {
                t: 0.15,
                value: 2.0
            }
        ]
    );
    assert_eq!(web.pids_max, [Point { t: 0.2, value: 2.0 }]);
    assert_eq!(
        web.memory_events["oom_kill"],
        [Point {
            t: 0.41,
            value: 1.0
        }]
    );
    assert_eq!(web.memory_events["oom"].len(), 2);
    assert_eq!(
        (web.oom_kills[0].pid, web.oom_kills[0].comm.as_str()),
        (42, "bomb")
    );
    assert_eq!(
        web.reclaim_stall_ms.iter().map(|p| p.value).sum::<f64>(),
        4.0
    );
    assert_eq!(
        web.throttled,
        [Point {
            t: 0.5,
            value: 30.0
        }]
    );
    assert_eq!(plotted.lost, [Point { t: 0.6, value: 5.0 }]);
    assert_eq!(web.spans[0].label, "memory_bomb");
    assert!((web.spans[0].start - 0.1).abs() < 1e-9);
    assert_eq!(plotted.spans[0].label, "tenants");
    assert!(plotted.containers.contains_key("other"));
    let summary = totals(web);
    assert_eq!(summary["memory_events_oom_kill"], 1.0);
    assert_eq!(summary["oom_kills_streamed"], 1);
    // One container only.
    let only = timeline(&records, Some("other"));
    assert_eq!(only.containers.keys().collect::<Vec<_>>(), ["other"]);
}

/// Summaries add their counts into the series at their events' times: the same totals as
/// one record per event, and the named kills where their events were.
#[test]
fn summaries_count_into_the_series_at_their_times() {
    let c = Some("web");
    // Record times are ms after 1 s of monotonic time; the events' ktime_ns say when they
    // happened (a summary is written after its last event).
    let ns = |ms: u64| 1_000_000_000 + ms * 1_000_000;
    let records = vec![
        record(0, 0, "start", None, json!({"tier": 2})),
        record(1, 100, "fork_denied", c, json!({})),
        record(
            2,
            1_200,
            "summary",
            c,
            json!({"of": "fork_denied", "count": 40, "first_ktime_ns": ns(110),
                   "last_ktime_ns": ns(1_000), "sums": {}, "examples": [], "last": {}}),
        ),
        record(
            3,
            200,
            "oom_victim",
            c,
            json!({"victim_pid": 1, "comm": "a"}),
        ),
        record(
            4,
            1_300,
            "summary",
            c,
            json!({"of": "oom_victim", "count": 10, "first_ktime_ns": ns(300),
                   "last_ktime_ns": ns(900), "sums": {"outside_containers": 0},
                   "examples": [{"ktime_ns": ns(300), "victim_pid": 2, "comm": "b"}],
                   "last": {"ktime_ns": ns(900), "victim_pid": 11, "comm": "k"}}),
        ),
        record(
            5,
            1_400,
            "summary",
            c,
            json!({"of": "reclaim", "count": 500, "first_ktime_ns": ns(0),
                   "last_ktime_ns": ns(1_000), "sums": {"duration_ns": 50_000_000},
                   "examples": [], "last": {}}),
        ),
        record(
            6,
            1_500,
            "summary",
            c,
            json!({"of": "kernel_file", "file": "memory.events", "count": 9,
                   "first_ktime_ns": ns(250), "last_ktime_ns": ns(950), "sums": {},
                   "examples": [],
                   "last": {"file": "memory.events", "counts": {"oom_kill": 11}}}),
        ),
        record(7, 2_000, "stop", None, json!({})),
    ];
    let plotted = timeline(&records, None);
    let web = &plotted.containers["web"];
    assert_eq!(
        web.fork_denials.last(),
        Some(&Point {
            t: 1.0,
            value: 41.0
        })
    );
    let summary = totals(web);
    assert_eq!(summary["oom_kills_streamed"], 11);
    let named: Vec<(u64, u64)> = web.oom_kills.iter().map(|k| (k.pid, k.n)).collect();
    assert_eq!(named, [(1, 1), (2, 2), (11, 11)]);
    assert!((web.oom_kills[1].t - 0.3).abs() < 1e-9);
    assert_eq!(
        web.memory_events["oom_kill"],
        [Point {
            t: 0.95,
            value: 11.0
        }]
    );
    // The reclaim stall is spread over the span's buckets (10 ms each over 2 s), not piled
    // into one.
    let stall: f64 = web.reclaim_stall_ms.iter().map(|p| p.value).sum();
    assert!((stall - 50.0).abs() < 0.01, "{stall}");
    assert!(
        web.reclaim_stall_ms.len() > 50,
        "{}",
        web.reclaim_stall_ms.len()
    );
    assert!(web.reclaim_stall_ms.iter().all(|p| p.t <= 1.0 + 1e-9));
}
