//! Interval summaries: what bounds the growth of the forensic log and the events file under a
//! storm. Per container and kind, the first [`SummaryPolicy::burst`] events of a burst stay
//! individual records; the rest are folded into one `summary` per [`SummaryPolicy::interval`]
//! (count, first and last time, totals of the kind's key fields, the first few events and the
//! last); a quiet interval ends the burst. Pure: the sinks feed it events and the clock. The
//! counters and the hub's tallies never pass through it, so they stay exact.
use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use serde::{Serialize, ser::SerializeMap};

use crate::events::{EventDetail, EventSource, GuardEvent, RingPosition};

/// How many of the events a summary folds it keeps whole (the first ones), besides the last.
pub const EXAMPLES: usize = 4;

/// When events become summaries. Set field by field on [`SummaryPolicy::default`], or
/// [`SummaryPolicy::off`] for one record per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SummaryPolicy {
    /// Events of a burst (per container and kind) that stay individual records.
    pub burst: u32,
    /// The span one summary covers at most; also the quiet time that ends a burst.
    pub interval: Duration,
}

impl SummaryPolicy {
    /// The default burst: the first 8 events of each burst stay whole (docs/LOG-FORMAT.md
    /// says why).
    pub const DEFAULT_BURST: u32 = 8;
    /// The default interval: one summary per second per container and kind.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// A policy of `burst` individual events then one summary per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> Self {
        Self { burst, interval }
    }

    /// No summaries: one record per event.
    pub const fn off() -> Self {
        Self {
            burst: u32::MAX,
            interval: Duration::ZERO,
        }
    }

    /// Whether every event stays an individual record.
    pub fn is_off(&self) -> bool {
        self.burst == u32::MAX || self.interval.is_zero()
    }
}

impl Default for SummaryPolicy {
    fn default() -> Self {
        Self::new(Self::DEFAULT_BURST, Self::DEFAULT_INTERVAL)
    }
}

/// A policy's text that does not parse ([`SummaryPolicy::from_str`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "summary policy {text:?}: expected `off` or BURST/INTERVAL (e.g. `8/1s`, `0/500ms`): {why}"
)]
pub struct SummaryPolicyError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for SummaryPolicy {
    type Err = SummaryPolicyError;

    /// `off`, or `BURST/INTERVAL`: a count and a duration in `ms` or `s` (`8/1s`, `16/250ms`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |why| SummaryPolicyError {
            text: text.to_string(),
            why,
        };
        let trimmed = text.trim();
        if trimmed == "off" {
            return Ok(Self::off());
        }
        let (burst, interval) = trimmed.split_once('/').ok_or(error("no `/`"))?;
        let burst: u32 = burst
            .trim()
            .parse()
            .map_err(|_| error("BURST is not a count"))?;
        if burst == u32::MAX {
            return Err(error("BURST is too large (say `off`)"));
        }
        let interval = interval.trim();
        let (number, unit_ms) = if let Some(ms) = interval.strip_suffix("ms") {
            (ms, 1.0)
        } else if let Some(s) = interval.strip_suffix('s') {
            (s, 1000.0)
        } else {
            return Err(error("INTERVAL needs a unit, ms or s"));
        };
        let value: f64 = number
            .parse()
            .map_err(|_| error("INTERVAL is not a number"))?;
        let ms = value * unit_ms;
        if !(1.0..=3_600_000.0).contains(&ms) {
            return Err(error("INTERVAL must be from 1ms to 1h"));
        }
        Ok(Self::new(burst, Duration::from_secs_f64(ms / 1000.0)))
    }
}

impl fmt::Display for SummaryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        let ms = self.interval.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}/{}s", self.burst, ms / 1000)
        } else {
            write!(f, "{}/{ms}ms", self.burst)
        }
    }
}

/// An event's record payload: the event without its container (the record names it). The
/// log's individual records and a summary's examples are this.
#[derive(Serialize)]
pub(crate) struct EventPayload<'a> {
    #[serde(flatten)]
    pub ring: Option<RingPosition>,
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub source: EventSource,
    #[serde(flatten)]
    pub detail: &'a EventDetail,
}

impl<'a> EventPayload<'a> {
    pub fn of(event: &'a GuardEvent) -> Self {
        Self {
            ring: event.ring,
            ktime_ns: event.ktime_ns,
            cgroup_id: event.cgroup_id,
            source: event.source,
            detail: &event.detail,
        }
    }
}

/// Events of one container and kind folded into one record. Serialises as the `summary`
/// record's payload (docs/LOG-FORMAT.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The container (None: events attributed to none).
    pub container: Option<String>,
    /// The kind folded.
    pub of: &'static str,
    /// For `kernel_file`: which file's snapshots.
    pub file: Option<&'static str>,
    /// Events folded.
    pub count: u64,
    /// The first event's time (CLOCK_MONOTONIC, ns).
    pub first_ktime_ns: u64,
    /// The last event's time.
    pub last_ktime_ns: u64,
    /// Totals of the kind's key fields over every event folded.
    pub sums: BTreeMap<&'static str, u64>,
    /// The first [`EXAMPLES`] events folded.
    pub examples: Vec<GuardEvent>,
    /// The last event folded, when it is not among `examples`.
    pub last: Option<GuardEvent>,
}

