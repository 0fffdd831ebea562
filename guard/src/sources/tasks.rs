//! Which watched container each process is in, at tier 1: seeded from the cgroups'
//! `cgroup.procs` at watch, kept from perf's fork and exit records. The kernel log names an
//! OOM victim by pid only; this map names its container. A process that exited stays findable
//! for a while (its exit record may be read before the log's kill line).
use std::{
    collections::{HashMap, VecDeque},
    path::Path,
};

/// Processes one map follows at most (a guest has 4,194,304 pids at most; a 128 MiB guest
/// far fewer tasks). Past it new processes are not mapped, counted in `full`.
pub(crate) const MAX_TASKS: usize = 65_536;
/// Exited processes kept for late lookups.
const RECENT_EXITS: usize = 4_096;

/// pid → the container's cgroup id.
#[derive(Debug, Default)]
pub(crate) struct TaskMap {
    live: HashMap<u32, u64>,
    exited: VecDeque<(u32, u64)>,
    /// Processes not mapped because the map was full.
    pub full: u64,
}

impl TaskMap {
    /// Process `pid` is in the container of cgroup `container`.
    pub fn insert(&mut self, pid: u32, container: u64) {
        if self.live.len() >= MAX_TASKS && !self.live.contains_key(&pid) {
            self.full += 1;
            return;
        }
        self.live.insert(pid, container);
    }

    /// Process `pid` exited.
    pub fn exit(&mut self, pid: u32) {
        if let Some(container) = self.live.remove(&pid) {
            if self.exited.len() == RECENT_EXITS {
                self.exited.pop_front();
            }
            self.exited.push_back((pid, container));
        }
    }

    /// The container of process `pid`: live first, then the most recent exit of that pid.
    pub fn container_of(&self, pid: u32) -> Option<u64> {
        self.live.get(&pid).copied().or_else(|| {
            self.exited
                .iter()
                .rev()
                .find(|(exited, _)| *exited == pid)
                .map(|&(_, container)| container)
        })
    }

    /// Forgets every process of a container.
    pub fn forget(&mut self, container: u64) {
        self.live.retain(|_, owner| *owner != container);
        self.exited.retain(|(_, owner)| *owner != container);
    }

    /// Maps every process in `cgroup` and its sub-cgroups (their `cgroup.procs`) to
    /// `container`. Returns how many. A sub-cgroup that vanishes meanwhile is skipped.
    pub fn seed(&mut self, container: u64, cgroup: &Path) -> usize {
        let mut seeded = 0;
        let mut pending = vec![cgroup.to_path_buf()];
        while let Some(dir) = pending.pop() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|line| line.trim().parse().ok()) {
                    self.insert(pid, container);
                    seeded += 1;
                }
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                pending.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                        .map(|entry| entry.path()),
                );
            }
        }
        seeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_processes_stay_findable_and_containers_are_forgotten() {
        let mut map = TaskMap::default();
        map.insert(10, 1);
        map.insert(11, 2);
        map.exit(10);
        assert_eq!(map.container_of(10), Some(1));
        assert_eq!(map.container_of(11), Some(2));
        assert_eq!(map.container_of(12), None);
        map.forget(1);
        assert_eq!(map.container_of(10), None);
        for pid in 0..(RECENT_EXITS as u32 + 1) {
            map.insert(100 + pid, 2);
            map.exit(100 + pid);
        }
        // The oldest exit made room for the newest.
        assert_eq!(map.container_of(100), None);
        assert_eq!(map.container_of(101), Some(2));
    }

    #[test]
    fn a_full_map_counts_what_it_could_not_hold() {
        let mut map = TaskMap::default();
        for pid in 0..MAX_TASKS as u32 + 3 {
            map.insert(pid, 1);
        }
        assert_eq!(map.full, 3);
        map.insert(0, 1);
        assert_eq!(map.full, 3, "a known pid is an update");
    }
}
