use std::collections::BTreeMap;

use super::*;
use crate::events::{
    EventSource, Fork, ForkDenied, KernelFile, Lost, OomVictim, Reclaim, Throttle,
};

const MS: u64 = 1_000_000;

fn event(container: Option<&str>, ktime_ns: u64, detail: EventDetail) -> GuardEvent {
    GuardEvent {
        container: container.map(str::to_string),
        ring: Some(RingPosition { cpu: 0, seq: 1 }),
        ktime_ns,
        cgroup_id: 7,
        source: EventSource::Bpf,
        detail,
    }
}

fn fork(container: &str, ktime_ns: u64) -> GuardEvent {
    event(
        Some(container),
        ktime_ns,
        EventDetail::Fork(Fork {
            parent_pid: 1,
            child_pid: (ktime_ns / MS) as u32,
        }),
    )
}

fn reclaim(container: &str, ktime_ns: u64, duration_ns: u64) -> GuardEvent {
    event(
        Some(container),
        ktime_ns,
        EventDetail::Reclaim(Reclaim {
            tid: 5,
            duration_ns,
            nr_reclaimed: 2,
        }),
    )
}

fn policy(burst: u32, interval_ms: u64) -> SummaryPolicy {
    SummaryPolicy::new(burst, Duration::from_millis(interval_ms))
}

/// Everything a summarizer wrote, in order.
#[derive(Default)]
struct Out(Vec<Step>);

impl Out {
    fn sink(&mut self) -> impl FnMut(Step) + '_ {
        |step| self.0.push(step)
    }

    fn events(&self) -> usize {
        self.0
            .iter()
            .filter(|s| matches!(s, Step::Event(_)))
            .count()
    }

    fn summaries(&self) -> Vec<&Summary> {
        self.0
            .iter()
            .filter_map(|s| match s {
                Step::Summary(summary) => Some(summary),
                Step::Event(_) => None,
            })
            .collect()
    }

    /// Events of `kind` of `container` written: individual records plus summary counts.
    fn count(&self, container: &str, kind: &str) -> u64 {
        self.0
            .iter()
            .map(|step| match step {
                Step::Event(e) if e.container.as_deref() == Some(container) => {
                    u64::from(e.detail.kind_name() == kind)
                }
                Step::Summary(s) if s.container.as_deref() == Some(container) && s.of == kind => {
                    s.count
                }
                _ => 0,
            })
            .sum()
    }
}

#[test]
fn the_first_events_of_a_burst_stay_individual() {
    let mut summarizer = Summarizer::new(policy(3, 1000));
    let mut out = Out::default();
    for i in 0..10 {
        summarizer.offer(fork("web", 1_000 * MS + i * MS), &mut out.sink());
    }
    // 3 individual, 7 folded and still pending.
    assert_eq!((out.events(), out.summaries().len()), (3, 0));
    summarizer.flush_all(&mut out.sink());
    let summaries = out.summaries();
    assert_eq!(summaries.len(), 1);
    let summary = summaries[0];
    assert_eq!((summary.of, summary.count), ("fork", 7));
    assert_eq!(
        (summary.first_ktime_ns, summary.last_ktime_ns),
        (1_003 * MS, 1_009 * MS)
    );
    // The first EXAMPLES folded are kept whole, and the last.
    let pids: Vec<u32> = summary
        .examples
        .iter()
        .map(|e| match &e.detail {
            EventDetail::Fork(f) => f.child_pid,
            _ => 0,
        })
        .collect();
    assert_eq!(pids, [1003, 1004, 1005, 1006]);
    assert_eq!(summary.last_event().unwrap().ktime_ns, 1_009 * MS);
    assert_eq!(out.count("web", "fork"), 10);
}

