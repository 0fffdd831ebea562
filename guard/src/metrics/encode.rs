//! OpenMetrics text from the reports, with the Prometheus project's Rust client doing the
//! format (escaping, HELP/TYPE/UNIT lines, `_total`, `# EOF`). A report's JSON is the one shape
//! both a live guard (`serde_json::to_value(report)`) and a forensic log (its `report`
//! records) have, so `guard metrics --log` and a live `/metrics` cannot drift apart; it is
//! read back into the report's own types (`metrics/report.rs`), never by paths.
use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::AtomicU64;

use super::{MetricsError, report::ScrapedReport};
use crate::{cgroup::LimitValue, counters::LossReport};

/// Labels as (name, value) pairs.
type Labels = Vec<(String, String)>;

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Each container's report as JSON (`serde_json::to_value(&report)`, or the payload of a
    /// log's `report` record).
    pub reports: Vec<Value>,
    /// The guard's losses and reader health ([`crate::counters::LossReport`] as JSON). None:
    /// taken from the first report, which carries the same figures.
    pub loss: Option<Value>,
    /// The guard's tier, when known.
    pub tier: Option<u8>,
    /// The forensic log's figures, when there is a log.
    pub log: Option<LogFigures>,
    /// A collector's guests (`guard collect`).
    pub streams: Vec<StreamFigures>,
}

/// The forensic log's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogFigures {
    /// Records in the log (written by this guard, or found by a verifier).
    pub records: u64,
    /// Failed writes or syncs (None: not known, as for a log read after the fact).
    pub write_errors: Option<u64>,
    /// Records that never reached the file (None: not known).
    pub records_not_written: Option<u64>,
    /// The first seq the log misses (None: whole, or not known).
    pub incomplete_from_seq: Option<u64>,
}

/// One guest's stream, as a collector holds it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamFigures {
    /// The guest's name (its copy's directory).
    pub guest: String,
    /// Records held in the guest's copy.
    pub records: u64,
    /// Connections of this guest so far.
    pub connections: u64,
    /// The last stream's verdict (`complete`, `guest_died`, …), None while one is open.
    pub verdict: Option<String>,
}

/// Registers families as they are first used, so the text lists only what has values.
struct Builder {
    registry: Registry,
}

/// A counter family: one metric name, a value per label set.
type Counters = Family<Labels, Counter<u64>>;
type FloatCounters = Family<Labels, Counter<f64, AtomicU64>>;
type Gauges = Family<Labels, Gauge<i64>>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// The client adds the final full stop itself.
fn help(text: &str) -> &str {
    text.trim_end_matches('.')
}

impl Builder {
    fn counters(&mut self, name: &str, help: &str) -> Counters {
        let family = Counters::default();
        self.registry
            .register(name, self::help(help), family.clone());
        family
    }

    fn seconds(&mut self, name: &str, help: &str) -> FloatCounters {
        let family = FloatCounters::default();
        self.registry
            .register_with_unit(name, self::help(help), Unit::Seconds, family.clone());
        family
    }

    fn gauges(&mut self, name: &str, help: &str, unit: Option<Unit>) -> Gauges {
        let family = Gauges::default();
        match unit {
            Some(unit) => {
                self.registry
                    .register_with_unit(name, self::help(help), unit, family.clone())
            }
            None => self
                .registry
                .register(name, self::help(help), family.clone()),
        }
        family
    }
}

fn set(family: &Counters, labels: Labels, value: Option<u64>) {
    if let Some(value) = value {
        family.get_or_create(&labels).inc_by(value);
    }
}

