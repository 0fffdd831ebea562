//! The fork signal: `sched:sched_process_fork` counts forks per container, tracks the child
//! and streams the fork.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::error;
use guard_common::{Counter, EventKind, ForkEvent};

use crate::{container, emit, maps, throttle};

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    on_fork(&ctx);
    0
}

#[inline(always)]
fn on_fork(ctx: &TracePointContext) -> Option<()> {
    let config = maps::active_config()?;
    // The tracepoint runs in the parent: the child starts in the parent's cgroup.
    let container = container::current_container(config)?;
    if !container::bump(container.slot, Counter::Forks, 1) {
        error!(ctx, "guard: counter slot {} out of range", container.slot);
        return None;
    }
    let offsets = &config.offsets;
    let parent_pid: u32 = unsafe { ctx.read_at(offsets.fork_parent_pid as usize) }.ok()?;
    let child_pid: u32 = unsafe { ctx.read_at(offsets.fork_child_pid as usize) }.ok()?;
    // Track both: the parent may predate registration (or have moved in from elsewhere).
    container::track_task(child_pid, &container);
    container::track_task(parent_pid, &container);
    if !throttle::admit(config, container.slot, container.cgroup_id) {
        return None;
    }
    let event = ForkEvent {
        header: emit::header(EventKind::Fork, container.cgroup_id),
        parent_pid,
        child_pid,
    };
    emit::emit(config, EventKind::Fork, event);
    Some(())
}