/// A storm of 1 kHz for 3.5 s: one summary per interval after the burst, none of them wider
/// than the interval, and every event counted once.
#[test]
fn a_storm_becomes_one_summary_per_interval() {
    let mut summarizer = Summarizer::new(policy(5, 1000));
    let mut out = Out::default();
    for i in 0..3_500u64 {
        summarizer.offer(reclaim("db", i * MS, 10), &mut out.sink());
    }
    summarizer.flush_all(&mut out.sink());
    assert_eq!(out.events(), 5);
    let summaries = out.summaries();
    assert_eq!(
        summaries.len(),
        4,
        "windows from 5 ms, 1005 ms, 2005 ms, 3005 ms"
    );
    for summary in &summaries {
        assert!(summary.last_ktime_ns - summary.first_ktime_ns < 1000 * MS);
        assert_eq!(summary.sums["duration_ns"], summary.count * 10);
        assert_eq!(summary.sums["nr_reclaimed"], summary.count * 2);
    }
    assert_eq!(out.count("db", "reclaim"), 3_500);
}

/// A quiet interval ends the burst: its summary is written before the next burst's first
/// event, which is individual again.
#[test]
fn a_quiet_interval_ends_the_burst() {
    let mut summarizer = Summarizer::new(policy(2, 1000));
    let mut out = Out::default();
    for i in 0..5 {
        summarizer.offer(fork("web", i * MS), &mut out.sink());
    }
    // 999 ms after the last event: still the same burst (folded).
    summarizer.offer(fork("web", 1_003 * MS), &mut out.sink());
    assert_eq!(out.events(), 2);
    // 1000 ms of quiet: a new burst.
    summarizer.offer(fork("web", 2_003 * MS), &mut out.sink());
    summarizer.offer(fork("web", 2_004 * MS), &mut out.sink());
    assert_eq!(out.events(), 4);
    let kinds: Vec<&str> = out
        .0
        .iter()
        .map(|s| match s {
            Step::Event(_) => "event",
            Step::Summary(_) => "summary",
        })
        .collect();
    // The summary of the first burst's window (ms 2..=4), closed by ms 1003 which opened its
    // own, closed in turn by the quiet interval.
    assert_eq!(
        kinds,
        ["event", "event", "summary", "summary", "event", "event"]
    );
    let summaries = out.summaries();
    assert_eq!((summaries[0].count, summaries[1].count), (3, 1));
    assert_eq!(out.count("web", "fork"), 8);
}

/// The clock writes a summary whose interval has passed with no event to close it, and
/// forgets a burst that has been quiet for an interval.
#[test]
fn the_tick_writes_due_summaries_and_forgets_quiet_bursts() {
    let mut summarizer = Summarizer::new(policy(1, 1000));
    let mut out = Out::default();
    for i in 0..4 {
        summarizer.offer(fork("web", i * MS), &mut out.sink());
    }
    summarizer.tick(500 * MS, &mut out.sink());
    assert!(out.summaries().is_empty());
    summarizer.tick(1_001 * MS, &mut out.sink());
    assert_eq!(out.summaries().len(), 1);
    assert_eq!(out.summaries()[0].count, 3);
    summarizer.tick(1_003 * MS, &mut out.sink());
    assert!(summarizer.named.is_empty(), "the quiet burst is forgotten");
    summarizer.offer(fork("web", 1_004 * MS), &mut out.sink());
    assert_eq!(out.events(), 2, "a new burst: individual again");
}