fn set_gauge(family: &Gauges, labels: Labels, value: Option<u64>) {
    if let Some(value) = value {
        family
            .get_or_create(&labels)
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

/// The OpenMetrics text of `snapshot`.
pub fn render(snapshot: &Snapshot) -> Result<String, MetricsError> {
    let mut b = Builder {
        registry: Registry::default(),
    };
    // Per container, from the BPF counters (tiers 2 and 3).
    let forks = b.counters(
        "guard_forks",
        "Forks in the container, counted by the BPF programs.",
    );
    let exits = b.counters(
        "guard_exits",
        "Task exits in the container, counted by the BPF programs.",
    );
    let denied = b.counters(
        "guard_fork_denied",
        "Forks that failed with EAGAIN in the container, by cause: pids_max (seen at \
         pids_can_fork, tier 3), other (RLIMIT_NPROC, threads-max), unknown (tier 2).",
    );
    let bpf_kills = b.counters(
        "guard_bpf_oom_kills",
        "OOM victims attributed to the container by the BPF programs (oom:mark_victim).",
    );
    let reclaims = b.counters(
        "guard_memcg_reclaims",
        "Memcg direct reclaims the container's tasks ran.",
    );
    let reclaim_stall = b.seconds(
        "guard_memcg_reclaim_stall",
        "Time the container's tasks spent in memcg direct reclaim.",
    );
    let reclaimed = b.counters(
        "guard_memcg_reclaimed_pages",
        "Pages memcg direct reclaim freed for the container.",
    );
    let throttled = b.counters(
        "guard_events_throttled",
        "Events of the container not streamed by the rate bound (the counters stay exact).",
    );
    let task_map_full = b.counters(
        "guard_task_map_full",
        "Tasks of the container the BPF task map had no room for.",
    );
    let source_records = b.counters(
        "guard_source_records",
        "Records the live sources without tracing delivered for the container (tier 1), by \
         source (perf, kmsg, audit, taskstats) and kind (fork, exit, exec, lost, oom_kill, \
         oom_kill_global, fork_denied, task_exit, reclaim_delay).",
    );
    let reclaim_delay = b.seconds(
        "guard_taskstats_reclaim_delay",
        "Time the container's exited tasks spent in direct reclaim, summed at each exit (tier 1, \
         delay accounting).",
    );
    let thrashing_delay = b.seconds(
        "guard_taskstats_thrashing_delay",
        "Time the container's exited tasks waited on thrashing pages, summed at each exit (tier \
         1, delay accounting).",
    );
    let delivered = b.counters(
        "guard_events_delivered",
        "Events of the container the reader delivered, by kind.",
    );
    // Per container, from the kernel's own files and the verdict.
    let kernel_events = b.counters(
        "guard_kernel_events",
        "The kernel's cgroup event counters since watching began (memory.events, \
         pids.events and their .local twins), by file and event.",
    );
    let oom_kills = b.counters(
        "guard_oom_kills",
        "OOM kills of the container's tasks by scope: memcg (its own memory.max), ancestor \
         (a parent's memory.max, the guest budget), global (the global OOM killer).",
    );
    let memory_max = b.gauges(
        "guard_memory_max",
        "memory.max the kernel holds for the container.",
        Some(Unit::Bytes),
    );
    let memory_peak = b.gauges(
        "guard_memory_peak",
        "memory.peak of the container.",
        Some(Unit::Bytes),
    );
    let pids_max = b.gauges(
        "guard_pids_max",
        "pids.max the kernel holds for the container.",
        None,
    );
    let pids_peak = b.gauges("guard_pids_peak", "pids.peak of the container.", None);
    let verdicts = b.gauges(
        "guard_verdict",
        "The container's verdict per limit (pids, memory) and overall: 1 for the verdict it \
         has (enforced, not_exercised, incomplete, violated).",
        None,
    );

    let reports: Vec<ScrapedReport> = snapshot
        .reports
        .iter()
        .filter_map(ScrapedReport::read)
        .collect();
    for report in &reports {
        let one = |pairs: &[(&str, &str)]| {
            let mut all = labels(&[("container", &report.container)]);
            all.extend(labels(pairs));
            all
        };
        let counters = report.counters.as_ref();
        if let Some(bpf) = counters.and_then(|counters| counters.bpf) {
            set(&forks, one(&[]), Some(bpf.forks));
            set(&exits, one(&[]), Some(bpf.exits));
            match bpf.fork_denied_pids_max {
                Some(pids_max) => {
                    set(&denied, one(&[("cause", "pids_max")]), Some(pids_max));
                    set(
                        &denied,
                        one(&[("cause", "other")]),
                        Some(bpf.fork_denied.saturating_sub(pids_max)),
                    );
                }
                None => set(&denied, one(&[("cause", "unknown")]), Some(bpf.fork_denied)),
            }
            set(&bpf_kills, one(&[]), Some(bpf.oom_kills));
            set(&reclaims, one(&[]), Some(bpf.reclaim_runs));
            reclaim_stall
                .get_or_create(&one(&[]))
                .inc_by(bpf.reclaim_ns as f64 / 1e9);
            set(&reclaimed, one(&[]), Some(bpf.reclaim_pages));
            set(&throttled, one(&[]), Some(bpf.events_throttled));
            set(&task_map_full, one(&[]), Some(bpf.task_map_full));
        }
        if let Some(sources) = counters.and_then(|counters| counters.sources) {
            for (source, kind, count) in [
                ("perf", "fork", sources.forks),
                ("perf", "exit", sources.exits),
                ("perf", "exec", sources.execs),
                ("perf", "lost", sources.lost),
                ("kmsg", "oom_kill", sources.oom_kills),
                ("kmsg", "oom_kill_global", sources.oom_kills_global),
                ("taskstats", "task_exit", sources.tasks_accounted),
                ("taskstats", "reclaim_delay", sources.reclaim_delays),
            ] {
                set(
                    &source_records,
                    one(&[("source", source), ("kind", kind)]),
                    Some(count),
                );
            }
            set(
                &source_records,
                one(&[("source", "audit"), ("kind", "fork_denied")]),
                sources.fork_denied,
            );
            reclaim_delay
                .get_or_create(&one(&[]))
                .inc_by(sources.reclaim_delay_ns as f64 / 1e9);
            thrashing_delay
                .get_or_create(&one(&[]))
                .inc_by(sources.thrashing_delay_ns as f64 / 1e9);
        }
        if let Some(tallies) = counters.and_then(|counters| counters.delivered) {
            for (kind, count) in tallies.by_name() {
                set(&delivered, one(&[("kind", kind)]), Some(count));
            }
        }
        if let Some(files) = &report.kernel_since_watch {
            for (file, counts) in files.by_file() {
                for (event, count) in counts.into_iter().flat_map(|counts| &counts.0) {
                    set(
                        &kernel_events,
                        one(&[("file", file), ("event", event)]),
                        Some(*count),
                    );
                }
            }
        }
        if let Some(oom) = &report.oom {
            for (scope, kills) in [
                ("memcg", oom.memcg_kills),
                ("ancestor", oom.ancestor_kills),
                ("global", oom.global_kills),
            ] {
                set(&oom_kills, one(&[("scope", scope)]), Some(kills));
            }
        }
        if let Some(applied) = &report.applied {
            let limit = |value: Option<LimitValue>| value.and_then(LimitValue::value);
            set_gauge(&memory_max, one(&[]), limit(applied.memory_max));
            set_gauge(&memory_peak, one(&[]), applied.memory_peak);
            set_gauge(&pids_max, one(&[]), limit(applied.pids_max));
            set_gauge(&pids_peak, one(&[]), applied.pids_peak);
        }
        for (limit, verdict) in [
            ("pids", report.pids.as_ref().map(|judged| judged.verdict)),
            (
                "memory",
                report.memory.as_ref().map(|judged| judged.verdict),
            ),
            ("overall", report.verdict),
        ] {
            if let Some(verdict) = verdict {
                set_gauge(
                    &verdicts,
                    one(&[("limit", limit), ("verdict", verdict.name())]),
                    Some(1),
                );
            }
        }
    }

    // The guard as a whole: losses and the reader's health.
    let loss = match &snapshot.loss {
        Some(loss) => serde_json::from_value::<LossReport>(loss.clone()).ok(),
        None => reports.first().and_then(|report| report.loss.clone()),
    };
    if let Some(loss) = loss {
        let lost = b.counters(
            "guard_events_lost",
            "Events lost before userspace saw them: ring-buffer reserve failures in the \
             kernel by event kind, sequence gaps and undecodable records in the reader.",
        );
        for (kind, count) in &loss.kernel_reserve_failures {
            set(
                &lost,
                labels(&[("where", "kernel"), ("kind", kind)]),
                Some(*count),
            );
        }
        set(
            &lost,
            labels(&[("where", "reader"), ("kind", "sequence_gap")]),
            Some(loss.reader.sequence_gaps),
        );
        set(
            &lost,
            labels(&[("where", "reader"), ("kind", "undecodable")]),
            Some(loss.reader.undecodable),
        );
        let drops = b.counters(
            "guard_subscriber_drops",
            "Events dropped because a subscriber's queue was full, summed over subscribers.",
        );
        set(&drops, labels(&[]), Some(loss.reader.subscriber_drops));
        let faults = b.counters(
            "guard_reader_faults",
            "Faults (panics, failed polls) the ring-buffer reader caught.",
        );
        set(&faults, labels(&[]), Some(loss.reader_health.faults));
        let restarts = b.counters(
            "guard_reader_restarts",
            "Times the ring-buffer reader resumed after a fault.",
        );
        set(&restarts, labels(&[]), Some(loss.reader_health.restarts));
        let health = b.gauges(
            "guard_reader_state",
            "The reader's state: 1 for the state it is in (healthy, recovered, stopped).",
            None,
        );
        set_gauge(
            &health,
            labels(&[("state", loss.reader_health.state.name())]),
            Some(1),
        );
    }
    if let Some(tier) = snapshot.tier {
        let gauge = b.gauges(
            "guard_tier",
            "The guard's capability tier: 3 tracepoints and kprobes, 2 tracepoints, 1 the \
             kernel's own live sources (perf, kernel log), 0 the kernel's cgroup files only.",
            None,
        );
        set_gauge(&gauge, labels(&[]), Some(u64::from(tier)));
    }
    if let Some(log) = &snapshot.log {
        let records = b.counters("guard_log_records", "Records in the forensic log.");
        set(&records, labels(&[]), Some(log.records));
        let errors = b.counters(
            "guard_log_write_errors",
            "Failed writes or fsyncs of the forensic log that began an outage (it retries, and \
             names the missing seqs in a gap record).",
        );
        set(&errors, labels(&[]), log.write_errors);
        let unwritten = b.counters(
            "guard_log_records_not_written",
            "Records that never reached the forensic log's file.",
        );
        set(&unwritten, labels(&[]), log.records_not_written);
        if log.incomplete_from_seq.is_some() {
            let from = b.gauges(
                "guard_log_incomplete_from_seq",
                "The first seq the forensic log misses: records it could not write.",
                None,
            );
            set_gauge(&from, labels(&[]), log.incomplete_from_seq);
        }
    }
    if !snapshot.streams.is_empty() {
        let records = b.gauges(
            "guard_stream_records",
            "Records held in a guest's copy of its log.",
            None,
        );
        let connections = b.counters(
            "guard_stream_connections",
            "Connections a guest made to the collector.",
        );
        let verdict = b.gauges(
            "guard_stream_verdict",
            "A guest's last stream verdict: 1 for the verdict it has (complete, guest_died, \
             gap, forked, invalid, refused, failed).",
            None,
        );
        for stream in &snapshot.streams {
            let guest = labels(&[("guest", &stream.guest)]);
            set_gauge(&records, guest.clone(), Some(stream.records));
            set(&connections, guest, Some(stream.connections));
            if let Some(name) = &stream.verdict {
                set_gauge(
                    &verdict,
                    labels(&[("guest", &stream.guest), ("verdict", name)]),
                    Some(1),
                );
            }
        }
    }
    let mut out = String::new();
    text::encode(&mut out, &b.registry).map_err(MetricsError::Encode)?;
    Ok(out)
}
