//! A report as the metrics read it: the parts of [`Report`](crate::Report) they show, typed
//! with the report's own types, read from its JSON (what a live guard's report serialises to
//! and what a log's `report` record holds: one shape). Each part is read on its own: a part
//! that is missing or not of its type is left out of the scrape, not the whole report.
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    Verdict,
    cgroup::{EventFiles, HeldLimits},
    counters::{BpfCounters, Delivered, LossReport, SourceCounters},
    verdict::OomSummary,
};

/// The parts of a report the metrics show.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ScrapedReport {
    /// The container: a report without one is not scraped.
    pub container: String,
    #[serde(default, deserialize_with = "part")]
    pub counters: Option<ScrapedCounters>,
    #[serde(default, deserialize_with = "part")]
    pub kernel_since_watch: Option<EventFiles>,
    #[serde(default, deserialize_with = "part")]
    pub oom: Option<OomSummary>,
    #[serde(default, deserialize_with = "part")]
    pub applied: Option<HeldLimits>,
    #[serde(default, deserialize_with = "part")]
    pub pids: Option<Judged>,
    #[serde(default, deserialize_with = "part")]
    pub memory: Option<Judged>,
    #[serde(default, deserialize_with = "part")]
    pub verdict: Option<Verdict>,
    #[serde(default, deserialize_with = "part")]
    pub loss: Option<LossReport>,
}

/// A report's counters (`ContainerCounters` without its identity).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ScrapedCounters {
    /// None below tier 2.
    #[serde(default, deserialize_with = "part")]
    pub bpf: Option<BpfCounters>,
    /// Tier 1's sources' row (None elsewhere).
    #[serde(default, deserialize_with = "part")]
    pub sources: Option<SourceCounters>,
    #[serde(default, deserialize_with = "part")]
    pub delivered: Option<Delivered>,
}

/// A limit's verdict (`LimitVerdict` without its evidence).
#[derive(Debug, Deserialize)]
pub(super) struct Judged {
    pub verdict: Verdict,
}

impl ScrapedReport {
    /// The report in `value`, if it names its container.
    pub fn read(value: &Value) -> Option<Self> {
        Self::deserialize(value).ok()
    }
}

/// One part of a report: None where it is missing, null or not of its type.
fn part<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        Report, Tier,
        cgroup::{KeyedCounts, LimitValue},
        counters::{ContainerCounters, HealthState, ReaderHealth, ReaderLoss},
        verdict::{Evidence, reconcile},
    };

    /// A report with a value in every figure the metrics show.
    fn sample() -> Report {
        let applied = HeldLimits {
            cgroup: PathBuf::from("/sys/fs/cgroup/guard/web"),
            memory_max: Some(LimitValue::Value(64 << 20)),
            memory_swap_max: Some(LimitValue::Value(0)),
            pids_max: Some(LimitValue::Max),
            memory_peak: Some(60 << 20),
            pids_peak: Some(40),
        };
        let counts = |text| Some(KeyedCounts::parse(std::path::Path::new("t"), text).unwrap());
        let kernel = EventFiles {
            memory_events: counts("max 9\noom 2\noom_kill 2\n"),
            memory_events_local: counts("max 9\noom 2\noom_kill 2\n"),
            pids_events: counts("max 0\n"),
            pids_events_local: None,
        };
        let bpf = BpfCounters {
            forks: 7,
            exits: 6,
            fork_denied: 5,
            fork_denied_pids_max: Some(4),
            oom_kills: 2,
            reclaim_runs: 3,
            reclaim_ns: 4,
            reclaim_pages: 5,
            events_throttled: 6,
            task_map_full: 1,
        };
        let evidence = Evidence {
            tier: Tier::TracepointsAndKprobes,
            requested_memory_max: Some(64 << 20),
            requested_pids_max: None,
            applied: &applied,
            kernel: &kernel,
            bpf: Some(&bpf),
            sources: None,
            events_lost: 0,
            ancestor_ooms: 0,
            cgroup_gone: false,
            kernel_log: None,
            stream_stopped: None,
        };
        Report {
            container: "web".into(),
            cgroup: applied.cgroup.clone(),
            cgroup_id: 42,
            tier: Tier::TracepointsAndKprobes,
            requested: None,
            counters: ContainerCounters {
                container: "web".into(),
                cgroup_id: 42,
                bpf: Some(bpf),
                sources: None,
                delivered: Delivered {
                    forks: 1,
                    fork_denied: 2,
                    oom_victims: 3,
                    reclaims: 4,
                    throttle_records: 5,
                    suppressed: 6,
                },
            },
            kernel_since_watch: kernel.clone(),
            loss: LossReport {
                kernel_reserve_failures: [("fork".to_string(), 3)].into(),
                reader: ReaderLoss {
                    sequence_gaps: 1,
                    undecodable: 2,
                    subscriber_drops: 3,
                },
                reader_health: ReaderHealth {
                    state: HealthState::Recovered,
                    faults: 1,
                    restarts: 1,
                    last_fault: Some("boom".into()),
                },
                log_incomplete: None,
            },
            reconciliation: reconcile(&evidence),
            applied,
        }
    }

    /// Every part the metrics read is found in a real report's JSON, under the name the report
    /// serialises it with: a renamed field fails here, not silently in a scrape.
    #[test]
    fn a_real_report_is_read_whole() {
        let report = sample();
        let scraped = ScrapedReport::read(&serde_json::to_value(&report).unwrap()).unwrap();
        assert_eq!(scraped.container, report.container);
        let counters = scraped.counters.unwrap();
        assert_eq!(counters.bpf, report.counters.bpf);
        assert_eq!(counters.delivered, Some(report.counters.delivered));
        assert_eq!(scraped.kernel_since_watch, Some(report.kernel_since_watch));
        assert_eq!(scraped.oom, Some(report.reconciliation.oom));
        assert_eq!(scraped.applied, Some(report.applied));
        assert_eq!(
            scraped.pids.map(|judged| judged.verdict),
            Some(report.reconciliation.pids.verdict)
        );
        assert_eq!(
            scraped.memory.map(|judged| judged.verdict),
            Some(report.reconciliation.memory.verdict)
        );
        assert_eq!(scraped.verdict, Some(report.reconciliation.verdict));
        assert_eq!(scraped.loss, Some(report.loss));
    }

    #[test]
    fn a_broken_part_leaves_the_rest() {
        let value = serde_json::json!({
            "container": "c",
            "counters": {"bpf": {"forks": "many"}, "delivered": {"forks": 2}},
            "verdict": "enforced",
        });
        let scraped = ScrapedReport::read(&value).unwrap();
        let counters = scraped.counters.unwrap();
        assert_eq!(counters.bpf, None);
        assert_eq!(counters.delivered.unwrap().forks, 2);
        assert_eq!(scraped.verdict, Some(Verdict::Enforced));
        assert!(ScrapedReport::read(&serde_json::json!({"verdict": "enforced"})).is_none());
    }
}
