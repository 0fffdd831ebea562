//! The kernel's own event counters per cgroup: `memory.events`, `memory.events.local`,
//! `pids.events` (flat keyed files), the ground truth the BPF counters are reconciled with.
use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use super::{CgroupError, memory, pids, read_optional};

/// A flat keyed file (`key value` per line), e.g. `memory.events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyedCounts(pub BTreeMap<String, u64>);

impl KeyedCounts {
    /// Parses a flat keyed file; blank lines are skipped, any other line must be `key value`
    /// with an unsigned value. `path` names the file in the error ([`CgroupError::Malformed`],
    /// with the line).
    ///
    /// ```
    /// use std::path::Path;
    /// use guard::cgroup::KeyedCounts;
    ///
    /// let path = Path::new("memory.events");
    /// let before = KeyedCounts::parse(path, "max 2\noom 0\n")?;
    /// let after = KeyedCounts::parse(path, "max 5\noom 1\noom_kill 1\n")?;
    /// assert_eq!(after.get("oom_kill"), 1);
    /// assert_eq!(after.get("absent"), 0);
    /// assert_eq!(after.since(&before).get("max"), 3);
    /// assert!(KeyedCounts::parse(path, "max x\n").is_err());
    /// # Ok::<(), guard::cgroup::CgroupError>(())
    /// ```
    pub fn parse(path: &Path, text: &str) -> Result<Self, CgroupError> {
        let mut counts = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let malformed = || CgroupError::Malformed {
                path: path.to_path_buf(),
                line: index + 1,
                text: line.to_string(),
            };
            let mut fields = line.split_whitespace();
            let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed());
            };
            let value = value.parse().map_err(|_| malformed())?;
            counts.insert(key.to_string(), value);
        }
        Ok(Self(counts))
    }

    /// The value of `key` (0 when the kernel does not report it).
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// `self - earlier`, key by key (saturating: counters only grow, but a recreated cgroup
    /// restarts them).
    pub fn since(&self, earlier: &KeyedCounts) -> KeyedCounts {
        KeyedCounts(
            self.0
                .iter()
                .map(|(key, value)| (key.clone(), value.saturating_sub(earlier.get(key))))
                .collect(),
        )
    }
}

/// A snapshot of a cgroup's event files; None where the file does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventFiles {
    /// `memory.events`: the cgroup and its descendants (`max`, `oom`, `oom_kill`, …).
    pub memory_events: Option<KeyedCounts>,
    /// `memory.events.local`: the cgroup alone.
    pub memory_events_local: Option<KeyedCounts>,
    /// `pids.events` (`max`: forks refused at a `pids.max`).
    pub pids_events: Option<KeyedCounts>,
    /// `pids.events.local`: the cgroup alone (newer kernels only).
    pub pids_events_local: Option<KeyedCounts>,
}

impl EventFiles {
    /// The names of the files read, in field order.
    pub const FILES: [&'static str; 4] = [
        memory::EVENTS,
        memory::EVENTS_LOCAL,
        pids::EVENTS,
        pids::EVENTS_LOCAL,
    ];

    /// Reads the files of `cgroup` now (a file that does not exist reads as None, so a removed
    /// cgroup reads as all None).
    pub fn read(cgroup: &Path) -> Result<Self, CgroupError> {
        let read = |name: &str| -> Result<Option<KeyedCounts>, CgroupError> {
            let path = cgroup.join(name);
            read_optional(&path)?
                .map(|text| KeyedCounts::parse(&path, &text))
                .transpose()
        };
        Ok(Self {
            memory_events: read(memory::EVENTS)?,
            memory_events_local: read(memory::EVENTS_LOCAL)?,
            pids_events: read(pids::EVENTS)?,
            pids_events_local: read(pids::EVENTS_LOCAL)?,
        })
    }

    /// Each file's counts with its name, in [`EventFiles::FILES`]'s order.
    pub fn by_file(&self) -> [(&'static str, Option<&KeyedCounts>); 4] {
        let [
            memory_events,
            memory_events_local,
            pids_events,
            pids_events_local,
        ] = Self::FILES;
        [
            (memory_events, self.memory_events.as_ref()),
            (memory_events_local, self.memory_events_local.as_ref()),
            (pids_events, self.pids_events.as_ref()),
            (pids_events_local, self.pids_events_local.as_ref()),
        ]
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &EventFiles) -> EventFiles {
        let delta = |now: &Option<KeyedCounts>, then: &Option<KeyedCounts>| {
            now.as_ref()
                .map(|now| now.since(then.as_ref().unwrap_or(&KeyedCounts::default())))
        };
        EventFiles {
            memory_events: delta(&self.memory_events, &earlier.memory_events),
            memory_events_local: delta(&self.memory_events_local, &earlier.memory_events_local),
            pids_events: delta(&self.pids_events, &earlier.pids_events),
            pids_events_local: delta(&self.pids_events_local, &earlier.pids_events_local),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";

    #[test]
    fn parses_keyed_counts() {
        let counts = KeyedCounts::parse(Path::new("memory.events"), MEMORY_EVENTS).unwrap();
        assert_eq!(counts.get("max"), 12);
        assert_eq!(counts.get("oom_kill"), 1);
        assert_eq!(counts.get("absent"), 0);
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let error = KeyedCounts::parse(Path::new("/cg/pids.events"), "max 1\nmax x\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/cg/pids.events") && error.contains("line 2"),
            "{error}"
        );
        assert!(KeyedCounts::parse(Path::new("f"), "max 1 2\n").is_err());
    }

    #[test]
    fn deltas_subtract_per_key() {
        let before = KeyedCounts::parse(Path::new("f"), "max 2\noom 0\n").unwrap();
        let after = KeyedCounts::parse(Path::new("f"), "max 5\noom 1\noom_kill 1\n").unwrap();
        let delta = after.since(&before);
        assert_eq!(
            (delta.get("max"), delta.get("oom"), delta.get("oom_kill")),
            (3, 1, 1)
        );
    }
}