impl Summary {
    /// The last event folded.
    pub fn last_event(&self) -> Option<&GuardEvent> {
        self.last.as_ref().or(self.examples.last())
    }
}

impl Serialize for Summary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("of", self.of)?;
        if let Some(file) = self.file {
            map.serialize_entry("file", file)?;
        }
        map.serialize_entry("count", &self.count)?;
        map.serialize_entry("first_ktime_ns", &self.first_ktime_ns)?;
        map.serialize_entry("last_ktime_ns", &self.last_ktime_ns)?;
        map.serialize_entry("sums", &self.sums)?;
        let examples: Vec<EventPayload<'_>> = self.examples.iter().map(EventPayload::of).collect();
        map.serialize_entry("examples", &examples)?;
        map.serialize_entry("last", &self.last_event().map(EventPayload::of))?;
        map.end()
    }
}

/// What a sink writes, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The event as its own record.
    Event(GuardEvent),
    /// A summary record.
    Summary(Summary),
}

/// The kinds that can storm, and how each is grouped: per kind, and `kernel_file` per file.
/// `lost`, `throttle` and `reader_fault` are the log's accounts of loss and already bounded
/// (one per drain, per second per CPU, per fault): they stay whole.
fn group(detail: &EventDetail) -> Option<(&'static str, Option<&'static str>)> {
    match detail {
        EventDetail::Fork(_)
        | EventDetail::Exit(_)
        | EventDetail::Exec(_)
        | EventDetail::ForkDenied(_)
        | EventDetail::OomVictim(_)
        | EventDetail::Reclaim(_) => Some((detail.kind_name(), None)),
        EventDetail::KernelFile(file) => Some((detail.kind_name(), Some(file.file))),
        _ => None,
    }
}

/// Adds an event's key fields to a summary's totals.
fn add_sums(sums: &mut BTreeMap<&'static str, u64>, detail: &EventDetail) {
    let mut add = |key, value| *sums.entry(key).or_default() += value;
    match detail {
        EventDetail::Reclaim(reclaim) => {
            add("duration_ns", reclaim.duration_ns);
            add("nr_reclaimed", reclaim.nr_reclaimed);
        }
        EventDetail::OomVictim(victim) => {
            add("outside_containers", u64::from(victim.outside_containers))
        }
        EventDetail::ForkDenied(denied) => match denied.cause {
            guard_common::DenialCause::PidsMax => add("cause_pids_max", 1),
            guard_common::DenialCause::Inferred => add("cause_inferred", 1),
        },
        _ => {}
    }
}

/// A summary being filled.
struct Pending {
    count: u64,
    first_ktime_ns: u64,
    last_ktime_ns: u64,
    sums: BTreeMap<&'static str, u64>,
    examples: Vec<GuardEvent>,
    last: Option<GuardEvent>,
}

impl Pending {
    fn new(event: GuardEvent) -> Self {
        let mut pending = Self {
            count: 0,
            first_ktime_ns: event.ktime_ns,
            last_ktime_ns: event.ktime_ns,
            sums: BTreeMap::new(),
            examples: Vec::with_capacity(EXAMPLES),
            last: None,
        };
        pending.add(event);
        pending
    }

    fn add(&mut self, event: GuardEvent) {
        self.count += 1;
        self.first_ktime_ns = self.first_ktime_ns.min(event.ktime_ns);
        self.last_ktime_ns = self.last_ktime_ns.max(event.ktime_ns);
        add_sums(&mut self.sums, &event.detail);
        if self.examples.len() < EXAMPLES {
            self.examples.push(event);
        } else {
            self.last = Some(event);
        }
    }

    fn into_summary(
        self,
        container: Option<&str>,
        of: &'static str,
        file: Option<&'static str>,
    ) -> Summary {
        Summary {
            container: container.map(str::to_string),
            of,
            file,
            count: self.count,
            first_ktime_ns: self.first_ktime_ns,
            last_ktime_ns: self.last_ktime_ns,
            sums: self.sums,
            examples: self.examples,
            last: self.last,
        }
    }
}

/// One container's burst of one kind.
struct Run {
    of: &'static str,
    file: Option<&'static str>,
    /// Individual records written in this burst.
    individual: u32,
    /// The latest event's time: a quiet interval after it ends the burst.
    last_ktime_ns: u64,
    pending: Option<Pending>,
}

/// A container's runs, one per kind (a handful: a list beats a map).
#[derive(Default)]
struct Runs(Vec<Run>);

