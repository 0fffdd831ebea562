use super::*;
use crate::events::{
    Fork, ForkDenied, KernelFile, OomRss, OomVictim, ReaderFault, Reclaim,
    Throttle as ThrottleDetail,
};

/// Every event kind, with and without a ring position and at the integers' limits: the
/// logged payload is byte for byte serde_json's for `EventPayload`.
#[test]
fn logged_payloads_are_serde_jsons() {
    let details = [
        EventDetail::Fork(Fork {
            parent_pid: 100,
            child_pid: 101,
        }),
        EventDetail::Fork(Fork {
            parent_pid: 0,
            child_pid: u32::MAX,
        }),
        EventDetail::Reclaim(Reclaim {
            tid: 7,
            duration_ns: 1_234_567,
            nr_reclaimed: 0,
        }),
        EventDetail::Reclaim(Reclaim {
            tid: u32::MAX,
            duration_ns: u64::MAX,
            nr_reclaimed: u64::MAX,
        }),
        EventDetail::ForkDenied(ForkDenied {
            tgid: 1,
            tid: 2,
            ret: -11,
            cause: guard_common::DenialCause::Inferred,
            syscall_nr: 56,
            task_cgroup_id: 9,
            sub_cgroup: Some("a/\"b\"".into()),
        }),
        EventDetail::OomVictim(OomVictim {
            victim_pid: 3,
            comm: "bomb\n".into(),
            outside_containers: false,
            trigger_cgroup_id: 4,
            trigger_sub_cgroup: None,
            rss: Some(OomRss {
                total_vm_kb: 1,
                anon_rss_kb: 2,
                file_rss_kb: 3,
                shmem_rss_kb: 4,
            }),
            oom_score_adj: -1000,
            scope: None,
        }),
        EventDetail::Throttle(ThrottleDetail {
            suppressed: 5,
            window_ns: 1_000_000_000,
        }),
        EventDetail::KernelFile(KernelFile {
            file: "pids.events",
            counts: crate::cgroup::KeyedCounts([("max".to_owned(), 3)].into()),
        }),
        EventDetail::Lost(crate::events::Lost {
            event_kind: "fork",
            count: 2,
        }),
        EventDetail::Exit(crate::events::Exit { pid: 5, tid: 6 }),
        EventDetail::Exec(crate::events::Exec {
            pid: 5,
            tid: 5,
            comm: "sh \"x\"".into(),
        }),
        EventDetail::ReaderFault(ReaderFault {
            error: "poll: \"x\"".into(),
            faults: 1,
            restarting: true,
        }),
    ];
    let rings = [
        None,
        Some(RingPosition { cpu: 0, seq: 1 }),
        Some(RingPosition {
            cpu: u32::MAX,
            seq: u64::MAX,
        }),
    ];
    for detail in &details {
        for ring in rings {
            for (ktime_ns, cgroup_id, source) in [
                (0, 0, EventSource::Bpf),
                (1000, 4242, EventSource::Perf),
                (u64::MAX, u64::MAX, EventSource::CgroupFiles),
            ] {
                let payload = EventPayload {
                    ring,
                    ktime_ns,
                    cgroup_id,
                    source,
                    detail,
                };
                let expected = serde_json::to_string(&payload).unwrap();
                let mut logged = Vec::new();
                LoggedPayload(payload).write_json(&mut logged).unwrap();
                assert_eq!(String::from_utf8(logged).unwrap(), expected);
            }
        }
    }
}

/// `lost` and `throttle` are logged in the forms docs/LOG-FORMAT.md gives them, not as the
/// events' own payloads: the bytes of both, as the log holds them.
#[test]
fn lost_and_throttle_payloads_keep_their_logged_form() {
    let lost = crate::events::Lost {
        event_kind: "oom_victim",
        count: 3,
    };
    assert_eq!(
        serde_json::to_string(&lost.to_record(crate::events::EventSource::Bpf)).unwrap(),
        r#"{"source":"bpf_ringbuf","event_kind":"oom_victim","cpu":null,"count":3}"#
    );
    let throttle = ThrottleDetail {
        suppressed: 5,
        window_ns: 1_999_999_999,
    };
    assert_eq!(
        serde_json::to_string(&throttle.to_record()).unwrap(),
        r#"{"event_kind":"any","suppressed":5,"window_ms":1999}"#
    );
}
