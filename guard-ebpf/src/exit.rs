//! The exit signal: `sched:sched_process_exit` counts exits per container and forgets the task.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use guard_common::Counter;

use crate::{container, maps, tasks};

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    on_exit();
    0
}

#[inline(always)]
fn on_exit() -> Option<()> {
    let config = maps::active_config()?;
    // Runs in the exiting task, still in its cgroup.
    let tid = container::current_tid();
    let tracked = tasks::container_of(tid);
    tasks::forget(tid);
    let container = tracked.or_else(|| container::current_container(config))?;
    container::bump(container.slot, Counter::Exits, 1);
    Some(())
}
