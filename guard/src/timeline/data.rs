//! What the timeline plots, taken from a forensic log's records: pure, so a test can check
//! the numbers a picture shows without looking at pixels.
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::{
    cgroup::{memory, pids},
    forensic::{Record, SummaryRecord, kinds, time::parse_rfc3339},
};

/// One value at a time, seconds from the log's first record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the first record.
    pub t: f64,
    /// The value then.
    pub value: f64,
}

/// One OOM kill as the probes saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kill {
    /// Seconds since the first record.
    pub t: f64,
    /// The victim's pid.
    pub pid: u64,
    /// The victim's command name.
    pub comm: String,
    /// Its number among the kills streamed (1 for the first), counting those a `summary`
    /// folded without naming them.
    pub n: u64,
}

/// A stretch of time the agent named (a selftest wave), from a record that carries `wave`
/// and `elapsed_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// Seconds since the first record, start and end.
    pub start: f64,
    /// End of the span.
    pub end: f64,
    /// Its name.
    pub label: String,
}

/// One container's series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Track {
    /// `memory.events` counts as the kernel's file said at each change (`oom`, `oom_kill`,
    /// `max`, …), cumulative since watching began.
    pub memory_events: BTreeMap<String, Vec<Point>>,
    /// `pids.events` `max` at each change: forks pids.max refused, by the kernel's count.
    pub pids_max: Vec<Point>,
    /// Fork denials the probes streamed, cumulative (throttled ones are in `throttled`); a
    /// `summary` adds its count at its last event's time.
    pub fork_denials: Vec<Point>,
    /// Every OOM victim the log names: its own records, and a summary's examples and last.
    pub oom_kills: Vec<Kill>,
    /// OOM kills the probes streamed, cumulative: named or folded into summaries.
    pub oom_kills_streamed: Vec<Point>,
    /// Milliseconds spent in memcg direct reclaim per bucket of [`Timeline::bucket_s`].
    pub reclaim_stall_ms: Vec<Point>,
    /// Events the rate bound suppressed, cumulative.
    pub throttled: Vec<Point>,
    /// Stretches the agent named (selftest waves).
    pub spans: Vec<Span>,
}

/// The whole picture's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// Per container, by id.
    pub containers: BTreeMap<String, Track>,
    /// Events lost anywhere (the log's `lost` records), cumulative: every panel shows them.
    pub lost: Vec<Point>,
    /// Stretches the agent named for no container in particular (the tenants wave): every
    /// panel shows them.
    pub spans: Vec<Span>,
    /// Seconds from the first record to the last.
    pub duration_s: f64,
    /// The width of a reclaim bucket in seconds.
    pub bucket_s: f64,
    /// Records read.
    pub records: u64,
}

/// How many buckets the reclaim stall is summed into across the log.
const BUCKETS: f64 = 200.0;

/// Reads time off records: the monotonic clock within the first record's boot, the wall clock
/// across boots (a log that spans reboots).
struct Clock {
    boot_id: String,
    mono_ns: u64,
    wall_ns: i64,
}

impl Clock {
    fn new(first: &Record) -> Self {
        Self {
            boot_id: first.boot_id.clone(),
            mono_ns: first.mono_ns,
            wall_ns: parse_rfc3339(&first.wall).unwrap_or(0),
        }
    }

    fn seconds(&self, record: &Record) -> f64 {
        if record.boot_id == self.boot_id {
            record.mono_ns.saturating_sub(self.mono_ns) as f64 / 1e9
        } else {
            parse_rfc3339(&record.wall)
                .map(|wall| (wall - self.wall_ns).max(0) as f64 / 1e9)
                .unwrap_or(0.0)
        }
    }
}