#[test]
fn containers_and_kinds_have_runs_of_their_own_and_flush_alone() {
    let mut summarizer = Summarizer::new(policy(1, 1000));
    let mut out = Out::default();
    let file = |name: &'static str, t| {
        event(
            Some("web"),
            t,
            EventDetail::KernelFile(KernelFile {
                file: name,
                counts: crate::cgroup::KeyedCounts([("max".to_owned(), t)].into()),
            }),
        )
    };
    for i in 0..3 {
        for step in [
            fork("web", i * MS),
            fork("db", i * MS),
            reclaim("web", i * MS, 1),
            file("memory.events", i * MS),
            file("pids.events", i * MS),
        ] {
            summarizer.offer(step, &mut out.sink());
        }
    }
    assert_eq!(out.events(), 5);
    summarizer.flush_container(Some("db"), &mut out.sink());
    let summaries = out.summaries();
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        (summaries[0].container.as_deref(), summaries[0].count),
        (Some("db"), 2)
    );
    summarizer.flush_all(&mut out.sink());
    let mut files: Vec<_> = out.summaries().iter().filter_map(|s| s.file).collect();
    files.sort();
    assert_eq!(files, ["memory.events", "pids.events"]);
    // The kernel file's last snapshot is kept: its counts at the end of the span.
    let memory = out
        .summaries()
        .into_iter()
        .find(|s| s.file == Some("memory.events"))
        .unwrap();
    assert_eq!(memory.last_event().unwrap().ktime_ns, 2 * MS);
    for (container, kind) in [
        ("web", "fork"),
        ("db", "fork"),
        ("web", "reclaim"),
        ("web", "kernel_file"),
    ] {
        let expected = if kind == "kernel_file" { 6 } else { 3 };
        assert_eq!(out.count(container, kind), expected, "{container} {kind}");
    }
}

/// The log's accounts of loss are never folded, nor is anything with the policy off.
#[test]
fn losses_throttles_and_policy_off_stay_individual() {
    let mut summarizer = Summarizer::new(policy(0, 1000));
    let mut out = Out::default();
    for i in 0..20 {
        summarizer.offer(
            event(
                Some("web"),
                i,
                EventDetail::Throttle(Throttle {
                    suppressed: 1,
                    window_ns: 1,
                }),
            ),
            &mut out.sink(),
        );
        summarizer.offer(
            event(
                None,
                i,
                EventDetail::Lost(Lost {
                    event_kind: "fork",
                    count: 1,
                }),
            ),
            &mut out.sink(),
        );
    }
    summarizer.flush_all(&mut out.sink());
    assert_eq!((out.events(), out.summaries().len()), (40, 0));

    let mut off = Summarizer::new(SummaryPolicy::off());
    let mut out = Out::default();
    for i in 0..1_000 {
        off.offer(fork("web", i), &mut out.sink());
    }
    off.flush_all(&mut out.sink());
    assert_eq!((out.events(), out.summaries().len()), (1_000, 0));
    // Two-sided: the same storm with a burst of 0 is all summary.
    let mut on = Summarizer::new(policy(0, 1000));
    let mut out = Out::default();
    for i in 0..1_000 {
        on.offer(fork("web", i), &mut out.sink());
    }
    on.flush_all(&mut out.sink());
    assert_eq!((out.events(), out.summaries().len()), (0, 1));
}

