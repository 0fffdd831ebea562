//! The registry of watched containers: ids, cgroups, counter slots, baselines.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
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
