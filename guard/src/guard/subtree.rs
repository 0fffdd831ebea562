//! A container's sub-cgroups and the tasks already inside: everything below a watched cgroup
//! belongs to it. At watch time every sub-cgroup is registered with the programs and the task
//! map is seeded from each one's `cgroup.threads` (a task that was there first and never forks
//! must still be attributed when it is OOM-killed); sub-cgroups created later are found by
//! inotify and adopted the same way.
//!
//! Order closes the race with the attach program: a sub-cgroup is registered *before* its
//! threads are read, so a task moved in after the registration is seen by the program and one
//! moved in before it is in `cgroup.threads`.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use guard_common::TaskEntry;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::GuardError;
use crate::{
    bpf::Programs,
    cgroup::{self, CgroupError, Hierarchy},
    pipeline::{hub::Hub, inotify::FileWatcher, lock},
};

/// What adopting a subtree found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Adopted {
    pub sub_cgroups: u32,
    pub seeded_tasks: u32,
    /// Each adopted sub-cgroup's id and path, for the hub to name where events happened.
    pub named: Vec<(u64, String)>,
}

impl Adopted {
    /// Tells the hub the adopted sub-cgroups' paths.
    pub fn name_in(&self, hub: &Mutex<Hub>, container: TaskEntry) {
        let mut hub = lock(hub);
        for (id, path) in &self.named {
            hub.name_sub_cgroup(container.cgroup_id, *id, path.clone());
        }
    }
}

/// Registers the sub-cgroups below `dir` (and `dir` itself unless it is the container's own
/// cgroup), watches each for new ones, and seeds the task map from each one's threads.
pub(super) fn adopt(
    probes: &mut Programs,
    hierarchy: &Hierarchy,
    watcher: &FileWatcher,
    container: TaskEntry,
    dir: &Path,
    is_container: bool,
) -> Result<Adopted, GuardError> {
    let mut adopted = Adopted::default();
    if !is_container {
        let identity = match hierarchy.identify(dir) {
            Ok(identity) => identity,
            // Removed again before it was found: nothing to adopt.
            Err(CgroupError::Missing { .. }) => return Ok(adopted),
            Err(error) => return Err(error.into()),
        };
        // A container watched in its own right inside this one keeps its subtree: the
        // innermost watch gets the events, as the fork path's ancestry walk does.
        if probes.is_watched(identity.id) {
            return Ok(adopted);
        }
        probes.add_descendant(identity.id, container)?;
        adopted.sub_cgroups += 1;
        adopted
            .named
            .push((identity.id, hierarchy.cgroup_name(dir)));
    }
    watcher.add_dir(container, dir)?;
    for tid in threads(dir) {
        probes.seed_task(tid, container)?;
        adopted.seeded_tasks += 1;
    }
    for child in child_cgroups(dir) {
        let below = adopt(probes, hierarchy, watcher, container, &child, false)?;
        adopted.sub_cgroups += below.sub_cgroups;
        adopted.seeded_tasks += below.seeded_tasks;
        adopted.named.extend(below.named);
    }
    Ok(adopted)
}

/// The thread ids in `dir`'s `cgroup.threads` (none when it is gone or unreadable: a cgroup
/// removed meanwhile has no tasks to seed).
fn threads(dir: &Path) -> Vec<u32> {
    cgroup::read_ids(dir, "cgroup.threads").unwrap_or_else(|error| {
        warn!(%error, "cannot read the threads of a sub-cgroup");
        Vec::new()
    })
}

/// The sub-cgroups directly below `dir` (cgroupfs: every directory is a cgroup).
fn child_cgroups(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .collect()
}

/// Forgets every sub-cgroup registered for the container `cgroup_id`.
pub(super) fn forget(probes: &mut Programs, cgroup_id: u64) {
    probes.remove_descendants_of(cgroup_id);
}

/// Adopts sub-cgroups as inotify reports their creation, while their container is watched.
pub(super) async fn adopt_created(
    mut created: mpsc::UnboundedReceiver<(TaskEntry, PathBuf)>,
    probes: Weak<Mutex<Programs>>,
    hub: Arc<Mutex<Hub>>,
    hierarchy: Hierarchy,
    watcher: FileWatcher,
) -> Result<(), String> {
    while let Some((container, dir)) = created.recv().await {
        // Weak: the guard alone owns the programs, so they are never closed on this task's
        // worker thread (a teardown waits on the kernel).
        let Some(probes) = probes.upgrade() else {
            return Ok(());
        };
        let mut probes = lock(&probes);
        // Unwatched meanwhile: its sub-cgroups are no longer ours.
        if !probes.is_watched(container.cgroup_id) {
            continue;
        }
        match adopt(&mut probes, &hierarchy, &watcher, container, &dir, false) {
            Ok(adopted) => {
                // Named while the probes are still locked, so an unwatch cannot come between.
                adopted.name_in(&hub, container);
                debug!(dir = %dir.display(), ?adopted, "adopted a new sub-cgroup");
            }
            Err(error) => warn!(dir = %dir.display(), %error, "cannot adopt a new sub-cgroup"),
        }
    }
    // The inotify watcher went away: its own end is recorded.
    Ok(())
}
