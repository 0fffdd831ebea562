//! The kernel log's OOM kills as `oom_victim` events (tier 1): the log names the victim by pid
//! and comm, with the killer's scope. Its container is where `/proc/<pid>/cgroup` says the
//! dying process is (read the moment the line is: right for a process moved in or out through
//! `cgroup.procs`, which perf has no record of), else, once the process is gone, what the task
//! map (`tasks.rs`) last knew of it.
use std::path::Path;

use crate::{
    events::{EventDetail, EventSource, GuardEvent, OomVictim, monotonic_ns},
    kmsg::{LoggedKill, OomScope},
};

/// The event of one logged kill, attributed to the container of cgroup id `container` (None:
/// in no watched container).
pub(crate) fn victim_event(kill: &LoggedKill, container: Option<u64>) -> GuardEvent {
    let victim = OomVictim {
        victim_pid: kill.pid,
        comm: kill.comm.clone(),
        outside_containers: container.is_none(),
        trigger_cgroup_id: 0,
        trigger_sub_cgroup: None,
        rss: None,
        oom_score_adj: 0,
        scope: Some(match kill.scope {
            OomScope::Memcg => "memcg",
            OomScope::Global => "global",
        }),
    };
    GuardEvent::from_source(
        EventSource::Kmsg,
        monotonic_ns(),
        container.unwrap_or(0),
        EventDetail::OomVictim(victim),
    )
}

/// The watched container process `pid` is in, from `/proc/<pid>/cgroup` (cgroup v2's `0::`
/// line) under the hierarchy at `mount`: the nearest ancestor cgroup whose id `is_container`
/// accepts. None when the process (or its cgroup) is gone: unknown; `Some(None)` when it is
/// in no watched container.
pub(crate) fn container_from_proc(
    pid: u32,
    mount: &Path,
    is_container: impl Fn(u64) -> bool,
) -> Option<Option<u64>> {
    use std::os::unix::fs::MetadataExt as _;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let mut dir = mount.join(path.trim_start_matches('/'));
    loop {
        let id = std::fs::metadata(&dir).ok()?.ino();
        if is_container(id) {
            return Some(Some(id));
        }
        if dir == mount || !dir.pop() {
            return Some(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_is_an_oom_victim_of_its_container_with_its_scope() {
        let kill = LoggedKill {
            scope: OomScope::Memcg,
            pid: 42,
            comm: "bomb".into(),
        };
        let event = victim_event(&kill, Some(9));
        assert_eq!((event.source, event.cgroup_id), (EventSource::Kmsg, 9));
        let EventDetail::OomVictim(victim) = &event.detail else {
            panic!("{event:?}")
        };
        assert_eq!((victim.victim_pid, victim.comm.as_str()), (42, "bomb"));
        assert_eq!(
            (victim.scope, victim.outside_containers),
            (Some("memcg"), false)
        );
        let global = LoggedKill {
            scope: OomScope::Global,
            ..kill
        };
        let event = victim_event(&global, None);
        let EventDetail::OomVictim(victim) = &event.detail else {
            panic!("{event:?}")
        };
        assert_eq!((event.cgroup_id, victim.outside_containers), (0, true));
        assert_eq!(victim.scope, Some("global"));
    }

    #[test]
    fn this_process_is_found_in_its_own_cgroup_or_none() {
        let Ok(hierarchy) = crate::cgroup::Hierarchy::find() else {
            return; // No cgroup v2 here: nothing to look up.
        };
        let me = std::process::id();
        assert_eq!(
            container_from_proc(me, &hierarchy.mount, |_| false),
            Some(None)
        );
        let found = container_from_proc(me, &hierarchy.mount, |_| true);
        assert!(found.is_some_and(|id| id.is_some()));
        assert_eq!(
            container_from_proc(u32::MAX, &hierarchy.mount, |_| true),
            None
        );
    }
}