/// The summarizer of one sink. Its state is a few runs per container that had events in the
/// last interval, each with at most [`EXAMPLES`] + 1 events held.
pub struct Summarizer {
    policy: SummaryPolicy,
    interval_ns: u64,
    named: BTreeMap<String, Runs>,
    unattributed: Runs,
}

impl Summarizer {
    /// A summarizer applying `policy`.
    pub fn new(policy: SummaryPolicy) -> Self {
        Self {
            policy,
            interval_ns: u64::try_from(policy.interval.as_nanos()).unwrap_or(u64::MAX),
            named: BTreeMap::new(),
            unattributed: Runs::default(),
        }
    }

    /// Takes one event: `emit` gets what to write now (a summary the event closes, then the
    /// event itself unless it was folded).
    pub fn offer(&mut self, event: GuardEvent, emit: &mut impl FnMut(Step)) {
        let Some((of, file)) = group(&event.detail).filter(|_| !self.policy.is_off()) else {
            emit(Step::Event(event));
            return;
        };
        let (burst, interval_ns) = (self.policy.burst, self.interval_ns);
        let runs = match event.container.as_deref() {
            Some(id) => match self.named.get_mut(id) {
                Some(runs) => runs,
                None => self.named.entry(id.to_string()).or_default(),
            },
            None => &mut self.unattributed,
        };
        let at = match runs.0.iter().position(|r| r.of == of && r.file == file) {
            Some(at) => at,
            None => {
                runs.0.push(Run {
                    of,
                    file,
                    individual: 0,
                    last_ktime_ns: event.ktime_ns,
                    pending: None,
                });
                runs.0.len() - 1
            }
        };
        let run = &mut runs.0[at];
        let t = event.ktime_ns;
        let container = event.container.as_deref();
        if t.saturating_sub(run.last_ktime_ns) >= interval_ns {
            // A quiet interval: the burst is over, and so is its summary.
            if let Some(pending) = run.pending.take() {
                emit(Step::Summary(pending.into_summary(container, of, file)));
            }
            run.individual = 0;
        }
        run.last_ktime_ns = run.last_ktime_ns.max(t);
        if run.individual < burst {
            run.individual += 1;
            emit(Step::Event(event));
            return;
        }
        if run
            .pending
            .as_ref()
            .is_some_and(|p| t.saturating_sub(p.first_ktime_ns) >= interval_ns)
            && let Some(pending) = run.pending.take()
        {
            emit(Step::Summary(pending.into_summary(container, of, file)));
        }
        match &mut run.pending {
            Some(pending) => pending.add(event),
            None => run.pending = Some(Pending::new(event)),
        }
    }

    /// Writes the summaries whose interval has passed by `now_ns` (CLOCK_MONOTONIC) and
    /// forgets the bursts that have been quiet for an interval.
    pub fn tick(&mut self, now_ns: u64, emit: &mut impl FnMut(Step)) {
        let interval_ns = self.interval_ns;
        let due = |runs: &mut Runs, container: Option<&str>, emit: &mut dyn FnMut(Step)| {
            for run in &mut runs.0 {
                if run
                    .pending
                    .as_ref()
                    .is_some_and(|p| now_ns.saturating_sub(p.first_ktime_ns) >= interval_ns)
                    && let Some(pending) = run.pending.take()
                {
                    emit(Step::Summary(
                        pending.into_summary(container, run.of, run.file),
                    ));
                }
            }
            runs.0.retain(|run| {
                run.pending.is_some() || now_ns.saturating_sub(run.last_ktime_ns) < interval_ns
            });
        };
        due(&mut self.unattributed, None, emit);
        for (id, runs) in &mut self.named {
            due(runs, Some(id), emit);
        }
        self.named.retain(|_, runs| !runs.0.is_empty());
    }

    /// Writes every pending summary of `container` (before one of its agent records, such as
    /// its report). Its bursts go on: the flush does not open a new one.
    pub fn flush_container(&mut self, container: Option<&str>, emit: &mut impl FnMut(Step)) {
        let runs = match container {
            Some(id) => self.named.get_mut(id),
            None => Some(&mut self.unattributed),
        };
        for run in runs.into_iter().flat_map(|runs| runs.0.iter_mut()) {
            if let Some(pending) = run.pending.take() {
                emit(Step::Summary(
                    pending.into_summary(container, run.of, run.file),
                ));
            }
        }
    }

    /// Writes every pending summary (at shutdown): nothing is held back.
    pub fn flush_all(&mut self, emit: &mut impl FnMut(Step)) {
        self.flush_container(None, emit);
        let ids: Vec<String> = self.named.keys().cloned().collect();
        for id in ids {
            self.flush_container(Some(&id), emit);
        }
        self.named.clear();
        self.unattributed.0.clear();
    }
}

#[cfg(test)]
mod tests;
