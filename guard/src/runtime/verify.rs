//! What the runtime checks after creating a container, before its init may start: the init's
//! cgroup, `memory.swap.max` (which libcgroups 0.7 leaves at `max` when asked for 0), every
//! limit read back, and the init's OOM score.
use std::io;

use tracing::{debug, warn};

use super::{Container, CreationRecord, Runtime, RuntimeError, oom_score};
use crate::{
    cgroup::{self, CgroupError, HeldLimits, LimitValue, memory, pids},
    container_id::ContainerId,
    limits::{Limits, MemInfo},
};

impl Runtime {
    /// Finds the init, checks its cgroup, writes `memory.swap.max`, reads everything back.
    pub(super) fn verify(
        &self,
        container: &mut Container,
        limits: &Limits,
    ) -> Result<CreationRecord, RuntimeError> {
        let id = container.id.clone();
        let pid = container
            .inner
            .pid()
            .map(|pid| pid.as_raw())
            .ok_or_else(|| RuntimeError::NoInit { id: id.to_string() })?;
        container.init_pid = pid;
        let actual = self.cgroup_of(pid)?;
        if actual != container.cgroup {
            if self.options.spec.omit_cgroups_path {
                // Test mode: carry on in whatever cgroup the runtime chose, so a test can
                // observe that it is not <root>/<id>.
                warn!(container = %id, cgroup = %actual.display(), "cgroupsPath omitted (test mode): the runtime chose its own cgroup");
                container.cgroup = actual;
            } else {
                return Err(RuntimeError::CgroupMismatch {
                    id: id.to_string(),
                    pid,
                    expected: container.cgroup.clone(),
                    actual,
                });
            }
        }
        let cgroup = container.cgroup.clone();

        // libcgroups 0.7 writes memory.swap.max only when memory+swap - memory is non-zero:
        // "no swap" (0) would silently stay "max". The init has not run the workload yet (it
        // waits for start), so writing it here is still before anything can swap.
        let swap_file = cgroup.join(memory::SWAP_MAX);
        debug!(
            container = %id,
            left_by_libcontainer = ?cgroup::read(&cgroup, memory::SWAP_MAX),
            writing = ?limits.swap_max,
            "writing the swap limit"
        );
        match memory::apply_swap_max(&cgroup, limits.swap_max) {
            Ok(()) => {}
            Err(CgroupError::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let meminfo = MemInfo::read().map_err(|error| RuntimeError::Io {
                    what: "reading /proc/meminfo".into(),
                    source: io::Error::other(error.to_string()),
                })?;
                if meminfo.swap_total > 0 {
                    return Err(RuntimeError::NoSwapControl {
                        id: id.to_string(),
                        file: swap_file,
                    });
                }
                warn!(container = %id, "no memory.swap.max (no swap accounting); the guest has no swap");
            }
            Err(error) => return Err(error.into()),
        }

        let identity = self.hierarchy.identify(&cgroup)?;
        let read_back = HeldLimits::read(&cgroup)?;
        check_read_back(&id, limits, &read_back)?;

        let asked = self.options.spec.init_score();
        oom_score::set_oom_score_adj_of(pid, asked)?;
        let score = oom_score::oom_score_adj_of(pid)?;
        if score != asked {
            return Err(RuntimeError::ContainerScore {
                id: id.to_string(),
                asked,
                found: score,
            });
        }
        Ok(CreationRecord {
            kind: "limits_applied",
            container: id,
            cgroup,
            cgroup_id: identity.id,
            init_pid: pid,
            requested: *limits,
            read_back,
            oom_score_adj: score,
        })
    }
}

/// Compares what the kernel holds with what was asked: any difference is an error naming the
/// file and both values. `memory.swap.max` may be absent (no swap accounting; the caller has
/// checked the guest has no swap).
pub fn check_read_back(
    id: &ContainerId,
    limits: &Limits,
    read_back: &HeldLimits,
) -> Result<(), RuntimeError> {
    let check =
        |file: &'static str, asked: Option<u64>, found: Option<LimitValue>, optional: bool| {
            let asked_limit = asked.map_or(LimitValue::Max, LimitValue::Value);
            match found {
                Some(found) if found == asked_limit => Ok(()),
                None if optional => Ok(()),
                found => Err(RuntimeError::LimitMismatch {
                    id: id.to_string(),
                    file,
                    asked: asked_limit.to_string(),
                    found: found.map_or("missing".to_string(), |limit| limit.to_string()),
                }),
            }
        };
    check(memory::MAX, limits.memory_max, read_back.memory_max, false)?;
    check(pids::MAX, limits.pids_max, read_back.pids_max, false)?;
    check(
        memory::SWAP_MAX,
        limits.swap_max,
        read_back.memory_swap_max,
        true,
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn asked() -> Limits {
        Limits {
            memory_max: Some(32 << 20),
            swap_max: Some(0),
            pids_max: Some(512),
        }
    }

    fn held(memory: LimitValue, swap: Option<LimitValue>, pids: LimitValue) -> HeldLimits {
        HeldLimits {
            cgroup: PathBuf::from("/sys/fs/cgroup/guard/c"),
            memory_max: Some(memory),
            memory_swap_max: swap,
            pids_max: Some(pids),
            memory_peak: None,
            pids_peak: None,
        }
    }

    #[test]
    fn read_back_matching_is_accepted() {
        let id = ContainerId::parse("c").unwrap();
        let exact = held(
            LimitValue::Value(32 << 20),
            Some(LimitValue::Value(0)),
            LimitValue::Value(512),
        );
        check_read_back(&id, &asked(), &exact).unwrap();
        // No swap accounting at all: accepted here (the runtime checked there is no swap).
        let no_swap_file = held(LimitValue::Value(32 << 20), None, LimitValue::Value(512));
        check_read_back(&id, &asked(), &no_swap_file).unwrap();
        let unlimited = Limits {
            memory_max: None,
            swap_max: None,
            pids_max: None,
        };
        let max = held(LimitValue::Max, Some(LimitValue::Max), LimitValue::Max);
        check_read_back(&id, &unlimited, &max).unwrap();
    }

    /// Each mismatch is an error naming the file, what was asked and what the kernel holds.
    #[test]
    fn read_back_mismatch_is_an_error_naming_both_values() {
        let id = ContainerId::parse("c").unwrap();
        let cases = [
            (
                held(
                    LimitValue::Max,
                    Some(LimitValue::Value(0)),
                    LimitValue::Value(512),
                ),
                "memory.max is max, but 33554432",
            ),
            (
                held(
                    LimitValue::Value(32 << 20),
                    Some(LimitValue::Value(0)),
                    LimitValue::Value(64),
                ),
                "pids.max is 64, but 512",
            ),
            (
                // libcgroups 0.7 leaves "max" when asked for no swap.
                held(
                    LimitValue::Value(32 << 20),
                    Some(LimitValue::Max),
                    LimitValue::Value(512),
                ),
                "memory.swap.max is max, but 0",
            ),
        ];
        for (read_back, expected) in cases {
            let error = check_read_back(&id, &asked(), &read_back)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("container c"), "{error}");
        }
        let mut missing = held(LimitValue::Value(32 << 20), None, LimitValue::Value(512));
        missing.pids_max = None;
        let error = check_read_back(&id, &asked(), &missing)
            .unwrap_err()
            .to_string();
        assert!(error.contains("pids.max is missing, but 512"), "{error}");
    }
}
