//! The capability tiers (docs/ARCHITECTURE.md): what evidence a kernel lets the guard collect.
use std::fmt;

use serde::Serialize;

/// The tier the guard can run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "u8")]
pub enum Tier {
    /// Evidence from cgroup event files alone.
    CgroupFilesOnly = 0,
    /// Live sources the kernel has without tracing (`sources/`): perf's fork, exec and exit
    /// records per cgroup, the kernel log's OOM kills; no BPF program.
    KernelSources = 1,
    /// Tracepoint programs.
    Tracepoints = 2,
    /// Tracepoints plus kprobes (exact fork-denial cause).
    TracepointsAndKprobes = 3,
}

/// A number that is not a tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value} is not a tier: give 0 (cgroup files only), 1 (kernel sources: perf and the kernel \
     log), 2 (tracepoints) or 3 (tracepoints and kprobes)"
)]
pub struct TierError {
    /// The number given.
    pub value: i64,
}

impl Tier {
    /// Whether guard's BPF programs run at this tier (tier 2 and up).
    pub fn has_bpf(self) -> bool {
        self >= Tier::Tracepoints
    }

    /// Every tier, lowest first.
    pub const ALL: [Tier; 4] = [
        Tier::CgroupFilesOnly,
        Tier::KernelSources,
        Tier::Tracepoints,
        Tier::TracepointsAndKprobes,
    ];
}

impl From<Tier> for u8 {
    fn from(tier: Tier) -> u8 {
        tier as u8
    }
}

impl TryFrom<i64> for Tier {
    type Error = TierError;

    fn try_from(value: i64) -> Result<Self, TierError> {
        Tier::ALL
            .into_iter()
            .find(|tier| i64::from(*tier as u8) == value)
            .ok_or(TierError { value })
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Tier::CgroupFilesOnly => "0 (cgroup event files only)",
            Tier::KernelSources => "1 (kernel sources: perf, kernel log)",
            Tier::Tracepoints => "2 (tracepoints)",
            Tier::TracepointsAndKprobes => "3 (tracepoints + kprobes)",
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_map_both_ways() {
        for tier in Tier::ALL {
            assert_eq!(Tier::try_from(i64::from(u8::from(tier))), Ok(tier));
        }
        assert_eq!(Tier::try_from(4), Err(TierError { value: 4 }));
        assert!(Tier::CgroupFilesOnly < Tier::TracepointsAndKprobes);
    }
}
