//! The attach signal: `cgroup:cgroup_attach_task` keeps the task → container map right when
//! a task moves.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    container::{self, Container},
    maps::{self, DESCENDANTS, WATCHED},
    tasks,
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
        tasks::track(pid, &container);
        return Some(());
    }
    // Not a container's own cgroup: maybe a sub-cgroup of one. The tracepoint fires after the
    // move, so a task that moved itself has its new ancestry as the current task's; one moved
    // by another process is resolved through the sub-cgroups userspace registered (and those
    // created too recently are seeded from their cgroup.threads when userspace finds them).
    let container = if pid == container::current_tid() {
        container::current_container(config)
    } else {
        unsafe { DESCENDANTS.get(dst_id) }.map(Container::of_entry)
    };
    match container {
        Some(container) => tasks::track(pid, &container),
        // Out of every container: forgotten.
        None => tasks::forget(pid),
    }
    Some(())
}
