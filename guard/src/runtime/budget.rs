//! The guest budget on the containers' parent cgroup: created if needed, its controllers
//! enabled, its limits written (a smaller limit already there is kept), `kernel.threads-max`
//! raised to fit, and what the kernel holds read back: the `budget_applied` record.
use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::{info, warn};

use super::{RuntimeError, io_error};
use crate::{
    cgroup::{self, CgroupError, HeldLimits, Hierarchy, LimitValue, memory, pids},
    limits::GuestBudget,
};

const THREADS_MAX: &str = "/proc/sys/kernel/threads-max";
/// The controllers a budget needs, as `cgroup.subtree_control` names them.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// What the parent cgroup holds once the budget is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetRecord {
    /// Always "budget_applied".
    pub kind: &'static str,
    /// The parent cgroup (absolute).
    pub cgroup: PathBuf,
    /// What was derived from the guest.
    pub budget: GuestBudget,
    /// What the kernel holds after the writes.
    pub read_back: HeldLimits,
    /// Limits that were already smaller than the budget and were kept.
    pub kept: Vec<&'static str>,
    /// `kernel.threads-max` before and after.
    pub threads_max: (u64, u64),
}

impl BudgetRecord {
    /// The memory the parent holds for every container together (None: no limit).
    pub fn memory_max(&self) -> Option<u64> {
        self.read_back.memory_max.and_then(LimitValue::value)
    }

    /// The tasks the parent holds for every container together (None: no limit).
    pub fn pids_max(&self) -> Option<u64> {
        self.read_back.pids_max.and_then(LimitValue::value)
    }

    /// The budget as the kernel holds it, for clamping container limits.
    pub fn held(&self) -> GuestBudget {
        GuestBudget {
            memory_max: self.memory_max().unwrap_or(u64::MAX),
            pids_max: self.pids_max().unwrap_or(u64::MAX),
            ..self.budget
        }
    }
}

/// Applies `budget` to `parent` (relative to the hierarchy's mount, e.g. `/guard`).
pub fn apply(
    hierarchy: &Hierarchy,
    parent: &str,
    budget: &GuestBudget,
    swap_accounting: bool,
) -> Result<BudgetRecord, RuntimeError> {
    let relative = parent.trim_matches('/');
    if relative.is_empty() {
        return Err(RuntimeError::BudgetOnRoot);
    }
    let offered = hierarchy.controllers()?;
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|wanted| !offered.iter().any(|have| have == wanted))
        .collect();
    if !missing.is_empty() {
        return Err(RuntimeError::NoControllers {
            file: hierarchy.mount.join("cgroup.controllers"),
            missing: missing.join(" "),
            found: offered.join(" "),
        });
    }
    // Each level down to the parent: exists, and passes the controllers on to its children.
    let mut dir = hierarchy.mount.clone();
    enable_controllers(&dir)?;
    for component in relative.split('/') {
        dir.push(component);
        if !dir.is_dir() {
            cgroup::create(&dir)?;
        }
        enable_controllers(&dir)?;
    }
    let mut kept = Vec::new();
    for (file, held) in [
        (
            memory::MAX,
            memory::apply_max_unless_smaller(&dir, budget.memory_max)?,
        ),
        (
            pids::MAX,
            pids::apply_max_unless_smaller(&dir, budget.pids_max)?,
        ),
    ] {
        if let Some(held) = held {
            warn!(file = %dir.join(file).display(), held, "keeping the smaller limit already there");
            kept.push(file);
        }
    }
    if swap_accounting {
        memory::apply_swap_max(&dir, Some(0))?;
    }
    let threads_max = raise_threads_max(budget.threads_max)?;
    let read_back = HeldLimits::read(&dir)?;
    let record = BudgetRecord {
        kind: "budget_applied",
        cgroup: dir,
        budget: *budget,
        read_back,
        kept,
        threads_max,
    };
    info!(
        cgroup = %record.cgroup.display(),
        memory_max = ?record.memory_max(),
        pids_max = ?record.pids_max(),
        threads_max = record.threads_max.1,
        "guest budget applied"
    );
    Ok(record)
}

/// `+memory +pids` in `dir`'s `cgroup.subtree_control`. The kernel refuses when `dir` (not
/// the root) has processes of its own: the error says so.
fn enable_controllers(dir: &Path) -> Result<(), RuntimeError> {
    let value = CONTROLLERS.map(|name| format!("+{name}")).join(" ");
    cgroup::write(dir, "cgroup.subtree_control", &value).map_err(|error| match error {
        CgroupError::Write { path, source, .. } => RuntimeError::SubtreeControl { path, source },
        other => other.into(),
    })
}

/// Raises `kernel.threads-max` to `wanted` when it is lower (a 128 MiB guest's kernel derives
/// about 490 from its memory, below a single container's default pids.max): (before, after).
/// Never lowers it.
pub fn raise_threads_max(wanted: u64) -> Result<(u64, u64), RuntimeError> {
    let read = || -> Result<u64, RuntimeError> {
        let text = std::fs::read_to_string(THREADS_MAX)
            .map_err(io_error(format!("reading {THREADS_MAX}")))?;
        text.trim().parse().map_err(|_| RuntimeError::Io {
            what: format!("parsing {THREADS_MAX}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_string()),
        })
    };
    let before = read()?;
    if before < wanted {
        std::fs::write(THREADS_MAX, wanted.to_string())
            .map_err(io_error(format!("writing {wanted} to {THREADS_MAX}")))?;
    }
    Ok((before, read()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_smaller_limit_already_there_is_kept_and_named_a_larger_one_lowered() {
        let dir = std::env::temp_dir().join(format!("guard-budget-kept-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(memory::MAX), "1048576\n").unwrap();
        std::fs::write(dir.join(pids::MAX), "max\n").unwrap();
        assert_eq!(
            memory::apply_max_unless_smaller(&dir, 64 << 20).unwrap(),
            Some(1_048_576)
        );
        assert_eq!(pids::apply_max_unless_smaller(&dir, 512).unwrap(), None);
        let read = |name| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read(memory::MAX).trim(), "1048576");
        assert_eq!(read(pids::MAX).trim(), "512");
        // A held value that is not a limit is an error naming the file, not a silent write.
        std::fs::write(dir.join(pids::MAX), "lots\n").unwrap();
        let error = pids::apply_max_unless_smaller(&dir, 512).unwrap_err();
        assert!(error.to_string().contains(pids::MAX), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
