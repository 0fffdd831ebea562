//! The fork signal: `sched:sched_process_fork` counts forks per container, tracks the child
//! and streams the fork.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::error;
use guard_common::{Counter, EventKind, ForkEvent};

use crate::{container, emit, maps, tasks, throttle};

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    on_fork(&ctx);
    0
}

#[inline(always)]
fn on_fork(ctx: &TracePointContext) -> Option<()> {
    let config = maps::active_config()?;
    // The tracepoint runs in the parent: the child starts in the parent's container. The
    // parent's pid is the current task's (the kernel fires it in the parent), so it is not
    // read from the record.
    let parent_pid = container::current_tid();
    let container =
        tasks::container_of(parent_pid).or_else(|| container::current_container(config))?;
    if !container::bump(container.slot, Counter::Forks, 1) {
        error!(ctx, "guard: counter slot {} out of range", container.slot);
        return None;
    }
    let child_pid: u32 = unsafe { ctx.read_at(config.offsets.fork_child_pid as usize) }.ok()?;
    tasks::track(child_pid, &container);
    // The parent may predate registration (or have moved in from elsewhere).
    tasks::track_if_untracked(parent_pid, &container);
    let now = unsafe { bpf_ktime_get_ns() };
    if !throttle::admit(config, container.slot, container.cgroup_id, now) {
        return None;
    }
    let event = ForkEvent {
        header: emit::header(EventKind::Fork, container.cgroup_id, now),
        parent_pid,
        child_pid,
    };
    emit::emit(config, EventKind::Fork, event);
    Some(())
}
