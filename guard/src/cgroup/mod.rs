//! cgroup v2: the hierarchy (mount, ids, levels) and the kernel's own files per cgroup (event
//! counters and limits), which are the ground truth the BPF counters are reconciled with.
mod files;
mod hierarchy;

pub use files::{EventFiles, KeyedCounts, Limit, LimitsReadBack, read_limits};
pub use hierarchy::{CgroupError, CgroupIdentity, Hierarchy};
