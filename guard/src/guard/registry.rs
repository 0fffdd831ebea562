//! The registry of watched containers: ids, cgroups, counter slots, baselines.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use guard_common::MAX_CONTAINERS;

use super::GuardError;
use crate::{
    cgroup::{CgroupIdentity, EventFiles},
    container_id::ContainerId,
    limits::Limits,
};

pub(super) struct Watched {
    pub cgroup: PathBuf,
    pub identity: CgroupIdentity,
    pub slot: u32,
    pub requested: Option<Limits>,
    /// The kernel's event counters when watching began: reports count from here.
    pub baseline: EventFiles,
    /// The ancestors' memcg `oom` events when watching began (see [`ancestor_ooms`]).
    pub ancestor_ooms: u64,
}

/// The `oom` events of every ancestor of `cgroup` below `mount` (their memory.events): an OOM
/// an ancestor's limit caused (the guest budget's) is counted there, not in the container's
/// own files.
pub(super) fn ancestor_ooms(cgroup: &Path, mount: &Path) -> u64 {
    cgroup
        .ancestors()
        .skip(1)
        .take_while(|dir| *dir != mount && dir.starts_with(mount))
        .filter_map(|dir| std::fs::read_to_string(dir.join(crate::cgroup::memory::EVENTS)).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("oom "))
                .and_then(|count| count.trim().parse::<u64>().ok())
        })
        .sum()
}

#[derive(Default)]
pub(super) struct Registry {
    pub by_id: BTreeMap<ContainerId, Watched>,
    pub free_slots: BTreeSet<u32>,
    next_slot: u32,
}

impl Registry {
    pub fn allocate_slot(&mut self) -> Result<u32, GuardError> {
        if let Some(slot) = self.free_slots.pop_first() {
            return Ok(slot);
        }
        if self.next_slot >= MAX_CONTAINERS {
            return Err(GuardError::SlotsExhausted);
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    pub fn watched_levels(&self) -> u64 {
        self.by_id
            .values()
            .fold(0, |levels, watched| levels | 1 << watched.identity.level)
    }
}