/// The timeline of `records` (in log order), for every container or only `only`.
pub fn timeline(records: &[Record], only: Option<&str>) -> Timeline {
    let Some(first) = records.first() else {
        return Timeline::default();
    };
    let clock = Clock::new(first);
    let duration_s = records.last().map_or(0.0, |last| clock.seconds(last));
    let bucket_s = (duration_s / BUCKETS).max(0.001);
    let mut timeline = Timeline {
        duration_s,
        bucket_s,
        records: records.len() as u64,
        ..Timeline::default()
    };
    let mut stall_ns: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut lost = 0u64;
    for record in records {
        let t = clock.seconds(record);
        if record.kind == kinds::LOST {
            lost += record.payload["count"].as_u64().unwrap_or(0);
            timeline.lost.push(Point {
                t,
                value: lost as f64,
            });
            continue;
        }
        let Some(container) = record.container.as_deref() else {
            if let Some(span) = span_of(&record.payload, t) {
                timeline.spans.push(span);
            }
            continue;
        };
        if only.is_some_and(|only| only != container) {
            continue;
        }
        let track = timeline
            .containers
            .entry(container.to_string())
            .or_default();
        let payload = &record.payload;
        match record.kind.as_str() {
            "kernel_file" => kernel_file(track, payload, t),
            "fork_denied" => add_count(&mut track.fork_denials, t, 1),
            "oom_victim" => {
                add_kill(track, payload, t);
                add_count(&mut track.oom_kills_streamed, t, 1);
            }
            "reclaim" => {
                let bucket = (t / bucket_s) as u64;
                *stall_ns
                    .entry(container.to_string())
                    .or_default()
                    .entry(bucket)
                    .or_default() += payload["duration_ns"].as_u64().unwrap_or(0);
            }
            kinds::SUMMARY => {
                let Some(summary) = SummaryRecord::of_record(record) else {
                    continue;
                };
                // Times from the events' own clock, placed against this record's.
                let at = |ktime_ns: u64| {
                    (t - record.mono_ns.saturating_sub(ktime_ns) as f64 / 1e9).max(0.0)
                };
                let (first, last) = (at(summary.first_ktime_ns), at(summary.last_ktime_ns));
                match summary.of.as_str() {
                    "kernel_file" => kernel_file(track, &summary.last, last),
                    "fork_denied" => add_count(&mut track.fork_denials, last, summary.count),
                    "oom_victim" => {
                        let before = track
                            .oom_kills_streamed
                            .last()
                            .map_or(0, |p| p.value as u64);
                        for (i, example) in summary.examples.iter().enumerate() {
                            let time = example["ktime_ns"].as_u64().map_or(first, at);
                            add_kill(track, example, time);
                            if let Some(kill) = track.oom_kills.last_mut() {
                                kill.n = before + i as u64 + 1;
                            }
                        }
                        if summary.count > summary.examples.len() as u64 {
                            add_kill(track, &summary.last, last);
                            if let Some(kill) = track.oom_kills.last_mut() {
                                kill.n = before + summary.count;
                            }
                        }
                        add_count(&mut track.oom_kills_streamed, last, summary.count);
                    }
                    "reclaim" => {
                        // Spread evenly over the buckets the span covers.
                        let total = summary.sums.get("duration_ns").and_then(Value::as_u64);
                        let (from, to) = ((first / bucket_s) as u64, (last / bucket_s) as u64);
                        let share = total.unwrap_or(0) / (to - from + 1);
                        let buckets = stall_ns.entry(container.to_string()).or_default();
                        for bucket in from..=to {
                            *buckets.entry(bucket).or_default() += share;
                        }
                    }
                    _ => {}
                }
            }
            kinds::THROTTLE => {
                let count = track.throttled.last().map_or(0.0, |p| p.value)
                    + payload["suppressed"].as_u64().unwrap_or(0) as f64;
                track.throttled.push(Point { t, value: count });
            }
            _ => {
                if let Some(span) = span_of(payload, t) {
                    track.spans.push(span);
                }
            }
        }
    }
    for (container, buckets) in stall_ns {
        if let Some(track) = timeline.containers.get_mut(&container) {
            track.reclaim_stall_ms = buckets
                .into_iter()
                .map(|(bucket, ns)| Point {
                    t: bucket as f64 * bucket_s,
                    value: ns as f64 / 1e6,
                })
                .collect();
        }
    }
    timeline
}

/// A kernel event file's snapshot (a `kernel_file` record's payload) at `t`.
fn kernel_file(track: &mut Track, payload: &Value, t: f64) {
    let counts = payload["counts"].as_object();
    match payload["file"].as_str() {
        Some(memory::EVENTS) => {
            for (key, count) in counts.into_iter().flatten() {
                let series = track.memory_events.entry(key.clone()).or_default();
                push_change(series, t, count.as_u64().unwrap_or(0) as f64);
            }
        }
        Some(pids::EVENTS) => {
            if let Some(max) = payload["counts"]["max"].as_u64() {
                push_change(&mut track.pids_max, t, max as f64);
            }
        }
        _ => {}
    }
}

/// An OOM victim an `oom_victim` payload names, at `t`: the next kill streamed.
fn add_kill(track: &mut Track, payload: &Value, t: f64) {
    let n = track
        .oom_kills_streamed
        .last()
        .map_or(0, |p| p.value as u64)
        + 1;
    track.oom_kills.push(Kill {
        t,
        pid: payload["victim_pid"].as_u64().unwrap_or(0),
        comm: payload["comm"].as_str().unwrap_or("?").to_string(),
        n,
    });
}

/// `count` more at `t` on a cumulative series.
fn add_count(series: &mut Vec<Point>, t: f64, count: u64) {
    let value = series.last().map_or(0.0, |p| p.value) + count as f64;
    series.push(Point { t, value });
}

/// The stretch a record ending at `t` names: `wave` and `elapsed_ms` in its payload.
fn span_of(payload: &Value, t: f64) -> Option<Span> {
    let label = payload["wave"].as_str()?;
    let elapsed_ms = payload["elapsed_ms"].as_u64()?;
    Some(Span {
        start: (t - elapsed_ms as f64 / 1000.0).max(0.0),
        end: t,
        label: label.to_string(),
    })
}

/// Appends a step only where the value changed (kernel files are snapshotted on every change
/// of any key).
fn push_change(series: &mut Vec<Point>, t: f64, value: f64) {
    if series.last().is_none_or(|last| last.value != value) {
        series.push(Point { t, value });
    }
}

/// A container's figures at the end, for a caption and a test: the last value of each series.
pub fn totals(track: &Track) -> Value {
    let last = |series: &[Point]| series.last().map_or(0.0, |p| p.value);
    serde_json::json!({
        "memory_events_oom_kill": track.memory_events.get("oom_kill").map_or(0.0, |s| last(s)),
        "memory_events_oom": track.memory_events.get("oom").map_or(0.0, |s| last(s)),
        "pids_events_max": last(&track.pids_max),
        "fork_denials_streamed": last(&track.fork_denials),
        "oom_kills_streamed": last(&track.oom_kills_streamed) as u64,
        "reclaim_stall_ms": track.reclaim_stall_ms.iter().map(|p| p.value).sum::<f64>(),
        "throttled": last(&track.throttled),
        "spans": track.spans.iter().map(|s| s.label.clone()).collect::<Vec<_>>(),
    })
}
