//! The attach signal: `cgroup:cgroup_attach_task` keeps the task → container map right when
//! a task moves.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    container::{self, Container},
    maps::{self, TASKS, WATCHED},
};

/// The cgroup v2 (default) hierarchy's id; v1 hierarchies on hybrid hosts have others, and
/// their cgroup ids can collide with v2 ones.
const DEFAULT_HIERARCHY: i32 = 0;

#[tracepoint]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    on_attach(&ctx);
    0
}

#[inline(always)]
fn on_attach(ctx: &TracePointContext) -> Option<()> {
    let config = maps::active_config()?;
    let offsets = &config.offsets;
    let root: i32 = unsafe { ctx.read_at(offsets.attach_dst_root as usize) }.ok()?;
    if root != DEFAULT_HIERARCHY {
        return None;
    }
    // Runs in the task that wrote cgroup.procs: the moved task is the `pid` field.
    let pid: u32 = unsafe { ctx.read_at(offsets.attach_pid as usize) }.ok()?;
    let dst_id: u64 = unsafe { ctx.read_at(offsets.attach_dst_id as usize) }.ok()?;
    if let Some(entry) = unsafe { WATCHED.get(dst_id) } {
        let container = Container {
            cgroup_id: dst_id,
            slot: entry.slot,
            level: entry.level,
        };
        container::track_task(pid, &container);
        return Some(());
    }
    // Not a container's own cgroup. A move deeper than the task's container keeps it (a
    // sub-cgroup of the container; its next fork or exit re-checks by ancestry); any other
    // move takes it out of every container.
    let dst_level: i32 = unsafe { ctx.read_at(offsets.attach_dst_level as usize) }.ok()?;
    if let Some(task) = unsafe { TASKS.get(pid) } {
        if dst_level > task.level as i32 {
            return Some(());
        }
        let _ = TASKS.remove(pid);
    }
    Some(())
}
