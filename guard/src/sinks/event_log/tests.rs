use super::*;
use crate::events::{EventDetail, EventSource, RingPosition};
use crate::events::{
    Exec, Exit, Fork, ForkDenied, KernelFile, OomRss, OomVictim, ReaderFault, Reclaim,
    Throttle as ThrottleDetail,
};
use crate::forensic::record::Payload;
use crate::sinks::summary::EventPayload;

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

/// The worst case docs/LOG-FORMAT.md ("Summaries") states, from the real encoder: per
/// container and kind, the default burst of individual records and one summary (4 examples
/// and the last) per interval, for a 12-byte container id and the largest payloads a kind
/// has (OOM victims with their rss, memory.events with every key at 10^12).
#[test]
fn the_documented_worst_case_holds() {
    use crate::{
        forensic::record::{LineHead, encode_line},
        sinks::summary::{Step, Summarizer, SummaryPolicy},
    };
    let container = "tenant-00042";
    let line_bytes = |kind: &str, payload: &dyn Fn(&mut Vec<u8>)| {
        let mut body = Vec::new();
        payload(&mut body);
        let head = LineHead {
            seq: 12_345_678,
            boot_id_json: b"\"bbf75fb0-d6ab-4a99-bdb5-4b8b5d482a4a\"",
            wall: b"2026-11-29T20:35:40.728171350Z",
            mono_ns: 2_209_810_392_294,
            kind,
            container: Some(container),
            prev: &[0; 32],
        };
        let mut out = Vec::new();
        encode_line(&mut out, &head, &Raw(body)).unwrap();
        out.len() as u64
    };
    let big = 1_000_000_000_000u64;
    let kernel_file = EventDetail::KernelFile(KernelFile {
        file: "memory.events",
        counts: crate::cgroup::KeyedCounts(
            ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"]
                .into_iter()
                .map(|k| (k.to_owned(), big))
                .collect(),
        ),
    });
    let kinds = [
        EventDetail::Fork(Fork {
            parent_pid: 4_194_304,
            child_pid: 4_194_304,
        }),
        // Tier 1's task records (a tier has either these or reclaim: both count here).
        EventDetail::Exit(Exit {
            pid: 4_194_304,
            tid: 4_194_304,
        }),
        EventDetail::Exec(Exec {
            pid: 4_194_304,
            tid: 4_194_304,
            comm: "guard-stress-xx".into(),
        }),
        EventDetail::ForkDenied(ForkDenied {
            tgid: 4_194_304,
            tid: 4_194_304,
            ret: -11,
            cause: guard_common::DenialCause::PidsMax,
            syscall_nr: 435,
            task_cgroup_id: big,
            sub_cgroup: None,
        }),
        EventDetail::OomVictim(OomVictim {
            victim_pid: 4_194_304,
            comm: "guard-stress-xx".into(),
            outside_containers: false,
            trigger_cgroup_id: big,
            trigger_sub_cgroup: None,
            rss: Some(OomRss {
                total_vm_kb: big,
                anon_rss_kb: big,
                file_rss_kb: big,
                shmem_rss_kb: big,
            }),
            oom_score_adj: -1000,
            scope: Some("global"),
        }),
        EventDetail::Reclaim(Reclaim {
            tid: 4_194_304,
            duration_ns: big,
            nr_reclaimed: big,
        }),
        kernel_file.clone(),
        kernel_file,
    ];
    let policy = SummaryPolicy::default();
    let mut per_container = 0;
    for detail in kinds {
        let event = GuardEvent {
            container: Some(container.into()),
            ring: Some(RingPosition { cpu: 63, seq: big }),
            ktime_ns: big,
            cgroup_id: big,
            // The longest source name.
            source: EventSource::CgroupFiles,
            detail,
        };
        let record = line_bytes(event.detail.kind_name(), &|out| {
            LoggedPayload(EventPayload::of(&event))
                .write_json(out)
                .unwrap()
        });
        let mut summarizer = Summarizer::new(SummaryPolicy::new(0, policy.interval));
        let mut summary = None;
        for _ in 0..1_000 {
            summarizer.offer(event.clone(), &mut |_| {});
        }
        summarizer.flush_all(&mut |step| {
            if let Step::Summary(s) = step {
                summary = Some(s)
            }
        });
        let summary = summary.unwrap();
        let summary_bytes = line_bytes("summary", &|out| {
            serde_json::to_writer(out, &summary).unwrap()
        });
        let worst = u64::from(policy.burst) * record + summary_bytes;
        eprintln!(
            "{}: record {record} B, summary {summary_bytes} B, worst {worst} B per {:?}",
            event.detail.kind_name(),
            policy.interval
        );
        assert!(worst <= 8300, "{worst}");
        per_container += worst;
    }
    eprintln!("per container: {per_container} B per {:?}", policy.interval);
    assert!(per_container <= 50 * 1024, "{per_container}");
}

/// A payload's bytes as they are.
struct Raw(Vec<u8>);

impl Payload for Raw {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(&self.0);
        Ok(())
    }
}
