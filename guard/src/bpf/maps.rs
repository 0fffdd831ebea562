//! Typed access to the programs' maps: registering containers, reading counters and the task
//! map. Every error names the map.
use aya::maps::{MapError, PerCpuValues};
use guard_common::{COUNTER_SLOTS, CounterRow, WatchEntry};

use super::loader::{ProbeError, Probes};

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl Probes {
    pub(super) fn write_config(&mut self) -> Result<(), ProbeError> {
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_error("CONFIG"))
    }

    /// Registers a cgroup: its counters start at zero, then programs see it.
    pub fn watch(&mut self, cgroup_id: u64, entry: WatchEntry) -> Result<(), ProbeError> {
        let zeros = PerCpuValues::try_from(vec![CounterRow::default(); self.nr_cpus])
            .map_err(|source| map_error("COUNTERS")(MapError::IoError(source)))?;
        self.counters
            .set(entry.slot, zeros, 0)
            .map_err(map_error("COUNTERS"))?;
        self.watched
            .insert(cgroup_id, entry, 0)
            .map_err(map_error("WATCHED"))
    }

    /// Stops attributing events to a cgroup.
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        self.watched
            .remove(&cgroup_id)
            .map_err(map_error("WATCHED"))
    }

    /// Tells the programs at which cgroup levels containers are registered.
    pub fn set_watched_levels(&mut self, levels: u64) -> Result<(), ProbeError> {
        if self.config.watched_levels != levels {
            self.config.watched_levels = levels;
            self.write_config()?;
        }
        Ok(())
    }

    /// The container the task map holds for thread `tid`, by cgroup id.
    pub fn task_cgroup(&self, tid: u32) -> Result<Option<u64>, ProbeError> {
        match self.tasks.get(&tid, 0) {
            Ok(entry) => Ok(Some(entry.cgroup_id)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error("TASKS")(source)),
        }
    }

    /// One container's counters summed over every CPU.
    pub fn counters(&self, slot: u32) -> Result<[u64; COUNTER_SLOTS], ProbeError> {
        let per_cpu = self.counters.get(&slot, 0).map_err(map_error("COUNTERS"))?;
        let mut total = [0u64; COUNTER_SLOTS];
        for cpu in per_cpu.iter() {
            for (sum, value) in total.iter_mut().zip(cpu.values) {
                *sum = sum.wrapping_add(value);
            }
        }
        Ok(total)
    }
}
