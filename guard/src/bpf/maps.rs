//! Typed access to the programs' maps: registering containers, reading counters and the task
//! map. Every error names the map.
use aya::maps::{MapError, PerCpuValues};
use guard_common::{COUNTER_SLOTS, CounterRow, TaskEntry, WatchEntry};

use super::loader::{BpfError, Programs};

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

impl Programs {
    pub(super) fn write_config(&mut self) -> Result<(), BpfError> {
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_error("CONFIG"))
    }

    /// Registers a cgroup: its counters start at zero, then programs see it.
    pub fn watch(&mut self, cgroup_id: u64, entry: WatchEntry) -> Result<(), BpfError> {
        let zeros = PerCpuValues::try_from(vec![CounterRow::default(); self.nr_cpus])
            .map_err(|source| map_error("COUNTERS")(MapError::IoError(source)))?;
        self.counters
            .set(entry.slot, zeros, 0)
            .map_err(map_error("COUNTERS"))?;
        self.slots
            .set(entry.slot, cgroup_id, 0)
            .map_err(map_error("SLOTS"))?;
        self.watched
            .insert(cgroup_id, entry, 0)
            .map_err(map_error("WATCHED"))
    }

    /// Stops attributing events to a cgroup: its slot stops naming it first, so the task
    /// map's entries of its tasks no longer count.
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), BpfError> {
        match self.watched.get(&cgroup_id, 0) {
            Ok(entry) => self
                .slots
                .set(entry.slot, 0, 0)
                .map_err(map_error("SLOTS"))?,
            Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error("WATCHED")(source)),
        }
        self.watched
            .remove(&cgroup_id)
            .map_err(map_error("WATCHED"))
    }

    /// Tells the programs at which cgroup levels containers are registered.
    pub fn set_watched_levels(&mut self, levels: u64) -> Result<(), BpfError> {
        if self.config.watched_levels != levels {
            self.config.watched_levels = levels;
            self.write_config()?;
        }
        Ok(())
    }

    /// Registers `cgroup_id` as a sub-cgroup of the container `entry` names, so that a task
    /// another process moves there is attributed to the container.
    pub fn add_descendant(&mut self, cgroup_id: u64, entry: TaskEntry) -> Result<(), BpfError> {
        self.descendants
            .insert(cgroup_id, entry, 0)
            .map_err(map_error("DESCENDANTS"))
    }

    /// Forgets every sub-cgroup of the container `cgroup_id` (unwatched).
    pub fn remove_descendants_of(&mut self, cgroup_id: u64) {
        let ours: Vec<u64> = self
            .descendants
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, entry)| entry.cgroup_id == cgroup_id)
            .map(|(id, _)| id)
            .collect();
        for id in ours {
            let _ = self.descendants.remove(&id);
        }
    }

    /// Whether the container `cgroup_id` is registered.
    pub fn is_watched(&self, cgroup_id: u64) -> bool {
        self.watched.get(&cgroup_id, 0).is_ok()
    }

    /// Records thread `tid` as a task of the container `entry` names (a task that was there
    /// before the watch, or before its sub-cgroup was found).
    pub fn seed_task(&mut self, tid: u32, entry: TaskEntry) -> Result<(), BpfError> {
        if tid < self.tasks.len() {
            self.tasks.set(tid, entry, 0).map_err(map_error("TASKS"))
        } else {
            self.tasks_spill
                .insert(tid, entry, 0)
                .map_err(map_error("TASKS_SPILL"))
        }
    }

    /// The container the task map holds for thread `tid`, by cgroup id.
    pub fn task_cgroup(&self, tid: u32) -> Result<Option<u64>, BpfError> {
        if tid < self.tasks.len() {
            // An empty entry has cgroup id 0 (no cgroup has it).
            let entry = self.tasks.get(&tid, 0).map_err(map_error("TASKS"))?;
            return Ok((entry.cgroup_id != 0).then_some(entry.cgroup_id));
        }
        match self.tasks_spill.get(&tid, 0) {
            Ok(entry) => Ok(Some(entry.cgroup_id)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error("TASKS_SPILL")(source)),
        }
    }

    /// One container's counters summed over every CPU.
    pub fn counters(&self, slot: u32) -> Result<[u64; COUNTER_SLOTS], BpfError> {
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
