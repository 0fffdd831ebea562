//! Host-kernel test of interval summaries: a fork storm in a watched cgroup leaves a forensic
//! log and an events file whose individual fork records plus summary counts equal the BPF
//! counter exactly, at a small fraction of one record per event. Two-sided: the same storm
//! with summaries off writes one record per fork and breaks the size bound.
use std::path::Path;

use guard::{
    forensic::LogOptions,
    sinks::{
        event_log::{EventLog, EventLogOptions},
        json_lines::{JsonLines, JsonLinesOptions},
        summary::SummaryPolicy,
    },
};
use guard_tests::{
    host::{root_or_skip, run_stress, watched_container},
    log_records, logged_count,
};

use crate::STRESS;

const FORKS: u64 = 4_000;
/// What the storm may cost with summaries, per fork: one record per fork is ~330 bytes in the
/// log (~150 in the events file); the default policy keeps 8 of them and a summary of ~1 KiB
/// per second.
const BYTES_PER_FORK: u64 = 16;

/// What one storm left: the log's and the events file's bytes, and the forks each holds and
/// the BPF counter counted.
struct Storm {
    log_bytes: u64,
    log_forks: u64,
    log_summaries: usize,
    events_bytes: u64,
    events_forks: u64,
    bpf_forks: u64,
}

async fn storm(name: &str, policy: SummaryPolicy) -> Storm {
    let (cgroup, guard) = watched_container(name).await;
    let dir = std::env::temp_dir().join(format!("guard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = EventLogOptions::from(LogOptions::default());
    options.summaries = policy;
    let log = EventLog::start(&guard, &dir, options, serde_json::Value::Null).unwrap();
    let events_file = dir.with_extension("events");
    let mut lines_options = JsonLinesOptions::default();
    lines_options.summaries = policy;
    let lines = JsonLines::start_with(&guard, &events_file, lines_options).unwrap();

    run_stress(STRESS, Some(&cgroup.path), &["fork", &FORKS.to_string()]);
    guard.drain().await.unwrap();
    let counters = guard.counters(name).await.unwrap();
    let bpf_forks = counters.bpf.unwrap().forks;
    assert_eq!(bpf_forks, FORKS, "{counters:?}");
    assert_eq!(
        counters.delivered.forks, FORKS,
        "unbounded: every fork streamed"
    );
    // The container's report comes after its events: every pending summary is written first.
    log.record("report", Some(name), &counters.delivered)
        .await
        .unwrap();
    log.close().await.unwrap();
    lines.finish().await.unwrap();

    let report = guard::forensic::verify(&dir).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let records = log_records(&dir);
    let report_at = records.iter().position(|r| r["kind"] == "report").unwrap();
    let log_forks_before_report = logged_count(&records[..report_at], "fork", Some(name));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&events_file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let storm = Storm {
        log_bytes: dir_bytes(&dir),
        log_forks: logged_count(&records, "fork", Some(name)),
        log_summaries: records.iter().filter(|r| r["kind"] == "summary").count(),
        events_bytes: std::fs::metadata(&events_file).unwrap().len(),
        events_forks: logged_count(&events, "fork", Some(name)),
        bpf_forks,
    };
    assert_eq!(
        log_forks_before_report, storm.log_forks,
        "every fork is in the log before the container's report"
    );
    eprintln!(
        "{name}: policy {policy}: log {} B ({} summaries), events file {} B, {} forks",
        storm.log_bytes, storm.log_summaries, storm.events_bytes, storm.bpf_forks
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&events_file).unwrap();
    storm
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_storm_is_summarized_and_counted_exactly() {
    if !root_or_skip("a_fork_storm_is_summarized_and_counted_exactly") {
        return;
    }
    let summarized = storm("summarized", SummaryPolicy::default()).await;
    // Exact: individual records plus summary counts are the kernel's count, in both files.
    assert_eq!(summarized.log_forks, summarized.bpf_forks);
    assert_eq!(summarized.events_forks, summarized.bpf_forks);
    // Bounded: far below one record per event.
    let bound = FORKS * BYTES_PER_FORK;
    assert!(
        summarized.log_bytes < bound && summarized.events_bytes < bound,
        "log {} B, events {} B: more than {bound} B for {FORKS} forks",
        summarized.log_bytes,
        summarized.events_bytes
    );
    assert!(summarized.log_summaries >= 1);

    // Two-sided: with summaries off, the same storm is one record per fork (as exact), and
    // the size bound above fails.
    let off = storm("unsummarized", SummaryPolicy::off()).await;
    assert_eq!(
        (off.log_forks, off.events_forks),
        (off.bpf_forks, off.bpf_forks)
    );
    assert_eq!(off.log_summaries, 0);
    assert!(
        off.log_bytes >= bound && off.events_bytes >= bound,
        "log {} B, events {} B",
        off.log_bytes,
        off.events_bytes
    );
}