/// Conservation under a mixed, bursty sequence with ticks and flushes at arbitrary points:
/// individual + summarized == events in, per container and kind, and the sums add up.
#[test]
fn every_event_is_counted_exactly_once() {
    let mut summarizer = Summarizer::new(policy(4, 250));
    let mut out = Out::default();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut sent: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut duration = 0;
    let mut t = 0u64;
    for _ in 0..20_000 {
        let r = next();
        // Mostly dense, sometimes a quiet gap of up to 600 ms.
        t += if r % 500 == 0 {
            (r >> 8) % (600 * MS)
        } else {
            (r >> 8) % (2 * MS)
        };
        let container = ["a", "b", "c"][(r >> 20) as usize % 3];
        let (kind, ev) = match (r >> 24) % 4 {
            0 => ("fork", fork(container, t)),
            1 => {
                duration += 3;
                ("reclaim", reclaim(container, t, 3))
            }
            2 => (
                "oom_victim",
                event(
                    Some(container),
                    t,
                    EventDetail::OomVictim(OomVictim {
                        victim_pid: 9,
                        comm: "x".into(),
                        outside_containers: false,
                        trigger_cgroup_id: 1,
                        trigger_sub_cgroup: None,
                        rss: None,
                        oom_score_adj: 0,
                        scope: None,
                    }),
                ),
            ),
            _ => (
                "fork_denied",
                event(
                    Some(container),
                    t,
                    EventDetail::ForkDenied(ForkDenied {
                        tgid: 1,
                        tid: 1,
                        ret: -11,
                        cause: guard_common::DenialCause::PidsMax,
                        syscall_nr: 56,
                        task_cgroup_id: 1,
                        sub_cgroup: None,
                    }),
                ),
            ),
        };
        *sent.entry((container.to_string(), kind)).or_default() += 1;
        summarizer.offer(ev, &mut out.sink());
        match (r >> 40) % 100 {
            0 => summarizer.tick(t + (r >> 50) % (300 * MS), &mut out.sink()),
            1 => summarizer.flush_container(Some(container), &mut out.sink()),
            _ => {}
        }
    }
    summarizer.flush_all(&mut out.sink());
    for ((container, kind), count) in &sent {
        assert_eq!(out.count(container, kind), *count, "{container} {kind}");
    }
    let summaries = out.summaries();
    assert!(
        summaries.len() > 100 && out.events() < 20_000 / 2,
        "{} summaries",
        summaries.len()
    );
    let folded_duration: u64 = summaries
        .iter()
        .filter_map(|s| s.sums.get("duration_ns"))
        .sum();
    let individual_duration = 3 * out
        .0
        .iter()
        .filter(|s| matches!(s, Step::Event(e) if e.detail.kind_name() == "reclaim"))
        .count() as u64;
    assert_eq!(folded_duration + individual_duration, duration);
    let denied: u64 = summaries
        .iter()
        .filter_map(|s| s.sums.get("cause_pids_max"))
        .sum();
    assert_eq!(
        denied,
        summaries
            .iter()
            .filter(|s| s.of == "fork_denied")
            .map(|s| s.count)
            .sum::<u64>()
    );
}

/// A summary's payload reads back as the log format's `summary` record, its examples in
/// their own records' payload form.
#[test]
fn a_summary_serialises_as_the_documented_record() {
    let mut summarizer = Summarizer::new(policy(0, 1000));
    let mut out = Out::default();
    for i in 0..6 {
        summarizer.offer(reclaim("web", (i + 1) * MS, 100), &mut out.sink());
    }
    summarizer.flush_all(&mut out.sink());
    let summary = out.summaries()[0].clone();
    let json = serde_json::to_value(&summary).unwrap();
    let record: crate::forensic::SummaryRecord = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(
        (record.of.as_str(), record.count, record.file),
        ("reclaim", 6, None)
    );
    assert_eq!((record.first_ktime_ns, record.last_ktime_ns), (MS, 6 * MS));
    assert_eq!(record.sums["duration_ns"], 600);
    assert_eq!(record.examples.len(), EXAMPLES);
    assert_eq!(
        record.examples[0],
        serde_json::to_value(EventPayload::of(&summary.examples[0])).unwrap()
    );
    assert_eq!(record.examples[0]["kind"], "reclaim");
    assert_eq!(record.last["ktime_ns"], 6 * MS);
}

#[test]
fn policies_parse_and_print() {
    assert_eq!(
        "off".parse::<SummaryPolicy>().unwrap(),
        SummaryPolicy::off()
    );
    assert!(SummaryPolicy::off().is_off() && !SummaryPolicy::default().is_off());
    assert_eq!("8/1s".parse::<SummaryPolicy>().unwrap(), policy(8, 1000));
    assert_eq!("0/250ms".parse::<SummaryPolicy>().unwrap(), policy(0, 250));
    assert_eq!(
        "16/2.5s".parse::<SummaryPolicy>().unwrap(),
        policy(16, 2500)
    );
    assert_eq!(policy(8, 1000).to_string(), "8/1s");
    assert_eq!(policy(0, 250).to_string(), "0/250ms");
    assert_eq!(SummaryPolicy::off().to_string(), "off");
    for bad in [
        "",
        "8",
        "8/1",
        "x/1s",
        "8/0s",
        "8/-1s",
        "8/2h",
        "4294967295/1s",
        "8/1m",
    ] {
        let error = bad.parse::<SummaryPolicy>().unwrap_err();
        assert_eq!(error.text, bad, "{bad:?}");
    }
}
